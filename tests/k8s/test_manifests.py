"""The rendered manifests: valid Kubernetes objects, and the promises users rely on (one Bytewax
process per replica that can find its peers, a config flowattr can load, commands flowattr's own
parser accepts, and an exporter with only the capabilities it needs)."""

from __future__ import annotations

import argparse
import os
import tomllib

import jsonschema
import kubernetes_validate
import pytest

from dataflow import cli
from dataflow.config import load_config

import custom_resources
from k8s_render import CONFIG_PATH, ROOT, TARGETS, config_text, one, pod_env, render

# Oldest and newest schema sets kubernetes-validate ships that we support; strict rejects unknown fields.
SCHEMA_VERSIONS = ["1.30.0", "1.37.0"]
# The exporter's capabilities (base/daemonset.yaml; exporter/capture.py checks for them): load BPF
# programs and maps, attach them to tracepoints.
EXPORTER_CAPABILITIES = {"BPF", "PERFMON"}
IMAGE = "ghcr.io/flowattr/flowattr:0.1.0"


def job(objects):
    return one(objects, "StatefulSet", "flowattr")


def exporter(objects):
    return one(objects, "DaemonSet", "flowattr-exporter")


def container(workload):
    (c,) = workload["spec"]["template"]["spec"]["containers"]
    return c


def job_env(objects, hostname="flowattr-0"):
    sts = job(objects)
    return pod_env(container(sts), {"metadata.namespace": sts["metadata"]["namespace"], "metadata.name": hostname})


@pytest.mark.parametrize("version", SCHEMA_VERSIONS)
def test_every_object_is_valid_against_the_kubernetes_schema(target, version):
    objects = render(target)
    assert {o["kind"] for o in objects} >= {"Namespace", "ConfigMap", "Service", "ServiceAccount", "StatefulSet", "DaemonSet"}
    for o in objects:
        try:
            if o["kind"] in custom_resources.SCHEMAS:
                custom_resources.validate(o)
            else:
                kubernetes_validate.validate(o, version, strict=True)
        except (kubernetes_validate.ValidationError, jsonschema.ValidationError) as e:
            pytest.fail(f"{target}: {o['kind']}/{o['metadata']['name']} invalid for Kubernetes {version}: {e.message} at {list(e.path)}")


def test_everything_lives_in_the_flowattr_namespace(target):
    objects = render(target)
    assert one(objects, "Namespace")["metadata"]["name"] == "flowattr"
    # Strimzi's topics live with their Kafka cluster, wherever that is (components/strimzi-topics).
    cluster_scoped = {"Namespace", "ClusterRole", "ClusterRoleBinding", "KafkaTopic"}
    placed = {o["metadata"].get("namespace") for o in objects if o["kind"] not in cluster_scoped}
    assert placed == {"flowattr"}
    assert all(o["metadata"].get("namespace") for o in objects if o["kind"] == "KafkaTopic")


def test_statefulset_replicas_equal_the_cluster_size_the_processes_read(target):
    objects = render(target)
    replicas = job(objects)["spec"]["replicas"]
    assert job_env(objects)["FLOWATTR_CLUSTER__REPLICAS"] == str(replicas)


def test_config_loads_and_its_peer_domain_is_the_headless_service(target, tmp_path):
    objects = render(target)
    sts = job(objects)
    path = tmp_path / "flowattr.toml"
    path.write_text(config_text(objects, sts))
    file_only = load_config(path, environ={})

    service = one(objects, "Service", sts["spec"]["serviceName"])
    namespace = service["metadata"]["namespace"]
    assert service["spec"]["clusterIP"] == "None" and service["spec"]["publishNotReadyAddresses"] is True
    assert service["spec"]["selector"].items() <= sts["spec"]["template"]["metadata"]["labels"].items()
    domain = f"{service['metadata']['name']}.{namespace}.svc.cluster.local"
    assert file_only.cluster.peer_domain == domain
    (port,) = service["spec"]["ports"]
    assert port["port"] == file_only.cluster.port == container(sts)["ports"][0]["containerPort"]
    assert file_only.kafka.brokers, "the job runs in Kafka mode: kafka.brokers must be set"

    # What each pod computes at start: the file plus its environment, its host name giving its id.
    replicas = sts["spec"]["replicas"]
    expected = [f"{sts['metadata']['name']}-{i}.{domain}:{port['port']}" for i in range(replicas)]
    for ordinal in range(replicas):
        hostname = f"{sts['metadata']['name']}-{ordinal}"
        config = load_config(path, environ=job_env(objects, hostname))
        assert config.cluster_addresses(hostname) == (expected, ordinal)


