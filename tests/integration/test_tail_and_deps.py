"""`flowattr tail` and `flowattr deps` on the real broker, over the job's real answers for a simulated
fleet: filters give exactly the matching records, --since and --from-end start where they say, the
dependency graph holds only true edges with each connection counted once, and errors are one line."""

from __future__ import annotations

import os
import subprocess
import sys
import time
from pathlib import Path

import orjson
import pytest
from confluent_kafka import Producer

from dataflow import simulate as sim
from dataflow.file_io import read_outputs
from dataflow.tail import format_bytes
from kafka_io import produce

ROOT = Path(__file__).resolve().parents[2]
FLOWATTR = [sys.executable, "-m", "dataflow.cli"]
pytestmark = pytest.mark.kafka
# The job reads FLOWATTR_* settings: none of the test session's own (FLOWATTR_KAFKA_BOOTSTRAP).
ENV = {**{k: v for k, v in os.environ.items() if not k.startswith("FLOWATTR_")}, "PYTHONPATH": str(ROOT)}


def flowattr(*args, timeout=120):
    return subprocess.run([*FLOWATTR, *args], cwd=ROOT, capture_output=True, text=True, timeout=timeout,
                          env=ENV)


@pytest.fixture(scope="module")
def answered(tmp_path_factory):
    """The fleet and the job's answers for it (file mode: the answers are the job's own)."""
    folder = tmp_path_factory.mktemp("deps")
    start = (int(time.time()) // 60 - 15) * 60_000
    fleet = sim.simulate(sim.Scenario(seed=9, start_ms=start, duration_s=6 * 60))
    sim.write(fleet, folder / "in")
    regions = "\n".join(f"{r} = {orjson.dumps(c).decode()}" for r, c in sim.regions_config().items())
    (folder / "flowattr.toml").write_text(f'region = "{sim.HOME}"\n[regions]\n{regions}\n')
    run = flowattr("--config", str(folder / "flowattr.toml"), "run", "--input-dir", str(folder / "in"),
                   "--output-dir", str(folder / "out"), timeout=300)
    assert run.returncode == 0, run.stderr
    return fleet, read_outputs(folder / "out", "attributed")


@pytest.fixture
def topic_of(kafka_bootstrap, kafka_topics):
    def make(answers, batch=200):
        (topic,) = kafka_topics("flows.attributed", partitions=3)
        produce(kafka_bootstrap, topic, [orjson.dumps(answers[i : i + batch]) for i in range(0, len(answers), batch)])
        return topic
    return make


def json_lines(text):
    return [orjson.loads(line) for line in text.splitlines()]


def test_tail_filters_give_exactly_the_matching_records(kafka_bootstrap, answered, topic_of):
    _, answers = answered
    topic = topic_of(answers)
    everything = flowattr("tail", topic, "--brokers", kafka_bootstrap)  # piped: JSON lines
    assert everything.returncode == 0, everything.stderr
    assert sorted(json_lines(everything.stdout), key=lambda a: a["flow_id"]) == sorted(answers, key=lambda a: a["flow_id"])

    gateway_calls = flowattr("tail", topic, "--brokers", kafka_bootstrap, "--workload", "gateway",
                             "--outcome", "attributed", "--remote-workload", "svc-0[12]")
    expected = [a for a in answers if a["local_workload"] == "gateway" and a["outcome"] == "attributed"
                and a["remote_workload"] in ("svc-01", "svc-02")]
    assert expected and sorted(a["flow_id"] for a in json_lines(gateway_calls.stdout)) == sorted(a["flow_id"] for a in expected)

    ip = answers[0]["remote_ip"]
    by_ip = json_lines(flowattr("tail", topic, "--brokers", kafka_bootstrap, "--ip", ip).stdout)
    assert len(by_ip) == sum(ip in (a["local_ip"], a["remote_ip"]) for a in answers)

    no_owner = json_lines(flowattr("tail", topic, "--brokers", kafka_bootstrap, "--reason", "no_owner",
                                   "--reason", "conflict").stdout)
    assert len(no_owner) == sum(a["reason"] in ("no_owner", "conflict") for a in answers)

    table = flowattr("tail", topic, "--brokers", kafka_bootstrap, "-o", "table", "--outcome", "external")
    rows = table.stdout.splitlines()
    externals = [a for a in answers if a["outcome"] == "external"]
    assert rows[0].split() == ["TIME", "SOURCE", "DESTINATION", "OUTCOME", "BYTES"]
    assert len(rows) == 1 + len(externals) and all(" -> " in r and "external" in r for r in rows[1:])
    assert f"{len(answers)} records read, {len(externals)} shown" in table.stderr


def test_tail_since_and_from_end_start_where_they_say(kafka_bootstrap, kafka_topics):
    (topic,) = kafka_topics("flows.attributed", partitions=2)
    now = int(time.time() * 1000)
    producer = Producer({"bootstrap.servers": kafka_bootstrap})
    for n, age_ms in ((1, 3_600_000), (2, 1_800_000), (3, 60_000)):
        producer.produce(topic, orjson.dumps({"n": n}), timestamp=now - age_ms)
    producer.flush(30)
    since = lambda t: [r["n"] for r in json_lines(flowattr("tail", topic, "--brokers", kafka_bootstrap, "--since", t).stdout)]  # noqa: E731
    assert sorted(since("45m")) == [2, 3]
    assert since("5m") == [3]
    assert sorted(since("2h")) == [1, 2, 3]

    follower = subprocess.Popen([*FLOWATTR, "tail", topic, "--brokers", kafka_bootstrap, "--from-end", "-o", "json"],
                                cwd=ROOT, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                                env=ENV)
    try:
        time.sleep(8)  # started and past its start offsets (they are the ends it read, not "latest" later)
        produce(kafka_bootstrap, topic, [orjson.dumps({"n": 4}), orjson.dumps([{"n": 5}, {"n": 6}])], partition=0)
        seen = [orjson.loads(follower.stdout.readline())["n"] for _ in range(3)]
    finally:
        follower.terminate()
        follower.wait(timeout=30)
    assert seen == [4, 5, 6]


def test_errors_are_one_line(kafka_bootstrap):
    for args, words in (
        (["tail", "no.such.topic", "--brokers", kafka_bootstrap], "topic no.such.topic does not exist"),
        (["deps", "no.such.topic", "--brokers", kafka_bootstrap], "topic no.such.topic does not exist"),
        (["tail", "--since", "last tuesday", "--brokers", kafka_bootstrap], "bad time 'last tuesday'"),
        (["tail", "--brokers", "127.0.0.1:9"], "cannot reach Kafka at 127.0.0.1:9"),
        (["tail"], "give --brokers"),
    ):
        out = flowattr(*args)
        assert out.returncode == 2 and out.stdout == "", (args, out.stderr)
        assert out.stderr.count("\n") == 1 and words in out.stderr, (args, out.stderr)


def connections(fleet, answers):
    """Per edge (caller, callee), the connections and their bytes, from the flow ids: a connection's two
    reports end in the cookies 2n and 2n + 1. deps does not know this; it must find the same."""
    edges: dict[tuple[str, str], dict[str, int]] = {}
    for a in answers:
        if a["outcome"] != "attributed" or a["local_workload"] is None:
            continue
        outbound = a["direction"] == "outbound"
        edge = (a["local_workload"], a["remote_workload"]) if outbound else (a["remote_workload"], a["local_workload"])
        cookie = a["flow_id"].rpartition(":")[2]
        seq = int(cookie) // 2 if cookie.isdigit() else cookie
        edges.setdefault(edge, {})[seq] = a["bytes_sent"] + a["bytes_received"]
    return {edge: (len(by_seq), sum(by_seq.values())) for edge, by_seq in edges.items()}


def true_edges(fleet):
    edges = set()
    for *_, value in fleet.flow_messages + fleet.forwarded_messages:
        for r in orjson.loads(value):
            if r["kind"] == "flow" and fleet.truth.get(r["flow_id"]):
                remote = fleet.truth[r["flow_id"]]
                edges.add((r["local_workload"], remote) if r["direction"] == "outbound" else (remote, r["local_workload"]))
    return edges


def test_deps_draws_only_true_edges_and_counts_each_connection_once(kafka_bootstrap, answered, topic_of, tmp_path):
    fleet, answers = answered
    topic = topic_of(answers + answers[:300])  # a repeated answer (as after a restart) changes nothing
    table = flowattr("deps", topic, "--brokers", kafka_bootstrap)
    assert table.returncode == 0, table.stderr
    rows = [line.split() for line in table.stdout.splitlines()[1:]]
    found = {(r[0], r[1]): (int(r[2]), r[3] + " " + r[4]) for r in rows}
    expected = connections(fleet, answers)
    assert set(found) == set(expected) and set(found) <= true_edges(fleet)
    assert found == {edge: (n, format_bytes(size)) for edge, (n, size) in expected.items()}
    assert "repeated answer 300" in table.stderr
    assert {callee for caller, callee in found if caller == sim.GATEWAY} == set(fleet.routing.values())

    dot = flowattr("deps", topic, "--brokers", kafka_bootstrap, "--format", "dot", "--workload", sim.GATEWAY)
    gateway_edges = {edge for edge in found if sim.GATEWAY in edge}
    assert dot.stdout.startswith("digraph flowattr {") and dot.stdout.count(" -> ") == len(gateway_edges)
    for caller, callee in gateway_edges:
        assert f'"{caller}" -> "{callee}" [label="{found[caller, callee][0]} flows' in dot.stdout

    for fmt in ("svg", "png"):
        picture = tmp_path / f"deps.{fmt}"
        drawn = flowattr("deps", topic, "--brokers", kafka_bootstrap, "--format", fmt, "-O", str(picture))
        assert drawn.returncode == 0, drawn.stderr
        head = picture.read_bytes()[:200]
        assert head.startswith(b"\x89PNG") if fmt == "png" else b"<svg" in picture.read_bytes()[:2000]
    svg = (tmp_path / "deps.svg").read_text()
    assert all(name in svg for edge in found for name in edge)
