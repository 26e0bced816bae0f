"""What running in production relies on, in every kustomization: probes that reach the endpoint each
process really serves, resource requests, a disruption budget; and where the optional components are
used, Kafka credentials from one Secret for both workloads, metrics Services that the ServiceMonitors
find, a dashboard that asks only for metrics flowattr exposes, and Strimzi topics that are the job's."""

from __future__ import annotations

import json
import re
import urllib.error
import urllib.request
from dataclasses import replace
from pathlib import Path

import pytest

from dataflow.config import load_config
from dataflow.endpoint import Endpoint
from dataflow.kafka_io import all_topics, input_topics
from dataflow.metrics import JobMetrics
from dataflow.routing import Tally
from exporter.metrics import ExporterMetrics
from exporter.ship import FileShipper
from k8s_render import ROOT, TARGETS, config_text, one, pod_env, render

WORKLOADS = [("StatefulSet", "flowattr"), ("DaemonSet", "flowattr-exporter")]
POD = {"metadata.namespace": "flowattr", "spec.nodeName": "node-a"}


def workload_config(objects, workload, tmp_path):
    (c,) = workload["spec"]["template"]["spec"]["containers"]
    path = tmp_path / f"{workload['kind']}.toml"
    path.write_text(config_text(objects, workload))
    return load_config(path, environ=pod_env(c, POD)), c


def port_named(container: dict, name: str) -> int:
    (port,) = [p["containerPort"] for p in container["ports"] if p["name"] == name]
    return port


@pytest.mark.parametrize("kind, name", WORKLOADS)
def test_probes_reach_the_port_and_paths_the_process_serves(target, kind, name, tmp_path):
    objects = render(target)
    config, c = workload_config(objects, one(objects, kind, name), tmp_path)
    assert config.metrics.port == port_named(c, "metrics"), "the probes' port is the one flowattr listens on"
    probes = {p: c[p]["httpGet"] for p in ("startupProbe", "livenessProbe", "readinessProbe")}
    assert {g["port"] for g in probes.values()} == {"metrics"}
    assert probes["livenessProbe"]["path"] == "/healthz" and probes["readinessProbe"]["path"] == "/readyz"

    # The process's real endpoint, on a free port, answers those paths (200, or 503 with a reason).
    local = replace(config, metrics=replace(config.metrics, port=0))
    if kind == "StatefulSet":
        served = JobMetrics(local, Tally())
    else:
        served = ExporterMetrics(local, FileShipper(str(tmp_path / "batches"), 10))
    endpoint = Endpoint(replace(local.metrics, host="127.0.0.1"), served.registry, served.live, served.ready)
    try:
        for probe in probes.values():
            try:
                status = urllib.request.urlopen(f"http://127.0.0.1:{endpoint.port}{probe['path']}", timeout=5).status
            except urllib.error.HTTPError as e:
                status = e.code
            assert status in (200, 503), probe
    finally:
        endpoint.close()


@pytest.mark.parametrize("kind, name", WORKLOADS)
def test_every_container_requests_cpu_and_memory_within_its_limits(target, kind, name):
    (c,) = one(render(target), kind, name)["spec"]["template"]["spec"]["containers"]
    requests, limits = c["resources"]["requests"], c["resources"]["limits"]
    assert {"cpu", "memory"} <= set(requests) and {"cpu", "memory"} <= set(limits)


def test_disruptions_take_one_job_pod_at_a_time(target):
    objects = render(target)
    budget = one(objects, "PodDisruptionBudget", "flowattr")
    labels = one(objects, "StatefulSet", "flowattr")["spec"]["template"]["metadata"]["labels"]
    assert budget["spec"]["maxUnavailable"] == 1
    assert budget["spec"]["selector"]["matchLabels"].items() <= labels.items()


SECURED = [t for t in TARGETS if any(o["kind"] == "StatefulSet" and "FLOWATTR_KAFKA__SASL_PASSWORD" in json.dumps(o)
                                     for o in render(t))]
MONITORED = [t for t in TARGETS if any(o["kind"] == "ServiceMonitor" for o in render(t))]
TOPICS = [t for t in TARGETS if any(o["kind"] == "KafkaTopic" for o in render(t))]


