"""The two things a shard holds per flow, packed: a lookup waiting for its decision (a fleet holds delay
x rate of them) and a connection report kept for the other end's lookup. Neither keeps the decoded
record: a lookup is a run of bytes in a shared buffer, rebuilt into a record only when it is answered,
and a report is one integer, kept as 16 bytes after its connection's packed key in the shard's log."""

from __future__ import annotations

import struct
from array import array
from socket import AF_INET, AF_INET6, inet_ntop, inet_pton
from typing import Any, Callable, Iterator

import orjson

# What the decision reads: size, start on the corrected clock (the record's own start until its times are
# set), deadline, settle (less the deadline: the configuration keeps the two within a week of each
# other), the asking exporter (as a name number) and flags; then the connection key (remote ip, remote
# port, local ip, local port: the key the other end's report is kept under); then, when it carries them
# (CARRIES), the other end's reports that had come before the lookup (a count, then start, workload and
# exporter of each); then, when the corrected start is not the record's own (SHIFTED), the exporter's
# offset (4 bytes: the clock bound keeps it within a day); then the rest of the record.
HEAD = struct.Struct("<HqqiIB")
# The layout's version: a shard keeps it, and one resumed from a snapshot of another layout is refused
# (its lookups would be misread).
PACKING = 2
# The rest of a contract flow: its length, bytes_sent, bytes_received, region and local_workload (name
# numbers) and version; then the flow_id (see _packed_id), and as JSON whatever else the flow carried. A
# record whose figures do not fit (a connection open for 49 days, or of 4 GiB) or outside the contract's
# shapes (the shard is handed only checked flows, but a shard owes nobody a crash) is kept whole, as JSON.
FIELDS = struct.Struct("<IIIIIB")
# V6: the remote address.
INBOUND, V6, UNNAMED, SAMPLED, WHOLE, LOCAL_V6, CARRIES, SHIFTED = 1, 2, 4, 8, 16, 32, 64, 128
CARRIED = struct.Struct("<qII")
FLAGS_AT = HEAD.size - 1
_EXPORTER, _EXPORTER_AT = struct.Struct("<I"), HEAD.size - 5
_OFFSET = struct.Struct("<i")
NO_NAME = 0xFFFFFFFF
# The fields packed in FIELDS and the key; anything else (pid, comm, open, local_ports, a refused local
# claim, fields of a newer contract) travels as JSON at the end.
PACKED = frozenset(
    ("v", "kind", "flow_id", "exporter", "region", "local_ip", "local_port", "remote_ip", "remote_port",
     "direction", "start_ms", "end_ms", "bytes_sent", "bytes_received", "local_workload")
)
_PORT = struct.Struct(">H")
# A flow_id in the exporter's own form, "{exporter}:{boot id}:{socket cookie}" (or "{exporter}:{number}"),
# is packed as a form byte, the boot id as a name number (a host's boot id is the same in all its flows,
# so each is kept once per shard, like the names) and the number: 9 bytes or fewer where its text takes
# some 55. Any other flow_id is its length (under ID_FORM) and its UTF-8 bytes.
ID_FORM, ID_BOOT, ID_WIDE = 0xF0, 1, 2
_ID_NUMBER = (struct.Struct("<I"), struct.Struct("<Q"))
_ID_BITS = 24  # name numbers in a report: far more exporters and workloads than a fleet has
_ID_MASK = (1 << _ID_BITS) - 1
_PERIOD_BITS = 16
_PERIOD_MASK = (1 << _PERIOD_BITS) - 1


class Names:
    """The strings flows repeat (exporters, regions, workloads), each kept once per shard and packed as
    its number."""

    __slots__ = ("numbers", "names")

    def __init__(self) -> None:
        self.numbers: dict[str, int] = {}
        self.names: list[str] = []

    def number(self, name: str | None) -> int:
        if name is None:
            return NO_NAME
        n = self.numbers.get(name)
        if n is None:
            n = self.numbers[name] = len(self.names)
            if n > _ID_MASK:
                raise ValueError(f"more than {_ID_MASK} distinct names in one shard")
            self.names.append(name)
        return n

    def name(self, number: int) -> str | None:
        return None if number == NO_NAME else self.names[number]


def packed_ip(ip: str) -> bytes:
    return inet_pton(AF_INET6 if ":" in ip else AF_INET, ip)


