"""Decode a batch of input messages and send each record where it belongs: its claim to the shard of its
local address, its lookup to the shard of its remote address, to another region's forward topic,
answered at once, or to the dead letters. Here each host's word is weighed before it becomes evidence:
the record must come under its exporter's key, a claim must be within the exporter's entitlement, and
an exporter whose clock runs ahead of its own messages' arrival by more than the bound is not believed."""

from __future__ import annotations

import threading
import time
import zlib
from collections import Counter
from dataclasses import dataclass
from sys import intern
from typing import Any, Iterable

import orjson

from dataflow.attribution import Assignment, Claim, Connection, Lookup, Progress, Shard, ShardWork
from dataflow.clock import ArrivalCheck, PartitionId
from dataflow.config import Config
from dataflow.entitlements import Entitlements
from dataflow.records import (
    EXTERNAL,
    FLOW,
    FORWARDED,
    HEARTBEAT,
    RAW,
    UNENTITLED,
    UNATTRIBUTED,
    UNTRUSTED_CLOCK,
    DeadLetter,
    Origin,
    TimeBounds,
    attributed,
    canonical_ip,
    decode_message,
)
from dataflow.regions import RegionMap


@dataclass(frozen=True, slots=True)
class Message:
    """An input message, whether it came from Kafka or from a line of a file.

    `arrival_ms` is the broker's timestamp (None for a recording without one); `caught_up_ms` marks no
    message at all but the reader's word that its partition holds nothing that arrived before then."""

    value: bytes | None
    origin: Origin
    error: str | None = None  # the broker's error in place of a message
    key: bytes | None = None
    arrival_ms: int | None = None
    caught_up_ms: int | None = None


@dataclass(slots=True)
class Forward:
    region: str
    flows: list[dict[str, Any]]


class Routed:
    """What one message brought: kept apart until the whole message is routed, so that a message that
    fails half-way leaves nothing behind but its dead letter."""

    __slots__ = ("works", "forwards", "answered", "dead", "counts", "arrival")

    def __init__(self) -> None:
        self.works: list[tuple[str, ShardWork]] = []
        self.forwards: dict[str, list[dict[str, Any]]] = {}
        self.answered: list[dict[str, Any]] = []
        self.dead: list[DeadLetter] = []
        self.counts: Counter[str] = Counter()
        self.arrival: int | None = None


class Tally:
    """Counts of what went in and where it went; shared by the worker threads of one process."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self.counts: Counter[str] = Counter()

    def add(self, counts: dict[str, int] | Counter[str]) -> None:
        with self._lock:
            self.counts.update(counts)

    def snapshot(self) -> dict[str, int]:
        with self._lock:
            return dict(self.counts)


REMEMBERED_ADDRESSES = 500_000
# Evidence of one arrival millisecond is applied side inputs first, then raw, then forwarded lookups.
ROLE_RANK = {"exporters": 0, "ip_events": 1, RAW: 2, FORWARDED: 3}
# How often a reader tells every shard how far it has read; it never changes an answer, only how soon.
PROGRESS_EVERY_S = 0.1


def shard_of(ip: str, shards: int) -> int:
    # crc32, not hash(): the shard must be the same in every process of the cluster.
    return zlib.crc32(ip.encode()) % shards


class Routers:
    """One Router per worker thread: each keeps the progress of the partitions its worker reads, and
    tells the shards only about those, after it has handed them that progress's work."""

    def __init__(self, config: Config, tally: Tally, entitlements: Entitlements):
        self._local = threading.local()
        self._args = (config, tally, entitlements)

    def route(self, messages: Iterable[Message]) -> list[tuple[str, Any]]:
        router = getattr(self._local, "router", None)
        if router is None:
            router = self._local.router = Router(*self._args)
        return router.route(messages)


