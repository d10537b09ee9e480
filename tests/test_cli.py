"""The operator commands `gateway users | sessions | keys` (DESIGN §9), end to end.

The slow tests run the real program (`python -m gateway …`) against a real `gateway serve` and the
example upstream sharing one SQLite file, and watch what a signed-in client sees over HTTP. The
fast ones call `cli.main` in-process for exit codes, usage errors and password handling.
"""

from __future__ import annotations

import getpass
import io
import json
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest

from gateway import cli
from gateway.keyring import KeyRing, ensure_key_file, generate_key
from tests.processes import (
    NEW_PASSWORD,
    PASSWORD,
    Gateway,
    bearer,
    free_port,
    http_client,
    jwt_parts,
    login,
    run_cli,
    running_gateway,
    seconds_until,
    status_of,
    upstream_example,
    write_config,
)

REVOCATION_BOUND = 2.0  # DESIGN §6: revoked everywhere within 2 seconds


@dataclass
class Stack:
    config: Path
    gateway: Gateway


@pytest.fixture(scope="module")
def stack(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Stack]:
    """One example upstream and one `gateway serve` for the module; each test uses its own users."""
    folder = tmp_path_factory.mktemp("cli")
    with upstream_example() as upstream_port:
        port = free_port()
        config = write_config(folder, port=port, upstream_port=upstream_port)
        with running_gateway(config, port) as gateway:
            yield Stack(config, gateway)


@pytest.fixture
def config(tmp_path: Path) -> Path:
    """A valid config file with no server running (for the in-process tests)."""
    return write_config(tmp_path, port=free_port(), upstream_port=9)


def add_user(config: Path, email: str, *roles: str, password: str = PASSWORD) -> dict[str, object]:
    args = ["users", "add", email, *(f"--role={r}" for r in roles), "--password-stdin", "--json"]
    result = run_cli(config, *args, stdin=password + "\n")
    assert result.returncode == 0, result.stderr
    return dict(json.loads(result.stdout))


def main(config: Path, *args: str) -> int:
    return cli.main([*args, "--config", str(config)])


def stderr_lines(capsys: pytest.CaptureFixture[str]) -> list[str]:
    return capsys.readouterr().err.splitlines()


# ---- end to end against a running server ---------------------------------------------------------


@pytest.mark.slow
def test_users_add_then_list_as_text_and_json(stack: Stack) -> None:
    """`users add --password-stdin` adds a user; `users list` shows it aligned, and as JSON without a hash."""
    added = add_user(stack.config, "lister@example.com", "admin", "ops")
    assert added["email"] == "lister@example.com" and added["roles"] == ["admin", "ops"]

    text = run_cli(stack.config, "users", "list")
    assert text.returncode == 0, text.stderr
    header, *rows = text.stdout.splitlines()
    row = next(r for r in rows if r.startswith("lister@example.com "))
    assert header.split() == ["EMAIL", "ROLES", "STATUS", "CREATED", "ID"]
    assert row.index("admin,ops") == header.index("ROLES")  # aligned columns
    assert row.index("active") == header.index("STATUS")

    listed = json.loads(run_cli(stack.config, "users", "list", "--json").stdout)
    entry = next(u for u in listed if u["email"] == "lister@example.com")
    assert entry["id"] == added["id"] and entry["disabled"] is False
    assert "password_hash" not in entry and "$argon2" not in json.dumps(listed)


@pytest.mark.slow
async def test_cli_admin_signs_in_and_reaches_a_role_gated_route(stack: Stack) -> None:
    """A CLI-added admin signs in over HTTP and reaches a roles=["admin"] route; a plain user gets 403."""
    add_user(stack.config, "boss@example.com", "admin")
    add_user(stack.config, "pleb@example.com", "user")
    async with http_client(stack.gateway.url) as client:
        token = (await login(client, "boss@example.com"))["access_token"]
        async with client.get("/echo/admin/page", headers=bearer(token)) as resp:
            assert resp.status == 200
            headers = dict((await resp.json())["headers"])
        assert headers["X-Auth-User-Email"] == "boss@example.com"
        assert headers["X-Auth-User-Roles"] == "admin"
        plain = (await login(client, "pleb@example.com"))["access_token"]
        assert await status_of(client, "/echo/admin/page", bearer(plain)) == 403