def connection_key(ip: str, port: int, other_ip: str, other_port: int) -> bytes:
    """(this end, the other end) of a connection as one host saw it."""
    return packed_ip(ip) + _PORT.pack(port) + packed_ip(other_ip) + _PORT.pack(other_port)


def pack_lookup(flow: dict[str, Any], names: Names) -> bytes:
    """A lookup as it is read, before the clock reaches it: its record packed under its own start, its
    times not set yet (`timed_lookup` sets them), so that the input waiting for the clock holds no
    decoded record either."""
    remote, local = flow["remote_ip"], flow["local_ip"]
    key = connection_key(remote, flow["remote_port"], local, flow["local_port"])
    flags = (V6 if ":" in remote else 0) | (LOCAL_V6 if ":" in local else 0)
    start = flow["start_ms"]
    try:
        body = _fields(flow, names)
        if flow["direction"] == "inbound":
            flags |= INBOUND
    except (KeyError, TypeError, ValueError, AttributeError, struct.error):
        body = orjson.dumps(flow)
        flags |= WHOLE
    size = HEAD.size + len(key) + len(body)
    if size > 0xFFFF:
        raise ValueError("a lookup of more than 64 KiB")
    return HEAD.pack(size, start, 0, 0, names.number(flow["exporter"]), flags) + key + body


def timed_lookup(p: PackedLookup, start: int, deadline: int, settle: int, unnamed: bool,
                 carried: tuple[int, ...] | list[int]) -> bytes:
    """The lookup `p` as `pack_lookup` read it, with its times: `start`, the flow's start on the corrected
    clock; `carried`, reports (packed) it takes along."""
    data, key_end = p.data, p.body_at
    flags = p.flags | (UNNAMED if unnamed else 0)
    key = data[HEAD.size : key_end]
    if carried:
        flags |= CARRIES
        key += bytes((len(carried),)) + b"".join(CARRIED.pack(*read_report(v)) for v in carried)
    body = data[key_end:]
    if p.start != start and not flags & WHOLE:  # a whole record keeps its own start
        flags |= SHIFTED
        body = _OFFSET.pack(p.start - start) + body
    size = HEAD.size + len(key) + len(body)
    if size > 0xFFFF:
        raise ValueError("a lookup of more than 64 KiB")
    exporter = _EXPORTER.unpack_from(data, _EXPORTER_AT)[0]
    return HEAD.pack(size, start, deadline, settle - deadline, exporter, flags) + key + body


def _fields(flow: dict[str, Any], names: Names) -> bytes:
    if flow["kind"] != "flow" or flow["direction"] not in ("inbound", "outbound"):
        raise ValueError("not a contract flow")
    tail = _packed_id(flow["flow_id"], flow["exporter"], names)
    if len(flow) != len(PACKED) or not PACKED.issuperset(flow):
        extras = {k: v for k, v in flow.items() if k not in PACKED}
        if extras:
            tail += orjson.dumps(extras)
    head = FIELDS.pack(
        flow["end_ms"] - flow["start_ms"], flow["bytes_sent"], flow["bytes_received"],
        names.number(flow["region"]), names.number(flow["local_workload"]), flow["v"],
    )
    return head + tail


def _packed_id(flow_id: str, exporter: str, names: Names) -> bytes:
    """Each part of the exporter's form is packed only if it reads back as the same text."""
    cut = len(exporter)
    if flow_id.startswith(exporter) and flow_id[cut : cut + 1] == ":":
        boot, colon, number = flow_id[cut + 1 :].rpartition(":")
        n = int(number) if number.isascii() and number.isdigit() else -1
        if 0 <= n < 1 << 64 and str(n) == number:
            wide = n >= 1 << 32
            form = ID_FORM | (ID_WIDE if wide else 0)
            if not colon:
                return bytes((form,)) + _ID_NUMBER[wide].pack(n)
            if _is_boot_id(boot):
                return bytes((form | ID_BOOT,)) + _EXPORTER.pack(names.number(boot)) + _ID_NUMBER[wide].pack(n)
    text = flow_id.encode()
    if len(text) >= ID_FORM:
        raise ValueError("a flow_id longer than a length byte")
    return bytes((len(text),)) + text


