"""File mode: input messages are lines of NDJSON files (each line one record or a batch, optionally led by
`ARRIVAL_MS<TAB>KEY<TAB>` as a recording of a topic keeps them), outputs are NDJSON files with one record
per line, one file per worker so that processes never share a file."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import msgspec
import orjson
from bytewax.inputs import FixedPartitionedSource, StatefulSourcePartition
from bytewax.outputs import DynamicSink, StatelessSinkPartition

from dataflow.clock import ENDED
from dataflow.entitlements import Entitlements
from dataflow.records import FORWARDED, IP_EVENTS, RAW, BadRecord, Origin, check_entitlement
from dataflow.routing import Message

# The files an input folder may hold, the topic each stands for, in the order they are read. The side
# inputs come first: a recording is finished, so its assignment events and forwarded lookups can be
# known before the main stream, which keeps every run over the same folder giving the same answers.
INPUT_FILES = {"ip_events.ndjson": IP_EVENTS, "forwarded.ndjson": FORWARDED, "flows.ndjson": RAW}
LINES_PER_BATCH = 500
EXPORTERS_FILE = "exporters.ndjson"  # entitlements, read whole before the job starts


def roles_present(folder: str | Path) -> frozenset[tuple[str, int]]:
    """The input partitions of a folder, as (role, 0): one per input file present."""
    return frozenset((role, 0) for name, role in INPUT_FILES.items() if (Path(folder) / name).exists())


def as_message(line: bytes, origin: Origin) -> Message:
    """One line: plain JSON, or `ARRIVAL_MS<TAB>KEY<TAB>JSON` (a line that is neither is kept whole and
    dead-letters as not JSON)."""
    if line[:1] in (b"{", b"["):
        return Message(line, origin)
    arrival, _, rest = line.partition(b"\t")
    key, _, value = rest.partition(b"\t")
    if not arrival.isdigit() or not value:
        return Message(line, origin)
    return Message(value, origin, key=key or None, arrival_ms=int(arrival))


def read_entitlements(folder: str | Path, entitlements: Entitlements) -> int:
    """Load the folder's exporters.ndjson; returns how many lines were not valid entitlements."""
    path = Path(folder) / EXPORTERS_FILE
    if not path.exists():
        return 0
    rejected = 0
    with open(path, "rb") as f:
        for line in f:
            if not line.strip():
                continue
            message = as_message(line.rstrip(b"\r\n"), Origin(str(path), 0, 0, "exporters"))
            try:
                record = check_entitlement(orjson.loads(message.value))
            except (orjson.JSONDecodeError, BadRecord, AttributeError, TypeError):
                rejected += 1
                continue
            entitlements.set(record["exporter"], record["cidrs"])
    return rejected


class FolderPartition(StatefulSourcePartition[Message, tuple[int, int]]):
    """The input files one after another; the resume state is (file number, lines read in it)."""

    def __init__(self, files: list[tuple[Path, str]], resume: tuple[int, int]):
        self._files = files
        self._index, skip = resume
        self._file = None
        self._line = 0
        self._open(skip)

    def _open(self, skip: int) -> None:
        if self._file is not None:
            self._file.close()
            self._file = None
        if self._index < len(self._files):
            self._file = open(self._files[self._index][0], "rb")
            self._line = 0
            for _ in range(skip):
                self._file.readline()
                self._line += 1

    def next_batch(self) -> list[Message]:
        if self._file is None:
            raise StopIteration()
        path, role = self._files[self._index]
        batch = []
        for _ in range(LINES_PER_BATCH):
            line = self._file.readline()
            if not line:
                # Nothing more will ever come from this file: it no longer holds the arrival clock back.
                batch.append(Message(None, Origin(str(path), 0, self._line, role), caught_up_ms=ENDED))
                self._index += 1
                self._open(0)
                break
            self._line += 1
            value = line.rstrip(b"\r\n")
            if value:
                batch.append(as_message(value, Origin(str(path), 0, self._line, role)))
        return batch

    def snapshot(self) -> tuple[int, int]:
        return (self._index, self._line)

    def close(self) -> None:
        if self._file is not None:
            self._file.close()


class InputFolder(FixedPartitionedSource[Message, tuple[int, int]]):
    """One partition: the folder's files, read in INPUT_FILES order by one worker."""

    def __init__(self, folder: str | Path):
        self.folder = Path(folder)

    def list_parts(self) -> list[str]:
        return ["folder"]

    def build_part(self, step_id: str, for_part: str, resume_state) -> FolderPartition:
        files = [(self.folder / name, role) for name, role in INPUT_FILES.items() if (self.folder / name).exists()]
        return FolderPartition(files, resume_state or (0, 0))


class LinesWriter(StatelessSinkPartition[Any]):
    def __init__(self, path: Path):
        path.parent.mkdir(parents=True, exist_ok=True)
        self._file = open(path, "ab")
        self._lines = msgspec.json.Encoder()

    def write_batch(self, batches: list[list[dict[str, Any]]]) -> None:
        # One call for the whole batch: a call per record cost more than encoding the record itself
        # (orjson), for the same bytes.
        self._file.write(self._lines.encode_lines([r for records in batches for r in records]))
        self._file.flush()

    def close(self) -> None:
        self._file.close()


class OutputFiles(DynamicSink[Any]):
    """Lists of records to `<folder>/<stem>-<worker>.ndjson`, one record a line."""

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
