"""The platform's side of entitlements: it publishes, to the compacted exporters topic, which addresses
each exporter may claim; by hand (`flowattr entitle set|remove|list`), or on Kubernetes from the
cluster's Node objects (`flowattr entitle sync-nodes`: the node's pod CIDRs and its own addresses).
Exporters never write here; the job reads it (dataflow/kafka_io.follow_entitlements)."""

from __future__ import annotations

import argparse
import ipaddress
import sys
import time
from typing import Callable, Iterable, Mapping

import orjson
from confluent_kafka import OFFSET_BEGINNING, Consumer, KafkaException, Producer, TopicPartition

from dataflow.config import Config, ConfigError
from dataflow.kafka_client import client_settings

CLAIMABLE_ADDRESS_TYPES = ("InternalIP", "ExternalIP")


def node_entitlement(node: dict) -> tuple[str, list[str]]:
    """A Node object as the API returns it (JSON) -> (node name, CIDRs), each CIDR once, in order:
    pod CIDRs, then the node's addresses as /32 or /128. Hostnames and DNS names are not addresses.
    The exporter on that node runs with the node name as its id (the DaemonSet sets it)."""
    spec, status = node.get("spec") or {}, node.get("status") or {}
    pod_cidrs = spec.get("podCIDRs") or ([spec["podCIDR"]] if spec.get("podCIDR") else [])
    cidrs = [str(ipaddress.ip_network(cidr, strict=False)) for cidr in pod_cidrs]
    for entry in status.get("addresses") or []:
        if entry.get("type") in CLAIMABLE_ADDRESS_TYPES:
            cidrs.append(str(ipaddress.ip_network(entry["address"])))
    return node["metadata"]["name"], list(dict.fromkeys(cidrs))


def entitlement_record(exporter: str, cidrs: Iterable[str]) -> dict:
    return {"v": 2, "kind": "entitlement", "exporter": exporter, "cidrs": list(cidrs)}


def publish(config: Config, entries: Mapping[str, Iterable[str] | None], timeout_s: float = 30.0) -> None:
    """Write entitlements (None removes an exporter's) under the exporter id as key; waits for every one."""
    producer = Producer(client_settings(config.kafka, **{"enable.idempotence": True}))
    failed: list[str] = []
    for exporter, cidrs in entries.items():
        value = None if cidrs is None else orjson.dumps(entitlement_record(exporter, _checked(cidrs)))
        producer.produce(config.kafka.exporters_topic, value=value, key=exporter.encode(),
                         on_delivery=lambda err, msg: err is not None and failed.append(str(err)))
    left = producer.flush(timeout_s)
    if failed or left:
        raise ConnectionError(f"entitlements not written to {config.kafka.exporters_topic}: {(failed or ['timed out'])[0]}")


def published(config: Config, timeout_s: float = 30.0) -> dict[str, list[str]]:
    """Every exporter's entitlement now in the topic (the latest entry per exporter wins)."""
    consumer = Consumer(client_settings(config.kafka, **{"group.id": "flowattr-entitle", "enable.auto.commit": False}))
    try:
        topic = config.kafka.exporters_topic
        try:
            meta = consumer.list_topics(topic, timeout=timeout_s).topics[topic]
        except KafkaException as e:
            raise ConnectionError(f"cannot reach Kafka at {config.kafka.brokers}: {e}") from None
        if meta.error is not None:
            raise ConfigError(f"topic {topic} does not exist (the job creates it on start)")
        parts = [TopicPartition(topic, p, OFFSET_BEGINNING) for p in meta.partitions]
        ends = {p.partition: consumer.get_watermark_offsets(p, timeout=timeout_s)[1] for p in parts}
        consumer.assign(parts)
        table: dict[str, list[str]] = {}
        read = {p: -1 for p in ends}
        deadline = time.monotonic() + timeout_s
        while any(read[p] < ends[p] - 1 for p in ends) and time.monotonic() < deadline:
            msg = consumer.poll(0.5)
            if msg is None or msg.error():
                continue
            read[msg.partition()] = msg.offset()
            exporter = (msg.key() or b"").decode("utf-8", "replace")
            if msg.value() is None:
                table.pop(exporter, None)
            else:
                table[exporter] = orjson.loads(msg.value()).get("cidrs", [])
        return table
    finally:
        consumer.close()


