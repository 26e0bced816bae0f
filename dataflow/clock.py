"""The clock that decides, and how far each host's own clock can be believed.

Decisions run on arrival time: the broker's timestamp of each input message (the time it was appended,
which no exporter can set and a replay reads back exactly). A shard decides at arrival time T only once
every input partition has been read up to T, and it applies evidence in arrival order, so what it knows
at T is exactly what had arrived by T, however far ahead one partition was read. Exporters' own
timestamps only say *when* a workload owned an address; they are corrected by each exporter's offset
estimated here, and an exporter whose offset is beyond the bound is not believed at all.
"""

from __future__ import annotations

from array import array
from bisect import bisect_left, insort
from collections import deque
from typing import Iterable, Mapping

PartitionId = tuple[str, int]  # (input role, partition)
ENDED = 1 << 62  # a partition that will never bring anything more (the end of an input file)


class ArrivalClock:
    """Where every input partition has been read up to, in arrival time: the time it is for deciding."""

    __slots__ = ("expected", "reached", "_now")

    def __init__(self, expected: Iterable[PartitionId]):
        self.expected = frozenset(expected)
        self.reached: dict[PartitionId, int] = {}
        self._now: int | None = None

    def observe(self, reached: Mapping[PartitionId, int]) -> None:
        """A reader's word that everything of these partitions up to these times has been read."""
        moved = False
        for partition, t in reached.items():
            if t > self.reached.get(partition, -1):
                self.reached[partition] = t
                moved = True
        if moved and len(self.reached.keys() & self.expected) == len(self.expected):
            self._now = min(self.reached[p] for p in self.expected)

    def now(self) -> int | None:
        """None until every expected partition has spoken: before that, nothing can be decided."""
        return self._now


def first_try_ms(start_ms: int, arrival_ms: int, delay_ms: int) -> int:
    """When to first look a flow's remote end up: `delay` after its start, when the other host's report
    of the same moment has had time to arrive; never before the flow itself arrived, and never more
    than `delay` after, so a host whose clock runs ahead cannot hold its own flows back."""
    return min(max(arrival_ms, start_ms + delay_ms), arrival_ms + delay_ms)


class ArrivalCheck:
    """How far each exporter's clock is at least ahead, from the only clock it cannot move: its messages'
    arrival. An exporter stamps its heartbeats' end with its report's time, and a report cannot arrive
    before it was made, so `report time - arrival` is a lower bound on how far ahead its clock runs.
    (A clock running behind looks like a slow delivery here; the two halves of connections tell those
    apart, in PeerClocks.) One exporter's messages all carry its id as their key and so come through one
    partition, read by one worker: the check depends on that partition's messages alone."""

    SAMPLES = 16

    def __init__(self, bound_ms: int):
        self.bound_ms = bound_ms
        self.samples: dict[str, deque[int]] = {}

    def observe(self, exporter: str, arrival_ms: int, report_ms: int) -> bool:
        """Take one message's (arrival, report time); False when the exporter's clock is beyond the bound."""
        samples = self.samples.get(exporter)
        if samples is None:
            samples = self.samples[exporter] = deque(maxlen=self.SAMPLES)
        samples.append(report_ms - arrival_ms)
        return self.trusted(exporter)

    def trusted(self, exporter: str) -> bool:
        samples = self.samples.get(exporter)
        return not samples or max(samples) <= self.bound_ms