@pytest.mark.slow
async def test_sessions_revoke_kills_the_access_token_within_two_seconds(stack: Stack) -> None:
    """`sessions revoke ID`: the running server refuses that session's token within 2 s, and its refresh."""
    add_user(stack.config, "revokee@example.com")
    async with http_client(stack.gateway.url) as client, http_client(stack.gateway.url) as other:
        token = (await login(client, "revokee@example.com"))["access_token"]
        kept = (await login(other, "revokee@example.com"))["access_token"]
        sid = jwt_parts(token)[1]["sid"]
        listed = json.loads(
            run_cli(stack.config, "sessions", "list", "--user", "revokee@example.com", "--json").stdout
        )
        assert sid in [s["id"] for s in listed] and len(listed) == 2
        assert await status_of(client, "/auth/me", bearer(token)) == 200

        result = run_cli(stack.config, "sessions", "revoke", sid)
        assert result.returncode == 0, result.stderr
        assert await seconds_until(client, "/auth/me", bearer(token), [401]) < REVOCATION_BOUND
        async with client.post("/auth/refresh") as resp:
            assert resp.status == 401
        assert await status_of(other, "/auth/me", bearer(kept)) == 200  # only that session died
        listed = json.loads(run_cli(stack.config, "sessions", "list", "--json").stdout)
        assert sid not in [s["id"] for s in listed]


@pytest.mark.slow
async def test_sessions_revoke_user_ends_every_session_of_the_user(stack: Stack) -> None:
    """`sessions revoke --user EMAIL` kills every session of that user on the running server."""
    add_user(stack.config, "many@example.com")
    async with http_client(stack.gateway.url) as client:
        tokens = [(await login(client, "many@example.com"))["access_token"] for _ in range(2)]
        result = run_cli(stack.config, "sessions", "revoke", "--user", "many@example.com", "--json")
        assert result.returncode == 0, result.stderr
        assert len(json.loads(result.stdout)["revoked"]) == 2
        for token in tokens:
            assert await seconds_until(client, "/auth/me", bearer(token), [401]) < REVOCATION_BOUND


@pytest.mark.slow
async def test_users_disable_refuses_sign_in_and_kills_sessions_until_enabled(stack: Stack) -> None:
    """`users disable` kills the user's sessions within 2 s and refuses sign-in; `users enable` undoes it."""
    add_user(stack.config, "leaver@example.com")
    async with http_client(stack.gateway.url) as client:
        token = (await login(client, "leaver@example.com"))["access_token"]
        result = run_cli(stack.config, "users", "disable", "leaver@example.com")
        assert result.returncode == 0, result.stderr
        assert await seconds_until(client, "/auth/me", bearer(token), [401]) < REVOCATION_BOUND
        async with client.post("/auth/refresh") as resp:
            assert resp.status == 401
        body = {"email": "leaver@example.com", "password": PASSWORD}
        async with client.post("/auth/login", json=body) as resp:
            assert resp.status == 401 and (await resp.json())["error"] == "invalid_credentials"

        assert run_cli(stack.config, "users", "enable", "leaver@example.com").returncode == 0
        assert (await login(client, "leaver@example.com"))["user"]["email"] == "leaver@example.com"


