"""Bytewax with nothing to do: one input whose only partition never has anything and asks to be woken
once a second, run as 1, 2 and 4 processes of one cluster. What they spend a wall second is the
runtime's own floor, which a job pays for every second it waits (for the arrival clock, for a max
wait), whatever it holds. Figures: out/bench/at_rest.json."""

from __future__ import annotations

import os
import subprocess
import sys
import time
from datetime import datetime, timedelta, timezone
from typing import Any

import bytewax.operators as op
from bytewax.connectors.stdio import StdOutSink
from bytewax.dataflow import Dataflow
from bytewax.inputs import FixedPartitionedSource, StatefulSourcePartition

from bench.harness import REPO, cpu_seconds, free_port, guarded, save

PROCESSES = (1, 2, 4)


class _Nothing(StatefulSourcePartition):
    def next_batch(self) -> list:
        return []

    def next_awake(self) -> datetime:
        return datetime.now(timezone.utc) + timedelta(seconds=1)

    def snapshot(self) -> None:
        return None


class _NothingSource(FixedPartitionedSource):
    def list_parts(self) -> list[str]:
        return ["nothing"]

    def build_part(self, step_id, for_part, resume_state) -> _Nothing:
        return _Nothing()


flow = Dataflow("at_rest")
op.output("out", op.input("in", flow, _NothingSource()), StdOutSink())


def measure(processes: int, seconds: float = 30.0) -> dict[str, Any]:
    """CPU per wall second of `processes` `bytewax.run` processes of this dataflow, after their start-up."""
    cluster = []
    if processes > 1:
        cluster = ["-a", ";".join(f"127.0.0.1:{free_port()}" for _ in range(processes))]
    jobs = [subprocess.Popen(
        [sys.executable, "-m", "bytewax.run", "bench.at_rest:flow", *cluster, *(["-i", str(i)] if cluster else [])],
        cwd=REPO, env={**os.environ, "PYTHONPATH": str(REPO)}, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE,
        text=True) for i in range(processes)]
    try:
        time.sleep(5)  # past the imports, the runtime's start and the cluster's handshake
        cpu, wall = sum(cpu_seconds(j.pid) for j in jobs), time.monotonic()
        time.sleep(seconds)
        cpu, wall = sum(cpu_seconds(j.pid) for j in jobs) - cpu, time.monotonic() - wall
        running = all(j.poll() is None for j in jobs)
    finally:
        for j in jobs:
            j.kill()
        errors = [j.communicate()[1][-1000:] for j in jobs]
    result = {"processes": processes, "wall_s": wall, "cpu_s": cpu, "cpu_per_s": cpu / wall, "complete": running}
    if not running:
        result["error"] = " | ".join(e for e in errors if e)
    return result


def cpu_per_s(record: dict[str, Any] | None, processes: int) -> float | None:
    x = (record or {}).get("figures", {}).get(f"{processes} process(es)", {})
    return x.get("cpu_per_s") if x.get("complete") else None


def main() -> int:
    started = time.monotonic()
    figures: dict[str, Any] = {}
    for n in PROCESSES:
        guarded(f"{n} process(es)", lambda n=n: measure(n), figures)
    save("at_rest", figures, started)
    return 0


if __name__ == "__main__":
    sys.exit(main())
