"""flowattr-cni: a chained CNI plugin (spec 1.0/1.1) that writes each pod's addresses -> workload into
the pinned workload maps when the pod's network is set up, before its first packet, and removes
exactly its own entries when it is torn down. It never fails a pod's set-up: a failure is logged and
counted, and prevResult passes through unchanged.

The runtime runs exporter/cnishim (a static binary) which runs this module; `flowattr-cni install |
uninstall | reconcile` are the DaemonSet's commands (exporter/cni_install.py)."""

from __future__ import annotations

import fcntl
import ipaddress
import json
import os
import sys
import time
from contextlib import contextmanager
from dataclasses import asdict, dataclass
from pathlib import Path

from exporter.ipman import WorkloadMaps
from exporter.owners import pod_name

SUPPORTED_VERSIONS = ["0.4.0", "1.0.0", "1.1.0"]
DEFAULT_PIN_DIR = "/sys/fs/bpf/flowattr"
DEFAULT_STATE_DIR = "/var/lib/flowattr/cni"
DEFAULT_API_TIMEOUT_S = 1.0
LOG_MAX_BYTES = 1 << 20  # a node's disk is not ours to fill


class CniError(Exception):
    """A request this plugin answers with a CNI error (CHECK's verdict, a malformed request)."""

    def __init__(self, code: int, msg: str):
        super().__init__(msg)
        self.code = code


@dataclass(frozen=True)
class Pod:
    namespace: str
    name: str
    uid: str | None


@dataclass
class Attachment:
    """What one ADD wrote: the addresses this plugin registered for one (network, container, interface)."""

    network: str
    container_id: str
    ifname: str
    netns: str
    pod: dict
    workload: str
    ips: list[str]

    @property
    def key(self) -> str:
        return f"{self.network}--{self.container_id}--{self.ifname}"


@dataclass(frozen=True)
class Settings:
    """From the plugin's entry in the network config list."""

    pin_dir: str
    state_dir: Path
    kubeconfig: str | None
    api_timeout_s: float

    @classmethod
    def from_conf(cls, conf: dict) -> Settings:
        return cls(
            pin_dir=conf.get("pinDir", DEFAULT_PIN_DIR),
            state_dir=Path(conf.get("stateDir", DEFAULT_STATE_DIR)),
            kubeconfig=conf.get("kubeconfig"),
            api_timeout_s=float(conf.get("apiTimeoutS", DEFAULT_API_TIMEOUT_S)),
        )


class State:
    """Who wrote which address, so that a DEL removes only its own entries even after the address
    went to another pod. Files under state_dir, changed under one lock (ADDs and DELs of different
    pods run concurrently). Also the log and the counters."""

    def __init__(self, state_dir: Path):
        self.dir = state_dir
        (state_dir / "attachments").mkdir(parents=True, exist_ok=True)
        (state_dir / "addresses").mkdir(parents=True, exist_ok=True)

    @contextmanager
    def locked(self, name: str = "lock"):
        with open(self.dir / name, "a") as lock:
            fcntl.flock(lock, fcntl.LOCK_EX)
            yield self

    def attachments(self) -> list[Attachment]:
        found = []
        for path in sorted((self.dir / "attachments").glob("*.json")):
            try:
                found.append(Attachment(**json.loads(path.read_text())))
            except (ValueError, TypeError, OSError):
                path.unlink(missing_ok=True)  # half-written by a crash: its addresses are re-checked below
        return found

    def attachment(self, network: str, container_id: str, ifname: str) -> Attachment | None:
        for found in self.attachments():
            if (found.network, found.container_id, found.ifname) == (network, container_id, ifname):
                return found
        return None

    def save(self, attachment: Attachment) -> None:
        _write(self.dir / "attachments" / f"{attachment.key}.json", json.dumps(asdict(attachment)))
        for ip in attachment.ips:
            _write(self.dir / "addresses" / ip, attachment.key)

    def owner(self, ip: str) -> str | None:
        try:
            return (self.dir / "addresses" / ip).read_text()
        except FileNotFoundError:
            return None

    def forget(self, attachment: Attachment, maps: WorkloadMaps) -> list[str]:
        """Removes the attachment's entries that are still its own; returns those addresses."""
        removed = []
        for ip in attachment.ips:
            if self.owner(ip) == attachment.key:
                maps.remove(ip)
                (self.dir / "addresses" / ip).unlink(missing_ok=True)
                removed.append(ip)
        (self.dir / "attachments" / f"{attachment.key}.json").unlink(missing_ok=True)
        return removed

    def count(self, name: str) -> None:
        path = self.dir / "counters.json"
        with self.locked("counters.lock"):
            counters = self.counters()
            counters[name] = counters.get(name, 0) + 1
            _write(path, json.dumps(counters, sort_keys=True))

    def counters(self) -> dict[str, int]:
        try:
            return json.loads((self.dir / "counters.json").read_text())
        except (FileNotFoundError, ValueError):
            return {}

    def log(self, line: str) -> None:
        """One line a request; past LOG_MAX_BYTES the log becomes cni.log.1 (the one before is dropped)."""
        path = self.dir / "cni.log"
        stamp = time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())
        with open(path, "a") as f:
            f.write(f"{stamp} {line}\n")
            full = f.tell() > LOG_MAX_BYTES
        if full:
            os.replace(path, path.with_name("cni.log.1"))


