"""A reader's word that its partition has caught up, against a real broker: the word may hold the arrival
clock back, never push it past a message the reader has not read, however stale its consumer's view."""
from __future__ import annotations

import time

from confluent_kafka import OFFSET_BEGINNING, TopicPartition

from dataflow.kafka_io import ARRIVAL_TIME, ArrivalSource, CaughtUp
from kafka_io import produce, timestamped

MARGIN_MS = 1000


def _poll(part, seconds: float) -> tuple[list[CaughtUp], list]:
    words, messages = [], []
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        for item in part.next_batch():
            (words if type(item) is CaughtUp else messages).append(item)
        time.sleep(0.01)
    return words, messages


def test_a_reader_whose_fetches_stall_never_says_it_caught_up_past_an_unread_message(kafka_bootstrap, kafka_topics):
    (topic,) = kafka_topics("caught-up", config=ARRIVAL_TIME)
    source = ArrivalSource([kafka_bootstrap], [topic], tail=True, starting_offset=OFFSET_BEGINNING,
                           add_config={"log_level": "3"}, margin_ms=MARGIN_MS)
    part = source.build_part("read", f"0-{topic}", None)
    try:
        produce(kafka_bootstrap, topic, [b"first"])
        words, messages = _poll(part, 3.0)
        assert [m.value for m in messages] == [b"first"]
        assert words, "a reader with nothing left to read never said so"

        # Its fetches stop (as on a starved machine): the consumer's cached watermark stays where it was.
        consumer = part.inner._consumer
        consumer.pause([TopicPartition(topic, 0)])
        time.sleep(1.0)  # a fetch already in flight has come back
        produce(kafka_bootstrap, topic, [b"second"])
        second_arrival = timestamped(kafka_bootstrap, topic)[-1][0]
        time.sleep(MARGIN_MS / 1000 + 0.5)  # the margin alone no longer covers it
        stalled_words, stalled = _poll(part, 2.0)
        assert stalled == []
        assert consumer.get_watermark_offsets(TopicPartition(topic, 0), cached=True)[1] == 1, \
            "the cached watermark moved: this test no longer stalls the reader's view"
        assert all(w.at_ms < second_arrival for w in stalled_words), (
            f"said caught up at {max(w.at_ms for w in stalled_words)} with a message of {second_arrival} unread")

        consumer.resume([TopicPartition(topic, 0)])
        words, messages = _poll(part, 3.0)
        assert [m.value for m in messages] == [b"second"]
        assert any(w.at_ms >= second_arrival for w in words), "once read, the clock may pass the message"
    finally:
        part.close()
