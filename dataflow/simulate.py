"""A simulated fleet that knows the truth: workloads whose instances come and go, addresses released and
quickly reused by other workloads, exporters on skewed clocks reporting 1-minute batches late or never,
load balancers known only from assignment events, a second region, and a gateway whose dependencies are
fixed by a routing configuration. Deterministic for a seed and a start time."""

from __future__ import annotations

import random
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import orjson

HOME, AWAY = "us-east", "eu-west"
REGION_CIDRS = {HOME: ["10.0.0.0/16", "fd00:0:0::/48"], AWAY: ["10.1.0.0/16", "fd00:0:1::/48"]}
GATEWAY = "gateway"
SERVER_PORT = 8443


@dataclass(frozen=True)
class Scenario:
    seed: int = 7
    start_ms: int = 1_780_000_000_000
    duration_s: int = 20 * 60
    services: int = 8
    instances_per_service: int = 5
    # Mean instance lifetime: the churn rate; a released address is reused after 0..reuse_gap_s.
    mean_lifetime_s: float = 300.0
    reuse_gap_s: float = 20.0
    spare_addresses: int = 6
    connections_per_instance_s: float = 0.4
    long_lived_share: float = 0.05
    interval_s: int = 60
    # Report delay after the end of the interval: most batches within mean_delay_s, a few very late.
    mean_delay_s: float = 3.0
    late_share: float = 0.02
    late_delay_s: float = 90.0
    batch_loss: float = 0.01
    skew_ms: int = 300
    load_balancers: int = 3
    lb_share: float = 0.05
    external_share: float = 0.02
    cross_region_share: float = 0.01
    ipv6_share: float = 0.1
    # The platform's assignment events for every instance, as an event-based attributor sees them:
    # 1..event_delay_max_s late, and a share of them very late.
    event_delay_max_s: float = 120.0
    event_very_late_share: float = 0.05
    event_very_late_s: float = 600.0


@dataclass
class Instance:
    workload: str
    ip: str
    born_ms: int
    dies_ms: int
    skew_ms: int
    host: str


@dataclass
class Fleet:
    """What the simulation produced, in arrival order, and the truth to check answers against."""

    flow_messages: list[tuple[int, bytes]] = field(default_factory=list)  # (arrival, batch)
    forwarded_messages: list[tuple[int, bytes]] = field(default_factory=list)
    ip_event_messages: list[tuple[int, bytes]] = field(default_factory=list)
    assignment_messages: list[tuple[int, bytes]] = field(default_factory=list)  # every address, for baselines
    truth: dict[str, str | None] = field(default_factory=dict)  # flow_id -> remote owner at start
    routing: dict[str, str] = field(default_factory=dict)  # gateway route -> service
    records: int = 0
    lost_records: int = 0


