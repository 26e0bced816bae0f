"""The event-based attributor that heartbeats replace, run over the same simulated fleet: address ->
workload from the platform's assignment events, each flow named either by whoever owns its remote
address when the flow is looked up (owner now, optionally after a holdback), or, its strongest honest
form, by the owner the events that had arrived by the lookup name for the flow's start (time-indexed).
Port-aware on shared addresses: an event with a port range speaks only for those ports."""

from __future__ import annotations

import bisect
import heapq
from typing import Any, Iterable

import orjson

from dataflow.regions import RegionMap

EVENT, FLOW = 0, 1  # at the same moment, events are applied before flows are looked up


def attribute_by_events(
    flow_messages: Iterable[tuple],
    forwarded_messages: Iterable[tuple],
    event_messages: Iterable[tuple],
    regions: RegionMap,
    home: str,
    holdback_ms: int = 0,
    at_start: bool = False,
) -> list[dict[str, Any]]:
    """Answers in the attributed-record shape for every flow whose remote address is in `home`.
    Messages are (arrival_ms, ..., value): the key, if any, is not needed. `at_start`: name the owner at
    the flow's start from the events arrived so far, rather than the owner now."""
    timeline: list[tuple[int, int, int, Any]] = []
    seq = 0
    for message in event_messages:
        seq += 1
        timeline.append((message[0], EVENT, seq, orjson.loads(message[-1])))
    for messages in (flow_messages, forwarded_messages):
        for message in messages:
            for record in orjson.loads(message[-1]):
                if record["kind"] != "flow" or regions.region_of(record["remote_ip"]) != home:
                    continue
                seq += 1
                timeline.append((message[0] + holdback_ms, FLOW, seq, record))
    heapq.heapify(timeline)
    owner_now: dict[str, dict] = {}  # ip -> {port range or None: owner}
    history: dict[str, list] = {}  # ip -> events arrived so far, ordered by their time
    answers = []
    while timeline:
        _, kind, seq, record = heapq.heappop(timeline)
        ip = record["ip"] if kind == EVENT else record["remote_ip"]
        if kind == EVENT:
            _apply(owner_now.setdefault(ip, {}), record)
            bisect.insort(history.setdefault(ip, []), (record["time_ms"], seq, record))
            continue
        if at_start:
            held: dict = {}
            for time_ms, _, event in history.get(ip, ()):
                if time_ms > record["start_ms"]:
                    break
                _apply(held, event)
        else:
            held = owner_now.get(ip, {})
        owner = _owner(held, record["remote_port"])
        answers.append({
            **record,
            "kind": "attributed",
            "outcome": "attributed" if owner else "unattributed",
            "remote_workload": owner,
            "reason": None if owner else "no_owner",
            "source": "ip_event" if owner else None,
            "match": "event" if owner else None,
        })
    return answers


def _apply(held: dict, event: dict[str, Any]) -> None:
    ports = tuple(event["ports"]) if event.get("ports") else None
    if event["action"] == "assigned":
        held[ports] = event["owner"]
    elif held.get(ports) == event["owner"]:
        del held[ports]


def _owner(held: dict, port: int) -> str | None:
    for ports, owner in held.items():
        if ports is not None and ports[0] <= port <= ports[1]:
            return owner
    return held.get(None)