def _write(path: Path, text: str) -> None:
    temporary = path.with_name(path.name + ".tmp")
    temporary.write_text(text)
    os.replace(temporary, path)


def pod_from_args(cni_args: str) -> Pod | None:
    """K8S_POD_NAMESPACE, K8S_POD_NAME, K8S_POD_UID from CNI_ARGS ("K=V;K=V"); None when not a pod."""
    args = dict(part.split("=", 1) for part in cni_args.split(";") if "=" in part)
    namespace, name = args.get("K8S_POD_NAMESPACE"), args.get("K8S_POD_NAME")
    if not namespace or not name:
        return None
    return Pod(namespace, name, args.get("K8S_POD_UID") or None)


def container_addresses(result: dict) -> list[str]:
    """The addresses prevResult gives the container: those on an interface inside its sandbox, or
    with no interface named (plugins may leave it out)."""
    interfaces = result.get("interfaces") or []
    found = []
    for entry in result.get("ips") or []:
        index = entry.get("interface")
        if index is not None and not (0 <= index < len(interfaces) and interfaces[index].get("sandbox")):
            continue  # the host side of a veth, a bridge
        ip = str(ipaddress.ip_interface(entry["address"]).ip)
        if ip not in found:
            found.append(ip)
    return found


def resolve_workload(settings: Settings, pod: Pod) -> tuple[str, str]:
    """(workload, how it was found)."""
    if not settings.kubeconfig:
        return pod_name(pod.namespace, pod.name), "fallback: no kubeconfig"
    from exporter.owners import KubernetesOwners

    try:
        owners = KubernetesOwners(settings.kubeconfig, settings.api_timeout_s)
    except Exception as e:  # an unreadable kubeconfig: the never-wrong name
        return pod_name(pod.namespace, pod.name), f"fallback: {type(e).__name__}: {e}"[:200]
    return owners.workload(pod.namespace, pod.name, pod.uid)


def register(state: State, maps: WorkloadMaps, attachment: Attachment) -> None:
    """Writes the attachment's entries, taking each address over from whoever held it before (the
    address was released and handed to this pod)."""
    previous = state.attachment(attachment.network, attachment.container_id, attachment.ifname)
    if previous is not None:
        state.forget(previous, maps)  # a repeated ADD: its old entries first
    for ip in attachment.ips:
        maps.add(ip, attachment.workload)
    state.save(attachment)


def add(conf: dict, env: dict[str, str]) -> str:
    started = time.perf_counter()
    settings = Settings.from_conf(conf)
    result = conf.get("prevResult") or {}
    network = conf.get("name", "")
    container_id = env.get("CNI_CONTAINERID", "")
    state = None
    try:
        state = State(settings.state_dir)
        pod = pod_from_args(env.get("CNI_ARGS", ""))
        ips = container_addresses(result)
        if pod is None:
            state.count("add_not_a_pod")
            detail = "not a Kubernetes pod (no K8S_POD_NAMESPACE/K8S_POD_NAME): nothing registered"
        elif not ips:
            state.count("add_no_address")
            detail = f"{pod.namespace}/{pod.name}: no container address in prevResult"
        else:
            workload, how = resolve_workload(settings, pod)
            attachment = Attachment(network, container_id, env.get("CNI_IFNAME", ""),
                                    env.get("CNI_NETNS", ""), asdict(pod), workload, ips)
            with state.locked(), WorkloadMaps(settings.pin_dir, create=True) as maps:
                register(state, maps, attachment)
            state.count("add")
            detail = f"{pod.namespace}/{pod.name} {','.join(ips)} -> {workload} ({how})"
        state.log(f"ADD {container_id[:16]} {detail} in {_ms(started)} ms")
    except Exception as e:  # never fail the pod's set-up because of flowattr
        print(f"flowattr-cni: ADD failed, pod set up without its entry: {e}", file=sys.stderr)
        if state is not None:  # without a state folder there is nowhere to count: stderr says it
            state.count("add_failed")
            state.log(f"ADD {container_id[:16]} failed in {_ms(started)} ms: {type(e).__name__}: {e}")
    return pass_through(conf)


def pass_through(conf: dict) -> str:
    """ADD's answer: prevResult unchanged, this plugin adds nothing to the result."""
    result = conf.get("prevResult")
    return json.dumps(result) if result else json.dumps({"cniVersion": conf.get("cniVersion", "1.1.0")})


