"""Which (local address, workload) pairs this host holds, and since when, from the agent's polls of the
workload maps: every interval each pair held during it gets one heartbeat for the span it was seen.
Pure: the agent feeds it what it saw; no BPF, no clock of its own."""

from __future__ import annotations

from dataclasses import dataclass

Ports = tuple[int, int]
Pair = tuple[str, str, Ports | None]  # (ip, workload, port range of a shared IPv4 address or None)


@dataclass(frozen=True)
class Span:
    ip: str
    workload: str
    start_ns: int
    end_ns: int
    ports: Ports | None = None


class Holdings:
    """A pair counts as held from the first poll that saw it to the last poll that saw it: nothing is
    claimed for the time between a poll and a change the next poll finds, either way."""

    def __init__(self) -> None:
        self._since: dict[Pair, int] = {}
        self._ended: list[Span] = []  # pairs gone since the last report, up to the last poll that saw them
        self._last_poll_ns: int | None = None

    def observe(self, now_ns: int, present: set[Pair]) -> None:
        for pair in present:
            self._since.setdefault(pair, now_ns)
        for pair in [p for p in self._since if p not in present]:
            since = self._since.pop(pair)
            last_seen = self._last_poll_ns if self._last_poll_ns is not None else since
            self._ended.append(Span(pair[0], pair[1], since, last_seen, pair[2]))
        self._last_poll_ns = now_ns

    def report(self, interval_start_ns: int, now_ns: int) -> list[Span]:
        """The spans held within [interval_start_ns, now_ns]; call after observe(now_ns, ...)."""
        spans = [
            Span(span.ip, span.workload, max(span.start_ns, interval_start_ns), span.end_ns, span.ports)
            for span in self._ended
        ]
        spans += [
            Span(ip, workload, max(since, interval_start_ns), now_ns, ports)
            for (ip, workload, ports), since in self._since.items()
        ]
        self._ended = []
        # A pair first seen at this very poll, or gone right after the last report, has no span yet.
        return sorted(
            (s for s in spans if s.end_ns > s.start_ns), key=lambda s: (s.ip, s.ports or (0, 0), s.workload, s.start_ns)
        )