def _is_boot_id(boot: str) -> bool:
    """A boot id as the kernel writes it (a UUID: lower-case hex in groups of 8-4-4-4-12): only these become
    names, so that whatever else a flow_id carries cannot add a name to a shard with every flow."""
    if len(boot) != 36 or boot[8] != "-" or boot[13] != "-" or boot[18] != "-" or boot[23] != "-":
        return False
    digits = boot.replace("-", "")
    return len(digits) == 32 and _HEX.issuperset(digits)


_HEX = frozenset("0123456789abcdef")


class PackedLookup:
    """One packed lookup, read in place: what the decision needs, and the record when it is answered."""

    __slots__ = ("data", "at", "size", "start", "deadline", "settle", "exporter", "flags", "key", "remote_ip",
                 "remote_port", "carried", "body_at")

    def __init__(self, data: bytes | bytearray, at: int, names: Names):
        self.data, self.at = data, at
        size, start, deadline, settle, exporter, flags = HEAD.unpack_from(data, at)
        self.size, self.start, self.deadline, self.settle, self.flags = size, start, deadline, deadline + settle, flags
        self.exporter = names.names[exporter]
        width = 16 if flags & V6 else 4
        key_at = at + HEAD.size
        self.key = bytes(data[key_at : key_at + width + (16 if flags & LOCAL_V6 else 4) + 4])
        self.remote_ip = inet_ntop(AF_INET6 if width == 16 else AF_INET, self.key[:width])
        self.remote_port = _PORT.unpack_from(self.key, width)[0]
        self.body_at = key_at + len(self.key)
        self.carried: tuple[int, ...] = ()
        if flags & CARRIES:
            n = data[self.body_at]
            self.carried = tuple(report(*CARRIED.unpack_from(data, self.body_at + 1 + i * CARRIED.size), 0) for i in range(n))
            self.body_at += 1 + n * CARRIED.size

    @property
    def raw(self) -> bytes:
        return bytes(self.data[self.at : self.at + self.size])

    def start_ms(self) -> int:
        """The flow's start as its exporter's clock gave it."""
        if self.flags & WHOLE:
            return self.flow(None)["start_ms"]
        return self.start + self.offset()

    def offset(self) -> int:
        """How far the exporter's clock was found to run ahead when the lookup's times were set."""
        return _OFFSET.unpack_from(self.data, self.body_at)[0] if self.flags & SHIFTED else 0

    def flow(self, names: Names | None) -> dict[str, Any]:
        """The flow record as it came (its fields in the contract's order)."""
        data, at, end = self.data, self.body_at, self.at + self.size
        if self.flags & WHOLE:
            return orjson.loads(bytes(data[at:end]))
        start_ms = self.start + self.offset()
        if self.flags & SHIFTED:
            at += _OFFSET.size
        length, sent, received, region, workload, v = FIELDS.unpack_from(data, at)
        width = 16 if self.flags & V6 else 4
        flow_id, id_end = _read_id(data, at + FIELDS.size, self.exporter, names)
        flow = {
            "v": v, "kind": "flow", "flow_id": flow_id,
            "exporter": self.exporter, "region": names.name(region),
            "local_ip": inet_ntop(AF_INET6 if self.flags & LOCAL_V6 else AF_INET, self.key[width + 2 : -2]),
            "local_port": _PORT.unpack_from(self.key, len(self.key) - 2)[0],
            "remote_ip": self.remote_ip, "remote_port": self.remote_port,
            "direction": "inbound" if self.flags & INBOUND else "outbound",
            "start_ms": start_ms, "end_ms": start_ms + length, "bytes_sent": sent, "bytes_received": received,
            "local_workload": names.name(workload),
        }
        if id_end < end:
            flow.update(orjson.loads(bytes(data[id_end:end])))
        return flow


def _read_id(data: bytes | bytearray, at: int, exporter: str, names: Names) -> tuple[str, int]:
    """The flow_id packed at `at`, and where what follows it starts."""
    form = data[at]
    if form < ID_FORM:
        return bytes(data[at + 1 : at + 1 + form]).decode(), at + 1 + form
    number = _ID_NUMBER[bool(form & ID_WIDE)]
    at += 1
    if form & ID_BOOT:
        boot = names.names[_EXPORTER.unpack_from(data, at)[0]]
        at += _EXPORTER.size
        return f"{exporter}:{boot}:{number.unpack_from(data, at)[0]}", at + number.size
    return f"{exporter}:{number.unpack_from(data, at)[0]}", at + number.size


