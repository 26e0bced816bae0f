"""Renders the kustomizations under k8s/ with the real `kubectl kustomize` and hands the tests the
objects, as a user's `kubectl apply` would receive them; reads them as the kubelet would."""

from __future__ import annotations

import re
import shutil
import subprocess
from pathlib import Path

import pytest
import yaml

ROOT = Path(__file__).resolve().parents[2]
K8S = ROOT / "k8s"
# Every kustomization a user can apply: the base and each overlay.
TARGETS = ["base", *sorted(f"overlays/{p.name}" for p in (K8S / "overlays").iterdir() if p.is_dir())]
CONFIG_PATH = "/etc/flowattr/flowattr.toml"  # where the pods mount the ConfigMap's flowattr.toml
_cache: dict[str, list[dict]] = {}


def render(target: str) -> list[dict]:
    if target not in _cache:
        kubectl = shutil.which("kubectl")
        if kubectl is None:
            pytest.fail("kubectl is not installed: the manifests are rendered with `kubectl kustomize`")
        out = subprocess.run([kubectl, "kustomize", str(K8S / target)], capture_output=True, text=True, timeout=60)
        assert out.returncode == 0, f"kubectl kustomize {target} failed:\n{out.stderr}"
        _cache[target] = [o for o in yaml.safe_load_all(out.stdout) if o]
    return _cache[target]


def one(objects: list[dict], kind: str, name: str | None = None) -> dict:
    found = [o for o in objects if o["kind"] == kind and (name is None or o["metadata"]["name"] == name)]
    assert len(found) == 1, f"expected one {kind} {name or ''}, found {len(found)}"
    return found[0]


def pod_env(container: dict, pod: dict) -> dict[str, str]:
    """The container's environment as the kubelet would set it: literal values with $(VAR)
    references expanded, the downward-API fields this project uses resolved from `pod`, and a value
    from a Secret as `secret:<name>/<key>` (the Secret is the user's, not in the manifests)."""
    env: dict[str, str] = {}
    for var in container.get("env", []):
        if "value" in var:
            env[var["name"]] = re.sub(r"\$\((\w+)\)", lambda m: env.get(m.group(1), m.group(0)), var["value"])
        elif "secretKeyRef" in var["valueFrom"]:
            ref = var["valueFrom"]["secretKeyRef"]
            env[var["name"]] = f"secret:{ref['name']}/{ref['key']}"
        else:
            field = var["valueFrom"]["fieldRef"]["fieldPath"]
            env[var["name"]] = pod[field]
    return env


def config_text(objects: list[dict], workload: dict) -> str:
    """flowattr.toml from the ConfigMap the workload mounts."""
    volumes = workload["spec"]["template"]["spec"]["volumes"]
    name = next(v["configMap"]["name"] for v in volumes if "configMap" in v)
    return one(objects, "ConfigMap", name)["data"]["flowattr.toml"]
