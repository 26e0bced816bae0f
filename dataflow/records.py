"""The record contract of docs/records.md: decoding and validating input messages, and encoding the
job's outputs. A record that breaks the contract raises BadRecord, whose reason the dead letter keeps."""

from __future__ import annotations

import base64
import re
from dataclasses import dataclass
from ipaddress import ip_network
from socket import AF_INET, AF_INET6, inet_ntop, inet_pton
from typing import Annotated, Any, ClassVar, Literal, Union

import msgspec
import orjson
from msgspec import UNSET, UnsetType

from dataflow.config import LimitsConfig

VERSION = 2
READABLE_VERSIONS = (1, 2)  # v2 added port-range claims (`ports`, `local_ports`) and entitlements
FLOW, HEARTBEAT, IP_EVENT, ENTITLEMENT, ATTRIBUTED, DEAD_LETTER = (
    "flow",
    "heartbeat",
    "ip_event",
    "entitlement",
    "attributed",
    "dead_letter",
)
ATTRIBUTED_OUTCOME, UNATTRIBUTED, EXTERNAL = "attributed", "unattributed", "external"
NO_OWNER, CONFLICT, EXPIRED, UNTRUSTED_CLOCK = "no_owner", "conflict", "expired", "untrusted_clock"
# Why a host's claim on its own local address was not believed (the flow's `local_refused`).
UNENTITLED = "unentitled"

# Which kinds each input topic may carry.
RAW, FORWARDED, IP_EVENTS, EXPORTERS = "raw", "forwarded", "ip_events", "exporters"
KINDS_BY_ROLE = {RAW: (FLOW, HEARTBEAT), FORWARDED: (FLOW,), IP_EVENTS: (IP_EVENT,), EXPORTERS: (ENTITLEMENT,)}
LIMITS = LimitsConfig()


class BadRecord(ValueError):
    """A record that breaks the contract; `reason` is the dead letter's machine-readable code."""

    def __init__(self, reason: str, detail: str):
        super().__init__(f"{reason}: {detail}")
        self.reason = reason
        self.detail = detail


@dataclass(frozen=True, slots=True)
class Origin:
    """Where a message came from; file mode uses the file path, partition 0 and the line number."""

    topic: str
    partition: int
    offset: int
    role: str


@dataclass(frozen=True, slots=True)
class TimeBounds:
    """Times outside [earliest_ms, latest_ms] are absurd for this run and dead-lettered."""

    earliest_ms: int
    latest_ms: int


@dataclass(slots=True)
class DeadLetter:
    """A record or message the job could not use. `original` is at most LimitsConfig.dead_letter_bytes
    of it (`size` the whole length): the topic, partition, offset and index find the rest."""

    reason: str
    detail: str
    original: bytes
    origin: Origin
    index: int | None = None
    size: int | None = None

    @classmethod
    def of(cls, reason: str, detail: str, original: bytes, origin: Origin, keep: int, index: int | None = None):
        return cls(reason, detail[:DETAIL_CHARS], original[:keep], origin, index, len(original))

    def to_record(self) -> dict[str, Any]:
        size = len(self.original) if self.size is None else self.size
        try:
            text, b64 = _utf8_prefix(self.original, size > len(self.original)), None
        except UnicodeDecodeError:
            text, b64 = None, base64.b64encode(self.original).decode("ascii")
        return {
            "v": VERSION,
            "kind": DEAD_LETTER,
            "reason": self.reason,
            "detail": self.detail,
            "original": text,
            "original_b64": b64,
            "original_bytes": size,
            "truncated": size > len(self.original),
            "topic": self.origin.topic,
            "partition": self.origin.partition,
            "offset": self.origin.offset,
            "index": self.index,
        }


DETAIL_CHARS = 500  # a dead letter's detail can quote the input; keep it a line, not a copy


