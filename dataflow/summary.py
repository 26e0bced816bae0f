"""The run summary: where every input record went, and, when the truth is known, how many answers
were wrong. Counted from the outputs themselves, so the numbers are the ones a consumer would see."""

from __future__ import annotations

from collections import Counter
from pathlib import Path
from typing import Any, Iterable, Mapping

from dataflow.file_io import read_outputs
from dataflow.records import ATTRIBUTED_OUTCOME


def outcome_counts(attributed: Iterable[dict[str, Any]]) -> Counter[str]:
    counts: Counter[str] = Counter()
    for f in attributed:
        counts[f["outcome"] if f["reason"] is None else f"unattributed.{f['reason']}"] += 1
    return counts


def misattributed(attributed: Iterable[dict[str, Any]], truth: Mapping[str, str | None]) -> list[dict[str, Any]]:
    """Answers that name a workload other than the one that owned the remote address at the start."""
    return [
        f
        for f in attributed
        if f["outcome"] == ATTRIBUTED_OUTCOME and f["flow_id"] in truth and truth[f["flow_id"]] != f["remote_workload"]
    ]


def file_run_summary(output_dir: str | Path, tally: Mapping[str, int], truth=None) -> dict[str, Any]:
    answers = read_outputs(output_dir, "attributed")
    counts = outcome_counts(answers)
    forwarded = sum(_count_lines(p) for p in Path(output_dir).glob("forward.*.ndjson"))
    dead = read_outputs(output_dir, "dlq")
    summary: dict[str, Any] = {
        "records in": sum(v for k, v in tally.items() if k.startswith("in.")),
        "flows answered": len(answers),
        "attributed": counts["attributed"],
        "unattributed": {k.split(".", 1)[1]: v for k, v in sorted(counts.items()) if k.startswith("unattributed.")},
        "external": counts["external"],
        "forwarded": forwarded,
        "dead-lettered": {r: n for r, n in sorted(Counter(d["reason"] for d in dead).items())},
        "absorbed": {k.split(".", 1)[1]: v for k, v in sorted(tally.items()) if k.startswith("absorbed.")},
    }
    if truth is not None:
        wrong = misattributed(answers, truth)
        summary["misattributed"] = len(wrong)
    accounted = (
        len(answers) + forwarded + len(dead) + sum(summary["absorbed"].values())
    )
    summary["unaccounted"] = summary["records in"] - accounted
    return summary


def _count_lines(path: Path) -> int:
    with open(path, "rb") as f:
        return sum(1 for line in f if line.strip())


def render(summary: Mapping[str, Any]) -> str:
    lines = []
    for name, value in summary.items():
        if isinstance(value, Mapping):
            total = sum(value.values())
            detail = ", ".join(f"{k} {v}" for k, v in value.items())
            lines.append(f"  {name:<16} {total:>9}" + (f"   ({detail})" if detail else ""))
        else:
            lines.append(f"  {name:<16} {value:>9}")
    return "\n".join(lines)
