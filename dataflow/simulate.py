"""A simulated fleet that knows the truth: workloads whose instances come and go, addresses released and
quickly reused by other workloads, exporters on skewed clocks reporting 1-minute batches late or never,
load balancers known only from assignment events, a second region, a gateway whose dependencies are
fixed by a routing configuration, and, when asked, hostile hosts and broken clocks. Deterministic for a
seed and a start time."""

from __future__ import annotations

import hashlib
import random
import uuid
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, NamedTuple

import orjson

VERSION = 2
HOME, AWAY = "us-east", "eu-west"
REGION_CIDRS = {HOME: ["10.0.0.0/16", "fd00:0:0::/48"], AWAY: ["10.1.0.0/16", "fd00:0:1::/48"]}
GATEWAY = "gateway"
SERVER_PORT = 8443
CLIENT_PORTS = (32768, 60999)
# Liars' made-up connections use local ports no real client uses, so they never mirror a real connection
# by accident: the only forged mirrors are the ones asked for.
MADE_UP_PORTS = (61000, 65535)
SHARED_PREFIX = "10.0.250."
SHARED_PORTS_FIRST, SHARED_PORTS_EACH = 20000, 1000
STALE_WINDOW_MS = 120_000  # a stale peer still calls an address up to this long after its owner left


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
    # Hostile hosts and broken clocks, all off by default. Liars, forged reports, the fast clock and the
    # far-future record add records or move one host's clock and leave every other host's records as
    # they are, so a fleet with one of them can be compared with the same fleet without it.
    liars: int = 0  # hosts that claim, for lie_s, an address another live workload owns
    lie_s: float = 300.0
    forged_reports: int = 0  # a liar's report of the mirror of a real connection, naming itself
    shared_addresses: int = 0  # IPv4 addresses shared by several workloads, each holding a port range
    workloads_per_shared_address: int = 3
    fast_clock_s: float = 0.0  # one exporter's clock runs this far ahead
    future_end_s: float = 0.0  # one flow whose end_ms is this far beyond its true end
    stale_peer_share: float = 0.0  # connections to an address of the callee's that left minutes ago


@dataclass
class Instance:
    workload: str
    ip: str
    born_ms: int
    dies_ms: int
    skew_ms: int
    host: str
    ports: tuple[int, int] | None = None  # on a shared IPv4 address: the port range it holds

    @property
    def port(self) -> int:
        """The port it serves on."""
        return self.ports[0] if self.ports else SERVER_PORT

    def holds(self, ip: str, port: int, t: int) -> bool:
        return (
            self.ip == ip
            and self.born_ms <= t < self.dies_ms
            and (self.ports is None or self.ports[0] <= port <= self.ports[1])
        )


class Delivery(NamedTuple):
    """One message as the broker receives it: when it arrives, its key, its value."""

    arrival_ms: int
    key: bytes
    value: bytes


@dataclass
class Fleet:
    """What the simulation produced, in arrival order, and the truth to check answers against."""

    flow_messages: list[Delivery] = field(default_factory=list)  # keyed by exporter
    forwarded_messages: list[Delivery] = field(default_factory=list)  # keyed by the forwarding region
    ip_event_messages: list[Delivery] = field(default_factory=list)  # keyed by address
    assignment_messages: list[Delivery] = field(default_factory=list)  # every address, for baselines
    entitlement_messages: list[Delivery] = field(default_factory=list)  # keyed by exporter
    truth: dict[str, str | None] = field(default_factory=dict)  # flow_id -> remote owner at start
    routing: dict[str, str] = field(default_factory=dict)  # gateway route -> service
    instances: list[Instance] = field(default_factory=list)
    # Flow ids of records that report no real connection: liars' made-up flows and forged mirrors.
    made_up: set[str] = field(default_factory=set)
    lies: int = 0  # shipped records claiming an address their exporter is not entitled to
    fast_exporter: str | None = None
    future_flow: str | None = None
    records: int = 0
    lost_records: int = 0

    def entitlements(self) -> dict[str, list[str]]:
        """Exporter id -> the CIDRs it may claim, as exporters.ndjson says."""
        out = {}
        for m in self.entitlement_messages:
            record = orjson.loads(m.value)
            out[record["exporter"]] = record["cidrs"]
        return out


