"""Running in production: every Kafka client over SASL_SSL (TLS with certificates this test makes,
PLAIN, SCRAM-SHA-256 and SCRAM-SHA-512) against the real broker, topics shaped by the cluster's
defaults, and the job's and the exporter's metrics, scraped during a real run, equal to what the topics
hold; their probes answer; no password is ever printed."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
import urllib.error
import urllib.request
import uuid
from collections import Counter
from pathlib import Path

import orjson
import pytest
from prometheus_client.parser import text_string_to_metric_families

from broker.launch import Broker, BrokerError, SaslSsl
from dataflow.config import load_config
from dataflow.kafka_io import ensure_topics
from dataflow.topic_reader import TopicReader, consumer
from exporter.ship import KafkaShipper
from kafka_io import Record, admin, consume_all, produce
from test_exporter_capture import Agent, connect, exporter_env, flowattr, pin_dir, require_ebpf, serve, sh  # noqa: F401
from tests.ports import free_ports
from tls import make_pki

REPO = Path(__file__).resolve().parents[2]
pytestmark = pytest.mark.kafka

USERS = {"flowattr": "job-Pa55-" + uuid.uuid4().hex[:8], "exporter": "exp-Pa55-" + uuid.uuid4().hex[:8]}
BROKER_PARTITIONS = 2  # the broker's num.partitions: what topics get when flowattr is not told
# Test-only private addresses, inside namespaces this test creates and deletes.
A, B = "10.233.0.1", "10.233.0.2"
WORKLOADS = {A: "shop/frontend", B: "shop/cart"}
NODE = "prod-node"


@pytest.fixture(scope="module")
def secure():
    """A broker with a SASL_SSL listener beside its plaintext one (which only the test itself uses)."""
    folder = Path(f"/tmp/flowattr-pki-{uuid.uuid4().hex[:8]}")
    pki = make_pki(folder)
    broker = Broker(sasl_ssl=SaslSsl(pki.server_pem, USERS), properties={"num.partitions": str(BROKER_PARTITIONS)})
    try:
        broker.start()
    except BrokerError as e:
        pytest.fail(f"could not start the SASL_SSL broker: {e}", pytrace=False)
    try:
        yield broker, pki
    finally:
        broker.stop()
        for f in folder.glob("*"):
            f.unlink()
        folder.rmdir()


def security(broker, pki, mechanism: str, user: str) -> dict[str, str]:
    """FLOWATTR_* variables of a client of the SASL_SSL listener."""
    return {
        "FLOWATTR_KAFKA__BROKERS": broker.sasl_ssl_bootstrap,
        "FLOWATTR_KAFKA__SECURITY_PROTOCOL": "SASL_SSL",
        "FLOWATTR_KAFKA__SASL_MECHANISM": mechanism,
        "FLOWATTR_KAFKA__SASL_USERNAME": user,
        "FLOWATTR_KAFKA__SASL_PASSWORD": USERS[user],
        "FLOWATTR_KAFKA__SSL_CA_FILE": str(pki.ca_file),
    }


@pytest.mark.parametrize("mechanism", ["PLAIN", "SCRAM-SHA-256", "SCRAM-SHA-512"])
def test_admin_producer_and_tail_consumer_over_sasl_ssl(secure, mechanism):
    broker, pki = secure
    prefix = f"s{uuid.uuid4().hex[:8]}."
    config = load_config(environ={**security(broker, pki, mechanism, "exporter"),
                                  "FLOWATTR_KAFKA__RAW_TOPIC": prefix + "flows.raw",
                                  "FLOWATTR_KAFKA__FORWARD_PREFIX": prefix + "flows.forward."})
    created = ensure_topics(config)
    assert config.kafka.raw_topic in created
    # Neither partitions nor replication factor configured: the broker's own defaults.
    raw = consume_all(broker.bootstrap, config.kafka.raw_topic)
    assert raw == []
    shape = _topic_shape(broker.bootstrap, config.kafka.raw_topic)
    assert shape == (BROKER_PARTITIONS, 1)

    shipper = KafkaShipper(config.kafka, NODE, buffer_max_records=100, batch_records=2)
    shipper.ship([{"n": i} for i in range(5)])
    shipper.close(30)
    assert (shipper.stats.delivered, shipper.stats.batches, shipper.stats.dropped) == (5, 3, 0)

    read = []
    reader = TopicReader(consumer(config), config.kafka.raw_topic)
    reader.start()
    for message in reader.messages():
        if message is None:
            continue
        assert message.key() == NODE.encode()
        read.extend(orjson.loads(message.value()))
    assert sorted(r["n"] for r in read) == list(range(5))


def test_a_refused_password_is_one_line_that_does_not_show_it(secure, tmp_path):
    broker, pki = secure
    wrong = "not-" + USERS["flowattr"]
    env = {**os.environ, **security(broker, pki, "SCRAM-SHA-512", "flowattr"), "FLOWATTR_KAFKA__SASL_PASSWORD": wrong,
           "PYTHONPATH": str(REPO)}
    for command in (["tail", "flows.attributed"], ["run", "--region", "r", "--regions", "r=10.233.0.0/24"]):
        done = subprocess.run([sys.executable, "-m", "dataflow.cli", *command], cwd=REPO, env=env,
                              capture_output=True, text=True, timeout=120)
        assert done.returncode == 2, done.stderr
        assert done.stderr.count("\n") == 1 and "Authentication failed" in done.stderr, done.stderr
        assert wrong not in done.stderr + done.stdout


def test_an_untrusted_broker_certificate_is_refused(secure, tmp_path):
    broker, _ = secure
    other = make_pki(tmp_path / "other")
    config = load_config(environ={**security(broker, other, "PLAIN", "flowattr"), "FLOWATTR_KAFKA__TIMEOUT_S": "10"})
    with pytest.raises(ConnectionError, match="certificate verify failed"):
        ensure_topics(config)


# ------------------------------------------------------------------ a real run, scraped


@pytest.fixture
def hosts():
    require_ebpf()
    tag = uuid.uuid4().hex[:6]
    a, b = f"fp-a-{tag}", f"fp-b-{tag}"
    try:
        sh("ip", "netns", "add", a)
        sh("ip", "netns", "add", b)
        sh("ip", "link", "add", f"fp{tag}a", "netns", a, "type", "veth", "peer", "name", f"fp{tag}b", "netns", b)
        for ns, dev, address in ((a, f"fp{tag}a", A), (b, f"fp{tag}b", B)):
            sh("ip", "-n", ns, "addr", "add", f"{address}/24", "dev", dev)
            sh("ip", "-n", ns, "link", "set", dev, "up")
            sh("ip", "-n", ns, "link", "set", "lo", "up")
        yield a, b
    finally:
        for ns in (a, b):
            subprocess.run(["ip", "netns", "del", ns], capture_output=True)


def scrape(port: int) -> dict[tuple[str, tuple], float]:
    """(sample name, sorted labels) -> value, from the endpoint's /metrics."""
    with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=10) as answer:
        text = answer.read().decode()
    return {(s.name, tuple(sorted(s.labels.items()))): s.value
            for family in text_string_to_metric_families(text) for s in family.samples}