def sync_nodes(config: Config, list_nodes: Callable[[], list[dict]]) -> dict[str, list[str] | None]:
    """Make the topic say what the cluster's nodes say: an entry per node, a removal for a node gone.
    Returns what was written."""
    wanted = dict(node_entitlement(node) for node in list_nodes())
    have = published(config)
    changes: dict[str, list[str] | None] = {e: c for e, c in wanted.items() if have.get(e) != c}
    changes.update({e: None for e in have if e not in wanted})
    if changes:
        publish(config, changes)
    return changes


def api_nodes(kubeconfig: str | None = None, timeout_s: float = 10.0) -> Callable[[], list[dict]]:
    """Node objects from the Kubernetes API (in-cluster credentials, or a kubeconfig), as raw JSON."""
    from kubernetes import client
    from kubernetes import config as kube_config

    configuration = client.Configuration()
    if kubeconfig:
        kube_config.load_kube_config(config_file=kubeconfig, client_configuration=configuration)
    else:
        kube_config.load_incluster_config(client_configuration=configuration)
    api = client.ApiClient(configuration)

    def list_nodes() -> list[dict]:
        request = api.param_serialize("GET", "/api/v1/nodes", header_params={"Accept": "application/json"},
                                      auth_settings=["BearerToken"])
        response = api.call_api(*request, _request_timeout=(timeout_s, timeout_s))
        body = response.read()
        if response.status != 200:
            raise ConnectionError(f"GET /api/v1/nodes: HTTP {response.status}")
        return orjson.loads(body)["items"]

    return list_nodes


def _checked(cidrs: Iterable[str]) -> list[str]:
    out = []
    for cidr in cidrs:
        try:
            out.append(str(ipaddress.ip_network(cidr, strict=False)))
        except ValueError:
            raise ConfigError(f"{cidr!r} is not a CIDR") from None
    return out


def register(sub) -> None:
    entitle = sub.add_parser(
        "entitle",
        help="publish which addresses each exporter may claim (the platform's side)",
        description=__doc__,
        epilog="examples:\n  flowattr entitle set node-a 10.244.1.0/24 192.168.10.11/32\n"
        "  flowattr entitle remove node-a\n  flowattr entitle list\n"
        "  flowattr entitle sync-nodes --every 30   # on Kubernetes, in the cluster",
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    entitle.add_argument("--brokers", help="Kafka bootstrap servers")
    actions = entitle.add_subparsers(dest="action", required=True)
    add = actions.add_parser("set", help="an exporter may claim these CIDRs (replaces what it had)")
    add.add_argument("exporter")
    add.add_argument("cidrs", nargs="+")
    remove = actions.add_parser("remove", help="an exporter may claim nothing")
    remove.add_argument("exporter")
    actions.add_parser("list", help="print every exporter's entitlement")
    sync = actions.add_parser("sync-nodes", help="from the cluster's Node objects: pod CIDRs and node addresses")
    sync.add_argument("--kubeconfig", help="default: the pod's in-cluster credentials")
    sync.add_argument("--every", type=float, default=0.0, help="keep syncing every this many seconds (0: once)")
    entitle.set_defaults(handler=_entitle)


def _entitle(args, config: Config) -> int:
    if args.action == "set":
        publish(config, {args.exporter: args.cidrs})
        print(f"flowattr entitle: {args.exporter} may claim {', '.join(_checked(args.cidrs))}")
    elif args.action == "remove":
        publish(config, {args.exporter: None})
        print(f"flowattr entitle: {args.exporter} may claim nothing")
    elif args.action == "list":
        for exporter, cidrs in sorted(published(config).items()):
            print(f"{exporter}\t{' '.join(cidrs)}")
    else:
        list_nodes = api_nodes(args.kubeconfig)
        while True:
            changes = sync_nodes(config, list_nodes)
            print(f"flowattr entitle: {len(changes)} change(s): "
                  + (", ".join(f"{e} {'removed' if c is None else ' '.join(c)}" for e, c in changes.items()) or "none"),
                  file=sys.stderr, flush=True)
            if not args.every:
                return 0
            time.sleep(args.every)
    return 0
