"""The attribution decision for one shard of the address space: learn ownership from heartbeats, hold
each flow's remote-address lookup until event time has passed its start plus the delay, answer it from
the remote host's own report of the connection or from the ownership range covering its start, retry
while new ownership arrives, and give up as unattributed at the maximum wait. Never guess."""

from __future__ import annotations

import heapq
from collections import deque
from typing import Any

from dataflow import ownership
from dataflow.config import AttributionConfig
from dataflow.records import ATTRIBUTED_OUTCOME, CONFLICT, EXPIRED, NO_OWNER, UNATTRIBUTED, attributed

Flow = dict[str, Any]
# (local_ip, local_port, remote_ip, remote_port) as the reporting host saw it.
ConnectionKey = tuple[str, int, str, int]


# A ShardWork's items are tuples led by their kind:
INTERVAL = 0  # (INTERVAL, ip, workload, start, end): a heartbeat over an interval
CLAIM = 1  # (CLAIM, ip, workload, start, end): a flow's proof of its local owner
CONNECTION = 2  # (CONNECTION, (local_ip, local_port, remote_ip, remote_port), start, workload)
ASSIGNMENT = 3  # (ASSIGNMENT, ip, owner or None, time): an assignment event
LOOKUP = 4  # (LOOKUP, flow): name the flow's remote end


class ShardWork:
    """What one input message brings to one shard: its items in arrival order, interval heartbeats
    first (the flow claims within them are then found covered and cost nothing), and how far each
    raw-topic partition has got in event time as of that message. Built per message per shard,
    often for a single record, so it is kept to one list."""

    __slots__ = ("items", "progress")

    def __init__(self, items: list[tuple] | None = None, progress: dict[int, int] | None = None):
        self.items = [] if items is None else items
        self.progress = {} if progress is None else progress

    @classmethod
    def of(cls, progress=None, heartbeats=(), claims=(), connections=(), ip_events=(), lookups=()) -> ShardWork:
        """A ShardWork from plain tuples, kind by kind."""
        items = [(INTERVAL, *h) for h in heartbeats] + [(CLAIM, *c) for c in claims]
        items += [(CONNECTION, *c) for c in connections] + [(ASSIGNMENT, *e) for e in ip_events]
        items += [(LOOKUP, flow) for flow in lookups]
        return cls(items, progress)