def _utf8_prefix(data: bytes, cut: bool) -> str:
    """The text of `data`; when it was cut short, a character split by the cut is dropped."""
    try:
        return data.decode("utf-8")
    except UnicodeDecodeError as e:
        if cut and e.reason == "unexpected end of data":
            return data[: e.start].decode("utf-8")
        raise


# The contract, once. Decoding into these Structs checks every field's type, length and range in
# compiled code; what depends on the run (time bounds, limits) or on a value's meaning (an address's
# canonical form, a span's order, a port range's order) is checked after, on the typed fields.
# Fields beyond the contract are allowed and passed on, as readers of older contracts expect.
Version = Annotated[Literal[1, 2], msgspec.Meta(description="contract version (an integer)")]
Name = Annotated[str, msgspec.Meta(min_length=1)]
Address = Annotated[str, msgspec.Meta(description="IPv4 dotted quad or IPv6 in any textual form")]
Port = Annotated[int, msgspec.Meta(ge=0, le=65535)]
Millis = Annotated[int, msgspec.Meta(description="milliseconds since the Unix epoch, UTC")]
Bytes = Annotated[int, msgspec.Meta(ge=0)]
# orjson reads an integer beyond 64 bits as a float (a bad_type) and writes none; msgspec reads any, and
# takes bounds within 64 signed bits only, so the compiled path screens such integers itself.
I64_MIN, U64_MAX = -(2**63), 2**64 - 1
PortRange = Annotated[
    tuple[Annotated[int, msgspec.Meta(ge=1, le=65535)], Annotated[int, msgspec.Meta(ge=1, le=65535)]],
    msgspec.Meta(description="[lo, hi], both included, lo <= hi; shared IPv4 addresses only"),
]


class Flow(msgspec.Struct, tag_field="kind", tag=FLOW):
    """One TCP connection, as one host saw it (topic flows.raw, and flows.forward.<region>)."""

    kind: ClassVar[str] = FLOW  # the tag, readable on a decoded record
    v: Version
    flow_id: Annotated[str, msgspec.Meta(min_length=1, max_length=200)]
    exporter: Name
    region: Name
    local_ip: Address
    local_port: Port
    remote_ip: Address
    remote_port: Port
    direction: Literal["outbound", "inbound"]
    start_ms: Millis
    end_ms: Millis
    bytes_sent: Bytes
    bytes_received: Bytes
    local_workload: Name | None
    local_ports: PortRange | UnsetType = UNSET
    open: bool | UnsetType = UNSET
    pid: int | UnsetType = UNSET
    comm: str | UnsetType = UNSET

    def within(self, chars: int) -> bool:
        # UNSET and None are falsy: an absent field counts as an empty string.
        texts = (len(self.flow_id) + len(self.exporter) + len(self.region) + len(self.local_ip) + len(self.remote_ip)
                 + len(self.local_workload or "") + len(self.comm or ""))
        return (texts <= chars and self.bytes_sent <= U64_MAX and self.bytes_received <= U64_MAX
                and (self.pid is UNSET or I64_MIN <= self.pid <= U64_MAX))

    def checked(self, bounds: TimeBounds, canonical) -> dict[str, Any]:
        local_ip, local_family = canonical(self.local_ip, "local_ip")
        remote_ip, remote_family = canonical(self.remote_ip, "remote_ip")
        if local_family != remote_family:
            raise BadRecord("mixed_family", "local_ip and remote_ip are of different families")
        _span(self.start_ms, self.end_ms, bounds)
        out = msgspec.to_builtins(self)
        out["local_ip"], out["remote_ip"] = local_ip, remote_ip
        if self.local_ports is not UNSET:
            if self.local_workload is None:
                raise BadRecord("bad_ports", "local_ports without a local_workload")
            out["local_ports"] = _port_range("local_ports", self.local_ports, local_family)
        return out


