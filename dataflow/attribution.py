"""The attribution decision for one shard of the address space. Evidence (ownership claims, connection
reports, assignment events) and lookups are applied in arrival order as the arrival clock passes them;
each lookup is first tried a delay after its flow's start, answered from the remote host's own report of
the connection or from the ownership range covering its start, retried while new evidence arrives, and
given up as unattributed at the maximum wait. Never guess: contradicting evidence is a conflict."""

from __future__ import annotations

import heapq
from collections import deque
from typing import Any, NamedTuple

from dataflow import ownership
from dataflow.clock import ENDED, ArrivalClock, PartitionId, PeerClocks, first_try_ms
from dataflow.config import AttributionConfig
from dataflow.records import (
    ATTRIBUTED_OUTCOME,
    CONFLICT,
    EXPIRED,
    NO_OWNER,
    UNATTRIBUTED,
    UNTRUSTED_CLOCK,
    attributed,
)

Flow = dict[str, Any]
# (local_ip, local_port, remote_ip, remote_port) as the reporting host saw it.
ConnectionKey = tuple[str, int, str, int]
Ports = tuple[int, int]


class Claim(NamedTuple):
    """A host's proof that `workload` owned `ip` (or only `ports` of it) during [start, end]."""

    ip: str
    workload: str
    start: int
    end: int
    ports: Ports | None = None
    exporter: str = ""


class Connection(NamedTuple):
    """A host's report of one connection, kept at its local address for the other end's lookup."""

    key: ConnectionKey
    start: int
    workload: str
    exporter: str = ""


class Assignment(NamedTuple):
    """An assignment event: `owner` holds `ip` from `time` on (None: nobody)."""

    ip: str
    owner: str | None
    time: int


class Lookup(NamedTuple):
    """Name the flow's remote end."""

    flow: Flow


class ShardWork:
    """What one input message brings to one shard, stamped with the message's arrival and its place in
    its partition (the order evidence of one arrival millisecond is applied in)."""

    __slots__ = ("arrival_ms", "order", "items")

    def __init__(self, arrival_ms: int, order: tuple, items: list | None = None):
        self.arrival_ms = arrival_ms
        self.order = order
        self.items = [] if items is None else items

    def __lt__(self, other: ShardWork) -> bool:
        return (self.arrival_ms, self.order) < (other.arrival_ms, other.order)


class Progress(NamedTuple):
    """A reader's word that these input partitions have been read up to these arrival times."""

    reached: dict[PartitionId, int]


class Pending:
    """A lookup waiting for its first try or for new evidence."""

    __slots__ = ("flow", "start", "deadline", "settle", "live", "sampled")

    def __init__(self, flow: Flow, start: int, deadline: int, settle: int):
        self.flow = flow
        self.start = start  # on the corrected clock
        self.deadline = deadline
        self.settle = settle
        self.live = True
        self.sampled = False


