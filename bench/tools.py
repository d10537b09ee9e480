"""External tools (wrk, nginx, Caddy): find them, install the missing ones, describe the machine."""

from __future__ import annotations

import importlib.metadata
import os
import platform
import shutil
import subprocess
import sys
from pathlib import Path

# tool -> Debian package that provides it
PACKAGES = {"wrk": "wrk", "nginx": "nginx-light", "caddy": "caddy"}


def find(tool: str) -> str | None:
    """`shutil.which`, also looking in the `sbin` sibling of every `bin` on PATH (nginx lives there)."""
    dirs = os.environ.get("PATH", os.defpath).split(os.pathsep)
    extra = [str(Path(d).parent / "sbin") for d in dirs if Path(d).name == "bin"]
    return shutil.which(tool, path=os.pathsep.join(dirs + extra))


def ensure(tools: list[str]) -> dict[str, str | None]:
    """Path of each tool; missing ones are installed with apt-get when running as root."""
    missing = [tool for tool in tools if find(tool) is None]
    installed = False
    if missing:
        packages = [PACKAGES[tool] for tool in missing]
        apt = shutil.which("apt-get")
        if os.geteuid() == 0 and apt is not None:
            print(f"bench: installing {' '.join(packages)} (apt-get)", file=sys.stderr, flush=True)
            env = {**os.environ, "DEBIAN_FRONTEND": "noninteractive"}
            install = [apt, "install", "-y", "-qq", "--no-install-recommends", *packages]
            for argv in ([apt, "update", "-qq"], install):
                subprocess.run(argv, stdout=subprocess.DEVNULL, env=env, check=False, timeout=1200)
            installed = True
        else:
            why = "not running as root" if os.geteuid() != 0 else "apt-get not found"
            print(
                f"bench: missing {', '.join(missing)} and cannot install them ({why}).\n"
                f"       Install with: sudo apt-get install -y {' '.join(packages)}\n"
                "       The scenarios that need them are skipped.",
                file=sys.stderr,
                flush=True,
            )
    found = {tool: find(tool) for tool in tools}
    still = [tool for tool, path in found.items() if path is None]
    if installed and still:
        print(f"bench: still missing after install: {', '.join(still)}", file=sys.stderr, flush=True)
    return found


def _first_line(argv: list[str]) -> str:
    try:
        done = subprocess.run(argv, capture_output=True, text=True, timeout=10, check=False)
    except (OSError, subprocess.TimeoutExpired):
        return "?"
    text = (done.stdout + done.stderr).strip()
    return text.splitlines()[0] if text else "?"


def versions(paths: dict[str, str | None]) -> dict[str, str]:
    out: dict[str, str] = {}
    if paths.get("nginx"):
        out["nginx"] = _first_line([str(paths["nginx"]), "-v"]).split("/")[-1]
    if paths.get("caddy"):
        out["caddy"] = _first_line([str(paths["caddy"]), "version"]).split()[0]
    if paths.get("wrk"):
        out["wrk"] = _first_line([str(paths["wrk"]), "-v"]).split()[1]
    return out


def machine() -> str:
    """One line: CPU model, cores, memory, kernel, Python, aiohttp and uvloop versions."""
    model = "unknown CPU"
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                model = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    mem = "? GiB"
    try:
        for line in Path("/proc/meminfo").read_text().splitlines():
            if line.startswith("MemTotal:"):
                mem = f"{int(line.split()[1]) / 1024 / 1024:.1f} GiB"
    except OSError:
        pass
    import aiohttp

    try:
        loop = f", uvloop {importlib.metadata.version('uvloop')}"
    except importlib.metadata.PackageNotFoundError:
        loop = ", no uvloop"
    return (
        f"{model}, {os.cpu_count()} cores, {mem} RAM, {platform.system()} {platform.release()}, "
        f"Python {platform.python_version()}, aiohttp {aiohttp.__version__}{loop}"
    )


def git_commit(root: Path) -> str:
    """Short HEAD commit, with "+dirty" when the working tree has uncommitted changes."""
    git = shutil.which("git")
    if git is None:
        return "unknown"
    try:
        head = subprocess.run(
            [git, "rev-parse", "--short", "HEAD"], cwd=root, capture_output=True, text=True, timeout=10
        )
        dirty = subprocess.run(
            [git, "status", "--porcelain", "--untracked-files=no"],
            cwd=root,
            capture_output=True,
            text=True,
            timeout=10,
        )
    except (OSError, subprocess.TimeoutExpired):
        return "unknown"
    commit = head.stdout.strip() or "unknown"
    return commit + ("+dirty" if dirty.stdout.strip() else "")
