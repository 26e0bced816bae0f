"""The platform's side of entitlements on the real broker: what `flowattr entitle` publishes is what the
job reads, removals included, and `sync-nodes` follows the cluster's Node objects (read through the
official client from a loopback stand-in of the API: no API server runs here)."""

import threading
import time
import uuid

import pytest

from dataflow.config import load_config
from dataflow.entitle import api_nodes, publish, published, sync_nodes
from dataflow.entitlements import Entitlements
from dataflow.kafka_io import ensure_topics, follow_entitlements
from tests.k8s_api import serving

pytestmark = pytest.mark.kafka


@pytest.fixture
def config(kafka_bootstrap):
    prefix = f"t{uuid.uuid4().hex[:8]}."
    config = load_config(environ={}, overrides={
        "region": "r", "kafka.brokers": kafka_bootstrap, "kafka.exporters_topic": f"{prefix}exporters",
        "kafka.raw_topic": f"{prefix}raw", "kafka.ip_events_topic": f"{prefix}ev",
        "kafka.attributed_topic": f"{prefix}att", "kafka.dlq_topic": f"{prefix}dlq",
        "kafka.forward_prefix": f"{prefix}fw."})
    ensure_topics(config)
    return config


def test_what_is_published_is_what_the_job_believes(config):
    publish(config, {"node-a": ["10.244.1.0/24"], "node-b": ["10.244.2.7/24", "192.168.10.12/32"]})
    publish(config, {"node-a": None})
    assert published(config) == {"node-b": ["10.244.2.0/24", "192.168.10.12/32"]}
    job_view, stop = Entitlements(True), threading.Event()
    follower = follow_entitlements(config, job_view, stop=stop)
    try:
        assert job_view.exporters() == {"node-b": ("10.244.2.0/24", "192.168.10.12/32")}
        assert job_view.allows("node-b", "10.244.2.9") and not job_view.allows("node-b", "10.244.1.9")
        assert not job_view.allows("node-a", "10.244.1.9")
        publish(config, {"node-a": ["10.244.1.0/24"]})  # followed while the job runs
        deadline = time.monotonic() + 20
        while not job_view.allows("node-a", "10.244.1.9") and time.monotonic() < deadline:
            time.sleep(0.1)
        assert job_view.allows("node-a", "10.244.1.9")
    finally:
        stop.set()
        follower.join(timeout=10)


def test_sync_nodes_follows_the_clusters_nodes(config, tmp_path):
    publish(config, {"node-gone": ["10.244.9.0/24"]})
    with serving(tmp_path) as (kubeconfig, stand_in):
        changes = sync_nodes(config, api_nodes(str(kubeconfig)))
        assert [path for path, _ in stand_in.seen] == ["/api/v1/nodes"]
        assert stand_in.seen[0][1] == "Bearer node-token"
        assert sync_nodes(config, api_nodes(str(kubeconfig))) == {}  # nothing changed: nothing written
    assert changes == {
        "node-a": ["10.244.1.0/24", "fd00:10:244:1::/64", "192.168.10.11/32", "fd00:192:168:10::11/128", "52.18.7.200/32"],
        "node-gone": None,
    }
    assert set(published(config)) == {"node-a"}


def test_the_command_sets_lists_and_removes(config):
    import os
    import subprocess
    import sys
    from pathlib import Path

    root = Path(__file__).resolve().parents[2]
    env = {k: v for k, v in os.environ.items() if not k.startswith("FLOWATTR_")}
    env.update(PYTHONPATH=str(root), FLOWATTR_KAFKA__EXPORTERS_TOPIC=config.kafka.exporters_topic)

    def entitle(*args):
        return subprocess.run([sys.executable, "-m", "dataflow.cli", "entitle", "--brokers", config.kafka.brokers, *args],
                              cwd=root, env=env, capture_output=True, text=True, timeout=60)

    assert entitle("set", "node-c", "10.244.3.7/24").stdout == "flowattr entitle: node-c may claim 10.244.3.0/24\n"
    assert entitle("list").stdout == "node-c\t10.244.3.0/24\n"
    assert entitle("remove", "node-c").returncode == 0
    assert entitle("list").stdout == ""
    bad = entitle("set", "node-c", "10.244.3.0/33")
    assert bad.returncode == 2 and bad.stderr.strip() == "flowattr: '10.244.3.0/33' is not a CIDR"
