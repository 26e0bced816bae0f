"""The record contract of docs/records.md: decoding and validating input messages, and encoding the
job's outputs. A record that breaks the contract raises BadRecord, whose reason the dead letter keeps."""

from __future__ import annotations

import base64
from dataclasses import dataclass
from ipaddress import ip_network
from socket import AF_INET, AF_INET6, inet_ntop, inet_pton
from typing import Any

import orjson

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


def check_record(record: Any, role: str, bounds: TimeBounds, canonical=None) -> dict[str, Any]:
    """Validate one record in place (addresses made canonical) and return it."""
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
    canonical = canonical or canonical_ip
    if kind == FLOW:
        return _check_flow(record, bounds, canonical)
    if kind == HEARTBEAT:
        return _check_heartbeat(record, bounds, canonical)
    if kind == ENTITLEMENT:
        return check_entitlement(record)
    return _check_ip_event(record, bounds, canonical)


KINDS = (FLOW, HEARTBEAT, IP_EVENT, ENTITLEMENT)


def _check_flow(r: dict[str, Any], bounds: TimeBounds, canonical) -> dict[str, Any]:
    """Nearly every flow is valid: one inline test passes those; the rest get the field-by-field
    check below, which names what is wrong."""
    get = r.get
    flow_id, workload, local_port, remote_port = get("flow_id"), get("local_workload", _MISSING), get("local_port"), get("remote_port")
    start, end, sent, received = get("start_ms"), get("end_ms"), get("bytes_sent"), get("bytes_received")
    if (
        type(flow_id) is str
        and 0 < len(flow_id) <= 200
        and type(get("exporter")) is str
        and get("exporter")
        and type(get("region")) is str
        and get("region")
        and type(local_port) is int
        and 0 <= local_port <= 65535
        and type(remote_port) is int
        and 0 <= remote_port <= 65535
        and type(start) is int
        and type(end) is int
        and bounds.earliest_ms <= start <= end <= bounds.latest_ms
        and type(sent) is int
        and sent >= 0
        and type(received) is int
        and received >= 0
        and (workload is None or (type(workload) is str and workload))
        and get("direction") in _DIRECTIONS
        and type(get("open", False)) is bool
        and type(get("local_ip")) is str
        and type(get("remote_ip")) is str
        and "local_ports" not in r
    ):
        local_ip, local_family = canonical(r["local_ip"], "local_ip")
        remote_ip, remote_family = canonical(r["remote_ip"], "remote_ip")
        if local_family != remote_family:
            raise BadRecord("mixed_family", "local_ip and remote_ip are of different families")
        r["local_ip"], r["remote_ip"] = local_ip, remote_ip
        return r
    return _check_flow_fields(r, bounds, canonical)


_DIRECTIONS = ("outbound", "inbound")  # a tuple: a hostile list or dict compares, never hashes


def _check_flow_fields(r: dict[str, Any], bounds: TimeBounds, canonical) -> dict[str, Any]:
    flow_id = _text(r, "flow_id")
    if len(flow_id) > 200:
        raise BadRecord("bad_type", "flow_id is longer than 200 characters")
    _text(r, "exporter")
    _text(r, "region")
    local_ip, local_family = canonical(_text(r, "local_ip"), "local_ip")
    remote_ip, remote_family = canonical(_text(r, "remote_ip"), "remote_ip")
    if local_family != remote_family:
        raise BadRecord("mixed_family", "local_ip and remote_ip are of different families")
    r["local_ip"], r["remote_ip"] = local_ip, remote_ip
    for name in ("local_port", "remote_port"):
        port = _integer(r, name)
        if not 0 <= port <= 65535:
            raise BadRecord("bad_port", f"{name} {port} is outside 0-65535")
    if r.get("direction") not in ("outbound", "inbound"):
        raise BadRecord("bad_direction", f"direction {r.get('direction')!r} is not outbound or inbound")
    _span(r, "start_ms", "end_ms", bounds)
    for name in ("bytes_sent", "bytes_received"):
        if _integer(r, name) < 0:
            raise BadRecord("negative_bytes", f"{name} is negative")
    workload = r.get("local_workload", _MISSING)
    if workload is _MISSING:
        raise BadRecord("missing_field", "local_workload is missing (null when unknown)")
    if workload is not None and (not isinstance(workload, str) or not workload):
        raise BadRecord("bad_type", "local_workload must be a non-empty string or null")
    if not isinstance(r.get("open", False), bool):
        raise BadRecord("bad_type", "open must be true or false")
    if "local_ports" in r:
        if workload is None:
            raise BadRecord("bad_ports", "local_ports without a local_workload")
        r["local_ports"] = _port_range(r, "local_ports", local_family)
    return r