@pytest.mark.slow
async def test_set_roles_takes_effect_on_the_next_token(stack: Stack) -> None:
    """After `users set-roles`, the current token dies and the next one (refreshed) carries the new roles."""
    add_user(stack.config, "promoted@example.com", "user")
    async with http_client(stack.gateway.url) as client:
        token = (await login(client, "promoted@example.com"))["access_token"]
        assert await status_of(client, "/echo/admin/x", bearer(token)) == 403

        result = run_cli(stack.config, "users", "set-roles", "promoted@example.com", "admin", "--json")
        assert result.returncode == 0 and json.loads(result.stdout)["roles"] == ["admin"], result.stderr
        assert await seconds_until(client, "/auth/me", bearer(token), [401]) < REVOCATION_BOUND
        # A browser: the refresh cookie quietly gets a new access token with the new roles.
        assert await seconds_until(client, "/echo/admin/x", None, [200]) < REVOCATION_BOUND
        cookie = next(c.value for c in client.cookie_jar if c.key == "gw_access")
        assert jwt_parts(cookie)[1]["roles"] == ["admin"]


@pytest.mark.slow
async def test_set_password_revokes_sessions_and_changes_the_password(stack: Stack) -> None:
    """`users set-password` revokes the user's sessions within 2 s; only the new password signs in."""
    add_user(stack.config, "forgetful@example.com")
    async with http_client(stack.gateway.url) as client:
        token = (await login(client, "forgetful@example.com"))["access_token"]
        result = run_cli(
            stack.config,
            "users",
            "set-password",
            "forgetful@example.com",
            "--password-stdin",
            stdin=NEW_PASSWORD,
        )
        assert result.returncode == 0, result.stderr
        assert NEW_PASSWORD not in result.stdout + result.stderr
        assert await seconds_until(client, "/auth/me", bearer(token), [401]) < REVOCATION_BOUND
        async with client.post("/auth/refresh") as resp:
            assert resp.status == 401
        body = {"email": "forgetful@example.com", "password": PASSWORD}
        async with client.post("/auth/login", json=body) as resp:
            assert resp.status == 401
        await login(client, "forgetful@example.com", NEW_PASSWORD)


@pytest.mark.slow
async def test_keys_generate_keeps_old_tokens_valid_and_signs_new_ones_with_the_new_key(stack: Stack) -> None:
    """After `keys generate`, older tokens still work and new tokens carry the new kid within 2 s."""
    add_user(stack.config, "rotator@example.com")
    async with http_client(stack.gateway.url) as client:
        old = (await login(client, "rotator@example.com"))["access_token"]
        result = run_cli(stack.config, "keys", "generate", "--json")
        assert result.returncode == 0, result.stderr
        made = json.loads(result.stdout)
        assert jwt_parts(old)[0]["kid"] in made["kept"] and made["kid"] not in made["kept"]

        start = time.monotonic()
        new = (await login(client, "rotator@example.com"))["access_token"]
        while jwt_parts(new)[0]["kid"] != made["kid"] and time.monotonic() - start < 10:
            new = (await login(client, "rotator@example.com"))["access_token"]
        assert time.monotonic() - start < 2.0
        assert jwt_parts(new)[0]["kid"] == made["kid"]
        assert await status_of(client, "/auth/me", bearer(old)) == 200
        assert await status_of(client, "/auth/me", bearer(new)) == 200


@pytest.mark.slow
def test_real_program_exit_codes_and_one_line_on_stderr(stack: Stack, tmp_path: Path) -> None:
    """`python -m gateway` exits 1 for an unknown user, 2 for bad usage or config, one line each."""
    unknown = run_cli(stack.config, "users", "disable", "nobody@example.com")
    assert (unknown.returncode, unknown.stderr) == (1, "gateway: no user nobody@example.com\n")
    usage = run_cli(stack.config, "sessions", "revoke")
    assert usage.returncode == 2 and len(usage.stderr.splitlines()) == 1
    assert "SESSION_ID --user is required" in usage.stderr
    bad = tmp_path / "bad.toml"
    bad.write_text('[tokens]\naccess_ttl = "five"\n')
    config_error = run_cli(bad, "users", "list")
    assert config_error.returncode == 2 and config_error.stdout == ""
    problems = [line for line in config_error.stderr.splitlines() if "[tokens].access_ttl" in line]
    assert len(problems) == 1 and '"five"' in problems[0]