def test_the_optional_components_are_used_by_an_overlay():
    assert SECURED and MONITORED and TOPICS


@pytest.mark.parametrize("target", SECURED)
def test_both_workloads_take_kafka_credentials_from_one_secret(target, tmp_path):
    objects = render(target)
    secrets = set()
    for kind, name in WORKLOADS:
        workload = one(objects, kind, name)
        config, c = workload_config(objects, workload, tmp_path)
        k = config.kafka
        assert k.security_protocol == "SASL_SSL" and k.sasl_mechanism.startswith("SCRAM-")
        # Only references: the values are in the user's Secret, never in the manifests.
        assert k.sasl_username.startswith("secret:") and k.sasl_password.startswith("secret:")
        secrets |= {k.sasl_username.split(":")[1].split("/")[0], k.sasl_password.split(":")[1].split("/")[0]}
        mounts = {m["mountPath"]: m["name"] for m in c["volumeMounts"]}
        volumes = {v["name"]: v for v in workload["spec"]["template"]["spec"]["volumes"]}
        ca = Path(k.ssl_ca_file)
        volume = volumes[mounts[str(ca.parent)]]["secret"]
        secrets.add(volume["secretName"])
        assert [i["path"] for i in volume["items"]] == [ca.name]
    assert len(secrets) == 1


@pytest.mark.parametrize("target", MONITORED)
def test_service_monitors_find_services_on_each_workloads_metrics_port(target):
    objects = render(target)
    services = [o for o in objects if o["kind"] == "Service"]
    for kind, name in WORKLOADS:
        workload = one(objects, kind, name)
        labels = workload["spec"]["template"]["metadata"]["labels"]
        (c,) = workload["spec"]["template"]["spec"]["containers"]
        behind = [s for s in services if s["spec"]["selector"].items() <= labels.items()
                  and any(p.get("targetPort") == "metrics" for p in s["spec"]["ports"])]
        assert behind, f"no Service on the metrics port of {name}"
        monitors = [m for m in objects if m["kind"] == "ServiceMonitor"
                    and any(m["spec"]["selector"]["matchLabels"].items() <= s["metadata"].get("labels", {}).items()
                            for s in behind)]
        assert len(monitors) == 1, name
        ports = {p["name"] for s in behind for p in s["spec"]["ports"]}
        assert {e["port"] for e in monitors[0]["spec"]["endpoints"]} <= ports


@pytest.mark.parametrize("target", MONITORED)
def test_the_dashboard_asks_only_for_metrics_flowattr_exposes(target):
    dashboard = json.loads(one(render(target), "ConfigMap", "flowattr-dashboard")["data"]["flowattr-dashboard.json"])
    assert dashboard == json.loads((ROOT / "k8s/components/monitoring/flowattr-dashboard.json").read_text())
    exposed = set()
    for module in ("dataflow/metrics.py", "exporter/metrics.py"):
        exposed |= set(re.findall(r'"(flowattr_[a-z_]+)"', (ROOT / module).read_text()))
    queries = [t["expr"] for p in dashboard["panels"] for t in p.get("targets", [])]
    assert len(queries) >= 10
    for query in queries:
        for name in re.findall(r"\b(flowattr_[a-z_]+)", query):
            assert name.removesuffix("_total") in exposed, f"{name} in {query!r}"


@pytest.mark.parametrize("target", TOPICS)
def test_strimzi_topics_are_the_jobs_topics_with_the_settings_it_needs(target, tmp_path):
    objects = render(target)
    config, _ = workload_config(objects, one(objects, "StatefulSet", "flowattr"), tmp_path)
    topics = {t["spec"].get("topicName", t["metadata"]["name"]): t for t in objects if t["kind"] == "KafkaTopic"}
    assert set(topics) == set(all_topics(config))
    for name in input_topics(config):
        assert topics[name]["spec"]["config"]["message.timestamp.type"] == "LogAppendTime"
    assert topics[config.kafka.exporters_topic]["spec"]["config"]["cleanup.policy"] == "compact"
    assert all(t["spec"].get("replicas", 3) > 1 for t in topics.values()), "one replica loses data with a broker"
