"""Bytewax's multi-process cluster as the scale-out path: the same fleet through 1, 2 and 4 `flowattr
run` processes forming one cluster on this machine. With two cores shared by the broker, the bench and
the job, the ratios say whether the cluster's exchange of work between processes costs or pays, not
what more cores would give. Figures: out/bench/scale_out.json."""

from __future__ import annotations

import sys
from pathlib import Path
from typing import Any

from bench import at_rest, fleet
from bench.harness import guarded
from bench.throughput import answering, end_to_end

PROCESSES = (1, 2, 4)


def run(records: fleet.Records, workdir: Path, bootstrap: str) -> dict[str, Any]:
    figures: dict[str, Any] = {}
    for n in PROCESSES:
        guarded(f"kafka, {n} process(es)", lambda n=n: end_to_end(bootstrap, records, workdir, n, 600), figures)
    return figures


def render(record: dict[str, Any], rest: dict[str, Any] | None = None) -> str:
    figures = record["figures"]
    base = figures.get("kafka, 1 process(es)", {})
    rows = ["| processes | complete | wall s | CPU s (all processes) | flows per CPU second | answering flows/s "
            "| answering flows per CPU second | answering flows/s vs 1 process | CPU per flow vs 1 process "
            "| waiting: CPU s a wall second | Bytewax at rest: CPU s a wall second |",
            "|---:|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|"]
    for n in PROCESSES:
        x = figures.get(f"kafka, {n} process(es)", {})
        if "wall_s" not in x:
            rows.append(f"| {n} | {x.get('error', 'not measured')} | | | | | | | | | |")
            continue
        busy, base_busy = answering(x), answering(base)
        rate = busy["flows"] / busy["wall_s"] if busy and busy["wall_s"] else None
        base_rate = base_busy["flows"] / base_busy["wall_s"] if base_busy and base_busy["wall_s"] else None
        per_cpu = f"{busy['flows'] / busy['cpu_s']:,.0f}" if busy and busy["cpu_s"] else "-"
        speed = f"{rate / base_rate:.2f}x" if rate and base_rate else "-"
        cpu = (f"{(x['cpu_s'] / x['flows']) / (base['cpu_s'] / base['flows']):.2f}x"
               if base.get("cpu_s") and x["flows"] else "-")
        rows.append(f"| {n} | {'yes' if x['complete'] else 'no'} | {x['wall_s']:.1f} | {x['cpu_s']:.1f} "
                    f"| {x['flows'] / max(x['cpu_s'], 1e-9):,.0f} | {f'{rate:,.0f}' if rate else '-'} "
                    f"| {per_cpu} | {speed} | {cpu} | {_waiting_rate(x)} | {_rest_rate(rest, n)} |")
    return "\n".join([
        "## Scale out: 1, 2 and 4 processes", "",
        "The same pre-loaded fleet through N `flowattr run` processes forming one Bytewax cluster",
        "(`FLOWATTR_CLUSTER__ADDRESSES`, `FLOWATTR_CLUSTER__PROCESS_ID`), one worker each, on this machine's cores,",
        "shared with the broker and the bench. Wall time runs until the last lookup nothing answered has waited",
        "out the max wait, so the speed ratio is of the answering phase (first flow out -> 99% out): above 1 is",
        "faster. *CPU per flow vs 1 process* above 1 is the cluster's overhead (routing work between processes,",
        "one more runtime each). *Waiting* is the run's last phase, from 99% of the flows out to the last, with",
        "nothing left to read; *Bytewax at rest* is the same number of processes of a dataflow with nothing to do",
        "(`bench/at_rest.py`): what the runtime itself spends a second.", "",
        *rows, ""])


def _waiting_rate(run: dict[str, Any]) -> str:
    waiting = (run.get("phases") or {}).get("waiting")
    return f"{waiting['cpu_s'] / waiting['wall_s']:.3f}" if waiting and waiting["wall_s"] else "-"


def _rest_rate(rest: dict[str, Any] | None, processes: int) -> str:
    rate = at_rest.cpu_per_s(rest, processes)
    return f"{rate:.3f}" if rate is not None else "-"


if __name__ == "__main__":
    sys.exit("run through `python -m bench.run` (it loads the topics once for every benchmark)")
