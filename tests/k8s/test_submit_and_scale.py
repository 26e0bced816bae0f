"""`flowattr submit --dry-run` renders manifests that validate strictly and carry the parameters given;
`flowattr scale`'s new StatefulSet keeps the replica count and the processes' count equal; without a
kube context both say so in one line."""

from __future__ import annotations

import os
import subprocess
import sys

import custom_resources
import kubernetes_validate
import pytest
import yaml

from dataflow.config import load_config
from dataflow.scale import rescaled

from k8s_render import ROOT, config_text, one, pod_env, render
from test_manifests import SCHEMA_VERSIONS, container, exporter, job

FLOWATTR = [sys.executable, "-m", "dataflow.cli"]


def flowattr(*args, env=None):
    return subprocess.run([*FLOWATTR, *args], cwd=ROOT, capture_output=True, text=True, timeout=120,
                          env={**os.environ, "PYTHONPATH": str(ROOT), **(env or {})})


def overlay_name(target):
    return target.removeprefix("overlays/")


def test_dry_run_renders_the_parameters_into_valid_manifests(target, tmp_path):
    out = flowattr("submit", "--overlay", overlay_name(target), "--dry-run", "--processes", "5", "--workers", "2",
                   "--region", "us-west", "--image", "registry.test/flowattr:9.9", "--brokers", "kafka-a:9093")
    assert out.returncode == 0, out.stderr
    objects = [o for o in yaml.safe_load_all(out.stdout) if o]
    for version in SCHEMA_VERSIONS:
        for o in objects:
            if o["kind"] in custom_resources.SCHEMAS:
                custom_resources.validate(o)
            else:
                kubernetes_validate.validate(o, version, strict=True)

    sts, ds = job(objects), exporter(objects)
    assert sts["spec"]["replicas"] == 5
    c = container(sts)
    assert c["args"][-2:] == ["-w", "2"]
    assert {x["image"] for w in (sts, ds) for x in w["spec"]["template"]["spec"]["containers"]} == {
        "registry.test/flowattr:9.9"}

    # What each of the five pods computes at start, from its mounted file and its environment.
    (tmp_path / "flowattr.toml").write_text(config_text(objects, sts))
    namespace = sts["metadata"]["namespace"]
    for ordinal in range(5):
        host = f"flowattr-{ordinal}"
        env = pod_env(c, {"metadata.namespace": namespace, "metadata.name": host})
        config = load_config(tmp_path / "flowattr.toml", environ=env)
        assert (config.region, config.kafka.brokers) == ("us-west", "kafka-a:9093")
        addresses, process = config.cluster_addresses(host)
        assert len(addresses) == 5 and process == ordinal
    exporter_env = pod_env(container(ds), {"metadata.namespace": namespace, "spec.nodeName": "n1"})
    exporter_config = load_config(tmp_path / "flowattr.toml", environ=exporter_env)
    assert (exporter_config.region, exporter_config.kafka.brokers) == ("us-west", "kafka-a:9093")


def test_dry_run_without_parameters_is_the_overlay_itself(target):
    out = flowattr("submit", "--overlay", overlay_name(target), "--dry-run")
    assert out.returncode == 0, out.stderr
    assert [o for o in yaml.safe_load_all(out.stdout) if o] == render(target)


def test_an_unknown_overlay_is_one_line_naming_the_known_ones():
    out = flowattr("submit", "--overlay", "mars", "--dry-run")
    assert out.returncode == 2 and out.stdout == ""
    assert out.stderr.count("\n") == 1 and "no overlay 'mars'" in out.stderr and "eu-west" in out.stderr


@pytest.mark.parametrize("command", [["submit"], ["scale", "--processes", "2"]])
def test_without_a_kube_context_the_error_is_one_line(command, tmp_path):
    (tmp_path / "config").write_text("apiVersion: v1\nkind: Config\nclusters: []\ncontexts: []\nusers: []\n")
    out = flowattr(*command, *(["--run-dir", str(tmp_path / "none")] if command[0] == "scale" else []),
                   env={"KUBECONFIG": str(tmp_path / "config")})
    assert out.returncode == 2, out.stderr
    assert out.stderr.count("\n") == 1 and out.stderr.startswith("flowattr: no kube context"), out.stderr


def test_scale_changes_the_count_the_processes_read_together_with_the_replicas(target):
    sts = job(render(target))
    new = rescaled(sts, 7, 3)
    for version in SCHEMA_VERSIONS:
        kubernetes_validate.validate(new, version, strict=True)
    assert new["spec"]["replicas"] == 7
    env = pod_env(container(new), {"metadata.namespace": "flowattr"})
    assert env["FLOWATTR_CLUSTER__REPLICAS"] == "7"
    assert container(new)["args"][-2:] == ["-w", "3"]
    # Nothing else moves: the same StatefulSet once the three values are put back.
    back = rescaled(new, sts["spec"]["replicas"], int(container(sts)["args"][-1]))
    assert back == sts
    assert one(render(target), "StatefulSet") == sts  # the input was not modified