def with_flags(raw: bytes, flags: int) -> bytes:
    return raw[:FLAGS_AT] + bytes((flags,)) + raw[FLAGS_AT + 1 :]


def lookups(data: bytes | bytearray, names: Names) -> Iterator[PackedLookup]:
    at, end = 0, len(data)
    while at < end:
        lookup = PackedLookup(data, at, names)
        yield lookup
        at += lookup.size


def report(start: int, workload: int, exporter: int, period: int) -> int:
    """A connection report as one integer: the reporter's start, its workload and exporter (name numbers)
    and the prune period it arrived in (modulo 2**16: a report lives a few periods)."""
    return (((start << (2 * _ID_BITS)) | (workload << _ID_BITS) | exporter) << _PERIOD_BITS) | (period & _PERIOD_MASK)


def read_report(value: int) -> tuple[int, int, int]:
    value >>= _PERIOD_BITS
    return value >> (2 * _ID_BITS), (value >> _ID_BITS) & _ID_MASK, value & _ID_MASK


def reporter(value: int) -> int:
    """The exporter number of a packed report."""
    return (value >> _PERIOD_BITS) & _ID_MASK


def period_before(value: int, period: int) -> bool:
    """Whether the report arrived in a period before `period` (which is at most 2**15 periods later)."""
    return 0 < (period - value) & _PERIOD_MASK < 1 << (_PERIOD_BITS - 1)


# A report table's entry: its key's length (with a mark once the entry is dead), the key, the report
# (its low 64 bits, then its start).
_VALUE = struct.Struct("<Qq")
_VALUE_BYTES = _VALUE.size
_LOW = (1 << 64) - 1
_KEY_BITS = 0x3F
_DEAD = 0x80
_EMPTY = 0xFFFFFFFF  # offsets are 4 bytes: a log stays under 4 GiB (max_connections_per_shard is bounded so)


