"""The StatefulSet's entrypoint run here as real processes: the rendered command line and
environment, with only what a pod gets from Kubernetes swapped for local stand-ins (host names ->
explicit addresses on loopback, Kafka -> the job's file mode, the ConfigMap -> a file)."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import orjson

from dataflow.summary import file_run_summary
from k8s_render import CONFIG_PATH, config_text, one, pod_env, render
from tests.ports import free_ports

FLOWATTR = Path(sys.executable).with_name("flowattr")  # the console script pip installed


def tally_of(stdout: str) -> dict[str, int]:
    """The per-process counts from `flowattr run: process I of N done; k=v k=v ...`."""
    line = next(l for l in stdout.splitlines() if " done; " in l)
    return {k: int(v) for k, v in (kv.split("=") for kv in line.split(" done; ", 1)[1].split())}


def test_two_pods_worth_of_flowattr_run_form_one_cluster_and_answer_every_flow(tmp_path):
    objects = render("base")
    sts = one(objects, "StatefulSet", "flowattr")
    (c,) = sts["spec"]["template"]["spec"]["containers"]
    replicas = sts["spec"]["replicas"]
    assert replicas == 2

    fleet = tmp_path / "fleet"
    made = subprocess.run([FLOWATTR, "simulate", fleet, "--minutes", "5"], capture_output=True, text=True, timeout=60)
    assert made.returncode == 0, made.stderr
    mounted = tmp_path / "flowattr.toml"
    mounted.write_text(config_text(objects, sts))
    out = tmp_path / "out"

    env = {k: v for k, v in os.environ.items() if not k.startswith("FLOWATTR_")}
    env.update(pod_env(c, {"metadata.namespace": sts["metadata"]["namespace"]}))
    assert env["FLOWATTR_CLUSTER__REPLICAS"] == str(replicas)
    # In the pod, process id and peers come from the host name flowattr-N and the headless
    # Service; here, from explicit loopback addresses (they take precedence in Config).
    cluster_ports = free_ports(2 * replicas)
    addresses = ";".join(f"127.0.0.1:{p}" for p in cluster_ports[:replicas])
    # Each pod has its own network for its metrics port; here each process gets a port of its own.
    metrics_ports = cluster_ports[replicas:]
    env.update(FLOWATTR_CLUSTER__ADDRESSES=addresses, FLOWATTR_FILES__INPUT_DIR=str(fleet),
               FLOWATTR_FILES__OUTPUT_DIR=str(out))
    argv = [str(mounted) if a == CONFIG_PATH else a for a in [*c["command"][1:], *c["args"]]]

    procs = [
        subprocess.Popen([FLOWATTR, *argv], env={**env, "FLOWATTR_CLUSTER__PROCESS_ID": str(i),
                                                 "FLOWATTR_METRICS__PORT": str(metrics_ports[i])}, cwd=tmp_path,
                         stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
        for i in range(replicas)
    ]
    tally: dict[str, int] = {}
    try:
        for i, p in enumerate(procs):
            stdout, stderr = p.communicate(timeout=120)
            assert p.returncode == 0, f"process {i}: {stderr}"
            assert f"process {i} of {replicas} done" in stdout
            for k, v in tally_of(stdout).items():
                tally[k] = tally.get(k, 0) + v
    finally:
        for p in procs:
            p.kill()

    # One output file per worker: both processes took part.
    assert len(list(out.glob("attributed-*.ndjson"))) == replicas
    truth = orjson.loads((fleet / "truth.json").read_bytes())
    summary = file_run_summary(out, tally, truth)
    assert summary["records in"] > 10_000
    assert summary["unaccounted"] == 0, summary  # every input record went somewhere
    assert summary["misattributed"] == 0, summary
    assert summary["attributed"] > 0.9 * summary["flows answered"], summary
