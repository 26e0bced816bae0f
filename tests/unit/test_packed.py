"""A waiting lookup and a connection report in their packed forms give back exactly what went in."""

from hypothesis import given, settings
from hypothesis import strategies as st

from dataflow.packed import (
    SAMPLED,
    UNNAMED,
    WHOLE,
    Names,
    PackedLookup,
    connection_key,
    lookups,
    pack_lookup,
    period_before,
    read_report,
    report,
    reporter,
    with_flags,
)


def contract_flow(**changes):
    flow = {"v": 2, "kind": "flow", "flow_id": "h1:42", "exporter": "h1", "region": "us-east",
            "local_ip": "10.0.0.1", "local_port": 40000, "remote_ip": "10.0.0.2", "remote_port": 443,
            "direction": "outbound", "start_ms": 1_780_000_000_000, "end_ms": 1_780_000_000_250,
            "bytes_sent": 1234, "bytes_received": 2**31 + 5, "local_workload": "shop/cart"}
    flow.update(changes)
    return flow


ipv4 = st.builds(lambda a, b: f"10.{a}.{b}.7", st.integers(0, 255), st.integers(0, 255))
ipv6 = st.builds(lambda a: f"fd00::{a:x}", st.integers(1, 0xFFFF))
names = st.text(st.characters(codec="utf-8", exclude_categories=("Cs",)), min_size=1, max_size=30)


@settings(max_examples=300, deadline=None)
@given(
    family=st.sampled_from([ipv4, ipv6]).flatmap(lambda f: st.tuples(f, f)),
    ports=st.tuples(st.integers(0, 65535), st.integers(0, 65535)),
    flow_id=st.text(min_size=1, max_size=60),
    direction=st.sampled_from(["inbound", "outbound"]),
    workload=st.none() | names,
    extras=st.dictionaries(st.sampled_from(["pid", "comm", "open", "local_ports", "claimed_local_workload",
                                            "local_refused", "future_field"]), st.integers(0, 10) | names | st.booleans()),
    times=st.tuples(st.integers(0, 2**40), st.integers(0, 10**6) | st.integers(2**32, 2**34)),
    counts=st.tuples(st.integers(0, 2**32 - 1), st.integers(0, 2**32 - 1) | st.integers(2**32, 2**64 - 1)),
)
def test_a_contract_flow_comes_back_as_it_went_in(family, ports, flow_id, direction, workload, extras, times, counts):
    flow = contract_flow(local_ip=family[0], remote_ip=family[1], local_port=ports[0], remote_port=ports[1],
                         flow_id=flow_id, direction=direction, local_workload=workload, start_ms=times[0],
                         end_ms=times[0] + times[1], bytes_sent=counts[0], bytes_received=counts[1], **extras)
    table = Names()
    start = times[0] - 3000  # the exporter's clock 3 s ahead
    key = connection_key(family[1], ports[1], family[0], ports[0])
    data = pack_lookup(flow, key, start, 9, 8, True, (), table)
    [p] = lookups(data, table)
    assert p.flow(table) == flow
    assert (p.start, p.deadline, p.settle, p.exporter, p.remote_ip, p.remote_port) == (start, 9, 8, "h1", family[1], ports[1])
    assert p.key == connection_key(family[1], ports[1], family[0], ports[0])
    assert p.start_ms() == times[0]
    assert p.flags & UNNAMED
    # Only figures too large for their packed fields keep the record whole.
    assert bool(p.flags & WHOLE) == (times[1] >= 2**32 or max(counts) >= 2**32)


def test_lookups_one_after_another_in_one_buffer_and_their_marks():
    table = Names()
    flows = [contract_flow(flow_id=f"f{i}", remote_ip=f"10.0.0.{i}") for i in range(1, 5)]
    flows.append(contract_flow(local_ip="fd00::1", remote_ip="fd00::2", local_workload=None, flow_id="é" * 100))
    buffer = bytearray()
    for i, f in enumerate(flows):
        carried = [report(f["start_ms"] + j, j, i, 0) for j in range(i)]
        key = connection_key(f["remote_ip"], f["remote_port"], f["local_ip"], f["local_port"])
        buffer += pack_lookup(f, key, f["start_ms"] - i, i + 1, i + 2, False, carried, table)
    read = list(lookups(buffer, table))
    assert [p.flow(table) for p in read] == flows
    assert [[read_report(v) for v in p.carried] for p in read] == [
        [(f["start_ms"] + j, j, i) for j in range(i)] for i, f in enumerate(flows)]
    marked = PackedLookup(with_flags(read[2].raw, read[2].flags | SAMPLED), 0, table)
    assert marked.flags & SAMPLED and marked.flow(table) == flows[2]


def test_a_record_outside_the_contract_shape_is_kept_whole():
    table = Names()
    odd = {"flow_id": "x", "exporter": "h1", "local_ip": "192.0.2.1", "local_port": 1, "remote_ip": "fd00::3",
           "remote_port": 443, "start_ms": 5, "end_ms": 6}
    long_id = contract_flow(flow_id="x" * 300)
    for flow in (odd, long_id):
        key = connection_key(flow["remote_ip"], flow["remote_port"], flow["local_ip"], flow["local_port"])
        [p] = lookups(pack_lookup(flow, key, flow["start_ms"], 2, 3, False, (), table), table)
        assert p.flags & WHOLE
        assert p.flow(table) == flow and p.start_ms() == flow["start_ms"]


@given(st.integers(-(2**50), 2**50), st.integers(0, 2**24 - 1), st.integers(0, 2**24 - 1), st.integers(0, 2**40),
       st.integers(1, 2**15 - 1))
def test_a_report_is_one_integer_and_reads_back(start, workload, exporter, period, later):
    value = report(start, workload, exporter, period)
    assert read_report(value) == (start, workload, exporter)
    assert reporter(value) == exporter
    assert period_before(value, period + later)
    assert not period_before(value, period) and not period_before(value, period - 1)
