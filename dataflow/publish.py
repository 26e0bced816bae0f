"""A simulated fleet published to Kafka as its hosts would send it: each batch when it arrives on the
simulation's clock, keyed by its exporter; the platform's entitlements and assignment events first.
For trying the commands on a broker without exporters (`flowattr simulate --brokers`)."""

from __future__ import annotations

import time
from typing import Callable

from confluent_kafka import Producer

from dataflow import kafka_io
from dataflow import simulate as sim
from dataflow.config import Config
from dataflow.kafka_client import client_settings


def publish(config: Config, fleet: sim.Fleet, say: Callable[[str], None] = print, every_s: float = 30.0) -> int:
    """Produce the fleet, waiting for each message's arrival time; returns the messages sent."""
    kafka_io.ensure_topics(config)
    k = config.kafka
    producer = Producer(client_settings(k, **{"enable.idempotence": True, "linger.ms": 5}))
    for m in fleet.entitlement_messages:
        producer.produce(k.exporters_topic, m.value, key=m.key)
    for m in fleet.ip_event_messages:
        producer.produce(k.ip_events_topic, m.value)
    timed = [(m.arrival_ms, k.raw_topic, m.key, m.value) for m in fleet.flow_messages]
    timed += [(m.arrival_ms, config.forward_topic(config.region), None, m.value) for m in fleet.forwarded_messages]
    timed.sort(key=lambda m: m[0])
    said_at = time.monotonic()
    for sent, (arrival, topic, key, value) in enumerate(timed, 1):
        wait = arrival / 1000 - time.time()
        if wait > 0:
            producer.poll(0)
            time.sleep(wait)
        producer.produce(topic, value, key=key)
        if time.monotonic() - said_at >= every_s:
            said_at = time.monotonic()
            say(f"flowattr simulate: {sent} of {len(timed)} batches sent")
    left = producer.flush(60)
    if left:
        raise ConnectionError(f"{left} messages not confirmed by Kafka at {k.brokers} within 60 s")
    return len(timed)
