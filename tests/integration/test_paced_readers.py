"""Readers keep pace in arrival time, against a real broker: in a replay of a dense partition and a sparse
one (the same hours of arrival time in many messages and in few), the sparse one's reader is held within
the lead, plus what one batch of it spans, of the dense one's, so that the shards are not filled with
hours of input they cannot apply yet. Without the pace, it runs hours ahead (the test's own control)."""
from __future__ import annotations

import time

from confluent_kafka import OFFSET_BEGINNING, Producer

from bytewax.connectors.kafka import KafkaSourceMessage
from dataflow.kafka_io import ArrivalSource, ReadPace

HOUR_MS = 3_600_000
T0 = int(time.time() * 1000) - 3 * HOUR_MS
DENSE_EVERY_MS, SPARSE_EVERY_MS = 1_000, 60_000
LEAD_MS, BATCH = 5_000, 10


def _fill(bootstrap: str, topic: str) -> None:
    """Two hours of arrival time: a message every second in partition 0, every minute in partition 1."""
    p = Producer({"bootstrap.servers": bootstrap, "linger.ms": 20})
    for partition, every in ((0, DENSE_EVERY_MS), (1, SPARSE_EVERY_MS)):
        for t in range(T0, T0 + 2 * HOUR_MS, every):
            p.produce(topic, b"[]", partition=partition, timestamp=t)
            p.poll(0)
    assert p.flush(60) == 0


def _widest_lead(bootstrap: str, topic: str, pace: ReadPace | None) -> tuple[int, int]:
    """Both partitions read in turn, as a worker polls its readers, until both are read to the end: the
    most the sparse partition's reader was ahead of the dense one's, in arrival time, and what was read."""
    source = ArrivalSource([bootstrap], [topic], tail=True, starting_offset=OFFSET_BEGINNING, batch_size=BATCH,
                           add_config={"log_level": "3"}, margin_ms=1000, pace=pace)
    parts = [source.build_part("read", f"{i}-{topic}", None) for i in (0, 1)]
    reached, read, widest = [T0 - 1, T0 - 1], 0, 0
    deadline = time.monotonic() + 120
    try:
        while reached[0] < T0 + 2 * HOUR_MS - DENSE_EVERY_MS and time.monotonic() < deadline:
            for i, part in enumerate(parts):
                messages = [m for m in part.next_batch() if type(m) is KafkaSourceMessage]
                read += len(messages)
                if messages:
                    reached[i] = max(reached[i], *(m.timestamp[1] for m in messages))
            if reached[0] >= T0:  # the dense reader has begun: from here the lead counts
                widest = max(widest, reached[1] - reached[0])
    finally:
        for part in parts:
            part.close()
    return widest, read


def test_a_sparse_partition_is_read_at_most_the_lead_and_a_batch_ahead_of_a_dense_one(kafka_bootstrap, kafka_topics):
    (topic,) = kafka_topics("paced", partitions=2)
    _fill(kafka_bootstrap, topic)
    messages = 2 * HOUR_MS // DENSE_EVERY_MS + 2 * HOUR_MS // SPARSE_EVERY_MS

    paced, read = _widest_lead(kafka_bootstrap, topic, ReadPace(LEAD_MS))
    assert read == messages
    assert paced <= LEAD_MS + BATCH * SPARSE_EVERY_MS, f"the sparse reader ran {paced / 60_000:.0f} min ahead"

    free, read = _widest_lead(kafka_bootstrap, topic, None)
    assert read == messages
    assert free > HOUR_MS, "without the pace the sparse reader did not run ahead: this test shows nothing"