class Heartbeat(msgspec.Struct, tag_field="kind", tag=HEARTBEAT):
    """`workload` owned `ip` (or only `ports` of it) during [start_ms, end_ms], as its host saw it."""

    kind: ClassVar[str] = HEARTBEAT
    v: Version
    exporter: Name
    region: Name
    ip: Address
    workload: Name
    start_ms: Millis
    end_ms: Millis
    ports: PortRange | UnsetType = UNSET

    def within(self, chars: int) -> bool:
        return len(self.exporter) + len(self.region) + len(self.ip) + len(self.workload) <= chars

    def checked(self, bounds: TimeBounds, canonical) -> dict[str, Any]:
        ip, family = canonical(self.ip, "ip")
        _span(self.start_ms, self.end_ms, bounds)
        out = msgspec.to_builtins(self)
        out["ip"] = ip
        if self.ports is not UNSET:
            out["ports"] = _port_range("ports", self.ports, family)
        return out


class IpEvent(msgspec.Struct, tag_field="kind", tag=IP_EVENT):
    """The platform assigned `ip` to `owner` (or took it away) at `time_ms` (topic ip-events)."""

    kind: ClassVar[str] = IP_EVENT
    v: Version
    ip: Address
    owner: Name
    action: Literal["assigned", "unassigned"]
    time_ms: Millis

    def within(self, chars: int) -> bool:
        return len(self.ip) + len(self.owner) <= chars

    def checked(self, bounds: TimeBounds, canonical) -> dict[str, Any]:
        ip, _ = canonical(self.ip, "ip")
        _time("time_ms", self.time_ms, bounds)
        out = msgspec.to_builtins(self)
        out["ip"] = ip
        return out


class Entitlement(msgspec.Struct, tag_field="kind", tag=ENTITLEMENT):
    """The addresses an exporter may claim, as CIDRs (topic exporters, keyed by the exporter id)."""

    kind: ClassVar[str] = ENTITLEMENT
    v: Version
    exporter: Name
    cidrs: list[str]

    def within(self, chars: int) -> bool:
        return len(self.exporter) + sum(map(len, self.cidrs)) <= chars

    def checked(self, bounds: TimeBounds | None, canonical) -> dict[str, Any]:
        out = msgspec.to_builtins(self)
        try:
            out["cidrs"] = [str(ip_network(cidr, strict=False)) for cidr in self.cidrs]
        except ValueError as e:
            raise BadRecord("bad_cidr", f"{e}") from None
        return out


Record = Union[Flow, Heartbeat, IpEvent, Entitlement]
TYPES = {FLOW: Flow, HEARTBEAT: Heartbeat, IP_EVENT: IpEvent, ENTITLEMENT: Entitlement}
KINDS = tuple(TYPES)


# The same records with nothing beyond the contract: the type alone then bounds a record's depth and
# its field names, so a message of these decodes in one compiled call. Anything else, and any bad
# record, takes the path record by record, which names each bad record's reason.
class _ExactFlow(Flow, tag=FLOW, forbid_unknown_fields=True):
    pass


class _ExactHeartbeat(Heartbeat, tag=HEARTBEAT, forbid_unknown_fields=True):
    pass


class _ExactIpEvent(IpEvent, tag=IP_EVENT, forbid_unknown_fields=True):
    pass


class _ExactEntitlement(Entitlement, tag=ENTITLEMENT, forbid_unknown_fields=True):
    pass


_ExactRecord = Union[_ExactFlow, _ExactHeartbeat, _ExactIpEvent, _ExactEntitlement]
_EXACT = msgspec.json.Decoder(list[_ExactRecord] | _ExactRecord)
# Exact records fit any limits that admit a port range (2 deep) and the longest field name.
_EXACT_DEPTH = 2
_EXACT_NAME_CHARS = max(len(name) for t in TYPES.values() for name in t.__struct_fields__ + ("kind",))


