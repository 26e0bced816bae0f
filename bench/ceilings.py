"""What any job reading and writing these topics in Python cannot beat, measured beside the job: every
input message consumed and produced again with the job's producer settings (pass-through), then the
same with each message decoded and re-encoded by orjson (the least any JSON job must do); and the ratio
of the job's rate to the second. Figures: out/bench/ceilings.json."""

from __future__ import annotations

import os
import sys
import time
from typing import Any

import orjson

from bench import fleet
from bench.harness import guarded, median_run, new_consumer
from tests.integration.kafka_io import create_topics

SINK_SETTINGS = {"linger.ms": "20", "compression.type": "lz4", "batch.size": "1000000"}  # as kafka_io.sink
TARGET_RATIO = 0.5  # the job at least half the decode+encode ceiling


def ceiling(bootstrap: str, records: fleet.Records, parse: bool) -> dict[str, Any]:
    from confluent_kafka import Producer

    config = fleet.job_config(bootstrap)
    out_topic = f"ceiling{int(parse)}{os.urandom(3).hex()}.out"  # a fresh topic for every run
    create_topics(bootstrap, [out_topic], fleet.RAW_PARTITIONS)
    consumer = new_consumer(bootstrap, [config.kafka.raw_topic, fleet.CEILING_FORWARDED, config.kafka.ip_events_topic])
    producer = Producer({"bootstrap.servers": bootstrap, **SINK_SETTINGS, "queue.buffering.max.kbytes": "1048576"})
    wall, cpu = time.monotonic(), time.process_time()
    seen = 0
    deadline = wall + 300
    while seen < records.messages and time.monotonic() < deadline:
        for msg in consumer.consume(1000, 0.2):
            if msg.error() is not None:
                continue
            value = msg.value()
            if parse:
                value = orjson.dumps(orjson.loads(value))
            while True:
                try:
                    producer.produce(out_topic, value)
                    break
                except BufferError:
                    producer.poll(0.05)
            seen += 1
        producer.poll(0)
    producer.flush(60)
    wall, cpu = time.monotonic() - wall, time.process_time() - cpu
    consumer.close()
    return {"messages": seen, "flows": records.flows, "wall_s": wall, "cpu_s": cpu, "complete": seen == records.messages}


def run(records: fleet.Records, bootstrap: str, repeat: int) -> dict[str, Any]:
    figures: dict[str, Any] = {}
    guarded("ceiling, pass-through", lambda: median_run(lambda: ceiling(bootstrap, records, False), repeat), figures)
    guarded("ceiling, orjson decode+encode", lambda: median_run(lambda: ceiling(bootstrap, records, True), repeat), figures)
    return figures


def render(record: dict[str, Any], job_per_core: float | None) -> str:
    figures = record["figures"]
    rows = ["| ceiling | wall s | CPU s | flows per CPU second | runs (wall s) |", "|---|---:|---:|---:|---|"]
    for name, x in figures.items():
        if "cpu_s" in x:
            runs = ", ".join(f"{w:.1f}" for w in x.get("runs_wall_s", []))
            rows.append(f"| {name} | {x['wall_s']:.1f} | {x['cpu_s']:.1f} | {x['flows'] / x['cpu_s']:,.0f} | {runs} |")
    decode = figures.get("ceiling, orjson decode+encode", {})
    ceiling_per_core = decode["flows"] / decode["cpu_s"] if decode.get("cpu_s") else None
    if ceiling_per_core and job_per_core:
        ratio = job_per_core / ceiling_per_core
        verdict = (f"the job's {job_per_core:,.0f} flows per CPU second over the ceiling's {ceiling_per_core:,.0f}: "
                   f"**{ratio:.2f}** ({'met' if ratio >= TARGET_RATIO else 'missed'}, goal >= {TARGET_RATIO})")
    else:
        verdict = "not measured"
    return "\n".join([
        "## Ceilings", "",
        "One plain confluent-kafka consumer and producer in the bench's process, every input message of the same",
        "fleet consumed and produced to a fresh topic with the job's producer settings, no attribution; then the",
        "same with each message decoded and re-encoded by orjson.", "", *rows, "",
        f"Job / decode+encode ceiling: {verdict}.", ""])


if __name__ == "__main__":
    sys.exit("run through `python -m bench.run` (it loads the topics once for every benchmark)")