class ReportTable:
    """Connection reports under their packed connection keys, as a dict of lists of reports would hold
    them, without an object per report or per key: each report is an entry appended to one log (its key's
    length, the key, the report in 16 bytes), found through an open-addressing index of log offsets
    (linear probing on the key's hash). A key's reports lie along its probe run in the order they came.
    Entries that go are marked dead and swept out once they are half as many as the live ones, or fill the
    index."""

    __slots__ = ("log", "index", "mask", "live", "dead", "least")

    def __init__(self, least: int = 1024) -> None:
        """`least`: the fewest index slots (a power of two), so that a small table under churn is rebuilt
        after hundreds of changes, not every few."""
        self.least = least
        self.dead = 0
        self._build(bytearray(), 0)

    def __len__(self) -> int:
        return self.live

    def nbytes(self) -> int:
        """Bytes of the log (dead entries not yet swept included) and of the index."""
        return len(self.log) + self.index.itemsize * len(self.index)

    def __contains__(self, key: bytes) -> bool:
        return bool(self._places(key))

    def add(self, key: bytes, value: int) -> None:
        n = len(key)
        if n > _KEY_BITS:
            raise ValueError(f"a connection key of {n} bytes")
        if (self.live + self.dead + 1) * 2 > len(self.index):
            self._build(self.log, self.live + 1)
        log = self.log
        at = len(log)
        log.append(n)
        log += key
        log += _VALUE.pack(value & _LOW, value >> 64)
        index, mask = self.index, self.mask
        i = hash(key) & mask
        while index[i] != _EMPTY:
            i = (i + 1) & mask
        index[i] = at
        self.live += 1

    def values(self, key: bytes) -> tuple[int, ...]:
        """The reports under `key`, oldest first."""
        places = self._places(key)
        if not places:
            return ()
        return self._values(places, len(key))

    def drop(self, key: bytes) -> tuple[int, ...]:
        """Every report under `key`, gone from the table."""
        places = self._places(key)
        if not places:
            return ()
        gone = self._values(places, len(key))
        log = self.log
        for at in places:
            log[at] |= _DEAD
        self.live -= len(places)
        self.dead += len(places)
        self._sweep_if_due()
        return gone

    def items(self) -> Iterator[tuple[bytes, int]]:
        """(key, report) of every report held, each key's in the order they came."""
        log, at, end = self.log, 0, len(self.log)
        while at < end:
            head = log[at]
            n = head & _KEY_BITS
            if not head & _DEAD:
                yield bytes(log[at + 1 : at + 1 + n]), self._value(at, n)
            at += 1 + n + _VALUE_BYTES

    def sift(self, drop: Callable[[int], bool], limit: int = -1) -> list[int]:
        """Drops the reports `drop` is true of, as a dict of lists would: key after key in the order the
        keys came (a key's place is where its first report went since it last held none), the whole of
        each key, until at least `limit` have gone (all, when negative); returns them."""
        log, gone = self.log, []
        at = 0
        while at < len(log) and (limit < 0 or len(gone) < limit):
            head = log[at]
            n = head & _KEY_BITS
            # Without a limit the order does not matter: only a report that goes needs its key's others.
            if not head & _DEAD and (limit >= 0 or drop(self._value(at, n))):
                key = bytes(log[at + 1 : at + 1 + n])
                places = self._places(key)
                if limit < 0 or places[0] == at:
                    gone += self._sift_key(places, n, drop)
            at += 1 + n + _VALUE_BYTES
        self._sweep_if_due()
        return gone

    def _sweep_if_due(self) -> None:
        if self.dead * 2 > self.live and self.dead * 4 > self.least:
            self._build(self.log, self.live)

    def _sift_key(self, places: list[int], n: int, drop: Callable[[int], bool]) -> list[int]:
        log = self.log
        values = self._values(places, n)
        kept = [v for v in values if not drop(v)]
        if len(kept) == len(values):
            return []
        # What is kept stays in the key's first places: the key keeps its place in the order.
        for place, v in zip(places, kept):
            _VALUE.pack_into(log, place + 1 + n, v & _LOW, v >> 64)
        for place in places[len(kept):]:
            log[place] |= _DEAD
        self.dead += len(values) - len(kept)
        self.live -= len(values) - len(kept)
        return [v for v in values if drop(v)]

    def _value(self, at: int, n: int) -> int:
        low, start = _VALUE.unpack_from(self.log, at + 1 + n)
        return start << 64 | low

    def _values(self, places: list[int], n: int) -> tuple[int, ...]:
        log, unpack, values = self.log, _VALUE.unpack_from, []
        for at in places:
            low, start = unpack(log, at + 1 + n)
            values.append(start << 64 | low)
        return tuple(values)

    def _places(self, key: bytes) -> list[int]:
        """The log offsets of the live entries under `key`, oldest first."""
        index, mask = self.index, self.mask
        i = hash(key) & mask
        at = index[i]
        if at == _EMPTY:
            return []
        n, log = len(key), self.log
        found = []
        while at != _EMPTY:
            if log[at] == n and log.startswith(key, at + 1):
                found.append(at)
            i = (i + 1) & mask
            at = index[i]
        return found

    def _build(self, old: bytearray, live: int) -> None:
        """A log of the live entries in their order (the same log when none is dead), and an index at most
        a third full, to be rebuilt when half full (`live`: the entries it is for)."""
        size = self.least
        while size < 3 * live:
            size *= 2
        index = self.index = array("I", [_EMPTY]) * size
        mask = self.mask = size - 1
        log = old if not self.dead else bytearray()
        self.log = log
        self.live = self.dead = 0
        at, end = 0, len(old)
        while at < end:
            head = old[at]
            entry = 1 + (head & _KEY_BITS) + _VALUE_BYTES
            if not head & _DEAD:
                i = hash(bytes(old[at + 1 : at + 1 + head])) & mask
                while index[i] != _EMPTY:
                    i = (i + 1) & mask
                if log is old:
                    index[i] = at
                else:
                    index[i] = len(log)
                    log += old[at : at + entry]
                self.live += 1
            at += entry

    def __getstate__(self) -> tuple[int, int, bytes]:
        # The index holds this process's hashes of the keys: a snapshot keeps the live entries only.
        if self.dead:
            self._build(self.log, self.live)
        return self.least, self.live, bytes(self.log)

    def __setstate__(self, state: tuple[int, int, bytes]) -> None:
        self.least, live, log = state
        self.dead = 0
        self._build(bytearray(log), live)