def schema_json() -> bytes:
    """The JSON Schema of the records the job reads: docs/records.schema.json is this (`make schema`)."""
    schema = {"$schema": "https://json-schema.org/draft/2020-12/schema",
              "title": f"flowattr input records, contract version {VERSION}", **msgspec.json.schema(Record)}
    return msgspec.json.format(msgspec.json.encode(schema), indent=2) + b"\n"


def decode_message(
    value: bytes | None, origin: Origin, bounds: TimeBounds, canonical=None, limits: LimitsConfig = LIMITS
) -> tuple[list[dict[str, Any]], list[DeadLetter]]:
    """One message (a record or a batch of them) -> its valid records and a dead letter per bad one.
    `canonical` stands in for canonical_ip (a caller may remember the addresses it has seen). The
    limits are checked before anything else touches the content, so no input can be too big or too
    deep for the steps after this one."""
    canonical = canonical or canonical_ip
    keep = limits.dead_letter_bytes
    if not value:
        return [], [DeadLetter.of("empty_message", "message has no value", value or b"", origin, keep)]
    if len(value) > limits.message_bytes:
        detail = f"message of {len(value)} bytes is over limits.message_bytes ({limits.message_bytes})"
        return [], [DeadLetter.of("message_too_large", detail, value, origin, keep)]
    if limits.depth >= _EXACT_DEPTH and limits.string_chars >= _EXACT_NAME_CHARS:
        records = _decode_exact(value, origin.role, bounds, canonical, limits)
        if records is not None:
            return records, []
    try:
        parsed = orjson.loads(value)
    except orjson.JSONDecodeError as e:
        return [], [DeadLetter.of("not_json", f"not JSON: {e}", value, origin, keep)]
    if isinstance(parsed, dict):
        try:
            check_size(parsed, limits)
            return [check_record(parsed, origin.role, bounds, canonical)], []
        except BadRecord as e:
            return [], [DeadLetter.of(e.reason, e.detail, value, origin, keep)]
    if not isinstance(parsed, list):
        detail = f"expected an object or an array of objects, got {type(parsed).__name__}"
        return [], [DeadLetter.of("not_object", detail, value, origin, keep)]
    if not parsed:
        return [], [DeadLetter.of("empty_batch", "the batch holds no records", value, origin, keep)]
    if len(parsed) > limits.records_per_message:
        detail = f"{len(parsed)} records is over limits.records_per_message ({limits.records_per_message})"
        return [], [DeadLetter.of("too_many_records", detail, value, origin, keep)]
    records, dead = [], []
    for index, element in enumerate(parsed):
        try:
            check_size(element, limits)
        except BadRecord as e:
            # Too deep to encode again safely: the coordinates and the index find it in the input.
            original = b"" if e.reason == "too_deep" else orjson.dumps(element)
            dead.append(DeadLetter.of(e.reason, e.detail, original, origin, keep, index))
            continue
        try:
            records.append(check_record(element, origin.role, bounds, canonical))
        except BadRecord as e:
            dead.append(DeadLetter.of(e.reason, e.detail, orjson.dumps(element), origin, keep, index))
    return records, dead


def _decode_exact(value: bytes, role: str, bounds: TimeBounds, canonical, limits: LimitsConfig):
    """The message's records when every one of them is exact and valid; None sends it the long way."""
    try:
        decoded = _EXACT.decode(value)
    except ValueError:  # msgspec's errors, and a string that is not UTF-8
        return None
    if type(decoded) is not list:
        decoded = [decoded]
    elif not decoded or len(decoded) > limits.records_per_message:
        return None
    kinds, chars = KINDS_BY_ROLE[role], limits.string_chars
    records = []
    try:
        for record in decoded:
            # Within: all of a record's strings together within the limit (then no one of them is over
            # it), and integers orjson can read; times are within 64 bits once within the time bounds.
            if record.kind not in kinds or not record.within(chars):
                return None
            records.append(record.checked(bounds, canonical))
    except BadRecord:
        return None
    return records


