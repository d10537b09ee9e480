"""The run's tables (Markdown, printed and appended to bench/RESULTS.md) and the ratios against targets."""

from __future__ import annotations

import datetime
from pathlib import Path

from bench.results import SCENARIOS, Results

RESULTS_HEADER = """# Benchmark results

Each `make bench` run (`python -m bench`) appends one section below: date, commit, machine, the
command line, and its tables. Figures are medians over the run's rounds; "CPU µs/req" is the CPU
time (user + system) of the process under test only, divided by the requests served. See
`bench/README.md` for what each scenario measures and how the processes are pinned to CPUs.
Runs with `--quick` are smoke runs: too short to compare against the targets.
"""

# scenarios needed, label, value, target text, target number, True when the target is an upper bound
Ratio = tuple[str, str, float | None, str, float, bool]


def _num(value: float | None, digits: int = 1) -> str:
    if value is None:
        return "—"
    if abs(value) >= 1000:
        return f"{value:,.0f}"
    return f"{value:.{digits}f}"


def _div(a: float | None, b: float | None) -> float | None:
    return a / b if a is not None and b else None


def load_table(results: Results, keys: str) -> list[str]:
    rows = [
        "| | contender | req/s | p50 ms | p99 ms | CPU µs/req | CPU µs/req range |",
        "|---|---|--:|--:|--:|--:|--:|",
    ]
    for key in "abcdefg":
        if key not in keys:
            continue
        label = SCENARIOS[key] + (" (refreshes/s)" if key == "g" else "")
        span = results.span(key, "cpu_us")
        spread = f"{_num(span[0])}–{_num(span[1])}" if span and results.rounds(key) > 1 else ""
        m = results.median
        rows.append(
            f"| {key} | {label} | {_num(m(key, 'rps'), 0)} | {_num(m(key, 'p50_ms'), 2)}"
            f" | {_num(m(key, 'p99_ms'), 2)} | {_num(m(key, 'cpu_us'))} | {spread} |"
        )
    return rows


def stream_table(results: Results) -> list[str]:
    rows = [
        "| h: transfer | direct MB/s | gateway MB/s | gateway / direct | gateway RSS before → peak, MB |",
        "|---|--:|--:|--:|--:|",
    ]
    for kind in ("download", "upload"):
        direct = results.median("h", f"{kind}_direct_mb_s")
        through = results.median("h", f"{kind}_gateway_mb_s")
        base, peak = results.median("h", f"{kind}_base_mb"), results.median("h", f"{kind}_peak_mb")
        rows.append(
            f"| {kind} | {_num(direct, 0)} | {_num(through, 0)} | {_num(_div(through, direct), 2)}"
            f" | {_num(base)} → {_num(peak)} |"
        )
    return rows


def storm_table(results: Results) -> list[str]:
    m = results.median
    return [
        "| i: signed-in p99 idle, ms | during logins, ms | ratio | req/s idle → during"
        " | logins/s | login p50, ms |",
        "|--:|--:|--:|--:|--:|--:|",
        f"| {_num(m('i', 'idle_p99_ms'), 2)} | {_num(m('i', 'storm_p99_ms'), 2)}"
        f" | {_num(_div(m('i', 'storm_p99_ms'), m('i', 'idle_p99_ms')), 2)}"
        f" | {_num(m('i', 'idle_rps'), 0)} → {_num(m('i', 'storm_rps'), 0)}"
        f" | {_num(m('i', 'logins_per_s'))} | {_num(m('i', 'login_p50_ms'), 0)} |",
    ]


def memory_table(results: Results) -> list[str]:
    m = results.median
    return [
        "| j: idle keep-alive connections | gateway RSS before, MB | RSS holding them, MB | KiB per conn. |",
        "|--:|--:|--:|--:|",
        f"| {_num(m('j', 'connections'), 0)} | {_num(m('j', 'base_mb'))} | {_num(m('j', 'rss_mb'))}"
        f" | {_num(m('j', 'kib_per_conn'))} |",
    ]


