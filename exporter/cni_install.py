"""`flowattr-cni install | uninstall | reconcile`, run by the exporter DaemonSet's init container:
put the plugin into the host's CNI bin folder and chain it into the node's network config list
(reversibly), and bring the workload maps in line with the pods already on the node."""

from __future__ import annotations

import argparse
import hashlib
import json
import os
import shlex
import shutil
import sys
from pathlib import Path

from exporter.cni import (
    DEFAULT_API_TIMEOUT_S, DEFAULT_PIN_DIR, DEFAULT_STATE_DIR, Attachment, State, container_addresses,
    pod_from_args, register,
)
from exporter.ipman import WorkloadMaps
from exporter.owners import pod_name

PLUGIN_TYPE = "flowattr-cni"
# What a host needs to run this image's Python without one of its own (install --runtime-dir):
# the interpreter, the project's venv, and the C libraries, run through the image's own loader.
RUNTIME_PARTS = ("usr/local", "opt/flowattr", "usr/lib/x86_64-linux-gnu")
SERVICE_ACCOUNT = Path("/var/run/secrets/kubernetes.io/serviceaccount")


class InstallError(Exception):
    """The node's CNI set-up is not one this installer can chain into; the message says why."""


def network_config_list(conf_dir: Path) -> Path:
    """The file the runtime uses: the first in name order (libcni's rule)."""
    candidates = sorted(p for p in conf_dir.iterdir() if p.suffix in (".conf", ".conflist", ".json"))
    if not candidates:
        raise InstallError(f"no network configuration in {conf_dir}: install the network plugin first")
    if candidates[0].suffix != ".conflist":
        raise InstallError(f"{candidates[0]} is a single-plugin config; flowattr-cni chains only into a .conflist")
    return candidates[0]


def chain(conflist: dict, entry: dict) -> dict:
    """The list with our entry last (replacing an earlier one of ours): it runs after the network
    plugin, so prevResult holds the pod's addresses."""
    plugins = [p for p in conflist.get("plugins", []) if p.get("type") != PLUGIN_TYPE]
    return {**conflist, "plugins": [*plugins, entry]}


def unchain(conflist: dict) -> dict:
    return {**conflist, "plugins": [p for p in conflist.get("plugins", []) if p.get("type") != PLUGIN_TYPE]}


def install(shim: Path, bin_dir: Path, conf_dir: Path, entry: dict) -> Path:
    target = bin_dir / PLUGIN_TYPE
    temporary = bin_dir / f".{PLUGIN_TYPE}.tmp"
    shutil.copyfile(shim, temporary)
    os.chmod(temporary, 0o755)
    os.replace(temporary, target)
    path = network_config_list(conf_dir)
    _rewrite(path, chain(json.loads(path.read_text()), entry))
    return path


def uninstall(bin_dir: Path, conf_dir: Path) -> None:
    """Unchains first: a config that names a missing plugin would fail every pod's set-up."""
    for path in sorted(conf_dir.glob("*.conflist")):
        conflist = json.loads(path.read_text())
        if any(p.get("type") == PLUGIN_TYPE for p in conflist.get("plugins", [])):
            _rewrite(path, unchain(conflist))
    (bin_dir / PLUGIN_TYPE).unlink(missing_ok=True)


def copy_runtime(runtime_dir: Path, root: Path = Path("/")) -> tuple[list[str], dict[str, str]]:
    """Copies this image's interpreter and libraries to runtime_dir/<build>, once per image build,
    and returns the command the shim runs, and its environment: the image's loader, so the host's C
    library version does not matter, and nothing of the host's (not even /usr/bin/env) is needed. A new build goes to a new folder (staged, then renamed), so a plugin running from the
    old copy is never overwritten under it; prune_runtimes removes the old one once unchained."""
    python = f"python{sys.version_info.major}.{sys.version_info.minor}"
    target = runtime_dir / build_id(root, python)
    if not target.exists():
        staging = runtime_dir / f".{target.name}.partial"
        shutil.rmtree(staging, ignore_errors=True)
        for part in RUNTIME_PARTS:
            shutil.copytree(root / part, staging / part, symlinks=True)
        os.rename(staging, target)
    libs = target / "usr/lib/x86_64-linux-gnu"
    command = [
        str(libs / "ld-linux-x86-64.so.2"), "--library-path", f"{libs}:{target / 'usr/local/lib'}",
        str(target / "usr/local/bin" / python), "-m", "exporter.cni",
    ]
    env = {"PYTHONHOME": str(target / "usr/local"),
           "PYTHONPATH": str(target / "opt/flowattr/lib" / python / "site-packages")}
    return command, env


