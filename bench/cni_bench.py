"""Benchmark (not a test): how long flowattr-cni's ADD takes as the runtime runs it (the static shim
starting the Python plugin), without a kubeconfig and with one whose API server refuses connections,
and the plugin's own time from its log. Run as root after `make cni-plugins`:
`.venv/bin/python bench/cni_bench.py`."""

from __future__ import annotations

import argparse
import json
import os
import platform
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
import uuid
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
SHIM = REPO / ".build" / "cni" / "bin" / "flowattr-cni"


def adds(count: int, pin_dir: str, state_dir: str, extra: dict) -> list[float]:
    """Wall milliseconds of each ADD; each is followed by its DEL (not timed)."""
    times = []
    for i in range(count):
        conf = {"cniVersion": "1.1.0", "name": "bench", "type": "flowattr-cni",
                "exec": [sys.executable, "-m", "exporter.cni"], "pinDir": pin_dir, "stateDir": state_dir, **extra,
                "prevResult": {"cniVersion": "1.1.0", "interfaces": [{"name": "eth0", "sandbox": "/x"}],
                               "ips": [{"interface": 0, "address": f"10.198.{i // 250}.{i % 250 + 2}/16"}]}}
        env = dict(os.environ, CNI_COMMAND="ADD", CNI_CONTAINERID=f"bench{i}", CNI_IFNAME="eth0", CNI_NETNS="/x",
                   CNI_ARGS=f"K8S_POD_NAMESPACE=shop;K8S_POD_NAME=cart-{i}")
        started = time.perf_counter()
        done = subprocess.run([str(SHIM)], input=json.dumps(conf), env=env, capture_output=True, text=True)
        times.append((time.perf_counter() - started) * 1000)
        assert json.loads(done.stdout) == conf["prevResult"], done.stderr
        subprocess.run([str(SHIM)], input=json.dumps(conf), env=dict(env, CNI_COMMAND="DEL"), capture_output=True,
                       text=True)
    return times


def plugin_ms(state_dir: str) -> list[float]:
    lines = (Path(state_dir) / "cni.log").read_text().splitlines()
    return [float(line.rsplit(" in ", 1)[1].split()[0]) for line in lines if " ADD " in line]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--adds", type=int, default=30)
    args = parser.parse_args()
    if not SHIM.exists():
        sys.exit("bench/cni_bench.py: run `make cni-plugins` first")
    pin_dir = f"/sys/fs/bpf/flowattr-bench-{uuid.uuid4().hex[:8]}"
    work = Path(tempfile.mkdtemp(prefix="flowattr-cni-bench-"))
    kubeconfig = work / "kubeconfig"
    kubeconfig.write_text(json.dumps({
        "apiVersion": "v1", "kind": "Config", "current-context": "c",
        "clusters": [{"name": "k", "cluster": {"server": "https://127.0.0.1:1"}}],
        "users": [{"name": "u", "user": {"token": "unused"}}],
        "contexts": [{"name": "c", "context": {"cluster": "k", "user": "u"}}],
    }))
    print(f"$ {' '.join(sys.argv)}")
    print(f"machine: {platform.machine()}, {os.cpu_count()} CPUs, kernel {platform.release()}, {args.adds} ADDs each")
    print("| case | ADD wall ms, median | p90 | plugin's own ms, median |")
    print("|---|---|---|---|")
    try:
        for label, extra in (("no kubeconfig", {}), ("kubeconfig, API refusing", {"kubeconfig": str(kubeconfig)})):
            state_dir = str(work / label.replace(" ", "-").replace(",", ""))
            times = adds(args.adds, pin_dir, state_dir, extra)
            own = plugin_ms(state_dir)
            p90 = statistics.quantiles(times, n=10)[-1]
            print(f"| {label} | {statistics.median(times):.1f} | {p90:.1f} | {statistics.median(own):.1f} |")
    finally:
        shutil.rmtree(work)
        for pin in Path(pin_dir).glob("*"):
            pin.unlink()
        if Path(pin_dir).exists():
            Path(pin_dir).rmdir()


if __name__ == "__main__":
    main()
