"""A throwaway PostgreSQL cluster for tests: temp folder, free loopback port, trust auth, removed after.

`running_postgres()` yields a `postgresql://postgres@127.0.0.1:PORT/gateway` URL (or the server
named by `GATEWAY_TEST_POSTGRES_URL`); `postgres_available()` says why no cluster can be started.
initdb refuses to run as root, so as root every server program runs as the `postgres` system user.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import contextlib
import glob
import os
import pwd
import shutil
import socket
import subprocess
import tempfile
import uuid
from collections.abc import AsyncIterator, Callable, Coroutine, Iterator
from pathlib import Path
from typing import Any

import asyncpg

ENV_URL = "GATEWAY_TEST_POSTGRES_URL"
SERVER_USER = "postgres"
DATABASE = "gateway"
# Debian and Ubuntu install the server programs here, one folder per major version, off PATH.
_DEBIAN_BIN_GLOB = "/usr/lib/postgresql/*/bin"
_SETTINGS = {
    "listen_addresses": "'127.0.0.1'",
    "fsync": "off",  # tests only: a crash loses nothing we care about
    "full_page_writes": "off",
    "synchronous_commit": "off",
    "max_connections": "200",
    "log_min_messages": "warning",
}


def external_url() -> str | None:
    return os.environ.get(ENV_URL) or None


def _find_bindir() -> Path | None:
    """The folder holding initdb and pg_ctl: PATH first, else the newest Debian version folder."""
    on_path = shutil.which("initdb")
    if on_path and shutil.which("pg_ctl"):
        return Path(on_path).resolve().parent
    candidates = [Path(d) for d in glob.glob(_DEBIAN_BIN_GLOB) if (Path(d) / "initdb").is_file()]

    def major(path: Path) -> float:
        try:
            return float(path.parent.name)
        except ValueError:
            return 0.0

    return max(candidates, key=major, default=None)


def _as_root() -> bool:
    return os.geteuid() == 0


def postgres_available() -> str | None:
    """None when a test server can be had, else the reason (for a skip message)."""
    if external_url():
        return None
    if _find_bindir() is None:
        return (
            "PostgreSQL server programs not found (no initdb on PATH or under /usr/lib/postgresql/*/bin): "
            f"install the 'postgresql' package (tests/install_system_deps.sh does) or set {ENV_URL}"
        )
    if _as_root():
        try:
            pwd.getpwnam(SERVER_USER)
        except KeyError:
            return f"running as root and there is no '{SERVER_USER}' system user to run initdb as"
        if not (shutil.which("runuser") or shutil.which("su")):
            return f"running as root and neither runuser nor su is available to become '{SERVER_USER}'"
    return None


def _server_argv(argv: list[str]) -> list[str]:
    """Run a server program as the postgres user when we are root (initdb and postgres refuse root)."""
    if not _as_root():
        return argv
    if shutil.which("runuser"):
        return ["runuser", "-u", SERVER_USER, "--", *argv]
    import shlex

    return ["su", SERVER_USER, "-s", "/bin/sh", "-c", shlex.join(argv)]


def _free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
        return port


class PostgresCluster:
    """One initdb'd cluster in a temp folder. `start()`/`stop()` may be called again (restart tests)."""

    def __init__(self, bindir: Path) -> None:
        self.bindir = bindir
        self.root = Path(tempfile.mkdtemp(prefix="gateway-pg-"))
        self.data = self.root / "data"
        self.log = self.root / "server.log"
        self.port = 0
        self.running = False
        self.ever_started = False
        if _as_root():
            user = pwd.getpwnam(SERVER_USER)
            os.chown(self.root, user.pw_uid, user.pw_gid)
        os.chmod(self.root, 0o700)

    @property
    def url(self) -> str:
        return f"postgresql://postgres@127.0.0.1:{self.port}/{DATABASE}"

    def _run(self, *argv: str, as_server: bool = True) -> None:
        cmd = _server_argv(list(argv)) if as_server else list(argv)
        # cwd: the postgres user may not be allowed into the caller's working directory.
        proc = subprocess.run(cmd, cwd=self.root, capture_output=True, text=True, timeout=120, check=False)
        if proc.returncode != 0:
            log = self.log.read_text(errors="replace")[-4000:] if self.log.exists() else ""
            raise RuntimeError(
                f"{' '.join(cmd)} failed ({proc.returncode}):\n{proc.stdout}{proc.stderr}\n{log}".rstrip()
            )

    def init(self) -> None:
        self._run(
            str(self.bindir / "initdb"),
            "--pgdata",
            str(self.data),
            "--username",
            "postgres",
            "--auth",
            "trust",  # loopback and socket only; listen_addresses below keeps it off the network
            "--encoding",
            "UTF8",
            "--no-locale",
            "--no-sync",
        )
        settings = {**_SETTINGS, "unix_socket_directories": f"'{self.root}'"}
        with (self.data / "postgresql.conf").open("a") as conf:  # appending keeps the postgres owner
            conf.write("\n# gateway test cluster\n")
            conf.writelines(f"{key} = {value}\n" for key, value in settings.items())

    def start(self) -> None:
        """Start the server; a restart keeps the port, so URLs handed out stay valid."""
        last: RuntimeError | None = None
        for _ in range(1 if self.port else 3):  # a probed free port can be taken before the bind
            self.port = self.port or _free_port()
            try:
                self._run(
                    str(self.bindir / "pg_ctl"),
                    "--pgdata",
                    str(self.data),
                    "--log",
                    str(self.log),
                    "--wait",
                    "--timeout",
                    "60",
                    "-o",
                    f"-p {self.port}",
                    "start",
                )
            except RuntimeError as exc:
                last = exc
                if not self.ever_started:
                    self.port = 0
                continue
            self.ever_started = True
            self.running = True
            return
        assert last is not None
        raise last

    def stop(self) -> None:
        if self.running:
            self._run(str(self.bindir / "pg_ctl"), "--pgdata", str(self.data), "--wait", "-m", "fast", "stop")
            self.running = False

    def create_database(self) -> None:
        self._run(
            str(self.bindir / "createdb"),
            "--host",
            "127.0.0.1",
            "--port",
            str(self.port),
            "--username",
            "postgres",
            DATABASE,
            as_server=False,
        )

    def remove(self) -> None:
        try:
            self.stop()
        except RuntimeError:
            # pg_ctl could not stop it cleanly: kill the postmaster so the folder can go.
            with contextlib.suppress(OSError, ValueError, IndexError):
                pid = int((self.data / "postmaster.pid").read_text().split()[0])
                os.kill(pid, 9)
        finally:
            self.running = False
            shutil.rmtree(self.root, ignore_errors=True)


