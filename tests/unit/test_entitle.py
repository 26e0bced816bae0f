"""A Node object -> the exporter id and the addresses that node's exporter may claim."""

import json
from pathlib import Path

from dataflow.entitle import entitlement_record, node_entitlement
from dataflow.records import check_entitlement

OBJECTS = Path(__file__).parent / "k8s_objects"


def node() -> dict:
    return json.loads((OBJECTS / "node.json").read_text())


def test_a_dual_stack_node_may_claim_its_pod_cidrs_and_its_internal_and_external_addresses():
    assert node_entitlement(node()) == ("node-a", [
        "10.244.1.0/24", "fd00:10:244:1::/64", "192.168.10.11/32", "fd00:192:168:10::11/128", "52.18.7.200/32",
    ])


def test_an_older_node_with_only_pod_cidr_and_no_external_address():
    old = node()
    del old["spec"]["podCIDRs"]
    old["status"]["addresses"] = [a for a in old["status"]["addresses"] if a["type"] != "ExternalIP"]
    assert node_entitlement(old) == ("node-a", ["10.244.1.0/24", "192.168.10.11/32", "fd00:192:168:10::11/128"])


def test_a_node_without_pod_cidr_claims_only_its_addresses_and_hostnames_are_never_claims():
    bare = node()
    bare["spec"] = {"providerID": "kind://docker/kind/kind-worker"}
    bare["status"]["addresses"] = [{"address": "172.18.0.3", "type": "InternalIP"},
                                   {"address": "kind-worker", "type": "Hostname"}]
    assert node_entitlement(bare) == ("node-a", ["172.18.0.3/32"])


def test_the_entitlement_record_is_the_v2_contract_value_the_job_reads():
    record = entitlement_record(*node_entitlement(node()))
    assert record == {
        "v": 2, "kind": "entitlement", "exporter": "node-a",
        "cidrs": ["10.244.1.0/24", "fd00:10:244:1::/64", "192.168.10.11/32", "fd00:192:168:10::11/128", "52.18.7.200/32"],
    }
    assert check_entitlement(dict(record)) == record
