"""The chained plugin's protocol and its install into a node's config list, without a kernel: what
it reads from a request, what it answers, and how it edits the network config."""

import json
import sys
from pathlib import Path

import pytest

from exporter.cni import container_addresses, plugin, pod_from_args
from exporter.cni_install import (
    InstallError, chain, copy_runtime, network_config_list, prune_runtimes, unchain,
)

# prevResult as the bridge plugin with host-local returns it (CNI 1.0.0).
BRIDGE_RESULT = {
    "cniVersion": "1.0.0",
    "interfaces": [
        {"name": "cni0", "mac": "aa:bb:cc:00:00:01"},
        {"name": "veth1a2b3c", "mac": "aa:bb:cc:00:00:02"},
        {"name": "eth0", "mac": "aa:bb:cc:00:00:03", "sandbox": "/var/run/netns/cni-1234"},
    ],
    "ips": [{"interface": 2, "address": "10.244.1.17/24", "gateway": "10.244.1.1"},
            {"interface": 2, "address": "fd00:10:244:1::11/64", "gateway": "fd00:10:244:1::1"}],
    "routes": [{"dst": "0.0.0.0/0"}],
    "dns": {},
}


def test_pod_identity_comes_from_cni_args():
    args = "IgnoreUnknown=1;K8S_POD_NAMESPACE=shop;K8S_POD_NAME=cart-7d9f8c6b5d-x2k9q;" \
           "K8S_POD_INFRA_CONTAINER_ID=abc;K8S_POD_UID=c1a4e2d8-3b6f-4f0a-8c2e-9e7d5a1b3c44"
    pod = pod_from_args(args)
    assert (pod.namespace, pod.name, pod.uid) == ("shop", "cart-7d9f8c6b5d-x2k9q", "c1a4e2d8-3b6f-4f0a-8c2e-9e7d5a1b3c44")
    assert pod_from_args("IgnoreUnknown=1") is None


def test_only_addresses_inside_the_container_are_the_pods():
    assert container_addresses(BRIDGE_RESULT) == ["10.244.1.17", "fd00:10:244:1::11"]
    host_side = {**BRIDGE_RESULT, "ips": [{"interface": 0, "address": "10.244.1.1/24"}]}
    assert container_addresses(host_side) == []
    assert container_addresses({"ips": [{"address": "10.9.0.4/16"}]}) == ["10.9.0.4"]


def test_version_lists_the_spec_versions_it_speaks():
    code, out = plugin("", {"CNI_COMMAND": "VERSION"})
    assert code == 0 and json.loads(out)["supportedVersions"] == ["0.4.0", "1.0.0", "1.1.0"]


def test_add_passes_prev_result_through_unchanged_even_when_nothing_can_be_written(tmp_path):
    conf = {"cniVersion": "1.0.0", "name": "k8s-pod-network", "type": "flowattr-cni",
            "pinDir": str(tmp_path / "not-bpffs"), "stateDir": str(tmp_path / "state"), "prevResult": BRIDGE_RESULT}
    env = {"CNI_COMMAND": "ADD", "CNI_CONTAINERID": "c1", "CNI_IFNAME": "eth0", "CNI_NETNS": "/var/run/netns/x",
           "CNI_ARGS": "K8S_POD_NAMESPACE=shop;K8S_POD_NAME=cart-1"}
    code, out = plugin(json.dumps(conf), env)
    assert code == 0 and json.loads(out) == BRIDGE_RESULT
    counters = json.loads((tmp_path / "state" / "counters.json").read_text())
    assert counters == {"add_failed": 1}
    log = (tmp_path / "state" / "cni.log").read_text()
    assert "ADD c1 failed in" in log and "not on a BPF filesystem" in log


def test_unknown_commands_and_unreadable_configs_are_cni_errors():
    code, out = plugin("{}", {"CNI_COMMAND": "FROB"})
    assert code == 1 and json.loads(out)["code"] == 4
    code, out = plugin("{not json", {"CNI_COMMAND": "DEL"})
    assert code == 1 and json.loads(out)["code"] == 6


CONFLIST = {"cniVersion": "1.0.0", "name": "k8s-pod-network",
            "plugins": [{"type": "calico", "ipam": {"type": "calico-ipam"}}, {"type": "portmap", "capabilities": {"portMappings": True}}]}


def test_chaining_appends_once_and_unchaining_restores_the_original():
    entry = {"type": "flowattr-cni", "exec": ["/x"]}
    chained = chain(CONFLIST, entry)
    assert [p["type"] for p in chained["plugins"]] == ["calico", "portmap", "flowattr-cni"]
    assert chain(chained, {**entry, "exec": ["/y"]})["plugins"][-1]["exec"] == ["/y"]
    assert len(chain(chained, entry)["plugins"]) == 3
    assert unchain(chained) == CONFLIST


