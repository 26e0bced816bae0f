"""Shipping: the bounded buffer counts what it drops while Kafka is unreachable; file mode frames
records as Kafka message values."""

import orjson

from dataflow.config import KafkaConfig
from exporter.ship import FileShipper, KafkaShipper


def test_unreachable_kafka_buffers_up_to_the_bound_and_counts_the_rest():
    # Port 9 on loopback: nothing listens, so nothing is ever acknowledged.
    shipper = KafkaShipper(KafkaConfig(brokers="127.0.0.1:9"), "node-1", buffer_max_records=5, batch_records=2)
    shipper.ship([{"n": i} for i in range(7)])  # batches 2, 2, 2, 1
    assert (shipper.stats.buffered, shipper.stats.dropped, shipper.stats.delivered) == (5, 2, 0)
    shipper.close(timeout_s=0.5)
    assert (shipper.stats.buffered, shipper.stats.dropped) == (0, 7)


def test_file_shipper_writes_one_json_array_per_batch(tmp_path):
    path = tmp_path / "out.jsonl"
    shipper = FileShipper(str(path), batch_records=2)
    shipper.ship([{"n": 1}, {"n": 2}, {"n": 3}])
    shipper.close(0)
    assert [orjson.loads(line) for line in path.read_bytes().splitlines()] == [[{"n": 1}, {"n": 2}], [{"n": 3}]]
    assert shipper.stats.delivered == 3