def probe(port: int, path: str) -> tuple[int, str]:
    try:
        with urllib.request.urlopen(f"http://127.0.0.1:{port}{path}", timeout=10) as answer:
            return answer.status, answer.read().decode()
    except urllib.error.HTTPError as e:
        return e.code, e.read().decode()
    except OSError as e:
        return 0, str(e)


def total(samples, name: str, **labels) -> float:
    return sum(v for (n, ls), v in samples.items() if n == name and labels.items() <= dict(ls).items())


def by(samples, name: str, label: str) -> dict[str, float]:
    return {dict(ls)[label]: v for (n, ls), v in samples.items() if n == name and v}


def wait_until(check, timeout_s: float, what: str):
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        found = check()
        if found:
            return found
        time.sleep(0.5)
    raise AssertionError(f"{what} not within {timeout_s:.0f} s")


def test_job_exporter_and_tail_over_sasl_ssl_with_metrics_equal_to_the_topics(secure, hosts, pin_dir, tmp_path):
    broker, pki = secure
    a, b = hosts
    prefix = f"p{uuid.uuid4().hex[:8]}."
    job_port, exporter_port = free_ports(2)
    config_path = tmp_path / "flowattr.toml"
    config_path.write_text(
        'region = "prod"\n[regions]\nprod = ["10.233.0.0/24"]\n'
        f'[entitlements]\n"{NODE}" = ["10.233.0.0/24"]\n'
        f'[kafka]\nraw_topic = "{prefix}flows.raw"\nip_events_topic = "{prefix}ip-events"\n'
        f'attributed_topic = "{prefix}flows.attributed"\ndlq_topic = "{prefix}flows.dlq"\n'
        f'forward_prefix = "{prefix}flows.forward."\nexporters_topic = "{prefix}exporters"\n'
        # The agent reports every second instead of every minute: delay and wait shrink with it.
        "[attribution]\ndelay_s = 3\nmax_wait_s = 8\n"
        f"[metrics]\nport = {job_port}\n"
    )
    # The password only in the environment, as a Kubernetes Secret would put it there.
    job_env = {**os.environ, **security(broker, pki, "SCRAM-SHA-512", "flowattr"), "PYTHONPATH": str(REPO)}
    job_out, job_err = tmp_path / "job.out", tmp_path / "job.err"
    with open(job_out, "w") as out, open(job_err, "w") as err:
        job = subprocess.Popen([sys.executable, "-m", "dataflow.cli", "--config", str(config_path), "run",
                                "--summary-every", "2"], cwd=REPO, stdout=out, stderr=err, env=job_env)
    agent = None
    try:
        wait_until(lambda: probe(job_port, "/readyz")[0] == 200 or job.poll() is not None, 120, "the job ready")
        assert job.poll() is None, job_err.read_text()
        assert probe(job_port, "/healthz")[0] == 200
        config = load_config(config_path, environ={})
        k = config.kafka
        assert _topic_shape(broker.bootstrap, k.raw_topic) == (BROKER_PARTITIONS, 1)

        env = exporter_env(pin_dir, tmp_path, region="prod", exporter__exporter_id=NODE,
                           kafka__raw_topic=k.raw_topic, metrics__port=str(exporter_port),
                           **{name[len("FLOWATTR_"):].lower(): value
                              for name, value in security(broker, pki, "SCRAM-SHA-256", "exporter").items()})
        for ip, workload in WORKLOADS.items():
            assert flowattr("ipman", "add", ip, workload, env=env).returncode == 0
        agent = Agent(env, out=None)
        assert probe(exporter_port, "/readyz") == (200, "ok\n")
        assert probe(exporter_port, "/healthz") == (200, "ok\n")

        server = serve(b, B, 7400, 4, 100)
        for _ in range(4):
            connect(a, B, 7400, 1000, A)
        server.communicate(timeout=60)
        # Bad input beside them, keyed as the exporter: counted in and dead-lettered with its reason.
        produce(broker.bootstrap, k.raw_topic, [b"not json", b'{"v": 2, "kind": "flow"}'], keys=[NODE.encode()] * 2)

        # The exporter between two reports: everything it shipped acknowledged.
        def settled_exporter():
            s = scrape(exporter_port)
            shipped = total(s, "flowattr_exporter_records_total")
            delivered = total(s, "flowattr_exporter_records_delivered_total")
            return s if total(s, "flowattr_exporter_records_total", kind="flow") >= 8 and \
                total(s, "flowattr_exporter_records_buffered") == 0 and shipped == delivered else None
        exported = wait_until(settled_exporter, 60, "the exporter's own flows acknowledged")
    finally:
        if agent:
            assert agent.stop() == 0, "\n".join(agent.lines)

    try:
        # The job has read everything and answered every flow shipped: its metrics stop moving.
        previous = {}
        flows_shipped = total(exported, "flowattr_exporter_records_total", kind="flow")

        def settled_job():
            nonlocal previous
            assert job.poll() is None, job_err.read_text()
            s = scrape(job_port)
            lags = by(s, "flowattr_consumer_lag_messages", "partition")
            now = (total(s, "flowattr_records_in_total"), total(s, "flowattr_answers_total"))
            idle = total(s, "flowattr_pending_lookups") == 0 and total(s, "flowattr_buffered_evidence") == 0
            done = not lags and idle and now == previous.get("now") and now[1] >= flows_shipped
            previous = {"now": now}
            return s if done else None
        metrics = wait_until(settled_job, 120, "the job settled")
        status, body = probe(job_port, "/readyz")
        assert status == 200, body
    finally:
        job.send_signal(signal.SIGTERM)
        job.wait(timeout=60)

    raw = consume_all(broker.bootstrap, k.raw_topic)
    attributed = _records(consume_all(broker.bootstrap, k.attributed_topic))
    dead = _records(consume_all(broker.bootstrap, k.dlq_topic))

    # The exporter's counters are what the raw topic holds from it: its first batches_sent messages.
    ours = [m for m in raw if m.key == NODE.encode() and m.value.startswith(b"[")]
    sent = int(total(exported, "flowattr_exporter_batches_sent_total"))
    shipped = Counter(r["kind"] for m in ours[:sent] for r in orjson.loads(m.value))
    assert shipped["flow"] == total(exported, "flowattr_exporter_records_total", kind="flow")
    assert shipped["heartbeat"] == total(exported, "flowattr_exporter_records_total", kind="heartbeat")
    assert sum(shipped.values()) == total(exported, "flowattr_exporter_records_delivered_total")
    assert total(exported, "flowattr_exporter_records_dropped_total") == 0
    assert total(exported, "flowattr_exporter_connections_total") >= 8  # our 4 connections, both ends
    assert total(exported, "flowattr_exporter_map_entries", map="workloads") == len(WORKLOADS)
    assert total(exported, "flowattr_exporter_map_capacity", map="connections") == load_config(environ={}).exporter.max_connections

    # The job's counters are what its output topics hold.
    records_in = sum(len(orjson.loads(m.value)) if m.value.startswith(b"[") else 1 for m in raw)
    assert total(metrics, "flowattr_records_in_total", role="raw") == records_in
    assert total(metrics, "flowattr_answers_total") == len(attributed)
    outcomes = Counter((f["outcome"], f["reason"] or "") for f in attributed)
    assert {(dict(ls)["outcome"], dict(ls)["reason"]): v for (n, ls), v in metrics.items()
            if n == "flowattr_answers_total" and v} == dict(outcomes)
    assert by(metrics, "flowattr_dead_letters_total", "reason") == dict(Counter(d["reason"] for d in dead))
    assert {d["reason"] for d in dead} >= {"not_json", "missing_field"}
    ends = {(f["local_ip"], f["remote_ip"]): f for f in attributed if f["local_ip"] in WORKLOADS}
    assert {(f["outcome"], f["remote_workload"]) for f in ends.values()} == {("attributed", WORKLOADS[B]),
                                                                             ("attributed", WORKLOADS[A])}
    assert total(metrics, "flowattr_tracked_addresses") >= len(WORKLOADS)
    assert total(metrics, "flowattr_ownership_ranges") >= len(WORKLOADS)
    assert 0 <= total(metrics, "flowattr_event_time_lag_seconds") < 60
    lags = {dict(ls)["partition"]: v for (n, ls), v in metrics.items()
            if n == "flowattr_consumer_lag_messages" and dict(ls)["topic"] == k.raw_topic}
    assert lags == {str(p): 0 for p in range(BROKER_PARTITIONS)}

    # `flowattr tail` over SASL_SSL (PLAIN) prints what the attributed topic holds.
    tail_env = {**os.environ, **security(broker, pki, "PLAIN", "flowattr"), "PYTHONPATH": str(REPO)}
    tail = subprocess.run([sys.executable, "-m", "dataflow.cli", "--config", str(config_path), "tail",
                           k.attributed_topic], cwd=REPO, env=tail_env, capture_output=True, text=True, timeout=120)
    assert tail.returncode == 0, tail.stderr
    assert sorted(orjson.loads(line)["flow_id"] for line in tail.stdout.splitlines()) == \
        sorted(f["flow_id"] for f in attributed)

    printed = job_out.read_text() + job_err.read_text() + "\n".join(agent.lines) + tail.stdout + tail.stderr
    assert "stopped;" in printed
    for password in USERS.values():
        assert password not in printed


