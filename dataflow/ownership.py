"""Per-address ownership learned from heartbeats: time ranges in which a workload proved it owned the
address, and the one question asked of them: who owned it at time t, if exactly one workload did.

Ranges of one address are kept as one flat list [start, end, claimer, start, end, claimer, ...] sorted
by start: a fleet has millions of addresses, and a flat list of ints and shared objects costs a fraction
of a list of objects. A claimer is one shared (workload, exporter) pair: times stay on the exporter's
own clock and are corrected when asked, by what is known of that clock then.
"""

from __future__ import annotations

CONFLICT = object()
"""owner_at's answer when more than one workload claims the time asked about."""

EDGE = object()
"""owner_at's answer when no range holds the time asked about with its margin to spare, but one would with
the least margin: what is known of the clocks widens the margin beyond that, and may yet narrow it."""


def claim(spans: list, workload, start: int, end: int, max_ranges: int) -> bool:
    """Record that `workload` (a claimer) owned the address during [start, end].

    Ranges of the same claimer that overlap or touch are merged; ranges of different claimers are
    kept side by side, overlapping or not, so that owner_at can see a conflict. Beyond `max_ranges`
    the range that starts earliest is dropped (and True returned, for the count).
    """
    if spans and spans[-1] == workload and spans[-3] <= start <= spans[-2]:
        # The common case: the newest range of the same owner grows.
        if end > spans[-2]:
            spans[-2] = end
        return False
    for i in range(len(spans) - 3, -1, -3):
        # Next most common: a range of the same owner already holds the whole claim.
        if spans[i + 2] == workload and spans[i] <= start and end <= spans[i + 1]:
            return False
    i = 0
    while i < len(spans):
        s, e, w = spans[i], spans[i + 1], spans[i + 2]
        if w == workload and s <= end and start <= e:
            start, end = min(start, s), max(end, e)
            del spans[i : i + 3]
            i = 0  # the grown range may now reach an earlier one
            continue
        i += 3
    _insert(spans, start, end, workload)
    if len(spans) > 3 * max_ranges:
        del spans[:3]
        return True
    return False


def _insert(spans: list, start: int, end: int, workload: str) -> None:
    i = len(spans)
    while i and spans[i - 3] > start:
        i -= 3
    spans[i:i] = (start, end, workload)


def owner_at(spans: list, t: int, guard_ms: int, clock=None, reach_ms: int = 0, least_ms: int | None = None):
    """The workload whose range holds t, if it is the only workload with a range within the guard of t.

    `clock(exporter)` says what is known of a claiming exporter's clock: (offset, slack) in ms, or None
    for a clock not to be believed (its ranges are left out); without it, times are taken as they are.
    A range holds t only with the guard plus its slack to spare at both edges, since at an edge the
    address may have been nobody's; another workload's range within that much of t makes a CONFLICT
    (host clocks disagree by that much, so the order of the two cannot be trusted). `reach_ms`: the
    most any correction moves a range (ranges are sorted by uncorrected start). None when no range
    holds t: the answer may still arrive; EDGE when a range would hold t with `least_ms` (the margin
    if every clock were known to the guard; by default `guard_ms`) to spare, and only a wider margin
    keeps it from doing so.
    """
    least = guard_ms if least_ms is None else least_ms
    covering = None
    near = None
    edge = False
    for i in range(0, len(spans), 3):
        if spans[i] - guard_ms - reach_ms > t:
            break
        corrected = _corrected(spans, i, guard_ms, clock)
        if corrected is None:
            continue
        s, e, margin, w = corrected
        if t > e + margin or s - margin > t:
            continue
        if near is None:
            near = w
        elif near != w:
            return CONFLICT
        if s + margin <= t <= e - margin:
            covering = w
        elif s + least <= t <= e - least:
            edge = True
    if covering is None and edge:
        return EDGE
    return covering


def contradicted(spans: list, workload: str, t: int, guard_ms: int, clock=None, reach_ms: int = 0) -> bool:
    """Whether another workload's range holds t with the guard to spare on both sides: evidence that
    contradicts a report naming `workload`, however the hosts' clocks differ within the guard."""
    for i in range(0, len(spans), 3):
        if spans[i] - reach_ms > t - guard_ms:
            break
        corrected = _corrected(spans, i, guard_ms, clock)
        if corrected is None:
            continue
        s, e, margin, w = corrected
        if w != workload and s <= t - margin and t + margin <= e:
            return True
    return False


def _corrected(spans: list, i: int, guard_ms: int, clock):
    """The range at i as (start, end, margin, workload) on its claimer's corrected clock, or None when
    that clock is not to be believed."""
    s, e, claimer = spans[i], spans[i + 1], spans[i + 2]
    if clock is None:
        return s, e, guard_ms, claimer[0] if type(claimer) is tuple else claimer
    known = clock(claimer[1])
    if known is None:
        return None
    offset, slack = known
    return s - offset, e - offset, guard_ms + slack, claimer[0]


def prune(spans: list, horizon: int) -> None:
    """Drop ranges that ended before `horizon`."""
    kept = [spans[i : i + 3] for i in range(0, len(spans), 3) if spans[i + 1] >= horizon]
    spans[:] = [x for r in kept for x in r]


def assign(events: list, owner: str | None, time_ms: int) -> None:
    """Record an assignment event: `owner` from `time_ms` on (None: unassigned). Flat [time, owner, ...]."""
    i = len(events)
    while i and events[i - 2] > time_ms:
        i -= 2
    events[i:i] = (time_ms, owner)


def assigned_at(events: list, t: int) -> str | None:
    """The owner the latest assignment event at or before t names, if any."""
    owner = None
    for i in range(0, len(events), 2):
        if events[i] > t:
            break
        owner = events[i + 1]
    return owner


def prune_events(events: list, horizon: int) -> None:
    """Drop events superseded before `horizon`, keeping the one in force at the horizon."""
    first = 0
    for i in range(0, len(events), 2):
        if events[i] <= horizon:
            first = i
    del events[:first]