class PeerClocks:
    """Each exporter's clock offset as the two halves of the same connections show it: both hosts report
    one connection, each on its own clock, and the two reports meet at the shard of the address that was
    called. A difference between two reports is the difference of two offsets; over many peers, the
    median of an exporter's differences is its own offset (as long as most of its peers keep time).
    Offsets within the guard are clock noise that ranges' guard absorbs; larger ones are corrected;
    beyond the bound the exporter is not believed. A difference is remembered for `memory_ms` of arrival
    time: what is known of the clocks then depends only on that much recent input, which a replay
    reads before its range to know them as the live job did."""

    SAMPLES = 32
    MIN_PEERS = 3

    def __init__(self, guard_ms: int, bound_ms: int, memory_ms: int):
        if 2 * bound_ms >= _MIDDLE:
            raise ValueError("a clock bound of 12 days or more")  # a difference must fit half a sample key
        self.guard_ms = guard_ms
        self.bound_ms = bound_ms
        self.memory_ms = memory_ms
        self.samples: dict[str, PeerSamples] = {}
        self.numbers: dict[str, int] = {}  # each exporter ever heard of, by the number its samples name it by
        # Of exporters seen with enough distinct peers: (median, spread of the middle half) over their
        # peers, each peer counted once (by its own median), so that one busy peer with a bad clock
        # cannot pass its offset on. It is the exporter's offset as far as most of its peers keep time;
        # how widely the peers disagree says how far that can be trusted.
        self.known: dict[str, tuple[int, int]] = {}
        # The largest offset among exporters whose clocks are known: how far an exporter not yet known
        # may be off. It grows with each sample and is worked out anew only when samples are forgotten,
        # so the same evidence always gives the same answers.
        self.spread = 0
        # Bumped whenever what is known of any clock changes: lookups that waited on it are tried again.
        self.changes = 0

    def observe(self, looker: str, reporter: str, difference_ms: int, at_ms: int) -> None:
        """One connection: the reporter's start minus the looker's start for the same connection, taken
        at arrival time `at_ms`."""
        if looker == reporter or abs(difference_ms) > 2 * self.bound_ms:
            return
        numbers = self.numbers
        for exporter, peer, sample in ((reporter, looker, difference_ms), (looker, reporter, -difference_ms)):
            samples = self.samples.get(exporter)
            if samples is None:
                samples = self.samples[exporter] = PeerSamples()
            number = numbers.get(peer)
            if number is None:
                number = numbers[peer] = len(numbers)
            samples.add(number, sample, self.SAMPLES, at_ms)
            ordered = samples.medians
            n = len(ordered)
            if n >= self.MIN_PEERS:
                median, scatter = ordered[n // 2], ordered[(3 * n) // 4] - ordered[n // 4]
                if self.known.get(exporter) != (median, scatter):
                    self.known[exporter] = (median, scatter)
                    self.changes += 1
                if abs(median) <= self.bound_ms and abs(median) + scatter > self.spread:
                    self.spread = abs(median) + scatter
                    self.changes += 1

    def forget(self, now_ms: int) -> None:
        """Drop the differences taken more than `memory_ms` before `now_ms`; each exporter is then known
        from what is left, or not at all when fewer than MIN_PEERS peers are left."""
        before = now_ms - self.memory_ms
        for exporter in list(self.samples):
            samples = self.samples[exporter]
            if not samples.forget(before):
                continue
            ordered = samples.medians
            n = len(ordered)
            self.changes += 1
            if n >= self.MIN_PEERS:
                self.known[exporter] = (ordered[n // 2], ordered[(3 * n) // 4] - ordered[n // 4])
            else:
                self.known.pop(exporter, None)
                if not n:
                    del self.samples[exporter]
        spread = max((abs(m) + s for m, s in self.known.values() if abs(m) <= self.bound_ms), default=0)
        if spread != self.spread:
            self.spread = spread
            self.changes += 1

    def offset(self, exporter: str) -> int | None:
        """ms the exporter's clock runs ahead (0 while unknown); None beyond the bound."""
        known = self.known.get(exporter)
        if known is None:
            return 0
        return None if abs(known[0]) > self.bound_ms else known[0]

    def clock(self, exporter: str) -> tuple[int, int] | None:
        """(offset, slack): the correction for the exporter's times and how much further they may be
        off than half the guard allows for (an exporter not known yet: as far as any known one); None
        when its clock is not to be believed."""
        known = self.known.get(exporter)
        half_guard = self.guard_ms // 2
        if known is None:
            return 0, max(0, self.spread - half_guard)
        median, scatter = known
        if abs(median) > self.bound_ms:
            return None
        return median, max(0, scatter - half_guard)

    def nbytes(self) -> int:
        """Bytes of the differences held and of their per-peer orderings."""
        return sum(samples.nbytes() for samples in self.samples.values())

    def untrusted(self) -> list[str]:
        return sorted(e for e in self.samples if self.offset(e) is None)


class PeerSamples:
    """One exporter's last differences with its peers, kept so that each new one costs a few bisections
    instead of regrouping them all: in arrival order (to know which one leaves the window), by peer in
    sorted order (each peer's median is its middle one), and the peers' medians in sorted order (the
    exporter's median and spread are read off by position). The same samples always give the same
    medians, whatever order they came in, so this says exactly what regrouping the window would.

    Every shard keeps one for each exporter it hears of, so they are three flat arrays of 64-bit
    integers, each difference as one key with its peer in the high half (so that sorted, each peer's
    differences are one sorted run): the window, (key, taken at) oldest first; the keys, sorted; and
    the medians. About 1.4 KB with 32 differences from 32 peers, where tuples, a dict and a list per
    peer took 5.6 KB."""

    __slots__ = ("window", "by_peer", "medians")

    def __init__(self) -> None:
        self.window = array("q")  # (key, taken at) for each difference, oldest first
        self.by_peer = array("q")  # the keys, sorted
        self.medians = array("q")  # one per peer with differences, sorted

    def nbytes(self) -> int:
        return 8 * (len(self.window) + len(self.by_peer) + len(self.medians))

    def add(self, peer: int, difference: int, keep: int, at_ms: int) -> None:
        """Take one difference (within +-2**31) with a peer, dropping the oldest once `keep` are held."""
        window = self.window
        if len(window) == 2 * keep:
            old = window[0]
            del window[:2]
            self._change(old, adding=False)
        key = (peer << 32) + _MIDDLE + difference
        window.append(key)
        window.append(at_ms)
        self._change(key, adding=True)

    def forget(self, before_ms: int) -> bool:
        """Drop the differences taken before `before_ms`; whether any were."""
        window = self.window
        end = 0
        while end < len(window) and window[end + 1] < before_ms:
            self._change(window[end], adding=False)
            end += 2
        if end:
            del window[:end]
        return end > 0

    def _change(self, key: int, adding: bool) -> None:
        """A difference joins or leaves its peer's run, which may move the peer's median."""
        keys, medians = self.by_peer, self.medians
        base = key >> 32 << 32
        lo, hi = bisect_left(keys, base), bisect_left(keys, base + _RUN)
        before = keys[lo + (hi - lo) // 2] if hi > lo else None
        if adding:
            insort(keys, key, lo, hi)
            hi += 1
        else:
            del keys[bisect_left(keys, key, lo, hi)]
            hi -= 1
        if hi == lo:
            del medians[bisect_left(medians, before - base - _MIDDLE)]
            return
        after = keys[lo + (hi - lo) // 2]
        if before is None:
            insort(medians, after - base - _MIDDLE)
        elif after != before:
            del medians[bisect_left(medians, before - base - _MIDDLE)]
            insort(medians, after - base - _MIDDLE)


_RUN = 1 << 32  # the keys of one peer's differences
_MIDDLE = 1 << 31  # a difference's offset in its key
