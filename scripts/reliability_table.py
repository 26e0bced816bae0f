"""Renders the fault tests' own figures (out/reliability.json, written by the tests) as the table of
docs/RELIABILITY.md, between its markers; the prose around the table is kept as it is.

    python scripts/reliability_table.py [FIGURES_JSON] [DOC]      (make reliability runs the tests first)"""

import json
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
BEGIN, END = "<!-- figures: begin -->", "<!-- figures: end -->"
HEADER = ("fault or hostile input", "test", "checked", "messages in", "answered", "forwarded", "dead-lettered",
          "lost", "repeats that disagree")
COLUMNS = ("messages_in", "answered", "forwarded", "dead_lettered", "lost", "repeats_disagreeing")


def table(rows: list[dict]) -> str:
    lines = ["| " + " | ".join(HEADER) + " |", "|" + "---|" * 3 + "---:|" * len(COLUMNS)]
    for r in rows:
        counts = ["—" if r[c] is None else f"{r[c]:,}" for c in COLUMNS]  # None: not counted by that test
        lines.append(f"| {r['fault']} | `{r['test']}` | {r['checked']} | " + " | ".join(counts) + " |")
    return "\n".join(lines)


def main(argv: list[str]) -> int:
    figures = Path(argv[1]) if len(argv) > 1 else ROOT / "out/reliability.json"
    doc = Path(argv[2]) if len(argv) > 2 else ROOT / "docs/RELIABILITY.md"
    rows = sorted(json.loads(figures.read_text()), key=lambda r: (r["test"], r["fault"]))
    text = doc.read_text()
    head, _, rest = text.partition(BEGIN)
    _, _, tail = rest.partition(END)
    doc.write_text(f"{head}{BEGIN}\n{table(rows)}\n{END}{tail}")
    print(f"{doc}: {len(rows)} rows from {figures}")
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv))