class Shard:
    """State and decisions for the addresses that hash to one shard."""

    def __init__(self, settings: AttributionConfig, partitions: frozenset[PartitionId], clock_bound_ms: int = 30_000):
        """`partitions`: every input partition whose arrival time the shard must have seen pass."""
        self.delay_ms = int(settings.delay_s * 1000)
        self.event_settle_ms = int(min(settings.event_settle_s, settings.max_wait_s) * 1000)
        self.max_wait_ms = int(settings.max_wait_s * 1000)
        self.retention_ms = int(settings.retention_s * 1000)
        self.max_ranges = settings.max_ranges_per_ip
        self.max_pending = settings.max_pending_per_shard
        self.max_connections = settings.max_connections_per_shard
        self.evicted: dict[str, int] = {}  # what the bounds pushed out, by kind; read and reset by the caller
        # Lookups of addresses no evidence named when they came, by the exporter that asked: a scan's.
        self.unnamed: dict[str, deque[Pending]] = {}
        self.unnamed_candidates = 0
        self.guard_ms = settings.skew_guard_ms
        self.window_ms = settings.connection_window_ms
        self.clock = ArrivalClock(partitions)
        self.now_ms = 0  # evidence that arrived up to here is applied, lookups due up to here decided
        self.inbox: list[ShardWork] = []  # read but not yet arrived on the clock: a heap
        self.late = 0  # works read after the clock had passed their arrival (applied at once)
        self.peers = PeerClocks(self.guard_ms, clock_bound_ms)
        self.refused_claims = 0  # claims of exporters whose clocks their peers contradict
        self.claimers: dict[tuple[str, str], tuple[str, str]] = {}  # one shared (workload, exporter) each
        self.ranges: dict[str, list] = {}
        self.port_ranges: dict[str, dict[Ports, list]] = {}  # shared IPv4 addresses, by port range
        self.events: dict[str, list] = {}
        self.connections: dict[ConnectionKey, list[tuple[int, str, str]]] = {}  # (start, workload, exporter)
        self.connection_order: deque[tuple[int, ConnectionKey, tuple]] = deque()  # (arrival, key, report)
        self.connection_count = 0
        # The same reports by the exporter that sent them, oldest first: what a flood's bound evicts.
        self.reports_by_exporter: dict[str, deque[tuple[ConnectionKey, tuple]]] = {}
        self.report_candidates = 0
        self.first_tries: list[tuple[int, int, Pending]] = []
        # Lookups past their first try wait here for new evidence on their address, and in `deadlines`.
        self.waiting: dict[str, list[Pending]] = {}
        self.deadlines: list[tuple[int, int, Pending]] = []
        self.seq = 0
        # Pruning runs at fixed points of arrival time, in order with everything else, so that what it
        # drops never depends on how the clock's progress happened to be chunked.
        self.prune_every_ms = max(self.delay_ms, 1000)
        self.range_prune_every = max(self.retention_ms // 4 // self.prune_every_ms, 1)
        self.next_prune_ms: int | None = None

    def pending(self) -> int:
        return len(self.first_tries) + sum(len(entries) for entries in self.waiting.values())

    def stats(self) -> dict[str, int]:
        return {
            "addresses": len(self.ranges) + len(self.port_ranges),
            "ranges": sum(len(s) for s in self.ranges.values()) // 3
            + sum(len(s) for by_port in self.port_ranges.values() for s in by_port.values()) // 3,
            "pending": self.pending(),
            "buffered": len(self.inbox),
            "late": self.late,
            "refused_claims": self.refused_claims,
            "clock_ms": self.now_ms,
        }

    def absorb(self, item: ShardWork | Progress) -> list[Flow]:
        """Take one message's work or a reader's progress; return the flows decided because of it."""
        decided: list[Flow] = []
        if type(item) is Progress:
            self.clock.observe(item.reached)
        elif item.arrival_ms <= self.now_ms:
            self.late += 1
            self._apply(item, decided)
        else:
            heapq.heappush(self.inbox, item)
        now = self.clock.now()
        if now is not None and self.now_ms < now < ENDED:  # every input ended: finish() answers the rest
            self._advance_to(now, decided)
        return decided

    def finish(self) -> list[Flow]:
        """End of input (file mode): everything read has arrived; answer every pending lookup from what
        is known, or give up."""
        decided: list[Flow] = []
        if self.inbox:
            self._advance_to(max(w.arrival_ms for w in self.inbox), decided)
        while self.first_tries:
            _, _, p = heapq.heappop(self.first_tries)
            decided.append(self._answer(p, final=True) or _no_owner(p.flow))
        for _, _, p in self.deadlines:
            if p.live:
                decided.append(self._answer(p, final=True) or _no_owner(p.flow))
        self.deadlines.clear()
        self.waiting.clear()
        return decided

    def _advance_to(self, now: int, decided: list[Flow]) -> None:
        """Apply the evidence and make the decisions due up to `now`, in time order; evidence of a
        millisecond comes before the decisions of that millisecond."""
        inbox, first_tries, deadlines = self.inbox, self.first_tries, self.deadlines
        while True:
            work_at = inbox[0].arrival_ms if inbox else ENDED
            due_at = min(first_tries[0][0] if first_tries else ENDED, deadlines[0][0] if deadlines else ENDED)
            if self.next_prune_ms is None and min(work_at, due_at) < ENDED:
                self.next_prune_ms = (min(work_at, due_at) // self.prune_every_ms + 1) * self.prune_every_ms
            prune_at = ENDED if self.next_prune_ms is None else self.next_prune_ms
            if min(work_at, due_at, prune_at) > now or work_at == due_at == ENDED:
                break
            if work_at <= due_at and work_at <= prune_at:
                work = heapq.heappop(inbox)
                self.now_ms = max(self.now_ms, work.arrival_ms)
                self._apply(work, decided)
            elif due_at <= prune_at:
                self.now_ms = max(self.now_ms, due_at)
                self._decide_due(decided)
            else:
                self.now_ms = max(self.now_ms, prune_at)
                self._prune(prune_at)
        self.now_ms = max(self.now_ms, now)

    def _apply(self, work: ShardWork, decided: list[Flow]) -> None:
        touched = set()
        waiting = self.waiting
        horizon = self.now_ms - self.retention_ms
        for item in work.items:
            kind = type(item)
            if kind is Claim:
                ip = item.ip
                if self.peers.offset(item.exporter) is None:
                    self.refused_claims += 1
                    continue
                if item.ports is None:
                    spans = self.ranges.get(ip)
                    if spans is None:
                        spans = self.ranges[ip] = []
                else:
                    by_port = self.port_ranges.get(ip)
                    if by_port is None:
                        by_port = self.port_ranges[ip] = {}
                    spans = by_port.get(item.ports)
                    if spans is None:
                        spans = by_port[item.ports] = []
                        if len(by_port) > self.max_ranges:
                            # The port range heard of longest ago goes: its newest claim ends first.
                            del by_port[min(by_port, key=lambda ports: by_port[ports][-2] if by_port[ports] else ENDED)]
                            self._count_eviction("port_ranges")
                if ownership.claim(spans, self._claimer(item.workload, item.exporter), item.start, item.end, self.max_ranges):
                    self._count_eviction("ranges")
            elif kind is Connection:
                key = item.key
                report = (item.start, item.workload, item.exporter)
                reports = self.connections.get(key)
                if reports is None:
                    self.connections[key] = [report]
                else:
                    reports.append(report)
                self.connection_order.append((work.arrival_ms, key, report))
                self.connection_count += 1
                mine = self.reports_by_exporter.get(item.exporter)
                if mine is None:
                    mine = self.reports_by_exporter[item.exporter] = deque()
                mine.append((key, report))
                self.report_candidates += 1
                if self.report_candidates > 2 * self.max_connections:
                    self._forget_gone_reports()
                if self.connection_count > self.max_connections:
                    self._evict_connections()
                ip = key[0]
            elif kind is Lookup:
                flow = item.flow
                offset = self.peers.offset(flow["exporter"])
                if offset is None:
                    decided.append(attributed(flow, UNATTRIBUTED, reason=UNTRUSTED_CLOCK))
                    continue
                start = flow["start_ms"] - offset
                if start < horizon:
                    decided.append(attributed(flow, UNATTRIBUTED, reason=EXPIRED))
                    continue
                arrival = work.arrival_ms
                first = first_try_ms(start, arrival, self.delay_ms)
                settle = first_try_ms(start, arrival, self.event_settle_ms)
                pending = Pending(flow, start, first + self.max_wait_ms - self.delay_ms, settle)
                self.seq += 1
                heapq.heappush(self.first_tries, (first, self.seq, pending))
                if not self._named(flow):
                    queue = self.unnamed.get(flow["exporter"])
                    if queue is None:
                        queue = self.unnamed[flow["exporter"]] = deque()
                    queue.append(pending)
                    self.unnamed_candidates += 1
                    if self.unnamed_candidates > 2 * self.max_pending:
                        self._forget_answered_lookups()
                if len(self.first_tries) + len(self.deadlines) > self.max_pending:
                    self._evict_lookups(decided)
                continue
            else:
                ip = item.ip
                events = self.events.get(ip)
                if events is None:
                    events = self.events[ip] = []
                ownership.assign(events, item.owner, item.time)
            if ip in waiting:
                touched.add(ip)
        for ip in touched:
            self._retry(ip, decided)

    def _count_eviction(self, kind: str) -> None:
        self.evicted[kind] = self.evicted.get(kind, 0) + 1

    def _evict_lookups(self, decided: list[Flow]) -> None:
        """Over the bound, as under a scan: a tenth of the bound is answered now, from what is known.
        First the oldest lookups of the exporter asking most about addresses that no evidence names (a
        scanner's: they are answered as their deadline would answer them), while still unnamed; the
        lookups of every other host keep their wait. Only when there are none, the lookups due soonest."""
        target = max(1, self.max_pending // 10)
        killed = 0
        while killed < target and self.unnamed:
            exporter = max(self.unnamed, key=lambda e: len(self.unnamed[e]))
            queue = self.unnamed[exporter]
            while queue and killed < target:
                p = queue.popleft()
                self.unnamed_candidates -= 1
                if p.live and not self._named(p.flow):
                    p.live = False
                    decided.append(self._answer(p, final=True) or _no_owner(p.flow))
                    killed += 1
            if not queue:
                del self.unnamed[exporter]
        if killed:
            # Their places in the heaps go too (and those of lookups answered since they waited there);
            # in place: the heaps are held by reference while time advances.
            self.first_tries[:] = [e for e in self.first_tries if e[2].live]
            heapq.heapify(self.first_tries)
            self.deadlines[:] = [e for e in self.deadlines if e[2].live]
            heapq.heapify(self.deadlines)
            for ip in [ip for ip, entries in self.waiting.items() if not all(e.live for e in entries)]:
                entries = [e for e in self.waiting[ip] if e.live]
                if entries:
                    self.waiting[ip] = entries
                else:
                    del self.waiting[ip]
        while len(self.first_tries) + len(self.deadlines) > self.max_pending:
            if self.first_tries:
                _, _, p = heapq.heappop(self.first_tries)
            else:
                _, _, p = heapq.heappop(self.deadlines)
                if not p.live:
                    continue  # already answered: its place in the heap was all that was left of it
                ip = p.flow["remote_ip"]
                entries = [e for e in self.waiting.get(ip, ()) if e is not p]
                if entries:
                    self.waiting[ip] = entries
                else:
                    self.waiting.pop(ip, None)
            p.live = False
            decided.append(self._answer(p, final=True) or _no_owner(p.flow))
            killed += 1
        self.evicted["lookups"] = self.evicted.get("lookups", 0) + killed

    def _named(self, flow: Flow) -> bool:
        """Whether any evidence here speaks of the flow's remote address."""
        ip = flow["remote_ip"]
        return (ip in self.ranges or ip in self.port_ranges or ip in self.events
                or (ip, flow["remote_port"], flow["local_ip"], flow["local_port"]) in self.connections)

    def _drop_report(self, key: ConnectionKey, report: tuple) -> bool:
        reports = self.connections.get(key)
        if reports is None or report not in reports:
            return False  # evicted or pruned already
        reports.remove(report)
        if not reports:
            del self.connections[key]
        self.connection_count -= 1
        return True

    def _forget_gone_reports(self) -> None:
        """The candidates for eviction are kept to what is still there: reports pruned by age go."""
        for exporter in list(self.reports_by_exporter):
            kept = deque(e for e in self.reports_by_exporter[exporter] if e[1] in self.connections.get(e[0], ()))
            if kept:
                self.reports_by_exporter[exporter] = kept
            else:
                del self.reports_by_exporter[exporter]
        self.report_candidates = sum(len(d) for d in self.reports_by_exporter.values())

    def _forget_answered_lookups(self) -> None:
        for exporter in list(self.unnamed):
            kept = deque(p for p in self.unnamed[exporter] if p.live)
            if kept:
                self.unnamed[exporter] = kept
            else:
                del self.unnamed[exporter]
        self.unnamed_candidates = sum(len(d) for d in self.unnamed.values())

    def _evict_connections(self) -> None:
        """Over the bound: a tenth of it goes, the oldest reports of the exporter that sent the most (a
        scanner's), so that the reports of every other host stay for the other end's lookup."""
        target = max(1, self.max_connections // 10)
        dropped = 0
        while dropped < target and self.reports_by_exporter:
            exporter = max(self.reports_by_exporter, key=lambda e: len(self.reports_by_exporter[e]))
            mine = self.reports_by_exporter[exporter]
            while mine and dropped < target:
                self.report_candidates -= 1
                dropped += self._drop_report(*mine.popleft())
            if not mine:
                del self.reports_by_exporter[exporter]
        self.evicted["connections"] = self.evicted.get("connections", 0) + dropped

    def _decide_due(self, decided: list[Flow]) -> None:
        clock = self.now_ms
        first_tries = self.first_tries
        while first_tries and first_tries[0][0] <= clock:
            _, seq, p = heapq.heappop(first_tries)
            if not p.sampled:
                self._sample_clocks(p)
            answer = self._answer(p)
            if answer is not None:
                p.live = False
                decided.append(answer)
                continue
            if p.deadline <= clock:
                p.live = False
                decided.append(self._answer(p, final=True) or _no_owner(p.flow))
                continue
            ip = p.flow["remote_ip"]
            if clock < p.settle and ip in self.events and ip not in self.ranges and ip not in self.port_ranges:
                heapq.heappush(first_tries, (p.settle, seq, p))  # try again once events have settled
                continue
            self.waiting.setdefault(ip, []).append(p)
            heapq.heappush(self.deadlines, (p.deadline, seq, p))
        deadlines = self.deadlines
        while deadlines and deadlines[0][0] <= clock:
            _, _, p = heapq.heappop(deadlines)
            if not p.live:
                continue
            p.live = False
            ip = p.flow["remote_ip"]
            entries = [e for e in self.waiting.get(ip, ()) if e.live]
            if entries:
                self.waiting[ip] = entries
            else:
                self.waiting.pop(ip, None)
            decided.append(self._answer(p, final=True) or _no_owner(p.flow))

    def _claimer(self, workload: str, exporter: str) -> tuple[str, str]:
        pair = (workload, exporter)
        return self.claimers.setdefault(pair, pair)

    def _sample_clocks(self, p: Pending) -> None:
        """The other host's report of this same connection, if it came, shows how the two clocks differ."""
        p.sampled = True
        flow = p.flow
        reports = self.connections.get((flow["remote_ip"], flow["remote_port"], flow["local_ip"], flow["local_port"]))
        for start, _, exporter in reports or ():
            self.peers.observe(flow["exporter"], exporter, start - flow["start_ms"])

    def _retry(self, ip: str, decided: list[Flow]) -> None:
        still = []
        for p in self.waiting[ip]:
            if not p.live:
                continue
            answer = self._answer(p)
            if answer is None:
                still.append(p)
            else:
                p.live = False
                decided.append(answer)
        if still:
            self.waiting[ip] = still
        else:
            del self.waiting[ip]

    def _answer(self, p: Pending, final: bool = False) -> Flow | None:
        """The decision for one flow's remote address (docs/attribution.md, the decision table), or None
        while no evidence covers its start. `final`: the last try (the deadline, or the end of input)."""
        flow, start = p.flow, p.start
        ip, port = flow["remote_ip"], flow["remote_port"]
        shared = ip in self.port_ranges
        spans = self._spans_for(ip, port) if shared else self.ranges.get(ip)
        reports = self.connections.get((ip, port, flow["local_ip"], flow["local_port"]))
        clock, reach = self.peers.clock, self.peers.bound_ms
        looker = clock(flow["exporter"])
        guard = self.guard_ms + (looker[1] if looker else 0)  # how far the flow's own start may be off
        if reports:
            names = set()
            for s, w, exporter in reports:
                reporter = clock(exporter)
                if reporter is not None and abs(s - reporter[0] - start) <= self.window_ms + guard - self.guard_ms + reporter[1]:
                    names.add(w)
            if len(names) > 1:
                return attributed(flow, UNATTRIBUTED, reason=CONFLICT, source="heartbeat")
            if names:
                name = names.pop()
                if spans and ownership.contradicted(spans, name, start, guard, clock, reach):
                    return attributed(flow, UNATTRIBUTED, reason=CONFLICT, source="heartbeat")
                return attributed(flow, ATTRIBUTED_OUTCOME, name, None, "heartbeat", "connection")
        if spans:
            owner = ownership.owner_at(spans, start, guard, clock, reach)
            if owner is ownership.CONFLICT:
                return attributed(flow, UNATTRIBUTED, reason=CONFLICT, source="heartbeat")
            if owner is None:
                return None
            return attributed(flow, ATTRIBUTED_OUTCOME, owner, None, "heartbeat", "range")
        if shared or ip in self.ranges:
            return None
        # Assignment events speak only for addresses that never sent a heartbeat, and only once a
        # late unassignment would have had time to arrive.
        events = self.events.get(ip)
        if events and (self.now_ms >= p.settle or final):
            # The flow's start is on a host's clock: an assignment that changed within the guard of it
            # may have changed before or after it.
            owner = ownership.assigned_at(events, start - guard)
            if owner != ownership.assigned_at(events, start + guard):
                return attributed(flow, UNATTRIBUTED, reason=CONFLICT, source="ip_event")
            if owner is not None:
                return attributed(flow, ATTRIBUTED_OUTCOME, owner, None, "ip_event", "event")
        return None

    def _spans_for(self, ip: str, port: int) -> list | None:
        """A shared address answers only from the claims on the port asked about, never from claims on
        the whole address."""
        found = [spans for (lo, hi), spans in self.port_ranges[ip].items() if lo <= port <= hi and spans]
        if len(found) <= 1:
            return found[0] if found else None
        ranges = sorted(tuple(s[i : i + 3]) for s in found for i in range(0, len(s), 3))
        return [x for r in ranges for x in r]

    def _prune(self, at: int) -> None:
        if (at // self.prune_every_ms) % self.range_prune_every == 0:
            # A sweep of every address is costly; retention only needs it a few times per period.
            horizon = at - self.retention_ms
            for ip in list(self.ranges):
                spans = self.ranges[ip]
                ownership.prune(spans, horizon)
                if not spans:
                    del self.ranges[ip]
            for ip in list(self.port_ranges):
                by_port = self.port_ranges[ip]
                for ports in list(by_port):
                    ownership.prune(by_port[ports], horizon)
                    if not by_port[ports]:
                        del by_port[ports]
                if not by_port:
                    del self.port_ranges[ip]
            for ip in list(self.events):
                ownership.prune_events(self.events[ip], horizon)
        # A connection report is wanted only until the other side's lookup has been answered.
        report_horizon = at - self.max_wait_ms - self.delay_ms
        order = self.connection_order
        while order and order[0][0] < report_horizon:
            _, key, report = order.popleft()
            self._drop_report(key, report)
        self.next_prune_ms = at + self.prune_every_ms


def _no_owner(flow: Flow) -> Flow:
    return attributed(flow, UNATTRIBUTED, reason=NO_OWNER)
