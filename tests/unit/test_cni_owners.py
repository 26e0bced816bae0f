"""A pod's workload from its owner references, on API objects as `kubectl get -o json` gives them."""

import copy
import json
from pathlib import Path

from exporter.owners import fit, pod_name, workload_of

OBJECTS = Path(__file__).parent / "k8s_objects"


def load(name: str) -> dict:
    return json.loads((OBJECTS / f"{name}.json").read_text())


def replica_sets(*objects: dict):
    by_name = {(o["metadata"]["namespace"], o["metadata"]["name"]): o for o in objects}
    reads = []

    def read(namespace, name):
        reads.append((namespace, name))
        return by_name.get((namespace, name))

    read.reads = reads
    return read


def test_a_deployments_pod_is_named_after_the_deployment_not_its_replicaset():
    read = replica_sets(load("deployment_replicaset"))
    assert workload_of(load("deployment_pod"), read) == "shop/cart"
    assert read.reads == [("shop", "cart-7d9f8c6b5d")]


def test_statefulset_daemonset_and_job_pods_are_named_after_their_controller_without_api_reads():
    read = replica_sets()
    assert workload_of(load("statefulset_pod"), read) == "shop/orders-db"
    assert workload_of(load("daemonset_pod"), read) == "monitoring/node-exporter"
    assert workload_of(load("job_pod"), read) == "reports/nightly-report-29105760"
    assert read.reads == []


def test_a_bare_pod_is_its_own_workload_in_a_form_no_controller_can_take():
    assert workload_of(load("bare_pod"), replica_sets()) == "default/pod/debug"


def test_an_unreadable_or_replaced_replicaset_gives_the_pods_own_name_never_a_guess():
    pod = load("deployment_pod")
    assert workload_of(pod, replica_sets()) == "shop/pod/cart-7d9f8c6b5d-x2k9q"
    # A ReplicaSet of that name that is not the pod's owner (deleted and recreated): not trusted.
    other = copy.deepcopy(load("deployment_replicaset"))
    other["metadata"]["uid"] = "00000000-0000-4000-8000-000000000000"
    assert workload_of(pod, replica_sets(other)) == "shop/pod/cart-7d9f8c6b5d-x2k9q"


def test_a_replicaset_without_a_deployment_names_its_pods():
    rs = copy.deepcopy(load("deployment_replicaset"))
    rs["metadata"]["ownerReferences"] = []
    assert workload_of(load("deployment_pod"), replica_sets(rs)) == "shop/cart-7d9f8c6b5d"


def test_non_controller_owner_references_do_not_name_the_workload():
    pod = load("bare_pod")
    pod["metadata"]["ownerReferences"] = [{"apiVersion": "v1", "kind": "ConfigMap", "name": "x", "uid": "u"}]
    assert workload_of(pod, replica_sets()) == "default/pod/debug"


def test_long_names_fit_the_maps_and_stay_distinct():
    a, b = fit("team-" + "a" * 60 + "/one"), fit("team-" + "a" * 60 + "/two")
    assert len(a.encode()) <= 63 and len(b.encode()) <= 63 and a != b
    assert fit("shop/cart") == "shop/cart"
    assert pod_name("shop", "cart-1") == "shop/pod/cart-1"