def delete(conf: dict, env: dict[str, str]) -> None:
    """Idempotent, and needs nothing from the network namespace (it may be gone)."""
    settings = Settings.from_conf(conf)
    state = State(settings.state_dir)
    key = (conf.get("name", ""), env.get("CNI_CONTAINERID", ""), env.get("CNI_IFNAME", ""))
    try:
        with state.locked():
            attachment = state.attachment(*key)
            if attachment is None:
                return
            with WorkloadMaps(settings.pin_dir, create=True) as maps:
                removed = state.forget(attachment, maps)
        state.count("del")
        state.log(f"DEL {key[1][:16]} {attachment.workload} removed {','.join(removed) or 'nothing (taken over)'}")
    except Exception as e:  # the pod's teardown goes on; the entry stays until reconcile or the address's next ADD
        state.count("del_failed")
        state.log(f"DEL {key[1][:16]} failed: {type(e).__name__}: {e}")


def check(conf: dict, env: dict[str, str]) -> None:
    settings = Settings.from_conf(conf)
    key = (conf.get("name", ""), env.get("CNI_CONTAINERID", ""), env.get("CNI_IFNAME", ""))
    pod = pod_from_args(env.get("CNI_ARGS", ""))
    state = State(settings.state_dir)
    with state.locked():
        attachment = state.attachment(*key)
        if attachment is None:
            if pod is None or not container_addresses(conf.get("prevResult") or {}):
                return  # nothing was ours to register
            raise CniError(100, f"flowattr-cni: no entry for {pod.namespace}/{pod.name}")
        with WorkloadMaps(settings.pin_dir, create=False) as maps:
            held = {(r.ip, r.workload) for r in maps.registrations() if r.ports is None}
        for ip in attachment.ips:
            if (ip, attachment.workload) not in held or state.owner(ip) != attachment.key:
                raise CniError(100, f"flowattr-cni: {ip} is not registered to {attachment.workload}")


def gc(conf: dict) -> None:
    """Removes the entries of every attachment of this network the runtime no longer knows."""
    settings = Settings.from_conf(conf)
    # "cni.dev/attachments" is the name an early 1.1 text used. Without either, the runtime names no
    # attachment as valid or invalid: nothing to judge (libcni sends DELs for what it forgot anyway).
    listed = conf.get("cni.dev/valid-attachments", conf.get("cni.dev/attachments"))
    if listed is None:
        return
    valid = {(a.get("containerID"), a.get("ifname")) for a in listed}
    state = State(settings.state_dir)
    with state.locked(), WorkloadMaps(settings.pin_dir, create=True) as maps:
        for attachment in state.attachments():
            if attachment.network == conf.get("name") and (attachment.container_id, attachment.ifname) not in valid:
                removed = state.forget(attachment, maps)
                state.count("gc_removed")
                state.log(f"GC {attachment.container_id[:16]} {attachment.workload} removed {','.join(removed)}")


def _ms(started: float) -> str:
    return f"{(time.perf_counter() - started) * 1000:.1f}"


def plugin(stdin: str, env: dict[str, str]) -> tuple[int, str]:
    """One CNI request -> (exit code, stdout)."""
    command = env.get("CNI_COMMAND", "")
    if command == "VERSION":
        return 0, json.dumps({"cniVersion": "1.1.0", "supportedVersions": SUPPORTED_VERSIONS})
    try:
        conf = json.loads(stdin)
    except ValueError as e:
        return 1, _error(conf_version="1.1.0", code=6, msg=f"flowattr-cni: unreadable network config: {e}")
    version = conf.get("cniVersion", "1.1.0")
    try:
        if command == "ADD":
            try:
                return 0, add(conf, env)
            except Exception as e:  # even counting the failure failed: still never fail the pod
                print(f"flowattr-cni: ADD failed: {type(e).__name__}: {e}", file=sys.stderr)
                return 0, pass_through(conf)
        if command == "DEL":
            delete(conf, env)
        elif command == "CHECK":
            check(conf, env)
        elif command == "GC":
            gc(conf)
        elif command == "STATUS":
            pass  # flowattr never makes a node unready for pods
        else:
            return 1, _error(version, 4, f"flowattr-cni: unknown CNI_COMMAND {command!r}")
    except CniError as e:
        return 1, _error(version, e.code, str(e))
    except Exception as e:  # CHECK and GC report; they never touch a pod's network
        return 1, _error(version, 999, f"flowattr-cni: {command}: {type(e).__name__}: {e}")
    return 0, ""


def _error(conf_version: str, code: int, msg: str) -> str:
    return json.dumps({"cniVersion": conf_version, "code": code, "msg": msg})


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    if argv or "CNI_COMMAND" not in os.environ:
        from exporter.cni_install import main as admin

        return admin(argv)
    code, out = plugin(sys.stdin.read(), dict(os.environ))
    sys.stdout.write(out)
    return code


if __name__ == "__main__":
    sys.exit(main())