def test_the_runtimes_config_is_the_first_file_by_name(tmp_path):
    (tmp_path / "10-calico.conflist").write_text(json.dumps(CONFLIST))
    (tmp_path / "99-loopback.conf").write_text("{}")
    (tmp_path / "calico-kubeconfig").write_text("")
    assert network_config_list(tmp_path).name == "10-calico.conflist"
    (tmp_path / "05-single.conf").write_text("{}")
    with pytest.raises(InstallError, match="single-plugin"):
        network_config_list(tmp_path)


def fake_image(root, record: str):
    python = f"python{sys.version_info.major}.{sys.version_info.minor}"
    for part in ("usr/local/bin", "usr/local/lib", "usr/lib/x86_64-linux-gnu", f"opt/flowattr/lib/{python}/site-packages/flowattr-0.1.0.dist-info"):
        (root / part).mkdir(parents=True, exist_ok=True)
    (root / "usr/local/bin" / python).write_bytes(b"interpreter")
    (root / "usr/lib/x86_64-linux-gnu/ld-linux-x86-64.so.2").write_bytes(b"loader")
    (root / f"opt/flowattr/lib/{python}/site-packages/flowattr-0.1.0.dist-info/RECORD").write_text(record)
    return python


def test_the_runtime_is_copied_once_per_image_build_and_old_copies_go_once_unchained(tmp_path):
    root, runtime = tmp_path / "image", tmp_path / "host-runtime"
    python = fake_image(root, "exporter/cni.py,sha256=aaa,100\n")
    command, env = copy_runtime(runtime, root)
    (build,) = [p for p in runtime.iterdir()]
    assert command[-3:] == [str(build / "usr/local/bin" / python), "-m", "exporter.cni"]
    assert command[0] == str(build / "usr/lib/x86_64-linux-gnu/ld-linux-x86-64.so.2")
    assert env["PYTHONHOME"] == str(build / "usr/local")
    assert (build / "usr/local/bin" / python).read_bytes() == b"interpreter"
    marker = build / "usr/local/bin" / python
    marker.write_bytes(b"in use")  # a second install of the same build copies nothing
    assert copy_runtime(runtime, root)[0] == command and marker.read_bytes() == b"in use"

    fake_image(root, "exporter/cni.py,sha256=bbb,101\n")  # a new image
    newer, _ = copy_runtime(runtime, root)
    assert newer != command and len(list(runtime.iterdir())) == 2
    assert prune_runtimes(runtime, newer) == [build.name]
    assert [p.name for p in runtime.iterdir()] == [Path(newer[-3]).parents[3].name]


def test_add_passes_prev_result_through_when_its_state_folder_cannot_be_made(tmp_path):
    (tmp_path / "file").write_text("")
    conf = {"cniVersion": "1.0.0", "name": "n", "pinDir": str(tmp_path), "stateDir": str(tmp_path / "file" / "state"),
            "prevResult": BRIDGE_RESULT}
    env = {"CNI_COMMAND": "ADD", "CNI_CONTAINERID": "c1", "CNI_ARGS": "K8S_POD_NAMESPACE=shop;K8S_POD_NAME=cart-1"}
    assert plugin(json.dumps(conf), env) == (0, json.dumps(BRIDGE_RESULT))


def test_the_log_is_bounded(tmp_path, monkeypatch):
    import exporter.cni as cni

    monkeypatch.setattr(cni, "LOG_MAX_BYTES", 200)
    state = cni.State(tmp_path)
    for i in range(20):
        state.log(f"ADD c{i} shop/cart-{i} 10.0.0.{i} -> shop/cart (api) in 1.0 ms")
    assert (tmp_path / "cni.log").stat().st_size <= 200 + 80
    assert (tmp_path / "cni.log.1").exists()
    assert "ADD c19 " in (tmp_path / "cni.log").read_text() + (tmp_path / "cni.log.1").read_text()


def test_the_kubeconfig_for_the_host_plugin_points_at_the_host_copies_of_token_and_ca(tmp_path, monkeypatch):
    from exporter.cni_install import write_kubeconfig
    from exporter.owners import KubernetesOwners

    account = tmp_path / "serviceaccount"
    account.mkdir()
    (account / "token").write_text("pod-bound-token")
    (account / "ca.crt").write_text("-----BEGIN CERTIFICATE-----\n")
    monkeypatch.setenv("KUBERNETES_SERVICE_HOST", "10.96.0.1")
    monkeypatch.setenv("KUBERNETES_SERVICE_PORT", "443")
    written = tmp_path / "host" / "etc" / "flowattr" / "cni"  # as the init container sees the host
    on_host = write_kubeconfig(written, written, account)
    assert on_host == written / "kubeconfig"
    assert {p.name: oct(p.stat().st_mode & 0o777) for p in written.iterdir()} == {
        "kubeconfig": "0o600", "token": "0o600", "ca.crt": "0o600"}
    configuration = KubernetesOwners(str(on_host), 1.0)._api.configuration
    assert configuration.host == "https://10.96.0.1:443"
    assert configuration.get_api_key_with_prefix("BearerToken") == "Bearer pod-bound-token"
    assert configuration.ssl_ca_cert == str(written / "ca.crt")
