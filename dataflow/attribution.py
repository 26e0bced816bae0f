"""The attribution decision for one shard of the address space. Evidence (ownership claims, connection
reports, assignment events) and lookups are applied in arrival order as the arrival clock passes them;
each lookup is first tried a delay after its flow's start, answered from the remote host's own report of
the connection or from the ownership range covering its start, retried while new evidence arrives, and
given up as unattributed at the maximum wait. Never guess: contradicting evidence is a conflict."""

from __future__ import annotations

import heapq
from typing import Any, NamedTuple

from dataflow import ownership
from dataflow.clock import ENDED, ArrivalClock, PartitionId, PeerClocks, first_try_ms
from dataflow.config import AttributionConfig
from dataflow.packed import (
    HEAD,
    PACKING,
    SAMPLED,
    UNNAMED,
    Names,
    PackedLookup,
    ReportTable,
    connection_key,
    lookups,
    pack_lookup,
    period_before,
    read_report,
    report,
    reporter,
    timed_lookup,
    with_flags,
)
from dataflow.records import (
    ATTRIBUTED_OUTCOME,
    CONFLICT,
    EXPIRED,
    NO_OWNER,
    UNATTRIBUTED,
    UNTRUSTED_CLOCK,
    answered,
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


class Progress(NamedTuple):
    """A reader's word that these input partitions have been read up to these arrival times."""

    reached: dict[PartitionId, int]


class Shard:
    """State and decisions for the addresses that hash to one shard."""

    # Lookups are decided at points of this grid of arrival time: the lookups due at one point share one
    # buffer, so that a waiting lookup costs its packed bytes and nothing per object.
    DUE_GRID_MS = 1000

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
        self.guard_ms = settings.skew_guard_ms
        self.window_ms = settings.connection_window_ms
        self.clock = ArrivalClock(partitions)
        self.now_ms = 0  # evidence that arrived up to here is applied, lookups due up to here decided
        # Read but not yet arrived on the clock: a heap of (arrival, order, receipt number, work), compared
        # as tuples (the number only parts works whose place is the same, which input never gives).
        self.inbox: list[tuple[int, tuple, int, ShardWork]] = []
        self.received = 0
        self.late = 0  # works read after the clock had passed their arrival (applied at once)
        self.peers = PeerClocks(self.guard_ms, clock_bound_ms, self.max_wait_ms)
        self.refused_claims = 0  # claims of exporters whose clocks their peers contradict
        self.claimers: dict[tuple[str, str], tuple[str, str]] = {}  # one shared (workload, exporter) each
        self.ranges: dict[str, list] = {}
        self.port_ranges: dict[str, dict[Ports, list]] = {}  # shared IPv4 addresses, by port range
        self.events: dict[str, list] = {}
        self.names = Names()
        self.packing = PACKING
        # Connection reports under their packed connection keys, oldest first, each carrying the prune
        # period it arrived in.
        self.reports = ReportTable()
        self.report_count = 0
        self.reports_of: dict[int, int] = {}  # reports held, by exporter number: what a flood's bound evicts
        # Lookups before their first try, packed, by the grid point they are due at (and a heap of those).
        self.first_tries: dict[int, bytearray] = {}
        self.first_try_points: list[int] = []
        # Lookups past their first try wait at their remote address for new evidence, until their
        # deadline; the heap holds (grid point, address) for each address with a deadline at that point.
        self.waiting: dict[str, bytearray] = {}
        self.deadlines: list[tuple[int, str]] = []
        self.deadline_marks: set[tuple[int, str]] = set()
        # Addresses whose lookups wait at a range's edge, where only the margin for the clocks keeps the
        # range from holding their start: tried again when what is known of the clocks changes, since an
        # owner that has left sends no evidence that would retry them.
        self.at_edges: set[str] = set()
        self.clocks_seen = 0
        self.pending_count = 0
        # Lookups of addresses no evidence named when they came, by the exporter that asked: a scan's.
        self.unnamed: dict[str, int] = {}
        # Pruning runs at fixed points of arrival time, in order with everything else, so that what it
        # drops never depends on how the clock's progress happened to be chunked.
        self.prune_every_ms = max(self.delay_ms, 1000)
        self.range_prune_every = max(self.retention_ms // 4 // self.prune_every_ms, 1)
        self.next_prune_ms: int | None = None

    def pending(self) -> int:
        return self.pending_count

    def stats(self) -> dict[str, int]:
        return {
            "addresses": len(self.ranges) + len(self.port_ranges),
            "ranges": sum(len(s) for s in self.ranges.values()) // 3
            + sum(len(s) for by_port in self.port_ranges.values() for s in by_port.values()) // 3,
            "pending": self.pending_count,
            "reports": self.report_count,
            "buffered": len(self.inbox),
            "late": self.late,
            "refused_claims": self.refused_claims,
            "clock_ms": self.now_ms,
        }

    def held_bytes(self) -> dict[str, int]:
        """Bytes of the packed state, by kind: what the state costs before Python's object headers and
        the allocator's slack."""
        return {
            "lookups": sum(len(held) for held in self.first_tries.values()) + sum(len(held) for held in self.waiting.values()),
            "reports": self.reports.nbytes(),
            "clocks": self.peers.nbytes(),
        }

    def absorb(self, item: ShardWork | Progress) -> list[Flow]:
        """Take one message's work or a reader's progress; return the flows decided because of it."""
        decided: list[Flow] = []
        if type(item) is Progress:
            self.clock.observe(item.reached)
        else:
            work = self._packed(item)
            if work.arrival_ms <= self.now_ms:
                self.late += 1
                self._apply(work, decided)
            else:
                self.received += 1
                heapq.heappush(self.inbox, (work.arrival_ms, work.order, self.received, work))
        now = self.clock.now()
        if now is not None and self.now_ms < now < ENDED:  # every input ended: finish() answers the rest
            self._advance_to(now, decided)
        return decided

    def _packed(self, work: ShardWork) -> ShardWork:
        """The work with its lookups packed: input waits for the clock for a second or more, and a
        decoded record costs ten times its packed bytes. The work as it came is left as it was."""
        names = self.names
        items = [pack_lookup(i.flow, names) if type(i) is Lookup else i for i in work.items]
        return ShardWork(work.arrival_ms, work.order, items)

    def finish(self) -> list[Flow]:
        """End of input (file mode): nothing more will arrive, so the clock runs on past every deadline
        and each lookup is decided as a live job decides it once its input has gone quiet: at its first
        try (the two ends' clocks sampled first), retried on nothing new, given up at its deadline. A
        recording of the topics is thus answered as the live job answered them."""
        decided: list[Flow] = []
        self._advance_to(ENDED - 1, decided)
        return decided

    def _advance_to(self, now: int, decided: list[Flow]) -> None:
        """Apply the evidence and make the decisions due up to `now`, in time order; evidence of a
        millisecond comes before the decisions of that millisecond."""
        inbox, first_try_points, deadlines = self.inbox, self.first_try_points, self.deadlines
        while True:
            work_at = inbox[0][0] if inbox else ENDED
            due_at = min(first_try_points[0] if first_try_points else ENDED, deadlines[0][0] if deadlines else ENDED)
            if self.next_prune_ms is None and min(work_at, due_at) < ENDED:
                self.next_prune_ms = (min(work_at, due_at) // self.prune_every_ms + 1) * self.prune_every_ms
            prune_at = ENDED if self.next_prune_ms is None else self.next_prune_ms
            if min(work_at, due_at, prune_at) > now or work_at == due_at == ENDED:
                break
            if work_at <= due_at and work_at <= prune_at:
                work = heapq.heappop(inbox)[3]
                self.now_ms = max(self.now_ms, work.arrival_ms)
                self._apply(work, decided)
            elif due_at <= prune_at:
                self.now_ms = max(self.now_ms, due_at)
                self._decide_due(decided)
                self._retry_edges(decided)
            else:
                self.now_ms = max(self.now_ms, prune_at)
                self._prune(prune_at)
                self._retry_edges(decided)
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
                            self._evict_port_range(by_port)
                if ownership.claim(spans, self._claimer(item.workload, item.exporter), item.start, item.end, self.max_ranges):
                    self._count_eviction("ranges")
            elif kind is Connection:
                ip = item.key[0]
                self._keep_report(connection_key(*item.key), item, work.arrival_ms)
            elif kind is bytes:
                p = PackedLookup(item, 0, self.names)
                offset = self.peers.offset(p.exporter)
                if offset is None:
                    decided.append(attributed(p.flow(self.names), UNATTRIBUTED, reason=UNTRUSTED_CLOCK))
                    continue
                start = p.start - offset
                if start < horizon:
                    decided.append(attributed(p.flow(self.names), UNATTRIBUTED, reason=EXPIRED))
                    continue
                arrival = work.arrival_ms
                first = first_try_ms(start, arrival, self.delay_ms)
                settle = first_try_ms(start, arrival, self.event_settle_ms)
                # The other end's reports that came first go along with the lookup: no table entry to keep.
                carried = self._drop_reports(p.key)
                unnamed = not self._named(p.remote_ip, p.key, carried)
                self._hold_first_try(first, timed_lookup(p, start, first + self.max_wait_ms - self.delay_ms, settle,
                                                         unnamed, carried))
                if unnamed:
                    self.unnamed[p.exporter] = self.unnamed.get(p.exporter, 0) + 1
                if self.pending_count > self.max_pending:
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

    def _evict_port_range(self, by_port: dict[Ports, list]) -> None:
        """The port range heard of longest ago goes: its newest claim ends first."""
        del by_port[min(by_port, key=lambda ports: by_port[ports][-2] if by_port[ports] else ENDED)]
        self._count_eviction("port_ranges")

    def _hold_first_try(self, due: int, packed: bytes) -> None:
        point = -(-due // self.DUE_GRID_MS) * self.DUE_GRID_MS
        held = self.first_tries.get(point)
        if held is None:
            self.first_tries[point] = bytearray(packed)
            heapq.heappush(self.first_try_points, point)
        else:
            held += packed
        self.pending_count += 1

    def _hold_until_deadline(self, p: PackedLookup) -> None:
        ip = p.remote_ip
        held = self.waiting.get(ip)
        if held is None:
            self.waiting[ip] = bytearray(p.raw)
        else:
            held += p.raw
        point = -(-p.deadline // self.DUE_GRID_MS) * self.DUE_GRID_MS
        if (point, ip) not in self.deadline_marks:
            self.deadline_marks.add((point, ip))
            heapq.heappush(self.deadlines, (point, ip))
        self.pending_count += 1

    def _let_go(self, p: PackedLookup) -> None:
        """The lookup leaves the shard's holdings (answered, or given up)."""
        self.pending_count -= 1
        self._forget_unnamed(p)

    def _forget_unnamed(self, p: PackedLookup) -> None:
        if p.flags & UNNAMED:
            left = self.unnamed[p.exporter] - 1
            if left:
                self.unnamed[p.exporter] = left
            else:
                del self.unnamed[p.exporter]

    def _keep_report(self, key: bytes, item: Connection, arrival: int) -> None:
        names = self.names
        exporter = names.number(item.exporter)
        value = report(item.start, names.number(item.workload), exporter, arrival // self.prune_every_ms)
        self.reports.add(key, value)
        self.report_count += 1
        self.reports_of[exporter] = self.reports_of.get(exporter, 0) + 1
        if self.report_count > self.max_connections:
            self._evict_connections()

    def _drop_reports(self, key: bytes) -> tuple[int, ...]:
        gone = self.reports.drop(key)
        for v in gone:
            self._forget_reports(reporter(v), 1)
        return gone

    def _count_eviction(self, kind: str) -> None:
        self.evicted[kind] = self.evicted.get(kind, 0) + 1

    def _evict_lookups(self, decided: list[Flow]) -> None:
        """Over the bound, as under a scan: a tenth of the bound is answered now, from what is known.
        First the lookups of the exporter asking most about addresses that no evidence named when they
        came (a scanner's), those due soonest first, while still unnamed: they are answered as their
        deadline would answer them; the lookups of every other host keep their wait. Only when there are
        none, the lookups due soonest."""
        target = max(1, self.max_pending // 10)
        killed = 0
        while killed < target and self.unnamed:
            exporter = max(self.unnamed, key=self.unnamed.__getitem__)
            killed += self._evict_unnamed(exporter, target - killed, decided)
        while self.pending_count > self.max_pending and self.first_try_points:
            point = self.first_try_points[0]
            held = self.first_tries[point]
            size = HEAD.unpack_from(held)[0]
            p = PackedLookup(bytes(held[:size]), 0, self.names)
            del held[:size]
            if not held:
                del self.first_tries[point]
                heapq.heappop(self.first_try_points)
            decided.append(self._final(p))
            killed += 1
        while self.pending_count > self.max_pending and self.deadlines:
            point, ip = heapq.heappop(self.deadlines)
            self.deadline_marks.discard((point, ip))
            for p in lookups(self.waiting.pop(ip, b""), self.names):
                decided.append(self._final(p))
                killed += 1
        self.evicted["lookups"] = self.evicted.get("lookups", 0) + killed

    def _evict_unnamed(self, exporter: str, target: int, decided: list[Flow]) -> int:
        """Up to `target` of the exporter's lookups that came unnamed and still are, answered now; the
        ones evidence has named since lose the mark and keep their wait."""
        killed = 0
        holdings: list[tuple[int | str, bytearray]] = [(point, self.first_tries[point]) for point in sorted(self.first_tries)]
        holdings += list(self.waiting.items())
        for where, held in holdings:
            if killed >= target or exporter not in self.unnamed:
                break
            kept = bytearray()
            for p in lookups(held, self.names):
                if killed < target and p.flags & UNNAMED and p.exporter == exporter:
                    if self._named(p.remote_ip, p.key, p.carried):
                        self._forget_unnamed(p)
                        kept += with_flags(p.raw, p.flags & ~UNNAMED)
                    else:
                        decided.append(self._final(p))
                        killed += 1
                    continue
                kept += p.raw
            self._replace(where, kept)
        return killed

    def _replace(self, where: int | str, kept: bytearray) -> None:
        if type(where) is int:
            if kept:
                self.first_tries[where] = kept
            else:
                del self.first_tries[where]
                self.first_try_points.remove(where)
                heapq.heapify(self.first_try_points)
        elif kept:
            self.waiting[where] = kept
        else:
            del self.waiting[where]
            self.at_edges.discard(where)

    def _named(self, ip: str, key: bytes, carried: tuple[int, ...] | list[int]) -> bool:
        """Whether any evidence here speaks of the address a lookup asks about."""
        return bool(ip in self.ranges or ip in self.port_ranges or ip in self.events or carried or key in self.reports)

    def _evict_connections(self) -> None:
        """Over the bound: a tenth of it goes, the oldest reports of the exporter that sent the most (a
        scanner's), so that the reports of every other host stay for the other end's lookup."""
        target = max(1, self.max_connections // 10)
        dropped = 0
        while dropped < target and self.reports_of:
            exporter = max(self.reports_of, key=self.reports_of.__getitem__)
            gone = len(self.reports.sift(lambda v: reporter(v) == exporter, target - dropped))
            dropped += gone
            self._forget_reports(exporter, gone)
        self.evicted["connections"] = self.evicted.get("connections", 0) + dropped

    def _forget_reports(self, exporter: int, n: int) -> None:
        self.report_count -= n
        left = self.reports_of[exporter] - n
        if left:
            self.reports_of[exporter] = left
        else:
            del self.reports_of[exporter]

    def _decide_due(self, decided: list[Flow]) -> None:
        clock = self.now_ms
        points = self.first_try_points
        names = self.names
        while points and points[0] <= clock:
            for p in lookups(self.first_tries.pop(heapq.heappop(points)), names):
                self.pending_count -= 1
                reports = self._reports(p)
                if not p.flags & SAMPLED:
                    self._sample_clocks(p, reports)
                verdict = self._verdict(p, reports)
                if verdict is not None:
                    self._forget_unnamed(p)
                    decided.append(self._record(p, verdict))
                    continue
                if p.deadline <= clock:
                    self._forget_unnamed(p)
                    decided.append(self._record(p, self._verdict(p, reports, final=True) or NOBODY))
                    continue
                ip = p.remote_ip
                if not p.flags & SAMPLED:
                    p = PackedLookup(with_flags(p.raw, p.flags | SAMPLED), 0, names)
                if clock < p.settle and ip in self.events and ip not in self.ranges and ip not in self.port_ranges:
                    self._hold_first_try(p.settle, p.raw)  # try again once events have settled
                    continue
                self._hold_until_deadline(p)
        deadlines = self.deadlines
        while deadlines and deadlines[0][0] <= clock:
            point, ip = heapq.heappop(deadlines)
            self.deadline_marks.discard((point, ip))
            held = self.waiting.get(ip)
            if held is None:
                continue
            kept = bytearray()
            for p in lookups(held, names):
                if p.deadline <= clock:
                    decided.append(self._final(p))
                else:
                    kept += p.raw
            self._replace(ip, kept)

    def _final(self, p: PackedLookup) -> Flow:
        self._let_go(p)
        return self._record(p, self._verdict(p, self._reports(p), final=True) or NOBODY)

    def _record(self, p: PackedLookup, verdict: tuple) -> Flow:
        return answered(p.flow(self.names), *verdict)

    def _claimer(self, workload: str, exporter: str) -> tuple[str, str]:
        pair = (workload, exporter)
        return self.claimers.setdefault(pair, pair)

    def _reports(self, p: PackedLookup) -> tuple[int, ...]:
        """The other end's reports of the lookup's connection: those it carries and those come since."""
        return p.carried + self.reports.values(p.key)

    def _sample_clocks(self, p: PackedLookup, reports: tuple[int, ...]) -> None:
        """The other host's report of this same connection, if it came, shows how the two clocks differ."""
        if reports:
            start_ms, names = p.start_ms(), self.names.names
            for value in reports:
                start, _, exporter = read_report(value)
                self.peers.observe(p.exporter, names[exporter], start - start_ms, self.now_ms)

    def _retry_edges(self, decided: list[Flow]) -> None:
        """Clocks are learned at first tries and forgotten at prune points: after either, if anything
        known of them changed, the lookups waiting at a range's edge are tried again (in address order,
        so that a replay answers in the same order)."""
        if self.peers.changes == self.clocks_seen:
            return
        self.clocks_seen = self.peers.changes
        at_edges, self.at_edges = self.at_edges, set()
        for ip in sorted(at_edges):
            if ip in self.waiting:
                self._retry(ip, decided)

    def _retry(self, ip: str, decided: list[Flow]) -> None:
        kept = bytearray()
        for p in lookups(self.waiting[ip], self.names):
            verdict = self._verdict(p, self._reports(p))
            if verdict is None:
                kept += p.raw
            else:
                self._let_go(p)
                decided.append(self._record(p, verdict))
        self._replace(ip, kept)

    def _verdict(self, p: PackedLookup, reports: tuple[int, ...], final: bool = False) -> tuple | None:
        """The decision for one flow's remote address (docs/attribution.md, the decision table) as
        `attributed`'s arguments, or None while no evidence covers its start. `reports`: the other end's
        reports of the connection; `final`: the last try (the deadline, or the end of input)."""
        start, ip, port = p.start, p.remote_ip, p.remote_port
        shared = ip in self.port_ranges
        spans = self._spans_for(ip, port) if shared else self.ranges.get(ip)
        clock, reach = self.peers.clock, self.peers.bound_ms
        looker = clock(p.exporter)
        guard = self.guard_ms + (looker[1] if looker else 0)  # how far the flow's own start may be off
        if reports:
            names = set()
            workloads = self.names.names
            for value in reports:
                s, w, exporter = read_report(value)
                reporter = clock(workloads[exporter])
                if reporter is not None and abs(s - reporter[0] - start) <= self.window_ms + guard - self.guard_ms + reporter[1]:
                    names.add(workloads[w])
            if len(names) > 1:
                self._drop_reports(p.key)
                return UNATTRIBUTED, None, CONFLICT, "heartbeat"
            if names:
                # The report has done its work: the one lookup it was for is answered (a repeat of the
                # same connection is answered as flows without a report are).
                self._drop_reports(p.key)
                name = names.pop()
                if spans and ownership.contradicted(spans, name, start, guard, clock, reach):
                    return UNATTRIBUTED, None, CONFLICT, "heartbeat"
                return ATTRIBUTED_OUTCOME, name, None, "heartbeat", "connection"
        if spans:
            owner = ownership.owner_at(spans, start, guard, clock, reach, self.guard_ms)
            if owner is ownership.CONFLICT:
                return UNATTRIBUTED, None, CONFLICT, "heartbeat"
            if owner is ownership.EDGE:
                self.at_edges.add(ip)
                return None
            if owner is None:
                return None
            return ATTRIBUTED_OUTCOME, owner, None, "heartbeat", "range"
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
                return UNATTRIBUTED, None, CONFLICT, "ip_event"
            if owner is not None:
                return ATTRIBUTED_OUTCOME, owner, None, "ip_event", "event"
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
        # A connection report is wanted only until the other side's lookup has been answered: a period
        # goes once all of it arrived longer ago than a lookup can wait.
        # A report arrived in period p is kept while its whole period is within delay + max wait.
        report_horizon = at - self.max_wait_ms - self.delay_ms
        oldest_kept = report_horizon // self.prune_every_ms
        for v in self.reports.sift(lambda v: period_before(v, oldest_kept)):
            self._forget_reports(reporter(v), 1)
        self.peers.forget(at)
        self.next_prune_ms = at + self.prune_every_ms


NOBODY = (UNATTRIBUTED, None, NO_OWNER)