def check_size(record: Any, limits: LimitsConfig) -> None:
    """Raises BadRecord when a record nests deeper than limits.depth or holds a string (a field name
    included) longer than limits.string_chars. Walks with a stack, not recursion: the input picks the depth."""
    max_chars, max_depth = limits.string_chars, limits.depth
    stack = [(record, 1)]
    while stack:
        value, depth = stack.pop()
        t = type(value)
        if t is dict:
            if value and max(map(len, value)) > max_chars:
                raise BadRecord("string_too_long", f"a field name is over limits.string_chars ({max_chars})")
            value = value.values()
        elif t is not list:
            if t is str and len(value) > max_chars:
                raise BadRecord("string_too_long", f"a string of {len(value)} characters is over limits.string_chars ({max_chars})")
            continue
        if depth > max_depth:
            raise BadRecord("too_deep", f"nested deeper than limits.depth ({max_depth})")
        depth += 1
        for v in value:
            t = type(v)
            if t is str:
                if len(v) > max_chars:
                    raise BadRecord("string_too_long", f"a string of {len(v)} characters is over limits.string_chars ({max_chars})")
            elif t is dict or t is list:
                stack.append((v, depth))


def check_record(record: Any, role: str, bounds: TimeBounds | None, canonical=None) -> dict[str, Any]:
    """One decoded record as the job passes it on: checked against the contract, its addresses in
    canonical form, any fields beyond the contract kept as they came."""
    if not isinstance(record, dict):
        raise BadRecord("not_object", f"batch element is {type(record).__name__}, not an object")
    version = record.get("v")
    if type(version) is not int or version not in READABLE_VERSIONS:
        raise BadRecord("bad_version", f"v must be one of {READABLE_VERSIONS}, got {version!r}")
    kind = record.get("kind")
    if kind not in KINDS:
        raise BadRecord("unknown_kind", f"kind {kind!r} is not one of {', '.join(KINDS)}")
    if kind not in KINDS_BY_ROLE[role]:
        raise BadRecord("wrong_topic", f"a {kind} record does not belong on the {role} topic")
    contract = TYPES[kind]
    try:
        typed = msgspec.convert(record, contract, strict=True)
    except msgspec.ValidationError as e:
        raise _field_error(str(e), contract) from None
    out = typed.checked(bounds, canonical or canonical_ip)
    for name, value in record.items():
        if name not in out:
            out[name] = value
    return out


def check_entitlement(record: Any) -> dict[str, Any]:
    """Which addresses an exporter may claim, as a trusted platform component publishes them."""
    return check_record(record, EXPORTERS, None)


# msgspec names the field and what is wrong with it; these are the reason codes the dead letters keep.
_FIELD_REASONS = {"v": "bad_version", "direction": "bad_direction", "action": "bad_action",
                  "ports": "bad_ports", "local_ports": "bad_ports", "cidrs": "bad_type"}
_RANGE_REASONS = {"local_port": "bad_port", "remote_port": "bad_port",
                  "bytes_sent": "negative_bytes", "bytes_received": "negative_bytes"}
_REQUIRED = {t: {f.name for f in msgspec.structs.fields(t) if f.required} for t in TYPES.values()}
_FIELD_NAMED = re.compile(r"field `([^`]*)`|at `\$\.(\w+)")


def _field_error(text: str, contract: type) -> BadRecord:
    found = _FIELD_NAMED.search(text)
    name = found and (found[1] or found[2])
    if name in _FIELD_REASONS:
        return BadRecord(_FIELD_REASONS[name], text)
    if text.startswith("Object missing required field") or ("got `null`" in text and name in _REQUIRED[contract]):
        return BadRecord("missing_field", text)
    if name in _RANGE_REASONS and ("` >=" in text or "` <=" in text):
        return BadRecord(_RANGE_REASONS[name], text)
    return BadRecord("bad_type", text)


