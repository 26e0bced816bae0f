"""Stopping the job cleanly: SIGTERM (a pod being stopped) or Ctrl-C ends every input as if it had
reached its end, so what was read is decided, written and flushed, and the process exits 0. A second
signal interrupts at once."""

from __future__ import annotations

import signal
import threading
from typing import Any

from bytewax.inputs import FixedPartitionedSource, StatefulSourcePartition


class Shutdown:
    """Set by the first SIGTERM or SIGINT; the inputs end at their next batch."""

    def __init__(self) -> None:
        self.requested = threading.Event()

    def install(self) -> None:
        """From the main thread, before the run."""
        for signum in (signal.SIGTERM, signal.SIGINT):
            signal.signal(signum, self._on_signal)

    def _on_signal(self, signum, frame) -> None:
        if self.requested.is_set():
            raise KeyboardInterrupt
        self.requested.set()

    def source(self, inner: FixedPartitionedSource) -> FixedPartitionedSource:
        return _EndingSource(inner, self.requested)


class _EndingSource(FixedPartitionedSource):
    def __init__(self, inner: FixedPartitionedSource, requested: threading.Event):
        self.inner = inner
        self.requested = requested

    def list_parts(self) -> list[str]:
        return self.inner.list_parts()

    def build_part(self, step_id: str, for_part: str, resume_state: Any) -> StatefulSourcePartition:
        return _EndingPartition(self.inner.build_part(step_id, for_part, resume_state), self.requested)


class _EndingPartition(StatefulSourcePartition):
    def __init__(self, inner: StatefulSourcePartition, requested: threading.Event):
        self.inner = inner
        self.requested = requested

    def next_batch(self):
        if self.requested.is_set():
            raise StopIteration()
        return self.inner.next_batch()

    def next_awake(self):
        return self.inner.next_awake()

    def snapshot(self):
        return self.inner.snapshot()

    def close(self) -> None:
        self.inner.close()