# ---- in-process: exit codes, usage, passwords ------------------------------------------------------


@pytest.mark.parametrize(
    ("args", "stdin", "message"),
    [
        (["users", "disable", "ghost@example.com"], "", "gateway: no user ghost@example.com"),
        (["users", "enable", "ghost@example.com"], "", "gateway: no user ghost@example.com"),
        (["users", "set-roles", "ghost@example.com", "admin"], "", "gateway: no user ghost@example.com"),
        (
            ["users", "set-password", "ghost@example.com", "--password-stdin"],
            PASSWORD,
            "gateway: no user ghost@example.com",
        ),
        (["sessions", "list", "--user", "ghost@example.com"], "", "gateway: no user ghost@example.com"),
        (["sessions", "revoke", "--user", "ghost@example.com"], "", "gateway: no user ghost@example.com"),
        (["sessions", "revoke", "0123abcd"], "", "gateway: no session 0123abcd"),
        (
            ["users", "add", "weak@example.com", "--password-stdin"],
            "short",
            "gateway: password must be at least 15 characters",
        ),
        (
            ["users", "add", "not-an-email", "--password-stdin"],
            PASSWORD,
            "gateway: email is not a valid email address",
        ),
    ],
    ids=[
        "disable",
        "enable",
        "set-roles",
        "set-password",
        "sessions-list",
        "revoke-user",
        "revoke-id",
        "weak-password",
        "bad-email",
    ],
)
def test_failed_actions_exit_1_with_one_line(
    config: Path,
    capsys: pytest.CaptureFixture[str],
    monkeypatch: pytest.MonkeyPatch,
    args: list[str],
    stdin: str,
    message: str,
) -> None:
    """An action the domain refuses (unknown user or session, weak password, bad email) exits 1, one line."""
    monkeypatch.setattr("sys.stdin", io.StringIO(stdin))
    assert main(config, *args) == 1
    assert stderr_lines(capsys) == [message]


