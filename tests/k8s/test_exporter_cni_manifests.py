"""The exporter's CNI install as rendered: init containers whose commands flowattr-cni's own parser
accepts, whose host paths are the ones the plugin on the host is told about, an API token only
where it is used, and RBAC that allows reading pods and replicasets and nothing else."""

from __future__ import annotations

from dataflow.config import ExporterConfig
from exporter.cni_install import parser

from k8s_render import one, render


def exporter(objects):
    return one(objects, "DaemonSet", "flowattr-exporter")


def init(ds, name):
    (found,) = [c for c in ds["spec"]["template"]["spec"]["initContainers"] if c["name"] == name]
    return found


def host_path_of(ds, container, path):
    """The host path behind a path inside the container."""
    volumes = {v["name"]: v["hostPath"]["path"] for v in ds["spec"]["template"]["spec"]["volumes"] if "hostPath" in v}
    for mount in container["volumeMounts"]:
        if path == mount["mountPath"] or path.startswith(mount["mountPath"] + "/"):
            return volumes[mount["name"]] + path[len(mount["mountPath"]):]
    raise AssertionError(f"{path} is not on a host mount of {container['name']}")


def args_of(container):
    assert container["command"] == ["flowattr-cni"]
    return parser().parse_args(container["args"])


def test_install_copies_the_plugin_and_chains_it_into_the_hosts_cni_folders(target):
    ds = exporter(render(target))
    install = init(ds, "install-cni")
    args = args_of(install)
    assert args.command == "install"
    assert host_path_of(ds, install, args.cni_bin_dir) == "/opt/cni/bin"
    assert host_path_of(ds, install, args.cni_conf_dir) == "/etc/cni/net.d"
    # The plugin on the host is told the host's paths of what this container writes.
    assert host_path_of(ds, install, args.runtime_dir) == args.host_runtime_dir
    assert host_path_of(ds, install, args.write_kubeconfig) == args.host_kubeconfig_dir
    assert args.shim.startswith("/opt/flowattr/")  # inside the image
    sc = install["securityContext"]
    assert sc["capabilities"] == {"drop": ["ALL"]} and sc["allowPrivilegeEscalation"] is False


def test_the_plugin_the_reconciler_and_the_agent_share_one_pin_dir_and_state(target):
    ds = exporter(render(target))
    install, reconcile = args_of(init(ds, "install-cni")), args_of(init(ds, "reconcile"))
    assert install.pin_dir == reconcile.pin_dir == ExporterConfig().pin_dir
    assert reconcile.command == "reconcile" and reconcile.in_cluster
    rc = init(ds, "reconcile")
    # The plugin runs on the host and writes its state at the host path the reconciler reads.
    assert host_path_of(ds, rc, reconcile.state_dir) == install.state_dir
    assert host_path_of(ds, rc, reconcile.cache_dir) == "/var/lib/cni"
    assert host_path_of(ds, rc, reconcile.pin_dir) == "/sys/fs/bpf/flowattr"
    assert rc["securityContext"]["capabilities"] == {"drop": ["ALL"], "add": ["BPF"]}


def test_only_the_init_containers_see_an_api_token(target):
    ds = exporter(render(target))
    pod = ds["spec"]["template"]["spec"]
    token = "/var/run/secrets/kubernetes.io/serviceaccount"
    assert pod["automountServiceAccountToken"] is False
    for container in pod["initContainers"]:
        assert token in {m["mountPath"] for m in container["volumeMounts"]}
    for container in pod["containers"]:
        assert token not in {m["mountPath"] for m in container["volumeMounts"]}


def test_rbac_allows_getting_pods_and_replicasets_and_nothing_else(target):
    objects = render(target)
    ds = exporter(objects)
    role = one(objects, "ClusterRole", "flowattr-exporter")
    assert sorted((tuple(r["apiGroups"]), tuple(r["resources"]), tuple(r["verbs"])) for r in role["rules"]) == [
        (("",), ("pods",), ("get",)), (("apps",), ("replicasets",), ("get",)),
    ]
    binding = one(objects, "ClusterRoleBinding", "flowattr-exporter")
    assert binding["roleRef"]["name"] == role["metadata"]["name"]
    assert binding["subjects"] == [{"kind": "ServiceAccount", "name": ds["spec"]["template"]["spec"]["serviceAccountName"],
                                    "namespace": ds["metadata"]["namespace"]}]


def test_the_exporter_id_is_the_node_name(target):
    ds = exporter(render(target))
    (agent,) = ds["spec"]["template"]["spec"]["containers"]
    env = {e["name"]: e for e in agent["env"]}
    assert env["FLOWATTR_EXPORTER__EXPORTER_ID"]["valueFrom"]["fieldRef"]["fieldPath"] == "spec.nodeName"
