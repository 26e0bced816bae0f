"""`flowattr submit`: render a kustomize overlay of k8s/ with the given region, process and worker counts,
image and brokers, and apply it to the current kube context (or print it with --dry-run)."""

from __future__ import annotations

import argparse
import shutil
import sys
import tempfile
from pathlib import Path
from typing import Any

import orjson

from dataflow.config import Config, ConfigError
from dataflow.kube import NAMESPACE, REPLICAS_ENV, STATEFULSET, current_context, kubectl, observed_statefulset
from dataflow.kube import outdated_pods, restart_job, wait_until_running, with_workers

MANIFESTS = Path(__file__).resolve().parents[1] / "k8s"
EXAMPLES = """examples:
  flowattr submit --dry-run                                   # the base's manifests, as they would be applied
  flowattr submit --overlay eu-west --processes 4 --brokers kafka-eu:9092
  flowattr submit --region us-west --image registry.example/flowattr:0.2.0 --dry-run > flowattr.yaml
"""


def register(sub) -> None:
    submit = sub.add_parser(
        "submit", help="render a k8s/ overlay with these parameters and apply it to the current kube context",
        epilog=EXAMPLES, formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    submit.add_argument("--overlay", default="base", help="base or a folder of k8s/overlays (default: base)")
    submit.add_argument("--region", help="the job's and the exporters' region (FLOWATTR_REGION)")
    submit.add_argument("--processes", type=int, help="Bytewax processes: the StatefulSet's replicas")
    submit.add_argument("--workers", type=int, help="worker threads per process (-w)")
    submit.add_argument("--image", help="image for the job and the exporter, e.g. registry/flowattr:0.2.0")
    submit.add_argument("--brokers", help="Kafka bootstrap servers the pods use (FLOWATTR_KAFKA__BROKERS)")
    submit.add_argument("--manifests", default=str(MANIFESTS), help="the k8s/ folder (default: the repository's)")
    submit.add_argument("--dry-run", action="store_true", help="print the manifests instead of applying them")
    submit.add_argument("--timeout", type=float, default=600.0, help="seconds to wait for the job to run")
    submit.set_defaults(handler=submit_command)


def submit_command(args, config: Config) -> int:
    for name in ("processes", "workers"):
        if getattr(args, name) is not None and getattr(args, name) < 1:
            raise ConfigError(f"--{name} must be at least 1")
    context = None if args.dry_run else current_context()
    manifests = render(Path(args.manifests), args.overlay, region=args.region, processes=args.processes,
                       workers=args.workers, image=args.image, brokers=args.brokers)
    if args.dry_run:
        sys.stdout.write(manifests)
        return 0
    print(kubectl("apply", "-f", "-", stdin=manifests), end="")
    sts = observed_statefulset(NAMESPACE)
    replicas = sts["spec"]["replicas"]
    if outdated_pods(sts, NAMESPACE):
        # updateStrategy OnDelete: the old pods keep running the old spec until deleted, all together.
        print(f"flowattr submit: restarting every {STATEFULSET} pod with the new spec")
        restart_job(NAMESPACE)
    wait_until_running(replicas, NAMESPACE, args.timeout)
    print(f"flowattr submit: {args.overlay} running in context {context}: {replicas} processes")
    return 0


def render(manifests: Path, overlay: str, *, region: str | None = None, processes: int | None = None,
           workers: int | None = None, image: str | None = None, brokers: str | None = None) -> str:
    """The overlay rendered by `kubectl kustomize` under a generated kustomization setting the parameters."""
    target = "base" if overlay == "base" else f"overlays/{overlay}"
    if not (manifests / target / "kustomization.yaml").is_file():
        known = sorted(p.name for p in (manifests / "overlays").iterdir() if p.is_dir()) if (manifests / "overlays").is_dir() else []
        raise ConfigError(f"no overlay {overlay!r} in {manifests} (there are: base, {', '.join(known)})")
    with tempfile.TemporaryDirectory(prefix="flowattr-submit-") as tmp:
        tree = Path(tmp) / "k8s"
        shutil.copytree(manifests, tree)
        plain = kubectl("kustomize", str(tree / target))
        job_args = _job_container(plain)["args"]
        folder = tree / "submit"
        folder.mkdir()
        # JSON is YAML: the generated kustomization needs no YAML writer.
        kustomization = kustomization_for(f"../{target}", job_args, region=region, processes=processes,
                                          workers=workers, image=image, brokers=brokers)
        (folder / "kustomization.yaml").write_bytes(orjson.dumps(kustomization, option=orjson.OPT_INDENT_2))
        return kubectl("kustomize", str(folder))


def kustomization_for(target: str, job_args: list[str], *, region, processes, workers, image, brokers) -> dict[str, Any]:
    env = [{"name": "FLOWATTR_REGION", "value": region}] if region else []
    env += [{"name": "FLOWATTR_KAFKA__BROKERS", "value": brokers}] if brokers else []
    job: dict[str, Any] = {"name": "flowattr"}
    exporter: dict[str, Any] = {"name": "exporter"}
    for container in (job, exporter):
        if env:
            container["env"] = env
        if image:
            container["image"] = image
    if workers is not None:
        job["args"] = with_workers(job_args, workers)
    kustomization: dict[str, Any] = {
        "apiVersion": "kustomize.config.k8s.io/v1beta1",
        "kind": "Kustomization",
        "resources": [target],
        "patches": [
            {"patch": orjson.dumps(_patch("StatefulSet", STATEFULSET, job)).decode()},
            {"patch": orjson.dumps(_patch("DaemonSet", "flowattr-exporter", exporter)).decode()},
        ],
    }
    if processes is not None:
        kustomization["replicas"] = [{"name": STATEFULSET, "count": processes}]
        # Kustomize copies spec.replicas into the processes' environment only within one kustomization:
        # a new count needs the copy again, here (docs/kubernetes.md).
        kustomization["replacements"] = [{
            "source": {"kind": "StatefulSet", "name": STATEFULSET, "fieldPath": "spec.replicas"},
            "targets": [{
                "select": {"kind": "StatefulSet", "name": STATEFULSET},
                "fieldPaths": [f"spec.template.spec.containers.[name=flowattr].env.[name={REPLICAS_ENV}].value"],
            }],
        }]
    return kustomization


def _patch(kind: str, name: str, container: dict[str, Any]) -> dict[str, Any]:
    return {"apiVersion": "apps/v1", "kind": kind, "metadata": {"name": name},
            "spec": {"template": {"spec": {"containers": [container]}}}}


def _job_container(rendered: str) -> dict[str, Any]:
    import yaml

    for doc in yaml.safe_load_all(rendered):
        if not doc:
            continue
        if doc.get("kind") == "StatefulSet" and doc["metadata"]["name"] == STATEFULSET:
            return next(c for c in doc["spec"]["template"]["spec"]["containers"] if c["name"] == "flowattr")
    raise ConfigError(f"the manifests have no StatefulSet {STATEFULSET}")