def parse_container_command(c, objects, workload, monkeypatch, tmp_path, pod_fields):
    """Runs flowattr's real `main` on the container's command line and environment up to the point
    where the sub-command would start: the real parser and the real config loading, no stand-in."""
    assert c["command"][0] == "flowattr"
    scripts = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]["scripts"]
    assert scripts["flowattr"] == "dataflow.cli:main"
    mounted = tmp_path / "flowattr.toml"
    mounted.write_text(config_text(objects, workload))
    argv = [str(mounted) if a == CONFIG_PATH else a for a in [*c["command"][1:], *c.get("args", [])]]
    assert str(mounted) in argv, f"the command does not read the mounted config {CONFIG_PATH}"

    for name in [k for k in os.environ if k.startswith("FLOWATTR_")]:
        monkeypatch.delenv(name)
    for name, value in pod_env(c, pod_fields).items():
        monkeypatch.setenv(name, value)

    seen = {}

    class Parsed(Exception):
        pass

    real_parse, real_load = argparse.ArgumentParser.parse_args, cli.load_config

    def parse_args(self, args=None, namespace=None):
        seen["args"] = real_parse(self, args, namespace)
        return seen["args"]

    def load_then_stop(*a, **kw):
        seen["config"] = real_load(*a, **kw)
        raise Parsed

    monkeypatch.setattr(argparse.ArgumentParser, "parse_args", parse_args)
    monkeypatch.setattr(cli, "load_config", load_then_stop)
    with pytest.raises(Parsed):
        cli.main(argv)  # an argparse error would exit 2 here instead
    return seen["args"], seen["config"]


def test_job_command_parses_with_flowattrs_own_parser(target, monkeypatch, tmp_path):
    objects = render(target)
    sts = job(objects)
    args, config = parse_container_command(
        container(sts), objects, sts, monkeypatch, tmp_path, {"metadata.namespace": sts["metadata"]["namespace"]}
    )
    assert args.command == "run" and args.workers == 1
    assert not args.embedded and not config.files.input_dir, "the job must run in Kafka mode"
    assert config.cluster.replicas == sts["spec"]["replicas"]


def test_exporter_command_parses_with_flowattrs_own_parser(target, monkeypatch, tmp_path):
    objects = render(target)
    ds = exporter(objects)
    args, config = parse_container_command(
        container(ds), objects, ds, monkeypatch, tmp_path,
        {"metadata.namespace": ds["metadata"]["namespace"], "spec.nodeName": "node-a"},
    )
    assert args.command == "export"
    assert config.exporter_id() == "node-a"