def simulate(s: Scenario) -> Fleet:
    rng = random.Random(s.seed)
    fleet = Fleet()
    end_ms = s.start_ms + s.duration_s * 1000
    services = [GATEWAY] + [f"svc-{i:02d}" for i in range(1, s.services)]
    fleet.routing = {f"/api/{name[4:]}": name for name in services[1 : 1 + max(1, len(services) // 2)]}
    dependencies = _dependencies(rng, services, fleet.routing)
    away_services = [f"remote-{i}" for i in range(3)]

    home = _instances(rng, s, services, HOME, 0)
    away = _instances(rng, s, away_services, AWAY, 1)
    lbs = [(f"10.0.255.{i + 1}", f"lb/public-{i}") for i in range(s.load_balancers)]
    lb_owner = {ip: [(s.start_ms - 3_600_000, name)] for ip, name in lbs}
    _lb_reassignments(rng, s, lbs, lb_owner, fleet)

    reports: dict[str, list[dict[str, Any]]] = {}  # host -> records, batched later by its clock
    hosts: dict[str, Instance] = {}
    for inst in home + away:
        hosts[inst.host] = inst
        reports[inst.host] = []

    live_by_service: dict[str, list[Instance]] = {}
    for inst in home + away:
        live_by_service.setdefault(inst.workload, []).append(inst)

    seq = 0
    for client in home + away:
        if client.workload in away_services:
            targets = ["remote-0", "remote-1", "remote-2"]
        else:
            targets = dependencies[client.workload]
        rate = s.connections_per_instance_s
        t = client.born_ms + rng.expovariate(rate) * 1000
        while t < min(client.dies_ms, end_ms):
            start = int(t)
            t += rng.expovariate(rate) * 1000
            long_lived = rng.random() < s.long_lived_share
            duration = rng.uniform(60_000, 400_000) if long_lived else rng.expovariate(1 / 300.0)
            stop = int(min(start + duration, client.dies_ms, end_ms))
            roll = rng.random()
            server_ip, server = None, None
            if client.workload in away_services:
                if roll < 0.1:
                    server = _pick_live(rng, live_by_service, rng.choice(services[1:]), start, stop)
                else:
                    server = _pick_live(rng, live_by_service, rng.choice(targets), start, stop)
            elif client.workload == GATEWAY:
                # The gateway calls exactly what its routing configuration names: the ground truth.
                server = _pick_live(rng, live_by_service, rng.choice(targets), start, stop)
            elif roll < s.external_share:
                server_ip = f"203.0.113.{rng.randint(1, 254)}"
            elif roll < s.external_share + s.lb_share:
                server_ip = rng.choice(lbs)[0]
            elif roll < s.external_share + s.lb_share + s.cross_region_share:
                server = _pick_live(rng, live_by_service, rng.choice(away_services), start, stop)
            else:
                server = _pick_live(rng, live_by_service, rng.choice(targets), start, stop)
            if server is None and server_ip is None:
                continue
            if server is not None:
                if _family(server.ip) != _family(client.ip):
                    continue
                server_ip = server.ip
            elif _family(client.ip) == 6:
                continue
            seq += 1
            client_port = rng.randint(32768, 60999)
            sent, received = rng.randint(100, 50_000), rng.randint(100, 500_000)
            truth_remote = server.workload if server else _lb_truth(lb_owner, server_ip, start)
            fid = f"{client.host}:{seq}"
            reports[client.host].append(
                _flow(fid, client, client.ip, client_port, server_ip, SERVER_PORT, "outbound", start, stop, sent, received)
            )
            fleet.truth[fid] = truth_remote
            if server is not None:
                sid = f"{server.host}:{seq}s"
                reports[server.host].append(
                    _flow(sid, server, server_ip, SERVER_PORT, client.ip, client_port, "inbound", start, stop, received, sent)
                )
                fleet.truth[sid] = client.workload

    for host, records in reports.items():
        inst = hosts[host]
        _ship(rng, s, inst, records, fleet, end_ms)
    _assignments(random.Random(s.seed + 1), s, home, fleet)
    for messages in (fleet.flow_messages, fleet.forwarded_messages, fleet.ip_event_messages, fleet.assignment_messages):
        messages.sort(key=lambda m: m[0])
    return fleet


def _dependencies(rng: random.Random, services: list[str], routing: dict[str, str]) -> dict[str, list[str]]:
    deps = {GATEWAY: sorted(set(routing.values()))}
    for name in services[1:]:
        others = [o for o in services[1:] if o != name]
        deps[name] = rng.sample(others, k=min(2, len(others)))
    return deps


def _instances(rng, s: Scenario, services, region, octet) -> list[Instance]:
    """Instances of each service over time; each death frees an address that a newcomer soon takes."""
    end_ms = s.start_ms + s.duration_s * 1000
    total = len(services) * s.instances_per_service
    v4 = [f"10.{octet}.{i // 250}.{i % 250 + 1}" for i in range(total + s.spare_addresses)]
    v6 = [f"fd00:0:{octet}::{i + 1:x}" for i in range(total + s.spare_addresses)]
    free_v4, free_v6 = list(v4), list(v6)
    rng.shuffle(free_v4)
    rng.shuffle(free_v6)
    instances: list[Instance] = []
    slots = [(name, k) for name in services for k in range(s.instances_per_service)]
    events = []  # (time, slot index) when a slot needs a new instance
    for i, _ in enumerate(slots):
        events.append((s.start_ms - int(rng.uniform(0, s.mean_lifetime_s * 1000)), i))
    # (time the address is free again, address), reused most-recent-first as cloud VPCs do.
    released: list[tuple[int, str]] = []
    counter = 0
    while events:
        events.sort()
        born, i = events.pop(0)
        if born >= end_ms:
            continue
        name, _ = slots[i]
        use_v6 = (i % 10) < s.ipv6_share * 10
        pool = free_v6 if use_v6 else free_v4
        reusable = [a for t, a in released if t <= born and (":" in a) == use_v6]
        if reusable:
            ip = reusable[-1]
            released = [(t, a) for t, a in released if a != ip]
        elif pool:
            ip = pool.pop()
        else:
            events.append((born + 1000, i))
            continue
        lifetime = max(20_000, int(rng.expovariate(1 / s.mean_lifetime_s) * 1000))
        counter += 1
        inst = Instance(name, ip, born, born + lifetime, rng.randint(-s.skew_ms, s.skew_ms), f"{region}-h{counter}")
        instances.append(inst)
        released.append((inst.dies_ms + int(rng.uniform(0, s.reuse_gap_s * 1000)), ip))
        events.append((inst.dies_ms + int(rng.uniform(0, s.reuse_gap_s * 1000)), i))
    return instances


def _pick_live(rng, live_by_service, service, start, stop) -> Instance | None:
    live = [i for i in live_by_service.get(service, ()) if i.born_ms <= start and stop <= i.dies_ms]
    return rng.choice(live) if live else None


def _family(ip: str) -> int:
    return 6 if ":" in ip else 4


def _flow(fid, inst, local_ip, local_port, remote_ip, remote_port, direction, start, stop, sent, received):
    return {
        "v": 1,
        "kind": "flow",
        "flow_id": fid,
        "exporter": inst.host,
        "region": HOME if inst.host.startswith(HOME) else AWAY,
        "local_ip": local_ip,
        "local_port": local_port,
        "remote_ip": remote_ip,
        "remote_port": remote_port,
        "direction": direction,
        "start_ms": start + inst.skew_ms,
        "end_ms": stop + inst.skew_ms,
        "bytes_sent": sent,
        "bytes_received": received,
        "local_workload": inst.workload,
    }


def _ship(rng, s: Scenario, inst: Instance, records, fleet: Fleet, end_ms: int) -> None:
    """Batch one host's records by its own clock's intervals, with a heartbeat per interval."""
    interval = s.interval_s * 1000
    batches: dict[int, list] = {}
    for r in records:
        batches.setdefault(r["end_ms"] // interval, []).append(r)
    first = (inst.born_ms + inst.skew_ms) // interval
    last = (min(inst.dies_ms, end_ms) + inst.skew_ms) // interval
    for m in range(first, last + 1):
        lo = max(m * interval, inst.born_ms + inst.skew_ms)
        hi = min((m + 1) * interval, min(inst.dies_ms, end_ms) + inst.skew_ms)
        if hi > lo:
            batches.setdefault(m, []).append(
                {"v": 1, "kind": "heartbeat", "exporter": inst.host, "region": HOME if inst.host.startswith(HOME) else AWAY,
                 "ip": inst.ip, "workload": inst.workload, "start_ms": lo, "end_ms": hi}
            )
    is_home = inst.host.startswith(HOME)
    for m, batch in sorted(batches.items()):
        flows = [r for r in batch if r["kind"] == "flow"]
        if rng.random() < s.batch_loss:
            fleet.lost_records += len(flows)
            for r in flows:
                fleet.truth.pop(r["flow_id"], None)
            continue
        delay = s.late_delay_s if rng.random() < s.late_share else rng.expovariate(1 / s.mean_delay_s)
        arrival = (m + 1) * interval - inst.skew_ms + int(delay * 1000)
        if is_home:
            fleet.flow_messages.append((arrival, orjson.dumps(batch)))
            fleet.records += len(flows)
        else:
            # The other region's job forwards the flows whose remote address is ours.
            ours = [r for r in flows if r["remote_ip"].startswith(("10.0.", "fd00:0:0:"))]
            if ours:
                fleet.forwarded_messages.append((arrival + 500, orjson.dumps(ours)))
                fleet.records += len(ours)
            for r in flows:
                if r not in ours:
                    fleet.truth.pop(r["flow_id"], None)


def _lb_reassignments(rng, s: Scenario, lbs, lb_owner, fleet: Fleet) -> None:
    events = []
    for ip, name in lbs:
        events.append((s.start_ms - 3_600_000, ip, name, "assigned"))
    # One load balancer address moves to a new owner midway; its events arrive a few seconds late.
    if lbs:
        ip, name = lbs[0]
        t = s.start_ms + s.duration_s * 500
        lb_owner[ip].append((t, None))
        lb_owner[ip].append((t + 30_000, name + "-v2"))
        events.append((t, ip, name, "unassigned"))
        events.append((t + 30_000, ip, name + "-v2", "assigned"))
    for time_ms, ip, owner, action in events:
        record = {"v": 1, "kind": "ip_event", "ip": ip, "owner": owner, "action": action, "time_ms": time_ms}
        fleet.ip_event_messages.append((time_ms + rng.randint(1000, 5000), orjson.dumps(record)))


def _assignments(rng, s: Scenario, instances, fleet: Fleet) -> None:
    """The events an event-based attributor lives on: every instance's address assigned at birth and
    unassigned at death, each arriving late, some very late. Load balancer events come along."""
    for inst in instances:
        for action, time_ms in (("assigned", inst.born_ms), ("unassigned", inst.dies_ms)):
            late = s.event_very_late_s if rng.random() < s.event_very_late_share else rng.uniform(1, s.event_delay_max_s)
            record = {"v": 1, "kind": "ip_event", "ip": inst.ip, "owner": inst.workload, "action": action,
                      "time_ms": time_ms}
            fleet.assignment_messages.append((time_ms + int(late * 1000), orjson.dumps(record)))
    fleet.assignment_messages.extend(fleet.ip_event_messages)


def _lb_truth(lb_owner, ip, t):
    owner = None
    for since, name in lb_owner.get(ip, ()):
        if since <= t:
            owner = name
    return owner


def write(fleet: Fleet, folder: str | Path) -> Path:
    """The input folder for file mode, plus what the job does not read: the truth, the gateway's
    routing, and every address's assignment events in arrival order (for the event-based baseline)."""
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    for name, messages in (
        ("flows.ndjson", fleet.flow_messages),
        ("forwarded.ndjson", fleet.forwarded_messages),
        ("ip_events.ndjson", fleet.ip_event_messages),
    ):
        # As a recording of the topic: the broker's arrival time and the message key lead each line.
        with open(folder / name, "wb") as f:
            f.write(b"".join(b"%d\t%s\t%s\n" % (arrival, message_key(value), value) for arrival, value in messages))
    with open(folder / "assignments.ndjson", "wb") as f:
        f.write(b"".join(value + b"\n" for _, value in fleet.assignment_messages))
    with open(folder / "exporters.ndjson", "wb") as f:
        f.write(b"".join(orjson.dumps(e) + b"\n" for e in entitlements(fleet)))
    (folder / "truth.json").write_bytes(orjson.dumps(fleet.truth))
    (folder / "routing.json").write_bytes(orjson.dumps(fleet.routing, option=orjson.OPT_INDENT_2))
    return folder


def message_key(value: bytes) -> bytes:
    """The key an exporter sends its batch under: its id (side topics: none)."""
    first = orjson.loads(value)
    first = first[0] if isinstance(first, list) else first
    return first.get("exporter", "").encode()


def entitlements(fleet: Fleet) -> list[dict[str, Any]]:
    """What a trusted platform would publish: each host may claim the addresses its instances held."""
    held: dict[str, set[str]] = {}
    for _, value in fleet.flow_messages:
        for r in orjson.loads(value):
            held.setdefault(r["exporter"], set()).add(r["ip"] if r["kind"] == "heartbeat" else r["local_ip"])
    return [{"v": 2, "kind": "entitlement", "exporter": e, "cidrs": sorted(ips)} for e, ips in sorted(held.items())]


def regions_config() -> dict[str, list[str]]:
    return {region: list(cidrs) for region, cidrs in REGION_CIDRS.items()}
