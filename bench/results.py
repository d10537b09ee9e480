"""Per-round measurements, their medians, and the notes (skips, errors) that go with them."""

from __future__ import annotations

import statistics
from dataclasses import dataclass, field

# scenario key -> what it measures (the table's row label)
SCENARIOS = {
    "a": "upstream direct",
    "b": "nginx",
    "c": "Caddy",
    "d": "gateway, public route",
    "e": "gateway, signed in (access cookie)",
    "f": "gateway, signed in (Bearer)",
    "g": "gateway, transparent refresh on every request",
    "h": "streaming through the gateway vs direct",
    "i": "signed-in p99 during a login storm vs idle",
    "j": "gateway memory with idle keep-alive connections",
    "k": "gateway on PostgreSQL, transparent refresh on every request",
    "l": "gateway on PostgreSQL, signed-in p99 during a login storm vs idle",
}


@dataclass
class Results:
    samples: dict[str, list[dict[str, float]]] = field(default_factory=dict)
    notes: dict[str, list[str]] = field(default_factory=dict)

    def add(self, key: str, metrics: dict[str, float]) -> None:
        self.samples.setdefault(key, []).append(metrics)

    def note(self, key: str, text: str) -> None:
        notes = self.notes.setdefault(key, [])
        if text not in notes:
            notes.append(text)

    def rounds(self, key: str) -> int:
        return len(self.samples.get(key, ()))

    def median(self, key: str, metric: str) -> float | None:
        values = [s[metric] for s in self.samples.get(key, ()) if metric in s and s[metric] == s[metric]]
        return statistics.median(values) if values else None

    def span(self, key: str, metric: str) -> tuple[float, float] | None:
        values = [s[metric] for s in self.samples.get(key, ()) if metric in s and s[metric] == s[metric]]
        return (min(values), max(values)) if values else None

    def total(self, key: str, metric: str) -> float:
        return sum(s.get(metric, 0.0) for s in self.samples.get(key, ()))
