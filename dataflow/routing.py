"""Decode a batch of input messages and send each record where it belongs: its heartbeat to the shard of
its local address, its lookup to the shard of its remote address, to another region's forward topic,
straight out as external, or to the dead letters. Grouping a whole input batch per shard keeps the
per-item cost of the stream runtime off the per-record path."""

from __future__ import annotations

import threading
import time
import zlib
from sys import intern
from collections import Counter
from dataclasses import dataclass
from typing import Any, Iterable

from dataflow.attribution import ASSIGNMENT, CLAIM, CONNECTION, INTERVAL, LOOKUP, ShardWork
from dataflow.config import Config
from dataflow.records import (
    EXTERNAL,
    FLOW,
    FORWARDED,
    HEARTBEAT,
    RAW,
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
    """An input message, whether it came from Kafka or from a line of a file."""

    value: bytes | None
    origin: Origin
    error: str | None = None  # the broker's error in place of a message


@dataclass(slots=True)
class Forward:
    region: str
    flows: list[dict[str, Any]]


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


def shard_of(ip: str, shards: int) -> int:
    # crc32, not hash(): the shard must be the same in every process of the cluster.
    return zlib.crc32(ip.encode()) % shards


class Router:
    def __init__(self, config: Config, tally: Tally, now_ms=None):
        self.home = config.region
        self.regions = RegionMap(config.regions)
        self.shards = config.attribution.shards
        self.shard_keys = [f"{i:04d}" for i in range(self.shards)]
        self.max_future_ms = int(config.attribution.max_future_s * 1000)
        self.max_age_ms = int(config.attribution.max_age_s * 1000)
        self.now_ms = now_ms or (lambda: int(time.time() * 1000))
        self.tally = tally
        self.limits = config.limits
        # A fleet's flows name the same addresses over and over: remember each one's canonical form,
        # shard and region rather than parse, hash and look it up in the trie for every record.
        self.progress: dict[int, int] = {}  # raw partition -> latest event time read from it
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
        """Returns (shard key, [ShardWork per message]), ("forward", Forward), ("external", flows),
        ("dead", DeadLetter).

        A shard's work stays split by message, each carrying the raw topic's progress as of that message,
        so that the shard's event time moves message by message: its answers depend on the order of the
        messages, never on how the runtime happened to batch them (a replay answers as the live run did).
        """
        now = self.now_ms()
        bounds = TimeBounds(now - self.max_age_ms, now + self.max_future_ms)
        by_shard: dict[int, list[ShardWork]] = {}
        forwards: dict[str, list] = {}
        external: list[dict[str, Any]] = []
        dead: list[DeadLetter] = []
        counts: Counter[str] = Counter()
        # Every partition this worker has read so far, not only those in this batch: a shard that hears
        # of a partition only now and then would take its stale position for the slowest.
        progress = self.progress
        for message in messages:
            works: dict[int, ShardWork] = {}
            if message.error is None:
                records, bad = decode_message(message.value, message.origin, bounds, self.canonical, self.limits)
            else:
                records, bad = [], [DeadLetter.of("kafka_error", message.error, message.value or b"", message.origin, self.limits.dead_letter_bytes)]
            role = message.origin.role
            counts[f"in.{role}"] += len(records) + len(bad)
            for letter in bad:
                counts[f"dead.{letter.reason}"] += 1
            dead.extend(bad)
            if role == RAW and records:
                partition = message.origin.partition
                reached = max(_event_ms(r) for r in records)
                if reached > progress.get(partition, 0):
                    progress = {**progress, partition: reached}
            for record in records:
                kind = record["kind"]
                if kind == FLOW and record.get("open"):
                    # An interim report of a connection still open: ownership only, answered when it closes.
                    work = self._work(works, record["local_ip"])
                    if record["local_workload"] is not None:
                        workload = intern(record["local_workload"])
                        work.items.insert(0, (INTERVAL, record["local_ip"], workload, record["start_ms"], record["end_ms"]))
                    counts["absorbed.open_flow"] += 1
                elif kind == FLOW:
                    self._route_flow(record, role, works, forwards, external)
                elif kind == HEARTBEAT:
                    work = self._work(works, record["ip"])
                    workload = intern(record["workload"])
                    work.items.insert(0, (INTERVAL, record["ip"], workload, record["start_ms"], record["end_ms"]))
                    counts["absorbed.heartbeat"] += 1
                else:
                    work = self._work(works, record["ip"])
                    owner = record["owner"] if record["action"] == "assigned" else None
                    work.items.append((ASSIGNMENT, record["ip"], owner, record["time_ms"]))
                    counts["absorbed.ip_event"] += 1
            for i, work in works.items():
                work.progress = progress
                by_shard.setdefault(i, []).append(work)
        self.progress = progress
        out: list[tuple[str, Any]] = [(self.shard_keys[i], w) for i, w in by_shard.items()]
        for region, flows in forwards.items():
            counts[f"forwarded.{region}"] += len(flows)
            out.append(("forward", Forward(region, flows)))
        if external:
            out.append(("external", external))
        out.extend(("dead", letter) for letter in dead)
        self.tally.add(counts)
        return out

    def _work(self, works: dict[int, ShardWork], ip: str) -> ShardWork:
        i = self.place(ip)[0]
        work = works.get(i)
        if work is None:
            work = works[i] = ShardWork()
        return work

    def _route_flow(self, flow, role, works, forwards, external) -> None:
        local_ip, remote_ip = flow["local_ip"], flow["remote_ip"]
        remote_region = self.place(remote_ip)[1]
        workload = flow["local_workload"]
        # A forwarded flow's local address lives in another region: it is a lookup here, not a heartbeat.
        if workload is not None and role != FORWARDED:
            # Every ownership range keeps its workload's name: one shared string, not one per record.
            workload = intern(workload)
            work = self._work(works, local_ip)
            work.items.append((CLAIM, local_ip, workload, flow["start_ms"], flow["end_ms"]))
            if remote_region is not None:
                key = (local_ip, flow["local_port"], remote_ip, flow["remote_port"])
                work.items.append((CONNECTION, key, flow["start_ms"], workload))
        if remote_region is None:
            external.append(attributed(flow, EXTERNAL))
        elif remote_region != self.home and role != FORWARDED:
            forwards.setdefault(remote_region, []).append(flow)
        else:
            work = self._work(works, remote_ip)
            work.items.append((LOOKUP, flow))


def _event_ms(record: dict[str, Any]) -> int:
    return record.get("end_ms") or record.get("time_ms") or 0