def _span(start: int, end: int, bounds: TimeBounds) -> None:
    if bounds.earliest_ms <= start <= end <= bounds.latest_ms:
        return
    _time("end_ms", end, bounds)
    _time("start_ms", start, bounds)
    raise BadRecord("end_before_start", "end_ms is before start_ms")


def _time(name: str, value: int, bounds: TimeBounds) -> None:
    if not bounds.earliest_ms <= value <= bounds.latest_ms:
        raise BadRecord("time_out_of_range", f"{name} {value} is outside the accepted time window")


def _port_range(name: str, ports: tuple[int, int], family: int) -> tuple[int, int]:
    """A claim on part of a shared IPv4 address: [lo, hi], both ports included."""
    if family != AF_INET:
        raise BadRecord("bad_ports", f"{name} is for shared IPv4 addresses only")
    if ports[0] > ports[1]:
        raise BadRecord("bad_ports", f"{name} must be [lo, hi] with lo <= hi, got {list(ports)}")
    return ports


def canonical_ip(text: str, name: str = "ip") -> tuple[str, int]:
    """The one textual form state is keyed by, and the family; raises BadRecord for a non-address."""
    try:
        inet_pton(AF_INET, text)
        return text, AF_INET  # inet_pton takes only the dotted quad without leading zeros: canonical
    except OSError:
        try:
            packed = inet_pton(AF_INET6, text)
        except OSError:
            raise BadRecord("bad_ip", f"{name} {text!r} is not an IPv4 or IPv6 address") from None
    if packed[:12] == b"\0" * 10 + b"\xff\xff":
        return inet_ntop(AF_INET, packed[12:]), AF_INET
    return inet_ntop(AF_INET6, packed), AF_INET6


def attributed(
    flow: dict[str, Any],
    outcome: str,
    remote_workload: str | None = None,
    reason: str | None = None,
    source: str | None = None,
    match: str | None = None,
) -> dict[str, Any]:
    """The flow record turned into the job's answer for it (a new record: the flow is left as it is)."""
    return answered(dict(flow), outcome, remote_workload, reason, source, match)


def answered(
    flow: dict[str, Any],
    outcome: str,
    remote_workload: str | None = None,
    reason: str | None = None,
    source: str | None = None,
    match: str | None = None,
) -> dict[str, Any]:
    """As attributed, in place: for a flow record made only to be answered."""
    flow["kind"] = ATTRIBUTED
    flow["outcome"] = outcome
    flow["remote_workload"] = remote_workload
    flow["reason"] = reason
    flow["source"] = source
    flow["match"] = match
    return flow


def encode_batch(records: list[dict[str, Any]]) -> bytes:
    return orjson.dumps(records)


def encode_batches(
    records: list[dict[str, Any]], max_bytes: int, max_records: int
) -> tuple[list[bytes], list[tuple[dict[str, Any], bytes]]]:
    """The records as message values of at most max_bytes and max_records each, in order; a record
    too large for a message of its own comes back apart, encoded, for a dead letter."""
    values, oversize = [], []
    for i in range(0, len(records), max_records):
        chunk = records[i : i + max_records]
        value = orjson.dumps(chunk)
        if len(value) <= max_bytes:
            values.append(value)
            continue
        parts: list[bytes] = []
        size = 2
        for record in chunk:
            part = orjson.dumps(record)
            if len(part) + 2 > max_bytes:
                oversize.append((record, part))
                continue
            if parts and size + len(part) + 1 > max_bytes:
                values.append(b"[" + b",".join(parts) + b"]")
                parts, size = [], 2
            parts.append(part)
            size += len(part) + 1
        if parts:
            values.append(b"[" + b",".join(parts) + b"]")
    return values, oversize


def iter_records(value: bytes):
    """Records of one message whatever its framing, for readers of the job's outputs."""
    parsed = orjson.loads(value)
    return parsed if isinstance(parsed, list) else [parsed]