def _check_heartbeat(r: dict[str, Any], bounds: TimeBounds, canonical) -> dict[str, Any]:
    _text(r, "exporter")
    _text(r, "region")
    _text(r, "workload")
    r["ip"], family = canonical(_text(r, "ip"), "ip")
    _span(r, "start_ms", "end_ms", bounds)
    if "ports" in r:
        r["ports"] = _port_range(r, "ports", family)
    return r


def _port_range(r: dict[str, Any], name: str, family: int) -> tuple[int, int]:
    """A claim on part of a shared IPv4 address: [lo, hi], both ports included."""
    value = r.get(name)
    if family != AF_INET:
        raise BadRecord("bad_ports", f"{name} is for shared IPv4 addresses only")
    if (
        not isinstance(value, list)
        or len(value) != 2
        or not all(type(p) is int and 1 <= p <= 65535 for p in value)
        or value[0] > value[1]
    ):
        raise BadRecord("bad_ports", f"{name} must be [lo, hi] with 1 <= lo <= hi <= 65535, got {value!r}")
    return value[0], value[1]


def check_entitlement(r: dict[str, Any]) -> dict[str, Any]:
    """Which addresses an exporter may claim, as a trusted platform component publishes them."""
    _text(r, "exporter")
    cidrs = r.get("cidrs")
    if not isinstance(cidrs, list) or not all(isinstance(c, str) for c in cidrs):
        raise BadRecord("bad_type", "cidrs must be a list of CIDR strings")
    canonical = []
    for cidr in cidrs:
        try:
            canonical.append(str(ip_network(cidr, strict=False)))
        except ValueError:
            raise BadRecord("bad_cidr", f"{cidr!r} is not a CIDR") from None
    r["cidrs"] = canonical
    return r


def _check_ip_event(r: dict[str, Any], bounds: TimeBounds, canonical) -> dict[str, Any]:
    _text(r, "owner")
    r["ip"], _ = canonical(_text(r, "ip"), "ip")
    if r.get("action") not in ("assigned", "unassigned"):
        raise BadRecord("bad_action", f"action {r.get('action')!r} is not assigned or unassigned")
    _time(r, "time_ms", bounds)
    return r


_MISSING = object()


def _text(r: dict[str, Any], name: str) -> str:
    value = r.get(name, _MISSING)
    if value is _MISSING or value is None:
        raise BadRecord("missing_field", f"{name} is missing")
    if not isinstance(value, str) or not value:
        raise BadRecord("bad_type", f"{name} must be a non-empty string")
    return value


def _integer(r: dict[str, Any], name: str) -> int:
    value = r.get(name, _MISSING)
    if value is _MISSING or value is None:
        raise BadRecord("missing_field", f"{name} is missing")
    if type(value) is not int:
        raise BadRecord("bad_type", f"{name} must be an integer, got {value!r}")
    return value


def _time(r: dict[str, Any], name: str, bounds: TimeBounds) -> int:
    value = _integer(r, name)
    if not bounds.earliest_ms <= value <= bounds.latest_ms:
        raise BadRecord("time_out_of_range", f"{name} {value} is outside the accepted time window")
    return value


def _span(r: dict[str, Any], start: str, end: str, bounds: TimeBounds) -> None:
    if _time(r, end, bounds) < _time(r, start, bounds):
        raise BadRecord("end_before_start", f"{end} is before {start}")


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
    """The flow record turned into the job's answer for it."""
    out = dict(flow)
    out["kind"] = ATTRIBUTED
    out["outcome"] = outcome
    out["remote_workload"] = remote_workload
    out["reason"] = reason
    out["source"] = source
    out["match"] = match
    return out


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