def test_adding_an_existing_user_exits_1(
    config: Path, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    """`users add` of an email that exists (in any case) fails with exit 1 before reading a password."""
    monkeypatch.setattr("sys.stdin", io.StringIO(PASSWORD + "\n"))
    assert main(config, "users", "add", "twice@example.com", "--password-stdin") == 0
    capsys.readouterr()
    stdin = io.StringIO(PASSWORD + "\n")
    monkeypatch.setattr("sys.stdin", stdin)
    assert main(config, "users", "add", "Twice@Example.com", "--password-stdin") == 1
    assert stderr_lines(capsys) == ["gateway: a user twice@example.com already exists"]
    assert stdin.read() == PASSWORD + "\n"  # refused before the password was read


@pytest.mark.parametrize(
    "args",
    [
        ["users"],
        ["users", "frobnicate"],
        ["users", "add"],
        ["sessions", "revoke"],
        ["sessions", "revoke", "0123abcd", "--user", "a@example.com"],
        ["users", "set-roles", "a@example.com", "ops,admin"],
        ["users", "set-roles", "a@example.com", " admin"],
        ["keys", "generate", "--prune=yes"],
    ],
    ids=[
        "no-command",
        "unknown-command",
        "no-email",
        "revoke-nothing",
        "revoke-both",
        "comma",
        "padding",
        "junk",
    ],
)
def test_bad_usage_exits_2_with_one_line(
    config: Path, capsys: pytest.CaptureFixture[str], args: list[str]
) -> None:
    """Wrong arguments, and roles that would change meaning in a comma-separated header, exit 2, one line."""
    assert main(config, *args) == 2
    lines = stderr_lines(capsys)
    assert len(lines) == 1 and "error" in lines[0]


def test_bad_or_missing_config_exits_2_naming_the_problem(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """A missing file or a bad key exits 2 before anything is opened, naming the key."""
    assert main(tmp_path / "missing.toml", "users", "list") == 2
    assert "cannot read the file" in capsys.readouterr().err
    bad = tmp_path / "bad.toml"
    bad.write_text('[tokens]\nacess_ttl = "5m"\n')
    assert main(bad, "users", "list") == 2
    err = capsys.readouterr().err
    assert "[tokens].acess_ttl" in err and "unknown key" in err
    assert not (tmp_path / "gateway.db").exists()


@pytest.mark.parametrize(
    "args",
    [
        ["users", "add", "eve@example.com", PASSWORD],
        ["users", "add", "eve@example.com", f"--password={PASSWORD}"],
        ["users", "add", "eve@example.com", "--password", PASSWORD],
        ["users", "add", "eve@example.com", "--role", "admin", PASSWORD, "--password-stdin"],
        ["users", "set-password", "eve@example.com", PASSWORD],
    ],
    ids=["positional", "option-equals", "option", "with-stdin-flag", "set-password"],
)
def test_password_on_the_command_line_is_refused(
    config: Path, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch, args: list[str]
) -> None:
    """A password in argv is refused with exit 2, never echoed, and nothing is created."""
    monkeypatch.setattr("sys.stdin", io.StringIO(PASSWORD + "\n"))
    assert main(config, *args) == 2
    err = capsys.readouterr().err
    assert len(err.splitlines()) == 1 and "--password-stdin" in err and PASSWORD not in err
    assert main(config, "users", "list", "--json") == 0
    assert json.loads(capsys.readouterr().out) == []


def test_without_a_terminal_the_password_must_come_from_password_stdin(
    config: Path, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    """Piped stdin without --password-stdin exits 2 with a line saying to use it; nothing is created."""
    monkeypatch.setattr("sys.stdin", io.StringIO(PASSWORD + "\n"))
    assert main(config, "users", "add", "pipe@example.com") == 2
    assert stderr_lines(capsys) == [
        "gateway users add: error: standard input is not a terminal:"
        " pipe the password in with --password-stdin"
    ]
    monkeypatch.setattr("sys.stdin", io.StringIO(""))
    assert main(config, "users", "add", "pipe@example.com", "--password-stdin") == 2
    assert "empty line" in capsys.readouterr().err
    assert main(config, "users", "list", "--json") == 0
    assert json.loads(capsys.readouterr().out) == []


class FakeTerminal(io.StringIO):
    def isatty(self) -> bool:
        return True


@pytest.mark.parametrize(("second", "status"), [(PASSWORD, 0), (NEW_PASSWORD, 2)], ids=["match", "mismatch"])
def test_terminal_prompt_asks_twice_and_must_match(
    config: Path,
    capsys: pytest.CaptureFixture[str],
    monkeypatch: pytest.MonkeyPatch,
    second: str,
    status: int,
) -> None:
    """On a terminal the password is prompted for (hidden) twice; a mismatch exits 2 and creates nothing."""
    answers = iter([PASSWORD, second])
    prompts: list[str] = []
    monkeypatch.setattr("sys.stdin", FakeTerminal())
    monkeypatch.setattr(getpass, "getpass", lambda prompt="": prompts.append(prompt) or next(answers))
    assert main(config, "users", "add", "tty@example.com", "--role", "admin") == status
    assert len(prompts) == 2
    capsys.readouterr()
    assert main(config, "users", "list", "--json") == 0
    assert [u["email"] for u in json.loads(capsys.readouterr().out)] == (
        ["tty@example.com"] if status == 0 else []
    )


def test_json_output_on_every_subcommand(
    config: Path, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    """Every users/sessions/keys subcommand prints parseable JSON with --json."""
    monkeypatch.setattr("sys.stdin", io.StringIO(PASSWORD + "\n" + NEW_PASSWORD + "\n"))
    email = "json@example.com"
    commands = [
        ["users", "add", email, "--password-stdin"],
        ["users", "list"],
        ["users", "disable", email],
        ["users", "enable", email],
        ["users", "set-roles", email, "a", "b"],
        ["users", "set-password", email, "--password-stdin"],
        ["sessions", "list"],
        ["sessions", "list", "--user", email],
        ["sessions", "revoke", "--user", email],
        ["keys", "generate"],
    ]
    for args in commands:
        assert main(config, *args, "--json") == 0, args
        json.loads(capsys.readouterr().out)


def test_keys_generate_prune_drops_only_keys_retired_past_token_lifetime(
    config: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """--prune drops keys retired over access_ttl+leeway ago, keeping the rest and the rotation secret."""
    key_file = config.parent / "keys" / "signing.key"
    ensure_key_file(key_file, "HS256")
    generate_key(key_file, "HS256")
    generate_key(key_file, "HS256")
    data = json.loads(key_file.read_text())
    now = time.time()
    # k0 retired (k1 created) an hour ago: nothing it signed can be alive. k1 retired (k2 created)
    # a minute ago: its tokens (5 min TTL) are still alive. k2 signs until now.
    for entry, age in zip(data["keys"], (7200, 3600, 60), strict=True):
        entry["created_at"] = now - age
    key_file.write_text(json.dumps(data))
    k0, k1, k2 = (e["kid"] for e in data["keys"])
    secret = KeyRing(key_file, "HS256").rotation_secret

    assert main(config, "keys", "generate", "--prune", "--json") == 0
    made = json.loads(capsys.readouterr().out)
    assert made["pruned"] == [k0] and made["kept"] == [k1, k2]
    ring = KeyRing(key_file, "HS256")
    assert list(ring.keys) == [k1, k2, made["kid"]] and ring.current.kid == made["kid"]
    assert ring.rotation_secret == secret  # in-grace refresh retries still get the same successor


def test_keys_generate_refuses_a_key_file_of_another_algorithm(
    config: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """With tokens.algorithm changed, `keys generate` exits 2 and leaves the key file untouched."""
    key_file = config.parent / "keys" / "signing.key"
    ensure_key_file(key_file, "HS256")
    before = key_file.read_bytes()
    config.write_text(config.read_text() + '\n[tokens]\nalgorithm = "EdDSA"\n')
    assert main(config, "keys", "generate") == 2
    lines = stderr_lines(capsys)
    assert len(lines) == 1 and "EdDSA" in lines[0]
    assert key_file.read_bytes() == before


def test_key_ring_picks_up_a_new_key_on_use_and_survives_a_broken_file(tmp_path: Path) -> None:
    """A running ring signs with a new key within RELOAD_INTERVAL, and keeps its keys if the file breaks."""
    now = [1000.0]
    key_file = tmp_path / "signing.key"
    ensure_key_file(key_file, "HS256")
    ring = KeyRing(key_file, "HS256", clock=lambda: now[0])
    old = ring.current.kid
    new = generate_key(key_file, "HS256").kid
    assert ring.current.kid == old  # not re-checked yet
    now[0] += 1.0
    assert ring.current.kid == new and set(ring.keys) == {old, new}
    key_file.write_text("{not json")
    now[0] += 1.0
    assert ring.current.kid == new and set(ring.keys) == {old, new}


def test_set_roles_with_a_single_empty_role_clears_them(
    config: Path, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    """`users set-roles EMAIL ""` leaves the user with no roles (the documented way to clear them)."""
    monkeypatch.setattr("sys.stdin", io.StringIO(PASSWORD + "\n"))
    assert main(config, "users", "add", "bare@example.com", "--role", "admin", "--password-stdin") == 0
    capsys.readouterr()
    assert main(config, "users", "set-roles", "bare@example.com", "", "--json") == 0
    assert json.loads(capsys.readouterr().out)["roles"] == []
