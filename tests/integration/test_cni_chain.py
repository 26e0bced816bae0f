"""flowattr-cni in a real CNI chain: the reference bridge + host-local plugins, then flowattr-cni
(through its shim), run by the reference `cnitool` on network namespaces these tests create, with
the real exporter watching. Pods are namespaces with K8S_POD_* CNI args; there is no API server
here, so workloads are the never-wrong pod names (`namespace/pod/<name>`)."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
import uuid
from pathlib import Path

import pytest

from exporter.ipman import WorkloadMaps
from tests.k8s_api import serving, uid_of
from test_exporter_capture import PEER, REPO, Agent, connect, exporter_env, pin_dir, read_batches, require_ebpf  # noqa: F401

CNI_BIN = REPO / ".build" / "cni" / "bin"

pytestmark = pytest.mark.ebpf


class Network:
    """One CNI network (a bridge in the host namespace, two pod addresses) and the namespaces on it."""

    def __init__(self, tmp_path: Path, pin: Path, tag: str, with_flowattr: bool = True):
        self.name = f"{tag}net"
        self.bridge = f"{tag}br"
        self.state_dir = tmp_path / "cni-state"
        self.pin_dir = pin
        # A /29 per run, away from the other tests' addresses: gateway .1, pods .2 and .3 only, so a
        # released address is the next one handed out.
        octet = int(uuid.uuid4().hex[:4], 16)
        base = f"10.{200 + octet % 50}.{(octet >> 6) % 256}"
        self.subnet, self.first, self.last = f"{base}.0/29", f"{base}.2", f"{base}.3"
        self.namespaces: list[str] = []
        self.bin_dir = tmp_path / "cni-bin"  # the node's CNI bin folder: flowattr-cni is installed here
        self.bin_dir.mkdir()
        plugins = [{
            "type": "bridge", "bridge": self.bridge, "isGateway": True, "ipMasq": False,
            "ipam": {"type": "host-local", "ranges": [[{"subnet": self.subnet, "rangeStart": self.first,
                                                         "rangeEnd": self.last}]],
                     "dataDir": str(tmp_path / "ipam")},
        }]
        self.original = {"cniVersion": "1.1.0", "name": self.name, "plugins": plugins}
        self.conf_dirs = {}
        for chained in (True, False):
            conf_dir = tmp_path / ("net.d" if chained else "net.d-plain")
            conf_dir.mkdir()
            (conf_dir / f"10-{self.name}.conflist").write_text(json.dumps(self.original))
            self.conf_dirs[chained] = conf_dir
        self.install()

    def install(self, *options: str) -> None:
        """Chains flowattr-cni as the DaemonSet's init container does, with this checkout's interpreter."""
        self.admin("install", "--shim", str(CNI_BIN / "flowattr-cni"), "--cni-bin-dir", str(self.bin_dir),
                   "--cni-conf-dir", str(self.conf_dirs[True]), "--pin-dir", str(self.pin_dir),
                   "--state-dir", str(self.state_dir), "--exec", f"{sys.executable} -m exporter.cni", *options)

    def admin(self, *args: str) -> str:
        done = subprocess.run([sys.executable, "-m", "exporter.cni", *args], capture_output=True, text=True,
                              timeout=60, cwd=REPO)
        assert done.returncode == 0, done.stderr
        return done.stdout

    def namespace(self, label: str) -> str:
        ns = f"{self.name}-{label}"
        subprocess.run(["ip", "netns", "add", ns], check=True)
        self.namespaces.append(ns)
        return ns

    def cnitool(self, command: str, ns: str, pod: str | None = None, chained: bool = True,
                uid: str | None = None) -> subprocess.CompletedProcess:
        env = dict(os.environ, NETCONFPATH=str(self.conf_dirs[chained]),
                   CNI_PATH=f"{self.bin_dir}:{CNI_BIN}", PYTHONPATH=str(REPO))
        if pod:
            # The keys the kubelet's runtime passes (containerd, CRI-O).
            namespace, name = pod.split("/")
            env["CNI_ARGS"] = (f"IgnoreUnknown=1;K8S_POD_NAMESPACE={namespace};K8S_POD_NAME={name};"
                               f"K8S_POD_INFRA_CONTAINER_ID={ns};K8S_POD_UID={uid or uuid.uuid4()}")
        return subprocess.run([str(CNI_BIN / "cnitool"), command, self.name, f"/var/run/netns/{ns}"],
                              env=env, capture_output=True, text=True, timeout=60)

    def add(self, ns: str, pod: str | None = None, chained: bool = True, uid: str | None = None) -> str:
        """The pod's address, from the chain's result (which flowattr-cni passed through)."""
        done = self.cnitool("add", ns, pod, chained, uid)
        assert done.returncode == 0, done.stderr
        result = json.loads(done.stdout)
        (ip,) = [entry["address"].split("/")[0] for entry in result["ips"]]
        return ip

    def registrations(self) -> dict[str, str]:
        if not (self.pin_dir / "ip_workload").exists():
            return {}
        with WorkloadMaps(self.pin_dir, create=False) as maps:
            return {r.ip: r.workload for r in maps.registrations() if r.ports is None}

    def log(self) -> list[str]:
        path = self.state_dir / "cni.log"
        return path.read_text().splitlines() if path.exists() else []

    def close(self) -> None:
        for ns in self.namespaces:
            for chained in (True, False):
                self.cnitool("del", ns, chained=chained)
            subprocess.run(["ip", "netns", "del", ns], capture_output=True)
        subprocess.run(["ip", "link", "del", self.bridge], capture_output=True)


@pytest.fixture
def network(tmp_path, pin_dir):
    require_ebpf()
    if not (CNI_BIN / "cnitool").exists() or not (CNI_BIN / "flowattr-cni").exists():
        pytest.fail("CNI plugins not built: run `make cni-plugins`", pytrace=False)
    tag = f"fax{os.getpid() % 10000}{uuid.uuid4().hex[:2]}"
    net = Network(tmp_path, pin_dir, tag)
    try:
        yield net
    finally:
        net.close()


def serve(ns: str, host: str, port: int, count: int) -> subprocess.Popen:
    server = subprocess.Popen(["ip", "netns", "exec", ns, sys.executable, "-c", PEER, "serve", host, str(port),
                               str(count), "7"], stdout=subprocess.PIPE, text=True)
    assert server.stdout.readline().strip() == "ready"
    return server


def test_pods_are_named_from_their_first_packet_and_a_reused_address_after_its_new_pod(network, tmp_path):
    out = tmp_path / "flows.jsonl"
    agent = Agent(exporter_env(network.pin_dir, tmp_path), out)  # with a host identity file
    try:
        server_ns = network.namespace("srv")
        server_ip = network.add(server_ns)  # not a pod: nothing registered, never the host
        assert network.registrations() == {}
        server = serve(server_ns, server_ip, 8080, 2)

        first = network.namespace("p1")
        first_ip = network.add(first, "shop/cart-7d9f8c6b5d-x2k9q")
        assert network.registrations() == {first_ip: "shop/pod/cart-7d9f8c6b5d-x2k9q"}
        assert network.cnitool("check", first, "shop/cart-7d9f8c6b5d-x2k9q").returncode == 0
        first_flow = connect(first, server_ip, 8080, 100, first_ip)  # right after ADD: the first packet

        assert network.cnitool("del", first).returncode == 0
        assert network.registrations() == {}
        assert network.cnitool("del", first).returncode == 0  # idempotent

        second = network.namespace("p2")
        second_ip = network.add(second, "shop/web-5c6d7e8f9a-abcde")
        assert second_ip == first_ip  # host-local handed the released address to the new pod
        assert network.registrations() == {second_ip: "shop/pod/web-5c6d7e8f9a-abcde"}
        second_flow = connect(second, server_ip, 8080, 200, second_ip)
        server.communicate(timeout=60)
        time.sleep(1.0)
    finally:
        assert agent.stop() == 0, "\n".join(agent.lines)

    flows = [r for r in read_batches(out) if r["kind"] == "flow" and r["remote_port"] == 8080
             and r["local_ip"] == first_ip]
    assert sorted((r["local_port"], r["local_workload"], r["bytes_sent"]) for r in flows) == sorted([
        (first_flow["local_port"], "shop/pod/cart-7d9f8c6b5d-x2k9q", 100),
        (second_flow["local_port"], "shop/pod/web-5c6d7e8f9a-abcde", 200),
    ])
    # The server's side: a namespace with no entry is nobody, though the host has an identity.
    records = read_batches(out)
    inbound = [r for r in records if r["kind"] == "flow" and r["local_ip"] == server_ip]
    assert len(inbound) == 2 and all(r["local_workload"] is None for r in inbound)
    assert not [r for r in records if r["kind"] == "heartbeat" and r["ip"] == server_ip]
    beats = {(r["ip"], r["workload"]) for r in records if r["kind"] == "heartbeat" and r["ip"] == first_ip}
    # The new pod, still registered, heartbeats; the first one's entry may have lived between two
    # reads of the maps (its flow is its claim). Nobody else is claimed on that address.
    assert (first_ip, "shop/pod/web-5c6d7e8f9a-abcde") in beats
    assert beats <= {(first_ip, "shop/pod/cart-7d9f8c6b5d-x2k9q"), (first_ip, "shop/pod/web-5c6d7e8f9a-abcde")}

    adds = [line for line in network.log() if " ADD " in line]
    assert len(adds) == 3 and all(" ms" in line for line in adds)
    assert json.loads((network.state_dir / "counters.json").read_text()) == {"add": 2, "add_not_a_pod": 1, "del": 1}
    print("\nflowattr-cni ADD times:", [line.rsplit(" in ", 1)[1] for line in adds])


def test_check_fails_when_the_entry_is_gone_and_gc_removes_attachments_the_runtime_forgot(network):
    pod = network.namespace("p1")
    ip = network.add(pod, "shop/cart-1")
    with WorkloadMaps(network.pin_dir, create=False) as maps:
        maps.remove(ip)  # lost behind the plugin's back
    checked = network.cnitool("check", pod, "shop/cart-1")
    assert checked.returncode != 0 and f"{ip} is not registered to shop/pod/cart-1" in checked.stderr + checked.stdout
    with WorkloadMaps(network.pin_dir, create=False) as maps:
        maps.add(ip, "shop/pod/cart-1")
    assert network.cnitool("check", pod, "shop/cart-1").returncode == 0
    # cnitool gc: libcni DELs every cached attachment of the network, then asks each plugin to GC.
    assert network.cnitool("gc", pod).returncode == 0
    assert network.registrations() == {}
    assert list((network.state_dir / "attachments").iterdir()) == []


def request(network: Network, command: str, container: str, pod: str, address: str = "10.199.0.9", **extra) -> int:
    """One request straight to the plugin (as the shim hands it over), for orders cnitool cannot make."""
    from exporter.cni import plugin

    conf = {"cniVersion": "1.1.0", "name": network.name, "pinDir": str(network.pin_dir),
            "stateDir": str(network.state_dir), **extra,
            "prevResult": {"cniVersion": "1.1.0", "interfaces": [{"name": "eth0", "sandbox": "/x"}],
                           "ips": [{"interface": 0, "address": f"{address}/24"}]}}
    namespace, name = pod.split("/")
    env = {"CNI_COMMAND": command, "CNI_CONTAINERID": container, "CNI_IFNAME": "eth0",
           "CNI_ARGS": f"K8S_POD_NAMESPACE={namespace};K8S_POD_NAME={name}"}
    return plugin(json.dumps(conf), env)[0]


def test_gc_removes_the_entries_of_attachments_the_runtime_does_not_list(network):
    assert request(network, "ADD", "kept", "shop/a-1", "10.199.0.9") == 0
    assert request(network, "ADD", "forgotten", "shop/b-1", "10.199.0.10") == 0
    assert request(network, "GC", "", "x/y") == 0  # no attachment list: nothing judged
    assert len(network.registrations()) == 2
    valid = [{"containerID": "kept", "ifname": "eth0"}]
    assert request(network, "GC", "", "x/y", **{"cni.dev/valid-attachments": valid}) == 0
    assert network.registrations() == {"10.199.0.9": "shop/pod/a-1"}


def test_a_late_del_of_an_addresses_old_pod_leaves_the_new_pods_entry(network):
    """Two attachments that got the same address (the old pod's DEL comes after the new pod's ADD):
    the old DEL removes nothing that is not its own."""
    assert request(network, "ADD", "old", "shop/a-1") == 0
    assert request(network, "ADD", "new", "shop/b-1") == 0
    assert network.registrations() == {"10.199.0.9": "shop/pod/b-1"}
    assert request(network, "DEL", "old", "shop/a-1") == 0
    assert network.registrations() == {"10.199.0.9": "shop/pod/b-1"}
    assert request(network, "CHECK", "new", "shop/b-1") == 0
    assert request(network, "DEL", "new", "shop/b-1") == 0
    assert network.registrations() == {}


def test_reconcile_names_pods_set_up_before_install_and_removes_entries_whose_del_was_missed(network):
    before = network.namespace("old")
    before_ip = network.add(before, "shop/legacy-0", chained=False)  # before flowattr-cni was chained
    missed = network.namespace("gone")
    missed_ip = network.add(missed, "shop/gone-0")
    assert network.registrations() == {missed_ip: "shop/pod/gone-0"}
    # Torn down by a runtime whose config no longer had flowattr-cni: the DEL never reached it.
    assert network.cnitool("del", missed, chained=False).returncode == 0
    assert network.registrations() == {missed_ip: "shop/pod/gone-0"}

    done = subprocess.run(
        [sys.executable, "-m", "exporter.cni", "reconcile", "--cache-dir", "/var/lib/cni",
         "--state-dir", str(network.state_dir), "--pin-dir", str(network.pin_dir), "--network", network.name],
        capture_output=True, text=True, timeout=60, cwd=REPO,
    )
    assert done.returncode == 0, done.stderr
    assert "kept=0 removed=1 added=1" in done.stdout
    assert network.registrations() == {before_ip: "shop/pod/legacy-0"}
    # Now it is the plugin's own: its DEL removes it.
    assert network.cnitool("del", before).returncode == 0
    assert network.registrations() == {}


def test_install_chains_flowattr_last_and_uninstall_restores_the_nodes_config(network):
    conflist = network.conf_dirs[True] / f"10-{network.name}.conflist"
    chained = json.loads(conflist.read_text())
    assert [p["type"] for p in chained["plugins"]] == ["bridge", "flowattr-cni"]
    assert os.access(network.bin_dir / "flowattr-cni", os.X_OK)
    pod = network.namespace("p1")
    ip = network.add(pod, "shop/cart-1")
    assert network.registrations() == {ip: "shop/pod/cart-1"}
    assert network.cnitool("del", pod).returncode == 0

    network.admin("uninstall", "--cni-bin-dir", str(network.bin_dir), "--cni-conf-dir", str(network.conf_dirs[True]))
    assert json.loads(conflist.read_text()) == network.original
    assert not (network.bin_dir / "flowattr-cni").exists()
    # Pods still start once it is gone, and nothing is registered for them.
    network.add(network.namespace("p2"), "shop/cart-2")
    assert network.registrations() == {}


def test_pods_start_when_the_plugins_interpreter_is_gone(network):
    """The shim answers for a plugin that cannot run: the chain's result, unchanged, and DEL succeeds."""
    conflist = network.conf_dirs[True] / f"10-{network.name}.conflist"
    chained = json.loads(conflist.read_text())
    chained["plugins"][-1]["exec"] = ["/nonexistent/flowattr-runtime/python", "-m", "exporter.cni"]
    conflist.write_text(json.dumps(chained))
    pod = network.namespace("p1")
    done = network.cnitool("add", pod, "shop/cart-1")
    assert done.returncode == 0, done.stderr
    result = json.loads(done.stdout)
    assert [entry["address"] for entry in result["ips"]] == [f"{network.first}/29"]
    assert any(i.get("sandbox") == f"/var/run/netns/{pod}" for i in result["interfaces"])
    assert "ADD skipped" in done.stderr and network.registrations() == {}
    assert network.cnitool("del", pod).returncode == 0