def test_exporter_is_not_privileged_and_adds_only_the_bpf_capabilities(target):
    ds = exporter(render(target))
    pod = ds["spec"]["template"]["spec"]
    sc = container(ds)["securityContext"]
    assert sc.get("privileged", False) is False and sc["allowPrivilegeEscalation"] is False
    assert sc["capabilities"]["drop"] == ["ALL"]
    assert set(sc["capabilities"]["add"]) == EXPORTER_CAPABILITIES
    assert sc["readOnlyRootFilesystem"] is True
    assert pod["hostNetwork"] is True and not pod.get("hostPID") and not pod.get("hostIPC")
    assert {"operator": "Exists"} in pod["tolerations"], "the exporter must run on every node, tainted or not"

    mounts = {m["mountPath"]: m for m in container(ds)["volumeMounts"]}
    host_paths = {v["name"]: v["hostPath"]["path"] for v in pod["volumes"] if "hostPath" in v}
    for path in ["/sys/fs/bpf", "/sys/kernel/tracing", "/lib/modules", "/usr/src"]:
        assert path in mounts and host_paths[mounts[path]["name"]] == path, f"{path} must be the host's"
    # Only bpffs is written (pinned maps); the host's tracefs, headers and identity are read-only.
    writable = {p for p, m in mounts.items() if not m.get("readOnly") and mounts[p]["name"] in host_paths}
    assert writable == {"/sys/fs/bpf"}

    env = pod_env(container(ds), {"metadata.namespace": "flowattr", "spec.nodeName": "node-a"})
    assert env["FLOWATTR_EXPORTER__EXPORTER_ID"] == "node-a"
    # The identity file the agent opens must be, through its host mount, the host's /etc/flowattr/identity.
    identity = env["FLOWATTR_EXPORTER__IDENTITY_FILE"]
    on_host = [host_paths[m["name"]] + identity[len(p):] for p, m in mounts.items()
               if m["name"] in host_paths and identity.startswith(p + "/")]
    assert on_host == ["/etc/flowattr/identity"]


def test_job_runs_as_non_root_without_any_capability(target):
    sts = job(render(target))
    pod = sts["spec"]["template"]["spec"]
    sc = container(sts)["securityContext"]
    assert pod["securityContext"]["runAsNonRoot"] is True and pod["securityContext"]["runAsUser"] != 0
    assert sc["capabilities"] == {"drop": ["ALL"]}
    assert sc["readOnlyRootFilesystem"] is True and sc["allowPrivilegeEscalation"] is False
    assert not pod.get("hostNetwork") and not pod.get("hostPID")
    assert all("hostPath" not in v for v in pod["volumes"])


def test_job_starts_all_processes_together(target):
    spec = job(render(target))["spec"]
    # A Bytewax cluster needs every process up; a rolling update would mix two configurations.
    assert spec["podManagementPolicy"] == "Parallel"
    assert spec["updateStrategy"]["type"] == "OnDelete"


def test_recovery_dir_is_on_a_per_pod_volume_wherever_it_is_set():
    with_recovery = [t for t in TARGETS if "FLOWATTR_RECOVERY__DIR" in job_env(render(t))]
    assert with_recovery  # at least one overlay shows how to turn it on
    for target in with_recovery:
        sts = job(render(target))
        env = job_env(render(target))
        claims = {t["metadata"]["name"] for t in sts["spec"].get("volumeClaimTemplates", [])}
        mounts = {m["mountPath"]: m["name"] for m in container(sts)["volumeMounts"]}
        assert any(env["FLOWATTR_RECOVERY__DIR"].startswith(p + "/") and name in claims for p, name in mounts.items())


def test_no_service_account_token_is_mounted_but_where_nodes_are_listed(target):
    objects = render(target)
    assert all(sa["automountServiceAccountToken"] is False for sa in objects if sa["kind"] == "ServiceAccount")
    for workload in (job(objects), exporter(objects)):
        assert workload["spec"]["template"]["spec"]["automountServiceAccountToken"] is False
    # The platform's entitlement publisher reads Node objects, and may do nothing else.
    [entitle] = [o for o in objects if o["kind"] == "Deployment" and o["metadata"]["name"] == "flowattr-entitle-nodes"]
    account = entitle["spec"]["template"]["spec"]["serviceAccountName"]
    [binding] = [o for o in objects if o["kind"] == "ClusterRoleBinding" and o["subjects"][0]["name"] == account]
    [role] = [o for o in objects if o["kind"] == "ClusterRole" and o["metadata"]["name"] == binding["roleRef"]["name"]]
    assert role["rules"] == [{"apiGroups": [""], "resources": ["nodes"], "verbs": ["list"]}]
    assert entitle["spec"]["template"]["spec"]["containers"][0]["args"][-4:] == ["entitle", "sync-nodes", "--every", "30"]


def test_one_image_for_job_and_exporter(target):
    objects = render(target)
    images = {c["image"] for w in (job(objects), exporter(objects)) for c in w["spec"]["template"]["spec"]["containers"]}
    assert images == {IMAGE}
