"""The simulated fleet speaks contract v2 as the broker would hold it (arrival, exporter key,
entitlements), its truth agrees with what the hosts saw, and each hostile option really produces its
hostile case, leaving every other host's records as they were."""

import ipaddress
from dataclasses import replace

import orjson
import pytest

from dataflow import simulate as sim

SMALL = sim.Scenario(seed=3, duration_s=8 * 60, services=6, instances_per_service=4)


def raw_records(fleet):
    """(delivery, record) for every record of the raw topic."""
    return [(m, r) for m in fleet.flow_messages for r in orjson.loads(m.value)]


def flows(fleet):
    return {r["flow_id"]: r for _, r in raw_records(fleet) if r["kind"] == "flow"}


def halves(by_id):
    """(client's report, server's report) of every connection both ends reported: a connection's two
    flow_ids end in the cookies 2n (client) and 2n + 1 (server)."""
    cookies = {int(fid.rpartition(":")[2]): r for fid, r in by_id.items() if fid.rpartition(":")[2].isdigit()}
    return [(r, cookies[c + 1]) for c, r in cookies.items() if c % 2 == 0 and c + 1 in cookies]


def owner(fleet, ip, port, t):
    """Who held the address (and port) at t, straight from the instances."""
    held = [i.workload for i in fleet.instances if i.ip == ip and i.born_ms <= t < i.dies_ms
            and (i.ports is None or i.ports[0] <= port <= i.ports[1])]
    assert len(held) <= 1
    return held[0] if held else None


def claimed(record):
    return record.get("local_ip", record.get("ip"))


def entitled(fleet, exporter, ip):
    return any(ipaddress.ip_address(ip) in ipaddress.ip_network(c) for c in fleet.entitlements().get(exporter, ()))


@pytest.fixture(scope="module")
def clean():
    return sim.simulate(SMALL)


def test_every_message_is_v2_keyed_by_its_exporter_in_arrival_order(clean):
    for messages in (clean.flow_messages, clean.forwarded_messages, clean.ip_event_messages,
                     clean.entitlement_messages):
        assert [m.arrival_ms for m in messages] == sorted(m.arrival_ms for m in messages)
    for m, r in raw_records(clean):
        assert r["v"] == 2 and m.key == r["exporter"].encode()
    assert {m.key for m in clean.forwarded_messages} == {sim.AWAY.encode()}
    for m in clean.ip_event_messages:
        assert m.key == orjson.loads(m.value)["ip"].encode()
    # A batch arrives after the end of its interval by the true clock, whatever its host's clock says.
    skews = {i.host: i.skew_ms for i in clean.instances}
    for m, r in raw_records(clean):
        if r["kind"] == "heartbeat":
            assert m.arrival_ms >= r["end_ms"] - skews[r["exporter"]]


def test_each_exporter_is_entitled_to_the_addresses_its_workloads_held_and_claims_only_those(clean):
    rights = clean.entitlements()
    assert set(rights) == {i.host for i in clean.instances}
    for inst in clean.instances:
        assert f"{inst.ip}/{128 if ':' in inst.ip else 32}" in rights[inst.host]
    for m in clean.entitlement_messages:
        record = orjson.loads(m.value)
        assert record["v"] == 2 and record["kind"] == "entitlement" and m.key == record["exporter"].encode()
        first = min(i.born_ms for i in clean.instances if i.host == record["exporter"])
        assert m.arrival_ms < first  # registered before its host claims anything
    assert clean.lies == 0
    assert all(entitled(clean, r["exporter"], claimed(r)) for _, r in raw_records(clean))


def test_written_lines_carry_arrival_and_key_before_the_json(clean, tmp_path):
    folder = sim.write(clean, tmp_path)
    for name, messages in (("flows.ndjson", clean.flow_messages), ("exporters.ndjson", clean.entitlement_messages),
                           ("forwarded.ndjson", clean.forwarded_messages)):
        lines = (folder / name).read_bytes().splitlines()
        assert [tuple(line.split(b"\t", 2)) for line in lines] == [
            (str(m.arrival_ms).encode(), m.key, m.value) for m in messages]


def test_the_truth_agrees_with_both_halves_of_every_connection(clean):
    by_id = flows(clean)
    pairs = halves(by_id)
    for record, mirror in pairs:
        assert clean.truth[record["flow_id"]] == mirror["local_workload"]
        assert clean.truth[mirror["flow_id"]] == record["local_workload"]
        assert (mirror["local_ip"], mirror["local_port"]) == (record["remote_ip"], record["remote_port"])
    assert len(pairs) > 1000
    true_start = {i.host: i.skew_ms for i in clean.instances}
    for fid, record in by_id.items():
        start = record["start_ms"] - true_start[record["exporter"]]
        if not record["remote_ip"].startswith(("203.", "10.0.255.")):
            assert clean.truth[fid] == owner(clean, record["remote_ip"], record["remote_port"], start)