def ratios(results: Results) -> list[Ratio]:
    m = results.median
    storm = _div(m("i", "storm_p99_ms"), m("i", "idle_p99_ms"))
    return [
        (
            "ed",
            "signed-in / public CPU per request (e / d)",
            _div(m("e", "cpu_us"), m("d", "cpu_us")),
            "≤ 1.15",
            1.15,
            True,
        ),
        (
            "ec",
            "signed-in / Caddy CPU per request (e / c)",
            _div(m("e", "cpu_us"), m("c", "cpu_us")),
            "≤ 1.25 (stretch 1.0)",
            1.25,
            True,
        ),
        (
            "h",
            "download gateway / direct (h)",
            _div(m("h", "download_gateway_mb_s"), m("h", "download_direct_mb_s")),
            "≥ 0.50",
            0.5,
            False,
        ),
        (
            "h",
            "upload gateway / direct (h)",
            _div(m("h", "upload_gateway_mb_s"), m("h", "upload_direct_mb_s")),
            "≥ 0.50",
            0.5,
            False,
        ),
        ("i", "storm p99 / idle p99 (i)", storm, "≤ 3", 3.0, True),
        ("j", "gateway RSS with idle connections, MB (j)", m("j", "rss_mb"), "< 200", 200.0, True),
        ("g", "transparent refreshes per second (g)", m("g", "rps"), "≥ 500", 500.0, False),
    ]


def verdict(value: float | None, limit: float, upper: bool) -> str:
    if value is None:
        return "—"
    if value <= limit if upper else value >= limit:
        return "met"
    return f"missed by {abs(value / limit - 1):.0%}"


def ratio_table(results: Results, keys: str) -> list[str]:
    rows = ["| ratio | value | target | |", "|---|--:|---|---|"]
    for needs, label, value, target, limit, upper in ratios(results):
        if not set(needs) <= set(keys):
            continue
        text = verdict(value, limit, upper)
        if value is not None and "stretch" in target and text == "met":
            text += ", stretch met" if value <= 1.0 else ", stretch not yet"
        digits = 2 if value is None or value < 10 else 1 if value < 100 else 0
        rows.append(f"| {label} | {_num(value, digits)} | {target} | {text} |")
    return rows


def render(results: Results, keys: str) -> str:
    parts: list[list[str]] = []
    if any(k in keys for k in "abcdefg"):
        parts.append(load_table(results, keys))
    if "h" in keys:
        parts.append(stream_table(results))
    if "i" in keys:
        parts.append(storm_table(results))
    if "j" in keys:
        parts.append(memory_table(results))
    if any(k in keys for k in "kl"):  # PostgreSQL next to SQLite
        from bench.postgres import backend_table

        parts.append(backend_table(results))
    table = ratio_table(results, keys)
    if len(table) > 2:
        parts.append(table)
    grouped: dict[str, list[str]] = {}  # the same note (a skip) for several scenarios: one line
    for key in keys:
        for text in results.notes.get(key, ()):
            grouped.setdefault(text, []).append(key)
    notes = [f"- ({', '.join(group)}) {text}" for text, group in grouped.items()]
    if notes:
        parts.append(["Notes:", "", *notes])
    return "\n\n".join("\n".join(part) for part in parts) + "\n"


def section(body: str, *, commit: str, command: str, settings: str, machine: str, versions: str) -> str:
    now = datetime.datetime.now(datetime.UTC).strftime("%Y-%m-%d %H:%M UTC")
    return (
        f"## {now} · commit {commit}\n\n"
        f"`{command}` · {settings}\n\n"
        f"Machine: {machine}" + (f"; {versions}" if versions else "") + "\n\n" + body
    )


def append(path: Path, text: str) -> None:
    existing = path.read_text() if path.exists() else ""
    if not existing.startswith("# Benchmark results"):
        existing = RESULTS_HEADER + existing
    path.write_text(existing.rstrip("\n") + "\n\n" + text.rstrip("\n") + "\n")
