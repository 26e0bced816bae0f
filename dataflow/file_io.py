"""File mode: input messages are lines of NDJSON files (each line one record or a batch), outputs are
NDJSON files with one record per line, one file per worker so that processes never share a file."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import orjson
from bytewax.inputs import FixedPartitionedSource, StatefulSourcePartition
from bytewax.outputs import DynamicSink, StatelessSinkPartition

from dataflow.records import FORWARDED, IP_EVENTS, RAW, Origin
from dataflow.routing import Message

# The file names an input folder holds, and the topic each stands for.
INPUT_FILES = {"flows.ndjson": RAW, "forwarded.ndjson": FORWARDED, "ip_events.ndjson": IP_EVENTS}
LINES_PER_BATCH = 500


class LinesPartition(StatefulSourcePartition[Message, int]):
    def __init__(self, path: Path, role: str, resume_line: int):
        self._path = str(path)
        self._role = role
        self._file = open(path, "rb")
        self._line = 0
        for _ in range(resume_line):
            self._file.readline()
            self._line += 1

    def next_batch(self) -> list[Message]:
        batch = []
        for _ in range(LINES_PER_BATCH):
            line = self._file.readline()
            if not line:
                if not batch:
                    raise StopIteration()
                break
            self._line += 1
            value = line.rstrip(b"\r\n")
            if value:
                batch.append(Message(value, Origin(self._path, 0, self._line, self._role)))
        return batch

    def snapshot(self) -> int:
        return self._line

    def close(self) -> None:
        self._file.close()


class InputFolder(FixedPartitionedSource[Message, int]):
    """Each present input file is one partition, read in order by one worker."""

    def __init__(self, folder: str | Path):
        self.folder = Path(folder)

    def list_parts(self) -> list[str]:
        return [name for name in INPUT_FILES if (self.folder / name).exists()]

    def build_part(self, step_id: str, for_part: str, resume_state: int | None) -> LinesPartition:
        return LinesPartition(self.folder / for_part, INPUT_FILES[for_part], resume_state or 0)


class LinesWriter(StatelessSinkPartition[Any]):
    def __init__(self, path: Path):
        path.parent.mkdir(parents=True, exist_ok=True)
        self._file = open(path, "ab")

    def write_batch(self, records: list[dict[str, Any]]) -> None:
        self._file.write(b"".join(orjson.dumps(r) + b"\n" for r in records))
        self._file.flush()

    def close(self) -> None:
        self._file.close()


class OutputFiles(DynamicSink[Any]):
    """Records to `<folder>/<stem>-<worker>.ndjson`."""

    def __init__(self, folder: str | Path, stem: str):
        self.folder = Path(folder)
        self.stem = stem

    def build(self, step_id: str, worker_index: int, worker_count: int) -> LinesWriter:
        return LinesWriter(self.folder / f"{self.stem}-{worker_index}.ndjson")


def read_outputs(folder: str | Path, stem: str) -> list[dict[str, Any]]:
    """Every record the workers wrote under `stem`."""
    records = []
    for path in sorted(Path(folder).glob(f"{stem}-*.ndjson")):
        with open(path, "rb") as f:
            records.extend(orjson.loads(line) for line in f if line.strip())
    return records
