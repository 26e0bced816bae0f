"""The Kubernetes side of submit and scale: kubectl in the current context, the job's StatefulSet, and
restarting all of its pods together, as a Bytewax cluster needs, then waiting until they run."""

from __future__ import annotations

import shutil
import subprocess
import time
from typing import Any

import orjson

NAMESPACE, STATEFULSET = "flowattr", "flowattr"
JOB_PODS = "app.kubernetes.io/name=flowattr,app.kubernetes.io/component=job"
REPLICAS_ENV = "FLOWATTR_CLUSTER__REPLICAS"


class KubeError(ConnectionError):
    """kubectl is missing, has no context, or the cluster refused; the message says which, in one line."""


def kubectl(*args: str, stdin: str | None = None, timeout_s: float = 120.0) -> str:
    found = shutil.which("kubectl")
    if found is None:
        raise KubeError("kubectl is not installed (it is on PATH nowhere)")
    out = subprocess.run([found, *args], input=stdin, capture_output=True, text=True, timeout=timeout_s)
    if out.returncode != 0:
        first = next((line for line in out.stderr.splitlines() if line.strip()), f"exit {out.returncode}")
        raise KubeError(f"kubectl {args[0]} failed: {first.strip()}")
    return out.stdout


def current_context() -> str:
    """The kube context commands will act on, or a KubeError naming how to set one."""
    try:
        return kubectl("config", "current-context").strip()
    except KubeError as e:
        raise KubeError(f"no kube context ({e}); choose one with `kubectl config use-context NAME`") from None


def statefulset(namespace: str = NAMESPACE) -> dict[str, Any]:
    return orjson.loads(kubectl("-n", namespace, "get", "statefulset", STATEFULSET, "-o", "json"))


def observed_statefulset(namespace: str = NAMESPACE, timeout_s: float = 60.0) -> dict[str, Any]:
    """The StatefulSet once its controller has seen its latest spec (so its updateRevision is the new one)."""
    deadline = time.monotonic() + timeout_s
    while True:
        sts = statefulset(namespace)
        if sts.get("status", {}).get("observedGeneration", 0) >= sts["metadata"]["generation"]:
            return sts
        if time.monotonic() > deadline:
            raise KubeError(f"the StatefulSet controller did not take the new spec within {timeout_s:.0f} s")
        time.sleep(1.0)


def outdated_pods(sts: dict[str, Any], namespace: str = NAMESPACE) -> list[str]:
    """Job pods not of the StatefulSet's newest revision."""
    revision = sts["status"].get("updateRevision")
    pods = orjson.loads(kubectl("-n", namespace, "get", "pod", "-l", JOB_PODS, "-o", "json"))["items"]
    return [p["metadata"]["name"] for p in pods if p["metadata"]["labels"].get("controller-revision-hash") != revision]


def restart_job(namespace: str = NAMESPACE) -> None:
    """Every job pod at once: the StatefulSet (updateStrategy OnDelete) recreates them from its new spec."""
    kubectl("-n", namespace, "delete", "pod", "-l", JOB_PODS, "--wait=false")


def wait_until_running(replicas: int, namespace: str = NAMESPACE, timeout_s: float = 600.0, poll_s: float = 3.0) -> None:
    """Until `replicas` job pods of the StatefulSet's newest revision are ready, none of an older one left."""
    deadline = time.monotonic() + timeout_s
    seen = ""
    while time.monotonic() < deadline:
        sts = statefulset(namespace)
        revision = sts["status"].get("updateRevision")
        pods = orjson.loads(kubectl("-n", namespace, "get", "pod", "-l", JOB_PODS, "-o", "json"))["items"]
        current = [p for p in pods if p["metadata"]["labels"].get("controller-revision-hash") == revision]
        ready = [p for p in current if _ready(p)]
        seen = f"{len(ready)} of {replicas} ready, {len(pods) - len(current)} of an older revision"
        if len(ready) == replicas == len(pods):
            return
        time.sleep(poll_s)
    raise KubeError(f"the job did not come up within {timeout_s:.0f} s: {seen}")


def with_workers(args: list[str], workers: int) -> list[str]:
    """The job container's arguments with `-w workers`."""
    if "-w" not in args:
        return [*args, "-w", str(workers)]
    i = args.index("-w")
    return [*args[: i + 1], str(workers), *args[i + 2 :]]


def _ready(pod: dict[str, Any]) -> bool:
    return any(c["type"] == "Ready" and c["status"] == "True" for c in pod.get("status", {}).get("conditions", []))