def without(fleet, exporters=(), flow_ids=(), heartbeat_ips=None):
    """The raw messages with some exporters' messages or some records left out."""
    out = []
    for m in fleet.flow_messages:
        if m.key.decode() in exporters:
            continue
        batch = [r for r in orjson.loads(m.value) if r.get("flow_id") not in flow_ids
                 and not (heartbeat_ips and r["kind"] == "heartbeat" and r["ip"] in heartbeat_ips.get(r["exporter"], ()))]
        out.append((m.arrival_ms, m.key, batch))
    return out


def test_liars_claim_a_live_workloads_address_for_minutes_and_change_nothing_else(clean):
    lying = sim.simulate(replace(SMALL, liars=2, lie_s=240.0))
    lies = [(m, r) for m, r in raw_records(lying) if not entitled(lying, r["exporter"], claimed(r))]
    assert lying.lies == len(lies) > 50
    skews = {i.host: i.skew_ms for i in lying.instances}
    by_liar = {}
    for _, r in lies:
        workload = r.get("local_workload", r.get("workload"))
        t = r["start_ms"] - skews[r["exporter"]]
        true_owner = owner(lying, claimed(r), r.get("local_port", 0), t)
        assert true_owner is not None and true_owner != workload  # the address is another live workload's
        by_liar.setdefault(r["exporter"], []).append(r)
    assert len(by_liar) == 2
    for records in by_liar.values():
        beats = [r for r in records if r["kind"] == "heartbeat"]
        assert max(r["end_ms"] for r in beats) - min(r["start_ms"] for r in beats) == 240_000
        assert len({r["ip"] for r in beats}) == 1 and any(r["kind"] == "flow" for r in records)
    # The made-up flows are known, and their truth is the real owner of the address they called.
    made_up = {r["flow_id"] for _, r in lies if r["kind"] == "flow"}
    assert made_up == lying.made_up
    for _, r in lies:
        if r["kind"] == "flow":
            start = r["start_ms"] - skews[r["exporter"]]
            assert lying.truth[r["flow_id"]] == owner(lying, r["remote_ip"], r["remote_port"], start) is not None
    # Take the lies away and the fleet is the clean one, message for message.
    lied_ips = {e: {r["ip"] for r in rs if r["kind"] == "heartbeat"} for e, rs in by_liar.items()}
    assert without(lying, flow_ids=made_up, heartbeat_ips=lied_ips) == without(clean)
    assert {k: v for k, v in lying.truth.items() if k not in made_up} == clean.truth


def test_forged_reports_mirror_real_connections_naming_the_liar(clean):
    forging = sim.simulate(replace(SMALL, forged_reports=15))
    real = flows(clean)
    by_end = {(r["local_ip"], r["local_port"], r["remote_ip"], r["remote_port"]): r for r in real.values()}
    forged = [r for r in flows(forging).values() if r["flow_id"] in forging.made_up]
    assert forging.lies == len(forged) > 10 and len(forging.made_up) == len(forged)
    for r in forged:
        # The other end's real report of this connection, whose lookup the forgery would answer.
        other = by_end[(r["remote_ip"], r["remote_port"], r["local_ip"], r["local_port"])]
        assert abs(other["start_ms"] - r["start_ms"]) <= 2 * SMALL.skew_ms
        assert r["local_workload"] != clean.truth[other["flow_id"]]  # names the liar, not the real end
        assert forging.truth[r["flow_id"]] == other["local_workload"]
        assert not entitled(forging, r["exporter"], r["local_ip"])
    assert without(forging, flow_ids=forging.made_up) == without(clean)


