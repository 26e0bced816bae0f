"""Figures of the fault and hostile-input tests, for docs/RELIABILITY.md: each test that injects a fault
records what it checked and what it counted; the session writes them to out/reliability.json (merged
with earlier runs, a test's new row replacing its old one) and scripts/reliability_table.py renders them."""

from __future__ import annotations

import json
import os
from pathlib import Path

FIGURES = Path(os.environ.get("FLOWATTR_RELIABILITY_JSON", Path(__file__).resolve().parents[1] / "out/reliability.json"))
COLUMNS = ("messages_in", "answered", "forwarded", "dead_lettered", "lost", "repeats_disagreeing")


class Figures:
    def __init__(self) -> None:
        self.rows: list[dict] = []

    def record(self, test: str, fault: str, checked: str, **counts: int) -> None:
        missing = set(COLUMNS) - set(counts)
        if missing:
            raise ValueError(f"figures for {test} lack {sorted(missing)}")
        self.rows.append({"test": test, "fault": fault, "checked": checked, **counts})

    def save(self) -> None:
        if not self.rows:
            return
        try:
            old = json.loads(FIGURES.read_text())
        except (OSError, ValueError):
            old = []
        mine = {(r["test"], r["fault"]) for r in self.rows}
        merged = [r for r in old if (r["test"], r["fault"]) not in mine] + self.rows
        FIGURES.parent.mkdir(parents=True, exist_ok=True)
        FIGURES.write_text(json.dumps(merged, indent=1) + "\n")