@contextlib.contextmanager
def running_cluster() -> Iterator[PostgresCluster]:
    """Start a fresh cluster with the `gateway` database; stop it and delete its folder after."""
    reason = postgres_available()
    bindir = _find_bindir()
    if reason or bindir is None:
        raise RuntimeError(reason or "PostgreSQL not found")
    cluster = PostgresCluster(bindir)
    try:
        cluster.init()
        cluster.start()
        cluster.create_database()
        yield cluster
    finally:
        cluster.remove()


@contextlib.contextmanager
def running_postgres() -> Iterator[str]:
    """Yield a PostgreSQL database URL for tests: `GATEWAY_TEST_POSTGRES_URL`, else a throwaway cluster."""
    url = external_url()
    if url:
        yield url
        return
    with running_cluster() as cluster:
        yield cluster.url


def _in_thread(work: Callable[[], Coroutine[Any, Any, None]]) -> None:
    """Run async setup from sync code that may itself be called inside a running event loop."""
    with concurrent.futures.ThreadPoolExecutor(max_workers=1) as pool:
        pool.submit(asyncio.run, work()).result()


@contextlib.contextmanager
def session_database() -> Iterator[str]:
    """The session's database URL. A server from GATEWAY_TEST_POSTGRES_URL gets a database of our
    own (created now, dropped after; needs CREATEDB), so its named database is never emptied."""
    url = external_url()
    if url is None:
        with running_postgres() as local:
            yield local
        return
    name = f"gateway_test_{uuid.uuid4().hex[:12]}"
    _in_thread(lambda: _admin(url, f'CREATE DATABASE "{name}"'))
    try:
        yield _with_database(url, name)
    finally:
        _in_thread(lambda: _admin(url, f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)'))


async def _admin(url: str, sql: str) -> None:
    con = await asyncpg.connect(url)
    try:
        await con.execute(sql)
    finally:
        await con.close()


async def empty_tables(url: str) -> None:
    """Delete every row of every table but schema_version and restart the sequences (the next feed
    seq is 1, as in a new database): one statement, much cheaper than TRUNCATE or a new database."""
    # The schema's foreign keys all cascade, so the tables can be emptied in any order.
    await _admin(url, _EMPTY_TABLES)


_EMPTY_TABLES = """
DO $$
DECLARE name text;
BEGIN
    FOR name IN SELECT tablename FROM pg_tables
                WHERE schemaname = current_schema() AND tablename <> 'schema_version' LOOP
        EXECUTE format('DELETE FROM %I', name);
    END LOOP;
    FOR name IN SELECT sequencename FROM pg_sequences WHERE schemaname = current_schema() LOOP
        EXECUTE format('ALTER SEQUENCE %I RESTART', name);
    END LOOP;
END $$
"""


def _with_database(url: str, name: str) -> str:
    base, _, query = url.partition("?")
    head, _, _ = base.rpartition("/")
    return f"{head}/{name}" + (f"?{query}" if query else "")


@contextlib.asynccontextmanager
async def scratch_database(url: str) -> AsyncIterator[str]:
    """A new empty database next to the one at `url`, dropped after (for migration tests)."""
    name = f"gateway_scratch_{uuid.uuid4().hex[:12]}"
    await _admin(url, f'CREATE DATABASE "{name}"')
    try:
        yield _with_database(url, name)
    finally:
        await _admin(url, f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')
