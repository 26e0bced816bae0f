"""The event-based attributor that heartbeats replace: IP -> workload from the platform's assignment
events as they arrive, and each flow named by whoever owns its remote address when the flow is
processed, optionally after a holdback (the 15-minute variant). Run over the same simulated fleet."""

from __future__ import annotations

import heapq
from typing import Any, Iterable

import orjson

from dataflow.regions import RegionMap

EVENT, FLOW = 0, 1  # at the same moment, events are applied before flows are looked up


def attribute_by_events(
    flow_messages: Iterable[tuple[int, bytes]],
    forwarded_messages: Iterable[tuple[int, bytes]],
    event_messages: Iterable[tuple[int, bytes]],
    regions: RegionMap,
    home: str,
    holdback_ms: int = 0,
) -> list[dict[str, Any]]:
    """Answers in the attributed-record shape for every flow whose remote address is in `home`."""
    timeline: list[tuple[int, int, int, Any]] = []
    seq = 0
    for arrival, value in event_messages:
        seq += 1
        timeline.append((arrival, EVENT, seq, orjson.loads(value)))
    for messages in (flow_messages, forwarded_messages):
        for arrival, value in messages:
            for record in orjson.loads(value):
                if record["kind"] != "flow" or regions.region_of(record["remote_ip"]) != home:
                    continue
                seq += 1
                timeline.append((arrival + holdback_ms, FLOW, seq, record))
    heapq.heapify(timeline)
    owner_now: dict[str, str] = {}
    answers = []
    while timeline:
        _, kind, _, record = heapq.heappop(timeline)
        if kind == EVENT:
            if record["action"] == "assigned":
                owner_now[record["ip"]] = record["owner"]
            elif owner_now.get(record["ip"]) == record["owner"]:
                del owner_now[record["ip"]]
            continue
        owner = owner_now.get(record["remote_ip"])
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
