"""On Kubernetes, which addresses an exporter may claim: the exporter id is the node name, and its
entitlement is the node's pod CIDR(s) and its own InternalIP/ExternalIP addresses, read from the
Node object. The job trusts these only from a platform component (the `exporters` topic or its
configuration), never from the exporter itself."""

from __future__ import annotations

import ipaddress

CLAIMABLE_ADDRESS_TYPES = ("InternalIP", "ExternalIP")


def node_entitlement(node: dict) -> tuple[str, list[str]]:
    """A Node object as the API returns it (JSON) -> (node name, CIDRs), each CIDR once, in order:
    pod CIDRs, then the node's addresses as /32 or /128. Hostnames and DNS names are not addresses."""
    spec, status = node.get("spec") or {}, node.get("status") or {}
    pod_cidrs = spec.get("podCIDRs") or ([spec["podCIDR"]] if spec.get("podCIDR") else [])
    cidrs = [str(ipaddress.ip_network(cidr, strict=False)) for cidr in pod_cidrs]
    for entry in status.get("addresses") or []:
        if entry.get("type") in CLAIMABLE_ADDRESS_TYPES:
            cidrs.append(str(ipaddress.ip_network(entry["address"])))
    return node["metadata"]["name"], list(dict.fromkeys(cidrs))


def entitlement_record(node: dict) -> dict:
    """The value a platform component writes to the compacted `exporters` topic, keyed by node name."""
    name, cidrs = node_entitlement(node)
    return {"v": 2, "kind": "entitlement", "exporter": name, "cidrs": cidrs}