def _records(messages: list[Record]) -> list[dict]:
    out = []
    for m in messages:
        parsed = orjson.loads(m.value)
        out.extend(parsed if isinstance(parsed, list) else [parsed])
    return out


def _topic_shape(bootstrap: str, topic: str) -> tuple[int, int]:
    meta = admin(bootstrap).list_topics(topic, timeout=10).topics[topic]
    replicas = {len(p.replicas) for p in meta.partitions.values()}
    assert len(replicas) == 1
    return len(meta.partitions), replicas.pop()


def test_topics_on_a_cluster_of_two_brokers_get_two_replicas_unless_told_otherwise(capfd):
    with Broker() as first, Broker(join=first, node_id=2) as second:
        wait_until(lambda: len(admin(second.bootstrap).list_topics(timeout=10).brokers) == 2, 60, "two brokers")
        prefix = f"r{uuid.uuid4().hex[:8]}."
        settings = {"FLOWATTR_KAFKA__BROKERS": first.bootstrap, "FLOWATTR_KAFKA__RAW_TOPIC": prefix + "flows.raw",
                    "FLOWATTR_KAFKA__FORWARD_PREFIX": prefix + "flows.forward."}
        # The brokers' default.replication.factor is Kafka's own, 1: one copy would die with its broker.
        ensure_topics(load_config(environ=settings))
        assert _topic_shape(first.bootstrap, prefix + "flows.raw") == (1, 2)
        said = capfd.readouterr().err
        assert "replication factor 2" in said and "warning" not in said

        told = {**settings, "FLOWATTR_KAFKA__RAW_TOPIC": prefix + "told.raw", "FLOWATTR_KAFKA__REPLICATION_FACTOR": "1",
                "FLOWATTR_KAFKA__FORWARD_PREFIX": prefix + "told.forward."}
        ensure_topics(load_config(environ=told))
        assert _topic_shape(first.bootstrap, prefix + "told.raw") == (1, 1)
        assert "warning: topics with a single replica on a cluster of 2 brokers" in capfd.readouterr().err
