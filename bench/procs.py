"""Processes the harness starts and what it reads about them from procfs.

Start (each in its own process group, output to a log file), wait until an HTTP URL answers, pin a
process tree to CPUs, read CPU time and memory of a process tree, stop. Only processes started
here are ever signalled, by their own process-group id.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import signal
import socket
import time
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from pathlib import Path

import aiohttp

PROC = Path("/proc")
CLK_TCK = os.sysconf("SC_CLK_TCK")


class StartError(Exception):
    """A server did not come up; the message says why and shows its log's tail."""


@dataclass
class Proc:
    name: str
    process: asyncio.subprocess.Process
    log: Path

    @property
    def pid(self) -> int:
        return self.process.pid

    @property
    def running(self) -> bool:
        return self.process.returncode is None

    def tail(self, lines: int = 15) -> str:
        try:
            text = self.log.read_text(errors="replace")
        except OSError:
            return ""
        return "\n".join(text.splitlines()[-lines:])


class Procs:
    """Every process the harness started, stopped together at the end."""

    def __init__(self) -> None:
        self.started: list[Proc] = []

    async def start(
        self, name: str, argv: list[str], log: Path, *, cwd: Path, env: Mapping[str, str] | None = None
    ) -> Proc:
        with log.open("ab") as out:
            process = await asyncio.create_subprocess_exec(
                *argv,
                stdin=asyncio.subprocess.DEVNULL,
                stdout=out,
                stderr=asyncio.subprocess.STDOUT,
                cwd=cwd,
                env=dict(env) if env is not None else None,
                start_new_session=True,
            )
        proc = Proc(name, process, log)
        self.started.append(proc)
        return proc

    async def stop_all(self) -> None:
        for proc in reversed(self.started):
            await stop(proc)
        self.started.clear()


async def stop(proc: Proc, grace: float = 10.0) -> None:
    """SIGTERM the process group the harness created for this process; SIGKILL after `grace`."""
    if proc.running:
        with contextlib.suppress(ProcessLookupError):
            os.killpg(proc.pid, signal.SIGTERM)
        try:
            await asyncio.wait_for(proc.process.wait(), grace)
        except TimeoutError:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(proc.pid, signal.SIGKILL)
            await proc.process.wait()
    # Children (nginx workers) may outlive a killed leader for a moment: take the group down too.
    with contextlib.suppress(ProcessLookupError, PermissionError):
        os.killpg(proc.pid, signal.SIGKILL)


async def wait_http(
    http: aiohttp.ClientSession,
    proc: Proc,
    url: str,
    timeout: float,
    headers: Mapping[str, str] | None = None,
) -> None:
    """Poll `url` until it answers 200; fail early, with the log's tail, if the process exits."""
    deadline = time.monotonic() + timeout
    last = "no answer"
    while time.monotonic() < deadline:
        if not proc.running:
            tail = proc.tail()
            last = tail.splitlines()[-1] if tail else "no output"
            raise StartError(
                f"{proc.name} exited with status {proc.process.returncode}: {last}\n"
                f"last lines of its output ({proc.log}):\n{tail}"
            )
        try:
            async with http.get(url, headers=headers, timeout=aiohttp.ClientTimeout(total=2)) as resp:
                await resp.read()
                if resp.status == 200:
                    return
                last = f"HTTP {resp.status}"
        except (aiohttp.ClientError, TimeoutError) as exc:
            last = type(exc).__name__
        await asyncio.sleep(0.1)
    raise StartError(f"{proc.name} did not answer 200 on {url} within {timeout:.0f}s ({last})")


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
        return port


# --- procfs ------------------------------------------------------------------------------------


def _stat_fields(pid: int) -> list[str] | None:
    """Fields of /proc/<pid>/stat after the command name (which may contain spaces)."""
    try:
        return (PROC / str(pid) / "stat").read_text().rpartition(")")[2].split()
    except OSError:
        return None


def tree(pid: int) -> list[int]:
    """`pid` and all its descendants (nginx master + worker, a gateway supervisor + workers)."""
    children: dict[int, list[int]] = {}
    for entry in os.scandir(PROC):
        if entry.name.isdigit():
            fields = _stat_fields(int(entry.name))
            if fields is not None:
                children.setdefault(int(fields[1]), []).append(int(entry.name))
    found, todo = [], [pid]
    while todo:
        current = todo.pop()
        found.append(current)
        todo.extend(children.get(current, ()))
    return found


def cpu_seconds(pid: int) -> float:
    """utime + stime of the process tree, in seconds."""
    ticks = 0
    for member in tree(pid):
        fields = _stat_fields(member)
        if fields is not None:
            ticks += int(fields[11]) + int(fields[12])  # stat fields 14 and 15
    return ticks / CLK_TCK


def memory_kib(pid: int, key: str = "VmRSS") -> int:
    """Sum of a /proc/<pid>/status memory line (VmRSS, VmHWM) over the process tree, in KiB."""
    total = 0
    for member in tree(pid):
        try:
            lines = (PROC / str(member) / "status").read_text().splitlines()
        except OSError:
            continue
        for line in lines:
            if line.startswith(key + ":"):
                total += int(line.split()[1])
    return total


def reset_peak(pid: int) -> bool:
    """Reset VmHWM of the tree (writing 5 to clear_refs, Linux >= 4.0); False when not allowed."""
    ok = True
    for member in tree(pid):
        try:
            (PROC / str(member) / "clear_refs").write_text("5")
        except OSError:
            ok = False
    return ok


def pin_helpers(members: Iterable[int], cpus: Iterable[int]) -> None:
    """Set the affinity of every thread of these processes except each one's main thread.

    Used to let worker threads (argon2 hashing, SQLite) use any CPU while the event loop stays
    put. Threads started later inherit their creator's affinity, so call it repeatedly.
    """
    allowed = set(cpus)
    for member in members:
        try:
            tids = [int(t) for t in os.listdir(PROC / str(member) / "task")]
        except OSError:
            continue
        for tid in tids:
            if tid != member:
                with contextlib.suppress(OSError):
                    os.sched_setaffinity(tid, allowed)


def pin(pid: int, cpus: Iterable[int]) -> None:
    """Set the CPU affinity of every thread of the tree (what `taskset -a -p` does).

    Threads created later inherit it from their creator, so pinning once after start is enough.
    """
    allowed = set(cpus)
    if not allowed:
        return
    for member in tree(pid):
        try:
            tids = os.listdir(PROC / str(member) / "task")
        except OSError:
            continue
        for tid in tids:
            with contextlib.suppress(OSError):
                os.sched_setaffinity(int(tid), allowed)