class Router:
    def __init__(self, config: Config, tally: Tally, entitlements: Entitlements, now_ms=None, wall_s=None):
        self.home = config.region
        self.regions = RegionMap(config.regions)
        self.shards = config.attribution.shards
        self.shard_keys = [f"{i:04d}" for i in range(self.shards)]
        self.max_future_ms = int(config.attribution.max_future_s * 1000)
        self.max_age_ms = int(config.attribution.max_age_s * 1000)
        self.now_ms = now_ms or (lambda: int(time.time() * 1000))
        self.wall_s = wall_s or time.monotonic
        self.tally = tally
        self.limits = config.limits
        self.entitlements = entitlements
        self.bound_ms = int(config.trust.clock_bound_s * 1000)
        self.arrival_check = ArrivalCheck(self.bound_ms)
        self.progress: dict[PartitionId, int] = {}  # partition -> arrival time read up to
        self.told: dict[PartitionId, int] = {}
        self.told_at = 0.0
        self.told_cell = -1
        self.floor: dict[PartitionId, int] = {}  # recordings without arrival times: the latest seen
        # A fleet's flows name the same addresses over and over: remember each one's canonical form,
        # shard and region rather than parse, hash and look it up in the trie for every record.
        self.canonical_forms: dict[str, tuple[str, int]] = {}
        self.places: dict[str, tuple[int, str | None]] = {}

    def canonical(self, text: str, name: str = "ip") -> tuple[str, int]:
        found = self.canonical_forms.get(text)
        if found is None:
            found = canonical_ip(text, name)
            if len(self.canonical_forms) >= REMEMBERED_ADDRESSES:
                self.canonical_forms.clear()
            self.canonical_forms[text] = found
        return found

    def place(self, ip: str) -> tuple[int, str | None]:
        """(shard, region) of a canonical address."""
        found = self.places.get(ip)
        if found is None:
            found = (shard_of(ip, self.shards), self.regions.region_of(ip))
            if len(self.places) >= REMEMBERED_ADDRESSES:
                self.places.clear()
            self.places[ip] = found
        return found

    def route(self, messages: Iterable[Message]) -> list[tuple[str, Any]]:
        """Returns (shard key, ShardWork or Progress), ("forward", Forward), ("answered", flows),
        ("dead", DeadLetter)."""
        now = self.now_ms()
        wall_bounds = TimeBounds(now - self.max_age_ms, now + self.max_future_ms)
        out: list[tuple[str, Any]] = []
        forwards: dict[str, list] = {}
        answered: list[dict[str, Any]] = []
        dead: list[DeadLetter] = []
        counts: Counter[str] = Counter()
        progress = self.progress
        keep = self.limits.dead_letter_bytes
        for message in messages:
            origin = message.origin
            part = (origin.role, origin.partition)
            if message.caught_up_ms is not None:
                if message.caught_up_ms > progress.get(part, -1):
                    progress[part] = message.caught_up_ms
                continue
            # A record's times are judged against its message's arrival, which every run of the same input
            # shares (a live run, a replay a week later), and only without one against the wall clock.
            at = message.arrival_ms
            bounds = wall_bounds if at is None else TimeBounds(at - self.max_age_ms, at + self.max_future_ms)
            routed = Routed()
            try:
                self._route_message(message, bounds, routed)
            except Exception as e:  # noqa: BLE001 - a surprise in one message must not stop the job
                # Whatever the message had started to produce is dropped with it: it is in the dead
                # letters once, whole, with the exception, and the job goes on with the next one.
                detail = f"{type(e).__name__}: {e}"
                routed = Routed()
                routed.dead.append(DeadLetter.of("internal_error", detail, message.value or b"", origin, keep))
                routed.counts[f"in.{origin.role}"] += 1
                routed.counts["dead.internal_error"] += 1
            out.extend(routed.works)
            for region, flows in routed.forwards.items():
                forwards.setdefault(region, []).extend(flows)
            answered.extend(routed.answered)
            dead.extend(routed.dead)
            counts.update(routed.counts)
            arrival = routed.arrival if routed.arrival is not None else progress.get(part, 0) + 1
            if arrival - 1 > progress.get(part, -1):
                progress[part] = arrival - 1  # another message may yet share this millisecond
        for region, flows in forwards.items():
            counts[f"forwarded.{region}"] += len(flows)
            out.append(("forward", Forward(region, flows)))
        if answered:
            out.append(("answered", answered))
        out.extend(("dead", letter) for letter in dead)
        self._tell_progress(out)
        self.tally.add(counts)
        return out

    def _route_message(self, message: Message, bounds: TimeBounds, routed: Routed) -> None:
        """One message's records to their places, in `routed`; raises on anything unexpected."""
        origin = message.origin
        part = (origin.role, origin.partition)
        counts, forwards, answered, bad = routed.counts, routed.forwards, routed.answered, routed.dead
        if message.error is None:
            records, decoded_bad = decode_message(message.value, origin, bounds, self.canonical, self.limits)
        else:
            keep = self.limits.dead_letter_bytes
            records, decoded_bad = [], [DeadLetter.of("kafka_error", message.error, message.value or b"", origin, keep)]
        bad.extend(decoded_bad)
        arrival = message.arrival_ms
        if arrival is None:
            # A recording without arrival times: the latest time its records name stands in, which
            # the hosts can move; recordings made by `flowattr simulate` or from Kafka carry them.
            arrival = max(self.floor.get(part, 0), max((_event_ms(r) for r in records), default=0))
            self.floor[part] = arrival
        routed.arrival = arrival
        role = origin.role
        counts[f"in.{role}"] += len(records) + len(bad)
        works: dict[int, ShardWork] = {}
        order = (ROLE_RANK[role], origin.partition, origin.offset)
        if role == RAW and records:
            records = self._weigh(records, message, arrival, bad, answered, counts)
        for letter in bad:
            counts[f"dead.{letter.reason}"] += 1
        # What this message's heartbeats claim: a flow's own claim within one of them adds nothing (the
        # heartbeat's range is applied first), so it is not sent.
        beats: dict[tuple, list[tuple[int, int]]] = {}
        for record in records:
            if record["kind"] == HEARTBEAT:
                beat = (record["ip"], record["workload"], record.get("ports"), record["exporter"])
                beats.setdefault(beat, []).append((record["start_ms"], record["end_ms"]))
        for record in records:
            kind = record["kind"]
            if kind == FLOW and record.get("open"):
                # An interim report of a connection still open: ownership only, answered when it closes.
                self._claim(record, works, arrival, order, heartbeat=True)
                counts["absorbed.open_flow"] += 1
            elif kind == FLOW:
                self._route_flow(record, role, works, arrival, order, forwards, answered, beats)
            elif kind == HEARTBEAT:
                self._claim(record, works, arrival, order, heartbeat=True)
                counts["absorbed.heartbeat"] += 1
            else:
                owner = record["owner"] if record["action"] == "assigned" else None
                self._work(works, record["ip"], arrival, order).items.append(
                    Assignment(record["ip"], owner, record["time_ms"])
                )
                counts["absorbed.ip_event"] += 1
        routed.works = [(self.shard_keys[i], work) for i, work in works.items()]

    def _tell_progress(self, out: list[tuple[str, Any]]) -> None:
        """Every shard hears how far this worker has read, after this batch's work for it.

        Only when it can matter: shards decide on a grid of due points, and their clock is the slowest
        partition's progress, so while this worker's slowest partition stays between the same two
        points (on the same partitions) no decision can come due, and a quiet job stays quiet."""
        wall = self.wall_s()
        if self.progress == self.told or wall - self.told_at < PROGRESS_EVERY_S:
            return
        cell = min(self.progress.values()) // Shard.DUE_GRID_MS
        if cell == self.told_cell and self.progress.keys() == self.told.keys():
            return
        self.told_cell = cell
        self.told = dict(self.progress)
        self.told_at = wall
        told = Progress(self.told)
        out.extend((key, told) for key in self.shard_keys)

    def _weigh(self, records, message: Message, arrival: int, bad: list, answered: list, counts) -> list:
        """A raw message's records as far as their exporter can be believed: under its key, within its
        entitlement, on its corrected clock."""
        key = message.key
        if message.arrival_ms is not None:
            claimed = None if key is None else key.decode("utf-8", "replace")
            kept = []
            for record in records:
                if record["exporter"] == claimed:
                    kept.append(record)
                else:
                    detail = f"exporter {record['exporter']!r} came under message key {claimed!r}"
                    keep = self.limits.dead_letter_bytes
                    bad.append(DeadLetter.of("exporter_key_mismatch", detail, orjson.dumps(record), message.origin, keep))
            records = kept
            if not records:
                return records
        heartbeats = [r["end_ms"] for r in records if r["kind"] == HEARTBEAT]
        possible = [r["end_ms"] for r in records if r["end_ms"] <= arrival + self.bound_ms]
        report = max(heartbeats or possible or [arrival])
        exporter_ok = message.arrival_ms is None or self.arrival_check.observe(records[0]["exporter"], arrival, report)
        kept = []
        for record in records:
            trusted = exporter_ok and record["end_ms"] <= arrival + self.bound_ms
            if record["kind"] == HEARTBEAT:
                if not trusted:
                    bad.append(_refused(record, "untrusted_clock", message, "its exporter's clock is beyond the bound"))
                elif not self.entitlements.allows(record["exporter"], record["ip"]):
                    bad.append(_refused(record, "unentitled_claim", message, "outside its exporter's entitlement"))
                else:
                    kept.append(record)
                continue
            record.pop("local_refused", None)
            if not trusted:
                _refuse_local(record, UNTRUSTED_CLOCK)
                answered.append(attributed(record, UNATTRIBUTED, reason=UNTRUSTED_CLOCK))
                counts["refused.clock"] += 1
                continue
            allowed = self.entitlements.allows(record["exporter"], record["local_ip"])
            if record["local_workload"] is not None and not allowed:
                _refuse_local(record, UNENTITLED)
                counts["refused.unentitled"] += 1
            kept.append(record)
        return kept

    def _work(self, works: dict[int, ShardWork], ip: str, arrival: int, order: tuple) -> ShardWork:
        i = self.place(ip)[0]
        work = works.get(i)
        if work is None:
            work = works[i] = ShardWork(arrival, order)
        return work

    def _claim(self, record, works, arrival, order, heartbeat: bool) -> None:
        if record["kind"] == HEARTBEAT:
            ip, workload, ports = record["ip"], record["workload"], record.get("ports")
        else:
            ip, workload, ports = record["local_ip"], record["local_workload"], record.get("local_ports")
            if workload is None:
                return
        # Every ownership range keeps its workload's name: one shared string, not one per record.
        claim = Claim(ip, intern(workload), record["start_ms"], record["end_ms"], ports, intern(record["exporter"]))
        items = self._work(works, ip, arrival, order).items
        if heartbeat:
            items.insert(0, claim)  # claims of flows within it are then found covered and cost nothing
        else:
            items.append(claim)

    def _route_flow(self, flow, role, works, arrival, order, forwards, answered, beats) -> None:
        local_ip, remote_ip = flow["local_ip"], flow["remote_ip"]
        remote_region = self.place(remote_ip)[1]
        workload = flow["local_workload"]
        # A forwarded flow's local address lives in another region: it is a lookup here, not a claim.
        if workload is not None and role != FORWARDED:
            spans = beats.get((local_ip, workload, flow.get("local_ports"), flow["exporter"])) if beats else None
            start, end = flow["start_ms"], flow["end_ms"]
            if not (spans and _held(spans, start, end)):
                self._claim(flow, works, arrival, order, heartbeat=False)
            if remote_region is not None:
                key = (local_ip, flow["local_port"], remote_ip, flow["remote_port"])
                self._work(works, local_ip, arrival, order).items.append(
                    Connection(key, flow["start_ms"], intern(workload), intern(flow["exporter"]))
                )
        if remote_region is None:
            answered.append(attributed(flow, EXTERNAL))
        elif remote_region != self.home and role != FORWARDED:
            forwards.setdefault(remote_region, []).append(flow)
        else:
            self._work(works, remote_ip, arrival, order).items.append(Lookup(flow))


def _held(spans: list[tuple[int, int]], start: int, end: int) -> bool:
    """Whether one of a message's heartbeats of the same claim holds [start, end]."""
    return any(s <= start and end <= e for s, e in spans)


def _refuse_local(flow: dict[str, Any], reason: str) -> None:
    """The host's name for its own end is not believed: kept aside, never used or passed on as fact."""
    if flow["local_workload"] is not None:
        flow["claimed_local_workload"] = flow["local_workload"]
        flow["local_workload"] = None
    flow.pop("local_ports", None)
    flow["local_refused"] = reason


def _refused(record: dict[str, Any], reason: str, message: Message, why: str) -> DeadLetter:
    detail = f"{record['exporter']} claims {record['ip']} for {record['workload']}: {why}"
    return DeadLetter(reason, detail, orjson.dumps(record), message.origin)


def _event_ms(record: dict[str, Any]) -> int:
    return record.get("end_ms") or record.get("time_ms") or 0