def test_with_a_kubeconfig_a_deployments_pod_is_named_after_the_deployment(network, tmp_path):
    """The chain's plugin reads the pod and its ReplicaSet through the kubeconfig it is given (a
    loopback stand-in answers, tests/k8s_api.py: there is no API server here)."""
    with serving(tmp_path) as (kubeconfig, stand_in):
        network.install("--kubeconfig", str(kubeconfig))
        pod = network.namespace("p1")
        ip = network.add(pod, "shop/cart-7d9f8c6b5d-x2k9q", uid=uid_of("deployment_pod"))
        assert network.registrations() == {ip: "shop/cart"}
        assert [path for path, _ in stand_in.seen] == ["/api/v1/namespaces/shop/pods/cart-7d9f8c6b5d-x2k9q",
                                                       "/apis/apps/v1/namespaces/shop/replicasets/cart-7d9f8c6b5d"]
        # The pod of that name here is another incarnation (its uid differs): the pod's own name.
        other = network.namespace("p2")
        other_ip = network.add(other, "shop/cart-7d9f8c6b5d-x2k9q")
        assert network.registrations() == {ip: "shop/cart", other_ip: "shop/pod/cart-7d9f8c6b5d-x2k9q"}
    assert "-> shop/cart (api) in" in "\n".join(network.log())


def test_the_shim_runs_the_plugin_with_the_environment_its_entry_names(network, tmp_path):
    """How the DaemonSet's runtime copy is started (PYTHONHOME, PYTHONPATH), without /usr/bin/env."""
    seen = tmp_path / "env-seen"
    conflist = network.conf_dirs[True] / f"10-{network.name}.conflist"
    chained = json.loads(conflist.read_text())
    chained["plugins"][-1]["exec"] = ["/bin/sh", "-c", f'printf %s "$FLOWATTR_SHIM_CHECK" > {seen}; '
                                      f'exec {sys.executable} -m exporter.cni']
    chained["plugins"][-1]["env"] = {"FLOWATTR_SHIM_CHECK": "from the entry"}
    conflist.write_text(json.dumps(chained))
    ip = network.add(network.namespace("p1"), "shop/cart-1")
    assert seen.read_text() == "from the entry"
    assert network.registrations() == {ip: "shop/pod/cart-1"}