class Shard:
    """State and decisions for the addresses that hash to one shard."""

    def __init__(self, settings: AttributionConfig, partitions: int = 1, live: bool = False):
        """`partitions`: how many raw-topic partitions feed the job. `live`: input never ends, so
        event time must also move while input is idle (Kafka); otherwise it moves only with input."""
        self.delay_ms = int(settings.delay_s * 1000)
        self.event_settle_ms = int(min(settings.event_settle_s, settings.max_wait_s) * 1000)
        self.max_wait_ms = int(settings.max_wait_s * 1000)
        self.retention_ms = int(settings.retention_s * 1000)
        self.max_ranges = settings.max_ranges_per_ip
        self.guard_ms = settings.skew_guard_ms
        self.window_ms = settings.connection_window_ms
        self.idle_ms = int(settings.idle_advance_s * 1000) if live else None
        self.partitions = partitions
        self.progress: dict[int, list[int]] = {}  # partition -> [event ms reached, wall ms it last moved]
        self.first_input_wall_ms: int | None = None
        self.progress_seen: dict[int, int] | None = None
        self.ranges: dict[str, list] = {}
        self.events: dict[str, list] = {}
        self.connections: dict[ConnectionKey, list[tuple[int, str]]] = {}
        self.connection_order: deque[tuple[int, ConnectionKey]] = deque()
        self.first_tries: list[tuple[int, int, Flow]] = []
        # Lookups past their first try wait here for new ownership of their address; each entry is
        # [deadline, seq, flow, waiting] and also sits in `deadlines` until it is answered or expires.
        self.waiting: dict[str, list[list]] = {}
        self.deadlines: list[list] = []
        self.seq = 0
        self.clock_ms = 0
        self.last_input_wall_ms = 0
        self.next_prune_ms = 0
        self.next_range_prune_ms = 0

    def pending(self) -> int:
        return len(self.first_tries) + sum(len(entries) for entries in self.waiting.values())

    def absorb(self, work: ShardWork, wall_ms: int) -> list[Flow]:
        """Take one message's work, return the flows decided because of it."""
        touched = set()
        waiting = self.waiting
        ranges = self.ranges
        decided: list[Flow] = []
        horizon = self.clock_ms - self.retention_ms
        looked_up = False
        for item in work.items:
            kind = item[0]
            if kind <= CLAIM:
                _, ip, workload, start, end = item
                spans = ranges.get(ip)
                if spans is None:
                    spans = ranges[ip] = []
                ownership.claim(spans, workload, start, end, self.max_ranges)
            elif kind == CONNECTION:
                _, key, start, workload = item
                reports = self.connections.get(key)
                if reports is None:
                    self.connections[key] = [(start, workload)]
                else:
                    reports.append((start, workload))
                self.connection_order.append((start, key))
                ip = key[0]
            elif kind == LOOKUP:
                looked_up = True
                flow = item[1]
                start = flow["start_ms"]
                if start < horizon:
                    decided.append(attributed(flow, UNATTRIBUTED, reason=EXPIRED))
                else:
                    self.seq += 1
                    heapq.heappush(self.first_tries, (start + self.delay_ms, self.seq, flow))
                continue
            else:
                _, ip, owner, time_ms = item
                events = self.events.get(ip)
                if events is None:
                    events = self.events[ip] = []
                ownership.assign(events, owner, time_ms)
            if ip in waiting:
                touched.add(ip)
        clock = self.clock_ms
        if work.progress is not self.progress_seen:
            # The router makes a new progress dict only when a partition moves; most messages share one.
            self.progress_seen = work.progress
            self._advance(work.progress, wall_ms)
        self.last_input_wall_ms = wall_ms
        for ip in touched:
            self._retry(ip, decided)
        if self.clock_ms != clock or looked_up:
            self._decide_due(decided)
            if self.clock_ms >= self.next_prune_ms:
                self._prune()
        return decided

    def _advance(self, progress: dict[int, int], wall_ms: int) -> None:
        """Event time is where the slowest raw partition has got, so that in a backfill, where one
        partition is read far ahead of another, no lookup is decided before its evidence is read.
        Live, a partition that has not moved for idle_advance_s (or never spoke) stops holding it back."""
        for partition, reached in progress.items():
            seen = self.progress.get(partition)
            if seen is None:
                self.progress[partition] = [reached, wall_ms]
            elif reached > seen[0]:
                seen[0], seen[1] = reached, wall_ms
        if not self.progress:
            return
        if self.idle_ms is None:
            candidate = min(reached for reached, _ in self.progress.values())
        else:
            if self.first_input_wall_ms is None:
                self.first_input_wall_ms = wall_ms
            if len(self.progress) < self.partitions and wall_ms - self.first_input_wall_ms < self.idle_ms:
                return
            active = [reached for reached, moved in self.progress.values() if wall_ms - moved < self.idle_ms]
            candidate = min(active) if active else max(reached for reached, _ in self.progress.values())
        if candidate > self.clock_ms:
            self.clock_ms = candidate

    def tick(self, wall_ms: int) -> list[Flow]:
        """While no input arrives, let event time follow the wall clock so that no lookup waits forever.
        Idle input means every partition has been read to its end: event time is the furthest any of
        them got, plus the time since."""
        idle = wall_ms - self.last_input_wall_ms
        if self.idle_ms is None or idle < self.idle_ms:
            return []
        furthest = max((reached for reached, _ in self.progress.values()), default=self.clock_ms)
        self.clock_ms = max(self.clock_ms, furthest + idle)
        decided: list[Flow] = []
        self._decide_due(decided)
        return decided

    def finish(self) -> list[Flow]:
        """End of input (file mode): answer every pending lookup from what is known, or give up."""
        decided: list[Flow] = []
        while self.first_tries:
            _, _, flow = heapq.heappop(self.first_tries)
            decided.append(self._answer(flow, final=True) or _no_owner(flow))
        for entry in self.deadlines:
            if entry[3]:
                decided.append(self._answer(entry[2], final=True) or _no_owner(entry[2]))
        self.deadlines.clear()
        self.waiting.clear()
        return decided

    def _decide_due(self, decided: list[Flow]) -> None:
        clock = self.clock_ms
        first_tries = self.first_tries
        while first_tries and first_tries[0][0] <= clock:
            _, seq, flow = heapq.heappop(first_tries)
            answer = self._answer(flow)
            if answer is not None:
                decided.append(answer)
                continue
            deadline = flow["start_ms"] + self.max_wait_ms
            if deadline <= clock:
                decided.append(self._answer(flow, final=True) or _no_owner(flow))
                continue
            settled = flow["start_ms"] + self.event_settle_ms
            ip = flow["remote_ip"]
            if clock < settled and ip in self.events and ip not in self.ranges:
                heapq.heappush(first_tries, (settled, seq, flow))  # try again once events have settled
                continue
            entry = [deadline, seq, flow, True]
            self.waiting.setdefault(flow["remote_ip"], []).append(entry)
            heapq.heappush(self.deadlines, entry)
        deadlines = self.deadlines
        while deadlines and deadlines[0][0] <= clock:
            entry = heapq.heappop(deadlines)
            if not entry[3]:
                continue
            entry[3] = False
            flow = entry[2]
            ip = flow["remote_ip"]
            entries = [e for e in self.waiting.get(ip, ()) if e[3]]
            if entries:
                self.waiting[ip] = entries
            else:
                self.waiting.pop(ip, None)
            decided.append(self._answer(flow, final=True) or _no_owner(flow))

    def _retry(self, ip: str, decided: list[Flow]) -> None:
        still = []
        for entry in self.waiting[ip]:
            if not entry[3]:
                continue
            answer = self._answer(entry[2])
            if answer is None:
                still.append(entry)
            else:
                entry[3] = False
                decided.append(answer)
        if still:
            self.waiting[ip] = still
        else:
            del self.waiting[ip]

    def _answer(self, flow: Flow, final: bool = False) -> Flow | None:
        """The decision for one flow's remote address, or None while no evidence covers its start.
        `final`: the last try before giving up (the deadline, or the end of the input)."""
        ip, start = flow["remote_ip"], flow["start_ms"]
        reports = self.connections.get((ip, flow["remote_port"], flow["local_ip"], flow["local_port"]))
        if reports:
            names = {w for s, w in reports if abs(s - start) <= self.window_ms}
            if len(names) == 1:
                return attributed(flow, ATTRIBUTED_OUTCOME, names.pop(), None, "heartbeat", "connection")
            if names:
                return attributed(flow, UNATTRIBUTED, reason=CONFLICT, source="heartbeat")
        spans = self.ranges.get(ip)
        if spans:
            owner = ownership.owner_at(spans, start, self.guard_ms)
            if owner is ownership.CONFLICT:
                return attributed(flow, UNATTRIBUTED, reason=CONFLICT, source="heartbeat")
            if owner is None:
                return None
            return attributed(flow, ATTRIBUTED_OUTCOME, owner, None, "heartbeat", "range")
        # Assignment events speak only for addresses that never sent a heartbeat, and only once a
        # late unassignment would have had time to arrive.
        events = self.events.get(ip)
        if events and (self.clock_ms >= start + self.event_settle_ms or final):
            owner = ownership.assigned_at(events, start)
            if owner is not None:
                return attributed(flow, ATTRIBUTED_OUTCOME, owner, None, "ip_event", "event")
        return None

    def _prune(self) -> None:
        if self.clock_ms >= self.next_range_prune_ms:
            # A sweep of every address is costly; retention only needs it a few times per period.
            horizon = self.clock_ms - self.retention_ms
            for ip in list(self.ranges):
                spans = self.ranges[ip]
                ownership.prune(spans, horizon)
                if not spans:
                    del self.ranges[ip]
            for ip in list(self.events):
                ownership.prune_events(self.events[ip], horizon)
            self.next_range_prune_ms = self.clock_ms + max(self.retention_ms // 4, 1000)
        # A connection report is wanted only until the other side's lookup has been answered.
        report_horizon = self.clock_ms - self.max_wait_ms - self.delay_ms
        order = self.connection_order
        while order and order[0][0] < report_horizon:
            _, key = order.popleft()
            reports = self.connections.get(key)
            if reports is not None:
                reports = [r for r in reports if r[0] >= report_horizon]
                if reports:
                    self.connections[key] = reports
                else:
                    del self.connections[key]
        self.next_prune_ms = self.clock_ms + max(self.delay_ms, 1000)


def _no_owner(flow: Flow) -> Flow:
    return attributed(flow, UNATTRIBUTED, reason=NO_OWNER)
