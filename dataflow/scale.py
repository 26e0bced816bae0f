"""`flowattr scale`: give the running job another number of processes (and workers), the way Bytewax
needs it: every process stopped and all started again together at the new size, resuming from recovery.
A local deployment (`flowattr run --processes N`) when one runs in --run-dir, else the StatefulSet in the
current kube context."""

from __future__ import annotations

import argparse
import copy
from pathlib import Path
from typing import Any

import orjson

from dataflow.config import Config, ConfigError
from dataflow.kube import NAMESPACE, REPLICAS_ENV, current_context, kubectl, observed_statefulset, restart_job
from dataflow.kube import statefulset, wait_until_running, with_workers
from dataflow.local_cluster import DEFAULT_RUN_DIR, request_scale, supervisor_pid

EXAMPLES = """examples:
  flowattr run --processes 1 &              # a local deployment in out/local (Kafka, recovery on)
  flowattr scale --processes 2              # rescale it: stop all, start 2, resume from recovery
  flowattr scale --processes 4 --workers 1  # without a local deployment: the StatefulSet in the kube context
"""


def register(sub) -> None:
    scale = sub.add_parser(
        "scale", help="resize the running job: all processes restarted together at the new size, from recovery",
        epilog=EXAMPLES, formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    scale.add_argument("--processes", type=int, required=True, help="Bytewax processes (pods on Kubernetes)")
    scale.add_argument("--workers", type=int, help="worker threads per process (default: unchanged)")
    scale.add_argument("--run-dir", default=DEFAULT_RUN_DIR, help=f"the local deployment's folder (default {DEFAULT_RUN_DIR})")
    scale.add_argument("--namespace", default=NAMESPACE, help="Kubernetes namespace of the job")
    scale.add_argument("--timeout", type=float, default=600.0, help="seconds to wait until it runs again")
    scale.set_defaults(handler=scale_command)


def scale_command(args, config: Config) -> int:
    if args.processes < 1 or (args.workers is not None and args.workers < 1):
        raise ConfigError("--processes and --workers must be at least 1")
    run_dir = Path(args.run_dir)
    if supervisor_pid(run_dir) is not None:
        before, after = request_scale(run_dir, args.processes, args.workers, args.timeout)
        print(f"flowattr scale: local deployment {run_dir}: {before.processes} x {before.workers} -> "
              f"{after.processes} x {after.workers} (processes x workers), running, pids {list(after.pids)}")
        return 0
    context = current_context()
    sts = statefulset(args.namespace)
    before = sts["spec"]["replicas"]
    kubectl("replace", "-f", "-", stdin=orjson.dumps(rescaled(sts, args.processes, args.workers)).decode())
    observed_statefulset(args.namespace)
    restart_job(args.namespace)
    wait_until_running(args.processes, args.namespace, args.timeout)
    print(f"flowattr scale: {context}: statefulset {args.namespace}/{sts['metadata']['name']} "
          f"{before} -> {args.processes} processes, running")
    return 0


def rescaled(sts: dict[str, Any], processes: int, workers: int | None) -> dict[str, Any]:
    """The StatefulSet with a new replica count, the same count in the processes' environment (the two
    must agree: `kubectl scale` changes only the first), and the worker count in the job's arguments."""
    new = copy.deepcopy(sts)
    new.pop("status", None)
    new["spec"]["replicas"] = processes
    container = next(c for c in new["spec"]["template"]["spec"]["containers"] if c["name"] == "flowattr")
    env = next((e for e in container.get("env", []) if e["name"] == REPLICAS_ENV), None)
    if env is None:
        raise ConfigError(f"the StatefulSet's flowattr container has no {REPLICAS_ENV}: not flowattr's manifests")
    env["value"] = str(processes)
    if workers is not None:
        container["args"] = with_workers(container.get("args", []), workers)
    return new