def build_id(root: Path, python: str) -> str:
    """Names an image build: the installed packages' RECORD files (every file with its hash) and
    the interpreter."""
    digest = hashlib.sha256()
    for record in sorted((root / "opt/flowattr").glob("lib/python*/site-packages/*.dist-info/RECORD")):
        digest.update(record.read_bytes())
    digest.update((root / "usr/local/bin" / python).read_bytes())
    return digest.hexdigest()[:16]


def prune_runtimes(runtime_dir: Path, command: list[str]) -> list[str]:
    """Removes the copies the chained command no longer uses; returns their names."""
    used = {part for part in command if part.startswith(str(runtime_dir))}
    removed = []
    for entry in sorted(runtime_dir.iterdir()):
        if not any(u == str(entry) or u.startswith(f"{entry}/") or u.startswith(f"{entry}:") for u in used):
            shutil.rmtree(entry, ignore_errors=True)
            removed.append(entry.name)
    return removed


def write_kubeconfig(directory: Path, host_directory: Path, service_account: Path = SERVICE_ACCOUNT) -> Path:
    """A kubeconfig for the plugin on the host, from this pod's service account (get pods and
    replicasets only): the host has no in-cluster credentials. Returns its path as the host sees it.
    The token is the one mounted now; a restart of the exporter pod writes a fresh one, and a
    plugin whose token has expired falls back to pod names."""
    server = f"https://{os.environ['KUBERNETES_SERVICE_HOST']}:{os.environ['KUBERNETES_SERVICE_PORT']}"
    directory.mkdir(parents=True, exist_ok=True)
    for name in ("token", "ca.crt"):
        shutil.copyfile(service_account / name, directory / name)
        os.chmod(directory / name, 0o600)
    config = {
        "apiVersion": "v1", "kind": "Config", "current-context": "flowattr-cni",
        "clusters": [{"name": "cluster", "cluster": {"server": server,
                                                     "certificate-authority": str(host_directory / "ca.crt")}}],
        "users": [{"name": "flowattr-cni", "user": {"tokenFile": str(host_directory / "token")}}],
        "contexts": [{"name": "flowattr-cni", "context": {"cluster": "cluster", "user": "flowattr-cni"}}],
    }
    _rewrite(directory / "kubeconfig", config)
    os.chmod(directory / "kubeconfig", 0o600)
    return host_directory / "kubeconfig"


def _rewrite(path: Path, conflist: dict) -> None:
    temporary = path.with_name(f".{path.name}.flowattr.tmp")
    temporary.write_text(json.dumps(conflist, indent=2) + "\n")
    os.replace(temporary, path)


def reconcile(cache_dir: Path, state_dir: Path, pin_dir: str, resolve, networks: set[str] | None = None) -> dict[str, int]:
    """Brings the maps in line with the runtime's CNI result cache (one file per live attachment,
    removed by the runtime at DEL): attachments of ours without a cache entry (a DEL never reached
    us) lose their entries; pods with a cache entry but no entry of ours (set up before flowattr was
    installed, or while it failed) get one. resolve(namespace, name, uid) -> workload. networks: only
    these CNI networks (default: every network on the node)."""
    live = {}
    for path in sorted((cache_dir / "results").glob("*")):
        try:
            cached = json.loads(path.read_text())
            if networks is None or cached["networkName"] in networks:
                live[(cached["networkName"], cached["containerId"], cached["ifName"])] = cached
        except (ValueError, KeyError, OSError):
            continue  # not a libcni cache entry
    tally = {"kept": 0, "removed": 0, "added": 0}
    state = State(state_dir)
    with state.locked(), WorkloadMaps(pin_dir, create=True) as maps:
        ours = {}
        for attachment in state.attachments():
            key = (attachment.network, attachment.container_id, attachment.ifname)
            if networks is not None and attachment.network not in networks:
                continue
            gone = attachment.netns and Path(attachment.netns).parent.is_dir() and not Path(attachment.netns).exists()
            if key not in live or gone:
                state.forget(attachment, maps)
                tally["removed"] += 1
            else:
                ours[key] = attachment
                tally["kept"] += 1
        for key, cached in live.items():
            pod = pod_from_args(";".join(f"{k}={v}" for k, v in cached.get("cniArgs") or []))
            ips = container_addresses(cached.get("result") or {})
            if key in ours or pod is None or not ips:
                continue
            if any(state.owner(ip) for ip in ips):
                continue  # an address already registered by a live attachment: the newer one holds it
            workload = resolve(pod.namespace, pod.name, pod.uid)
            register(state, maps, Attachment(*key, cached.get("netns", ""), vars(pod), workload, ips))
            tally["added"] += 1
    return tally


def _resolver(kubeconfig: str | None, in_cluster: bool, timeout_s: float):
    if not (kubeconfig or in_cluster):
        return lambda namespace, name, uid: pod_name(namespace, name)
    from exporter.owners import KubernetesOwners

    owners = KubernetesOwners(kubeconfig, timeout_s)
    return lambda namespace, name, uid: owners.workload(namespace, name, uid)[0]


def parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="flowattr-cni", description=__doc__)
    commands = parser.add_subparsers(dest="command", required=True)
    inst = commands.add_parser("install", help="copy the plugin to the CNI bin folder and chain it")
    inst.add_argument("--shim", required=True, help="the built exporter/cnishim binary")
    inst.add_argument("--cni-bin-dir", default="/host/opt/cni/bin")
    inst.add_argument("--cni-conf-dir", default="/host/etc/cni/net.d")
    inst.add_argument("--runtime-dir", help="copy this image's Python here (a host path as the host sees it "
                      "is given with --host-runtime-dir) and let the plugin run it")
    inst.add_argument("--host-runtime-dir", help="where --runtime-dir is on the host")
    inst.add_argument("--exec", dest="exec_command",
                      help="or: the command that runs exporter.cni on the host (split like a shell would)")
    inst.add_argument("--write-kubeconfig", metavar="DIR", help="write a kubeconfig from this pod's service "
                      "account into DIR (on the host: --host-kubeconfig-dir) for the plugin")
    inst.add_argument("--host-kubeconfig-dir", help="where --write-kubeconfig's DIR is on the host")
    _plugin_settings(inst)
    uninst = commands.add_parser("uninstall", help="unchain the plugin and remove it")
    uninst.add_argument("--cni-bin-dir", default="/host/opt/cni/bin")
    uninst.add_argument("--cni-conf-dir", default="/host/etc/cni/net.d")
    rec = commands.add_parser("reconcile", help="bring the maps in line with the pods on this node")
    rec.add_argument("--cache-dir", default="/var/lib/cni", help="the runtime's CNI cache (results/)")
    rec.add_argument("--in-cluster", action="store_true", help="resolve owners with the pod's service account")
    rec.add_argument("--network", action="append", help="only this CNI network (repeatable; default: all)")
    _plugin_settings(rec)
    return parser


def main(argv: list[str]) -> int:
    commands = parser()
    args = commands.parse_args(argv)
    try:
        if args.command == "install":
            env = {}
            if args.runtime_dir:
                copied, env = copy_runtime(Path(args.runtime_dir))
                command = copied
                if args.host_runtime_dir:
                    command = [c.replace(args.runtime_dir, args.host_runtime_dir) for c in copied]
                    env = {k: v.replace(args.runtime_dir, args.host_runtime_dir) for k, v in env.items()}
            elif args.exec_command:
                command = shlex.split(args.exec_command)
            else:
                commands.error("install needs --runtime-dir or --exec")
            entry = {"type": PLUGIN_TYPE, "exec": command, "pinDir": args.pin_dir,
                     "stateDir": args.state_dir, "apiTimeoutS": args.api_timeout_s}
            if env:
                entry["env"] = env
            if args.write_kubeconfig:
                host_dir = Path(args.host_kubeconfig_dir or args.write_kubeconfig)
                entry["kubeconfig"] = str(write_kubeconfig(Path(args.write_kubeconfig), host_dir))
            elif args.kubeconfig:
                entry["kubeconfig"] = args.kubeconfig
            path = install(Path(args.shim), Path(args.cni_bin_dir), Path(args.cni_conf_dir), entry)
            print(f"flowattr-cni: installed into {args.cni_bin_dir}, chained into {path}")
            if args.runtime_dir:
                for name in prune_runtimes(Path(args.runtime_dir), copied):
                    print(f"flowattr-cni: removed the unchained runtime copy {name}")
        elif args.command == "uninstall":
            uninstall(Path(args.cni_bin_dir), Path(args.cni_conf_dir))
            print(f"flowattr-cni: unchained from {args.cni_conf_dir}, removed from {args.cni_bin_dir}")
        else:
            resolve = _resolver(args.kubeconfig, args.in_cluster, args.api_timeout_s)
            networks = set(args.network) if args.network else None
            tally = reconcile(Path(args.cache_dir), Path(args.state_dir), args.pin_dir, resolve, networks)
            print("flowattr-cni: reconciled; " + " ".join(f"{k}={v}" for k, v in tally.items()))
    except (InstallError, OSError, ValueError, KeyError) as e:
        print(f"flowattr-cni: {e}", file=sys.stderr)
        return 1
    return 0


def _plugin_settings(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--pin-dir", default=DEFAULT_PIN_DIR)
    parser.add_argument("--state-dir", default=DEFAULT_STATE_DIR)
    parser.add_argument("--kubeconfig", help="for the plugin on the host: a kubeconfig with get on pods and replicasets")
    parser.add_argument("--api-timeout-s", type=float, default=DEFAULT_API_TIMEOUT_S)
