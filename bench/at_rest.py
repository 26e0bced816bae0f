"""Bytewax with nothing to do: one input whose only partition never has anything and asks to be woken
once a second. What its process spends a wall second is the runtime's own floor, which a job pays for
every second it waits (for the arrival clock, for a max wait), whatever it holds."""

from __future__ import annotations

import subprocess
import sys
import time
from datetime import datetime, timedelta, timezone
from typing import Any

import bytewax.operators as op
from bytewax.connectors.stdio import StdOutSink
from bytewax.dataflow import Dataflow
from bytewax.inputs import FixedPartitionedSource, StatefulSourcePartition

from bench.harness import REPO, cpu_seconds


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


def measure(seconds: float = 30.0) -> dict[str, Any]:
    """CPU per wall second of a `bytewax.run` process of this dataflow, after its start-up."""
    job = subprocess.Popen([sys.executable, "-m", "bytewax.run", "bench.at_rest:flow"], cwd=REPO,
                           stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
    try:
        time.sleep(3)  # past the imports and the runtime's start
        cpu, wall = cpu_seconds(job.pid), time.monotonic()
        time.sleep(seconds)
        cpu, wall = cpu_seconds(job.pid) - cpu, time.monotonic() - wall
        running = job.poll() is None
    finally:
        job.kill()
        _, err = job.communicate()
    result = {"wall_s": wall, "cpu_s": cpu, "cpu_per_s": cpu / wall, "complete": running}
    if not running:
        result["error"] = err[-2000:]
    return result