def test_shared_addresses_carry_port_ranges_and_peers_call_the_port_of_their_workload():
    fleet = sim.simulate(replace(SMALL, shared_addresses=2, workloads_per_shared_address=3))
    shared = [i for i in fleet.instances if i.ports]
    assert {i.ip for i in shared} == {"10.0.250.1", "10.0.250.2"}
    # At one moment several workloads hold one address, each its own port range...
    t = SMALL.start_ms + 60_000
    held = [(i.workload, i.ports) for i in shared if i.ip == "10.0.250.1" and i.born_ms <= t < i.dies_ms]
    assert len({p for _, p in held}) == len(held) >= 2
    # ...and a range passes from one workload to another over the run.
    by_range = {}
    for i in sorted(shared, key=lambda i: i.born_ms):
        by_range.setdefault((i.ip, i.ports), []).append(i.workload)
    assert any(len(set(w)) > 1 for w in by_range.values())
    records = [r for _, r in raw_records(fleet)]
    beats = [r for r in records if r["kind"] == "heartbeat" and r["ip"].startswith(sim.SHARED_PREFIX)]
    assert beats and all(len(r["ports"]) == 2 and r["ports"][0] <= r["ports"][1] for r in beats)
    own = [r for r in records if r["kind"] == "flow" and r["local_ip"].startswith(sim.SHARED_PREFIX)]
    assert own and all(r["local_ports"][0] <= r["local_port"] <= r["local_ports"][1] for r in own)
    assert all("ports" not in r for r in records if r["kind"] == "heartbeat" and r not in beats)
    calls = [r for r in records if r["kind"] == "flow" and r["remote_ip"].startswith(sim.SHARED_PREFIX)
             and r["flow_id"] in fleet.truth]
    assert len({r["remote_port"] for r in calls}) >= 3
    skews = {i.host: i.skew_ms for i in fleet.instances}
    for r in calls:
        start = r["start_ms"] - skews[r["exporter"]]
        assert fleet.truth[r["flow_id"]] == owner(fleet, r["remote_ip"], r["remote_port"], start) is not None


def test_a_fast_clock_moves_one_exporters_timestamps_and_nothing_else(clean):
    fast = sim.simulate(replace(SMALL, fast_clock_s=1200.0))
    host = fast.fast_exporter
    ahead = [i.skew_ms for i in fast.instances if i.host == host][0]
    usual = [i.skew_ms for i in clean.instances if i.host == host][0]
    assert ahead - usual == 1_200_000
    by_id = flows(fast)
    gaps = [(a["start_ms"] - b["start_ms"]) * (1 if a["exporter"] == host else -1)
            for a, b in halves(by_id) if host in (a["exporter"], b["exporter"])]
    assert gaps and all(1_200_000 - 2 * SMALL.skew_ms <= g <= 1_200_000 + 2 * SMALL.skew_ms for g in gaps)
    # Its batches still arrive when the true clock says, not 20 minutes late.
    for m in fast.flow_messages:
        if m.key == host.encode():
            batch = orjson.loads(m.value)
            assert max(r["end_ms"] for r in batch) - ahead <= m.arrival_ms <= max(r["end_ms"] for r in batch)
    assert without(fast, exporters={host}) == without(clean, exporters={host})


def test_one_flow_ends_far_ahead_in_a_batch_that_arrives_on_time(clean):
    future = sim.simulate(replace(SMALL, future_end_s=3000.0))
    [(m, r)] = [(m, r) for m, r in raw_records(future) if r.get("flow_id") == future.future_flow]
    assert r["end_ms"] - r["start_ms"] >= 3_000_000 and m.arrival_ms < r["end_ms"] - 2_900_000
    assert future.truth[r["flow_id"]] is None and r["remote_ip"].startswith("203.0.113.")
    assert without(future, flow_ids={future.future_flow}) == without(clean)


def test_skew_of_seconds_puts_the_two_halves_of_connections_seconds_apart():
    skewed = sim.simulate(replace(SMALL, skew_ms=5000))
    by_id = flows(skewed)
    gaps = [abs(a["start_ms"] - b["start_ms"]) for a, b in halves(by_id)]
    assert max(gaps) > 5000 and sum(g > 1000 for g in gaps) > 0.5 * len(gaps)


def test_stale_peers_reach_nobody_or_the_addresses_new_owner():
    stale = sim.simulate(replace(SMALL, stale_peer_share=0.2, batch_loss=0.0))  # every answer reported
    by_id = flows(stale)
    skews = {i.host: i.skew_ms for i in stale.instances}
    nobody = new_owner = 0
    answered_by = {a["flow_id"]: b for a, b in halves(by_id)}
    for fid, r in by_id.items():
        if r["direction"] != "outbound" or fid not in stale.truth or not r["remote_ip"].startswith(("10.0.", "fd00:0:0:")):
            continue
        start = r["start_ms"] - skews[r["exporter"]]
        # A call to an address whose owner left shortly before: the client wanted the leaver.
        left = [i for i in stale.instances if i.ip == r["remote_ip"] and start - sim.STALE_WINDOW_MS <= i.dies_ms <= start
                and (i.ports is None or i.ports[0] <= r["remote_port"] <= i.ports[1])]
        if not left:
            continue
        truth = stale.truth[fid]
        assert truth == owner(stale, r["remote_ip"], r["remote_port"], start)
        if truth is None:
            nobody += 1
            assert r["bytes_received"] == 0 and fid not in answered_by
        else:
            new_owner += 1
            assert answered_by[fid]["local_workload"] == truth
    assert nobody > 5 and new_owner > 5