class Owners:
    """Who really held an address (and port) at a moment: the truth answers are checked against."""

    def __init__(self, instances: list[Instance], lb_owner: dict[str, list[tuple[int, str | None]]]):
        self.by_ip: dict[str, list[Instance]] = {}
        for inst in instances:
            self.by_ip.setdefault(inst.ip, []).append(inst)
        self.lb_owner = lb_owner

    def instance(self, ip: str, port: int, t: int) -> Instance | None:
        for inst in self.by_ip.get(ip, ()):
            if inst.holds(ip, port, t):
                return inst
        return None

    def workload(self, ip: str, port: int, t: int) -> str | None:
        if ip in self.lb_owner:
            owner = None
            for since, name in self.lb_owner[ip]:
                if since <= t:
                    owner = name
            return owner
        inst = self.instance(ip, port, t)
        return inst.workload if inst else None


class Connection(NamedTuple):
    client: Instance
    client_port: int
    server: Instance
    start: int
    stop: int


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
    shared = _shared_instances(random.Random(f"{s.seed}/shared"), s, services[1:])
    fleet.instances = home + shared + away
    lbs = [(f"10.0.255.{i + 1}", f"lb/public-{i}") for i in range(s.load_balancers)]
    lb_owner: dict[str, list[tuple[int, str | None]]] = {ip: [(s.start_ms - 3_600_000, name)] for ip, name in lbs}
    _lb_reassignments(rng, s, lbs, lb_owner, fleet)
    owners = Owners(fleet.instances, lb_owner)
    if s.fast_clock_s:
        fleet.fast_exporter = _fast_clock(random.Random(f"{s.seed}/fast"), s, home)

    # host -> (batch number by its own clock, record); a shared address's workloads share one host.
    reports: dict[str, list[tuple[int, dict[str, Any]]]] = {}
    hosts: dict[str, list[Instance]] = {}
    for inst in fleet.instances:
        hosts.setdefault(inst.host, []).append(inst)
        reports.setdefault(inst.host, [])
    interval = s.interval_s * 1000

    def report(inst: Instance, record: dict[str, Any]) -> None:
        reports[inst.host].append((record["end_ms"] // interval, record))

    live_by_service: dict[str, list[Instance]] = {}
    for inst in fleet.instances:
        live_by_service.setdefault(inst.workload, []).append(inst)

    connections: list[Connection] = []
    seq = 0
    for client in fleet.instances:
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
            stale = False
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
            elif s.stale_peer_share and rng.random() < s.stale_peer_share:
                # A peer that still has an address of the callee it learned earlier: whoever holds it now
                # (another workload, or nobody) gets the connection.
                server = _pick_departed(rng, live_by_service, rng.choice(targets), start)
                stale = True
            else:
                server = _pick_live(rng, live_by_service, rng.choice(targets), start, stop)
            if server is None and server_ip is None:
                continue
            server_port = SERVER_PORT
            if server is not None:
                if _family(server.ip) != _family(client.ip):
                    continue
                server_ip, server_port = server.ip, server.port
            elif _family(client.ip) == 6:
                continue
            seq += 1
            lo, hi = (client.ports[0] + 1, client.ports[1]) if client.ports else CLIENT_PORTS
            client_port = rng.randint(lo, hi)
            sent, received = rng.randint(100, 50_000), rng.randint(100, 500_000)
            if stale:
                server = owners.instance(server_ip, server_port, start)
                stop = min(start + 3000, stop)
                if server is None:
                    received = 0  # nobody answers: the connect attempt gives up
                else:
                    stop = min(stop, server.dies_ms - 1)
            fid = _flow_id(client.host, 2 * seq)
            report(client, _flow(fid, client, client_port, server_ip, server_port, "outbound", start, stop, sent, received))
            fleet.truth[fid] = owners.workload(server_ip, server_port, start)
            if server is not None:
                sid = _flow_id(server.host, 2 * seq + 1)
                report(server, _flow(sid, server, server_port, client.ip, client_port, "inbound", start, stop, received, sent))
                fleet.truth[sid] = client.workload
                connections.append(Connection(client, client_port, server, start, stop))

    if s.liars:
        _liars(random.Random(f"{s.seed}/liars"), s, home, owners, reports, fleet)
    if s.forged_reports:
        _forged_reports(random.Random(f"{s.seed}/forged"), s, home, connections, reports, fleet)
    if s.future_end_s:
        _future_flow(random.Random(f"{s.seed}/future"), s, home, reports, fleet)
    for host, records in reports.items():
        _ship(s, host, hosts[host], records, fleet, end_ms)
    _assignments(random.Random(s.seed + 1), s, home + shared, fleet)
    _entitlements(hosts, fleet)
    for messages in (fleet.flow_messages, fleet.forwarded_messages, fleet.ip_event_messages,
                     fleet.assignment_messages, fleet.entitlement_messages):
        messages.sort(key=lambda m: (m.arrival_ms, m.key))
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


def _shared_instances(rng, s: Scenario, services: list[str]) -> list[Instance]:
    """Workloads behind shared IPv4 addresses (one host each): every port range of an address is held by
    one workload at a time, and when it leaves, another workload soon takes the same range."""
    end_ms = s.start_ms + s.duration_s * 1000
    instances = []
    for k in range(s.shared_addresses):
        ip, host, skew = f"{SHARED_PREFIX}{k + 1}", f"{HOME}-shared{k + 1}", rng.randint(-s.skew_ms, s.skew_ms)
        for j in range(s.workloads_per_shared_address):
            lo = SHARED_PORTS_FIRST + j * SHARED_PORTS_EACH
            born = s.start_ms - int(rng.uniform(0, s.mean_lifetime_s * 1000))
            while born < end_ms:
                lifetime = max(20_000, int(rng.expovariate(1 / s.mean_lifetime_s) * 1000))
                instances.append(Instance(rng.choice(services), ip, born, born + lifetime, skew, host,
                                          (lo, lo + SHARED_PORTS_EACH - 1)))
                born += lifetime + int(rng.uniform(0, s.reuse_gap_s * 1000))
    return instances


def _pick_live(rng, live_by_service, service, start, stop) -> Instance | None:
    live = [i for i in live_by_service.get(service, ()) if i.born_ms <= start and stop <= i.dies_ms]
    return rng.choice(live) if live else None


def _pick_departed(rng, live_by_service, service, start) -> Instance | None:
    gone = [i for i in live_by_service.get(service, ()) if start - STALE_WINDOW_MS <= i.dies_ms <= start]
    return rng.choice(gone) if gone else None


def _family(ip: str) -> int:
    return 6 if ":" in ip else 4


def _region(host: str) -> str:
    return AWAY if host.startswith(AWAY) else HOME


def _flow_id(host: str, cookie: int) -> str:
    """A flow_id in the exporter's form, "{exporter}:{boot id}:{socket cookie}", with one boot id per host
    (derived from its name, so that the fleet's random draws stay as they were)."""
    boot = uuid.UUID(bytes=hashlib.blake2b(host.encode(), digest_size=16).digest(), version=4)
    return f"{host}:{boot}:{cookie}"


def _flow(fid, inst, local_port, remote_ip, remote_port, direction, start, stop, sent, received, local_ip=None,
          workload=None):
    """A flow as `inst`'s host reports it, on its clock; `local_ip`/`workload` override what it claims."""
    record = {
        "v": VERSION,
        "kind": "flow",
        "flow_id": fid,
        "exporter": inst.host,
        "region": _region(inst.host),
        "local_ip": local_ip or inst.ip,
        "local_port": local_port,
        "remote_ip": remote_ip,
        "remote_port": remote_port,
        "direction": direction,
        "start_ms": start + inst.skew_ms,
        "end_ms": stop + inst.skew_ms,
        "bytes_sent": sent,
        "bytes_received": received,
        "local_workload": workload or inst.workload,
    }
    if inst.ports and local_ip is None:
        record["local_ports"] = list(inst.ports)
    return record


def _heartbeat(inst: Instance, lo: int, hi: int, ip: str | None = None, workload: str | None = None):
    record = {"v": VERSION, "kind": "heartbeat", "exporter": inst.host, "region": _region(inst.host),
              "ip": ip or inst.ip, "workload": workload or inst.workload, "start_ms": lo, "end_ms": hi}
    if inst.ports and ip is None:
        record["ports"] = list(inst.ports)
    return record


def _fast_clock(rng, s: Scenario, home: list[Instance]) -> str:
    """The exporter whose clock runs fast: a plain host, the one alive longest in the run."""
    end_ms = s.start_ms + s.duration_s * 1000
    longest = max(min(i.dies_ms, end_ms) - max(i.born_ms, s.start_ms) for i in home)
    inst = rng.choice([i for i in home if min(i.dies_ms, end_ms) - max(i.born_ms, s.start_ms) == longest])
    inst.skew_ms += int(s.fast_clock_s * 1000)
    return inst.host


def _liars(rng, s: Scenario, home: list[Instance], owners: Owners, reports, fleet: Fleet) -> None:
    """Each liar, for lie_s of its life, claims an address that another live workload owns: a heartbeat
    for it every interval, and made-up connections from it to live servers a few times a minute."""
    end_ms = s.start_ms + s.duration_s * 1000
    interval, lie_ms = s.interval_s * 1000, int(s.lie_s * 1000)
    candidates = [i for i in home if min(i.dies_ms, end_ms) - max(i.born_ms, s.start_ms) > lie_ms]
    n = 0
    for _ in range(100 * s.liars):
        if n == s.liars or not candidates:
            return
        liar = rng.choice(candidates)
        begin = rng.randint(max(liar.born_ms, s.start_ms), min(liar.dies_ms, end_ms) - lie_ms)
        victims = [i for i in home if i.workload != liar.workload and i.ip != liar.ip
                   and _family(i.ip) == _family(liar.ip) and i.born_ms <= begin and begin + lie_ms < i.dies_ms]
        if not victims:
            continue
        victim = rng.choice(victims)
        n += 1
        lo, hi = begin + liar.skew_ms, begin + lie_ms + liar.skew_ms
        for m in range(lo // interval, (hi - 1) // interval + 1):
            span = (max(lo, m * interval), min(hi, (m + 1) * interval))
            reports[liar.host].append((m, _heartbeat(liar, *span, ip=victim.ip, workload=liar.workload)))
        t = begin + rng.expovariate(s.connections_per_instance_s) * 1000
        k = 0
        while t < begin + lie_ms:
            start = int(t)
            t += rng.expovariate(s.connections_per_instance_s) * 1000
            stop = min(start + int(rng.expovariate(1 / 300.0)), begin + lie_ms)
            servers = [i for i in home if i.born_ms <= start and stop < i.dies_ms and i.ip not in (victim.ip, liar.ip)
                       and _family(i.ip) == _family(victim.ip)]
            if not servers:
                continue
            server = rng.choice(servers)
            k += 1
            fid = f"{liar.host}:lie{n}-{k}"
            record = _flow(fid, liar, rng.randint(*MADE_UP_PORTS), server.ip, server.port, "outbound", start, stop,
                           rng.randint(100, 5000), rng.randint(100, 5000), local_ip=victim.ip)
            reports[liar.host].append((record["end_ms"] // interval, record))
            fleet.truth[fid] = owners.workload(server.ip, server.port, start)
            fleet.made_up.add(fid)


def _forged_reports(rng, s: Scenario, home: list[Instance], connections: list[Connection], reports,
                    fleet: Fleet) -> None:
    """A liar reports one end of a real connection between two other workloads as its own: the mirror
    that would answer the other end's lookup, naming the liar."""
    interval = s.interval_s * 1000
    plain = [c for c in connections if c.client.host.startswith(HOME) and c.server.host.startswith(HOME)
             and not c.client.ports and not c.server.ports]
    for n in range(s.forged_reports):
        if not plain:
            return
        c = rng.choice(plain)
        liars = [i for i in home if i.born_ms <= c.start and c.stop < i.dies_ms
                 and i.workload not in (c.client.workload, c.server.workload)]
        if not liars:
            continue
        liar = rng.choice(liars)
        if rng.random() < 0.5:  # posing as the server, for the client's lookup
            ends = (c.server.ip, c.server.port, c.client.ip, c.client_port, "inbound", c.client.workload)
        else:  # posing as the client, for the server's lookup
            ends = (c.client.ip, c.client_port, c.server.ip, c.server.port, "outbound", c.server.workload)
        local_ip, local_port, remote_ip, remote_port, direction, truth = ends
        fid = f"{liar.host}:forged{n}"
        record = _flow(fid, liar, local_port, remote_ip, remote_port, direction, c.start, c.stop,
                       rng.randint(100, 5000), rng.randint(100, 5000), local_ip=local_ip)
        reports[liar.host].append((record["end_ms"] // interval, record))
        fleet.truth[fid] = truth
        fleet.made_up.add(fid)


def _future_flow(rng, s: Scenario, home: list[Instance], reports, fleet: Fleet) -> None:
    """One valid flow to an outside address whose end_ms lies far ahead, in a batch of its true end."""
    end_ms = s.start_ms + s.duration_s * 1000
    inst = rng.choice([i for i in home if min(i.dies_ms, end_ms) - max(i.born_ms, s.start_ms) >= 60_000])
    start = rng.randint(max(inst.born_ms, s.start_ms), min(inst.dies_ms, end_ms) - 30_000)
    fid = f"{inst.host}:future"
    record = _flow(fid, inst, rng.randint(*MADE_UP_PORTS), f"203.0.113.{rng.randint(1, 254)}", 443, "outbound",
                   start, start + 20_000, 100, 100)
    m = record["end_ms"] // (s.interval_s * 1000)
    record["end_ms"] += int(s.future_end_s * 1000)
    reports[inst.host].append((m, record))
    fleet.truth[fid] = None
    fleet.future_flow = fid


def _ship(s: Scenario, host: str, instances: list[Instance], records, fleet: Fleet, end_ms: int) -> None:
    """Batch one host's records by its own clock's intervals, with a heartbeat per workload and interval.
    Each batch's loss and delay are drawn for that host and batch alone, so what one host sends never
    changes another's."""
    interval = s.interval_s * 1000
    batches: dict[int, list] = {}
    for m, r in records:
        batches.setdefault(m, []).append(r)
    for inst in instances:
        first = (inst.born_ms + inst.skew_ms) // interval
        last = (min(inst.dies_ms, end_ms) + inst.skew_ms) // interval
        for m in range(first, last + 1):
            lo = max(m * interval, inst.born_ms + inst.skew_ms)
            hi = min((m + 1) * interval, min(inst.dies_ms, end_ms) + inst.skew_ms)
            if hi > lo:
                batches.setdefault(m, []).append(_heartbeat(inst, lo, hi))
    skew = instances[0].skew_ms
    region = _region(host)
    own = {inst.ip for inst in instances}
    key = host.encode()
    for m, batch in sorted(batches.items()):
        rng = random.Random(f"{s.seed}/{host}/{m}")
        flows = [r for r in batch if r["kind"] == "flow"]
        if rng.random() < s.batch_loss:
            fleet.lost_records += len(flows)
            for r in flows:
                fleet.truth.pop(r["flow_id"], None)
                fleet.made_up.discard(r["flow_id"])
            continue
        delay = s.late_delay_s if rng.random() < s.late_share else rng.expovariate(1 / s.mean_delay_s)
        # The broker stamps the true time, whatever the host's clock says.
        arrival = (m + 1) * interval - skew + int(delay * 1000)
        if region == HOME:
            fleet.flow_messages.append(Delivery(arrival, key, orjson.dumps(batch)))
            fleet.records += len(flows)
            fleet.lies += sum(1 for r in batch if r.get("local_ip", r.get("ip")) not in own)
        else:
            # The other region's job forwards the flows whose remote address is ours.
            ours = [r for r in flows if r["remote_ip"].startswith(("10.0.", "fd00:0:0:"))]
            if ours:
                fleet.forwarded_messages.append(Delivery(arrival + 500, AWAY.encode(), orjson.dumps(ours)))
                fleet.records += len(ours)
            for r in flows:
                if r not in ours:
                    fleet.truth.pop(r["flow_id"], None)


def _entitlements(hosts: dict[str, list[Instance]], fleet: Fleet) -> None:
    """What the platform says each exporter may claim: the addresses its workloads were given (each host
    here has its own), registered a second before the host's first workload starts."""
    for host, instances in hosts.items():
        cidrs = sorted({f"{i.ip}/{128 if ':' in i.ip else 32}" for i in instances})
        record = {"v": VERSION, "kind": "entitlement", "exporter": host, "cidrs": cidrs}
        arrival = min(i.born_ms for i in instances) - 1000
        fleet.entitlement_messages.append(Delivery(arrival, host.encode(), orjson.dumps(record)))


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
        record = {"v": VERSION, "kind": "ip_event", "ip": ip, "owner": owner, "action": action, "time_ms": time_ms}
        fleet.ip_event_messages.append(Delivery(time_ms + rng.randint(1000, 5000), ip.encode(), orjson.dumps(record)))


def _assignments(rng, s: Scenario, instances, fleet: Fleet) -> None:
    """The events an event-based attributor lives on: every instance's address assigned at birth and
    unassigned at death, each arriving late, some very late; on a shared address, with its port range
    (for the baseline only: the job's ip_event carries none). Load balancer events come along."""
    for inst in instances:
        for action, time_ms in (("assigned", inst.born_ms), ("unassigned", inst.dies_ms)):
            late = s.event_very_late_s if rng.random() < s.event_very_late_share else rng.uniform(1, s.event_delay_max_s)
            record = {"v": VERSION, "kind": "ip_event", "ip": inst.ip, "owner": inst.workload, "action": action,
                      "time_ms": time_ms}
            if inst.ports:
                record["ports"] = list(inst.ports)
            fleet.assignment_messages.append(Delivery(time_ms + int(late * 1000), inst.ip.encode(), orjson.dumps(record)))
    fleet.assignment_messages.extend(fleet.ip_event_messages)


def write(fleet: Fleet, folder: str | Path) -> Path:
    """The input folder for file mode, each line `ARRIVAL_MS<TAB>KEY<TAB>JSON` as the broker would have
    had it, plus what the job does not read: the truth, the gateway's routing, and every address's
    assignment events in arrival order (for the event-based baseline)."""
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    for name, messages in (
        ("exporters.ndjson", fleet.entitlement_messages),
        ("flows.ndjson", fleet.flow_messages),
        ("forwarded.ndjson", fleet.forwarded_messages),
        ("ip_events.ndjson", fleet.ip_event_messages),
        ("assignments.ndjson", fleet.assignment_messages),
    ):
        with open(folder / name, "wb") as f:
            f.write(b"".join(b"%d\t%s\t%s\n" % (m.arrival_ms, m.key, m.value) for m in messages))
    (folder / "truth.json").write_bytes(orjson.dumps(fleet.truth))
    (folder / "routing.json").write_bytes(orjson.dumps(fleet.routing, option=orjson.OPT_INDENT_2))
    return folder


def regions_config() -> dict[str, list[str]]:
    return {region: list(cidrs) for region, cidrs in REGION_CIDRS.items()}
