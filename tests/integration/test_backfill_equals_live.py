"""A backfill answers as the live run did: a fleet produced in real time to a real broker and attributed
live, then the same topics replayed from the beginning by a fresh job (one process, then a cluster of
2 processes x 2 workers; six partitions a topic). Every flow must get the same outcome, remote workload
and reason each time, because decisions run on the broker's arrival times and use only the evidence
that had arrived by then."""

import os
import signal
import subprocess
import sys
import time
import uuid
from pathlib import Path

import orjson
import pytest
from confluent_kafka import Producer

from dataflow import simulate as sim
from dataflow.config import load_config
from dataflow.kafka_io import ensure_topics
from kafka_io import publish_entitlements, read_records
from tests.ports import free_ports

ROOT = Path(__file__).resolve().parents[2]
pytestmark = pytest.mark.kafka


def write_config(path: Path, bootstrap: str, prefix: str, attributed: str) -> Path:
    regions = "\n".join(f"{r} = {orjson.dumps(c).decode()}" for r, c in sim.regions_config().items())
    path.write_text(
        f'region = "{sim.HOME}"\n[regions]\n{regions}\n'
        f'[kafka]\nbrokers = "{bootstrap}"\npartitions = 6\nraw_topic = "{prefix}flows.raw"\n'
        f'ip_events_topic = "{prefix}ip-events"\nattributed_topic = "{prefix}{attributed}"\n'
        f'dlq_topic = "{prefix}flows.dlq"\nforward_prefix = "{prefix}flows.forward."\n'
        f'exporters_topic = "{prefix}exporters"\n'
        # A fleet reporting every 5 s: the delay and waits shrink with the interval.
        "[attribution]\ndelay_s = 6\nmax_wait_s = 20\nevent_settle_s = 10\n"
    )
    return path


def produce_paced(bootstrap: str, config, fleet) -> None:
    """Every message at its arrival time on the wall clock (those due before now at once), as a fleet's
    exporters, the platform's events and the other region's job would send them."""
    k = config.kafka
    messages = [(m.arrival_ms, k.raw_topic, m.key, m.value) for m in fleet.flow_messages]
    messages += [(m.arrival_ms, k.ip_events_topic, None, m.value) for m in fleet.ip_event_messages]
    messages += [(m.arrival_ms, config.forward_topic(sim.HOME), None, m.value) for m in fleet.forwarded_messages]
    producer = Producer({"bootstrap.servers": bootstrap, "enable.idempotence": True, "linger.ms": 5})
    for arrival, topic, key, value in sorted(messages, key=lambda m: m[0]):
        wait = arrival / 1000 - time.time()
        if wait > 0:
            producer.flush(30)
            time.sleep(wait)
        producer.produce(topic, value=value, key=key)
        producer.poll(0)
    assert producer.flush(30) == 0


def answers_of(bootstrap: str, topic: str, expected: int, timeout_s: float) -> dict[str, tuple]:
    records = read_records(bootstrap, [topic], timeout_s=timeout_s, settle_s=2,
                           until=lambda r: len({a["flow_id"] for a in r[topic]}) >= expected)[topic]
    return {a["flow_id"]: (a["outcome"], a["remote_workload"], a["reason"]) for a in records}


def start_job(config_path: Path, processes: int = 1, workers: int = 1) -> list[subprocess.Popen]:
    env = {**os.environ, "PYTHONPATH": str(ROOT), "FLOWATTR_CONFIG": str(config_path)}
    if processes == 1:
        return [subprocess.Popen([sys.executable, "-m", "dataflow.cli", "run"], cwd=ROOT, env=env,
                                 stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)]
    addresses = ";".join(f"127.0.0.1:{p}" for p in free_ports(processes))
    return [
        subprocess.Popen([sys.executable, "-m", "bytewax.run", "dataflow.flow:from_environment()", "-w", str(workers),
                          "-i", str(i), "-a", addresses], cwd=ROOT, env=env,
                         stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        for i in range(processes)
    ]


def stop(jobs: list[subprocess.Popen]) -> None:
    for job in jobs:
        job.send_signal(signal.SIGINT)
    for job in jobs:
        try:
            job.wait(timeout=30)
        except subprocess.TimeoutExpired:
            job.kill()


def test_a_replay_of_the_topics_answers_every_flow_as_the_live_run_did(kafka_bootstrap, tmp_path):
    prefix = f"t{uuid.uuid4().hex[:8]}."
    live_config = write_config(tmp_path / "live.toml", kafka_bootstrap, prefix, "attributed.live")
    config = load_config(live_config, environ={})
    ensure_topics(config)
    start = int(time.time() * 1000) + 15_000
    fleet = sim.simulate(sim.Scenario(seed=11, start_ms=start, duration_s=90, interval_s=5, mean_delay_s=0.5,
                                      late_delay_s=8.0, mean_lifetime_s=40.0, reuse_gap_s=3.0,
                                      connections_per_instance_s=0.8))
    publish_entitlements(kafka_bootstrap, config.kafka.exporters_topic, fleet)
    away = ("10.1.", "fd00:0:1:")  # flows to the other region are forwarded there, not answered here
    expected = sum(1 for m in fleet.flow_messages for r in orjson.loads(m.value)
                   if r["kind"] == "flow" and not r["remote_ip"].startswith(away))
    expected += sum(len(orjson.loads(m.value)) for m in fleet.forwarded_messages)

    jobs = start_job(live_config)
    try:
        produce_paced(kafka_bootstrap, config, fleet)
        live = answers_of(kafka_bootstrap, config.kafka.attributed_topic, expected, timeout_s=120)
    finally:
        stop(jobs)
    assert len(live) == expected
    assert sum(o == "attributed" for o, _, _ in live.values()) > 0.9 * expected

    for name, processes, workers in (("attributed.replay", 1, 1), ("attributed.cluster", 2, 2)):
        replay_config = write_config(tmp_path / f"{name}.toml", kafka_bootstrap, prefix, name)
        jobs = start_job(replay_config, processes, workers)
        try:
            replay = answers_of(kafka_bootstrap, f"{prefix}{name}", expected, timeout_s=180)
        finally:
            stop(jobs)
        differing = {fid: (live[fid], replay.get(fid)) for fid in live if replay.get(fid) != live[fid]}
        assert differing == {}, f"{name}: {len(differing)} answers differ, e.g. {list(differing.items())[:5]}"
