"""A waiting lookup and a connection report in their packed forms give back exactly what went in, and the
report table holds reports as a dict of lists of them would."""

import pickle

from hypothesis import given, settings
from hypothesis import strategies as st

from dataflow.packed import (
    SAMPLED,
    UNNAMED,
    WHOLE,
    Names,
    PackedLookup,
    ReportTable,
    connection_key,
    lookups,
    pack_lookup,
    period_before,
    read_report,
    report,
    reporter,
    timed_lookup,
    with_flags,
)


def timed(flow, names, start, deadline, settle, unnamed=False, carried=()):
    """The lookup as a shard holds it once its times are set."""
    return timed_lookup(PackedLookup(pack_lookup(flow, names), 0, names), start, deadline, settle, unnamed, carried)


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
# flow_ids in the exporter's own form "h1:{boot id}:{cookie}", and near misses that must be kept as text.
boot_ids = st.uuids().map(str) | st.uuids().map(lambda u: str(u).upper()) | st.uuids().map(lambda u: u.hex) \
    | st.uuids().map(lambda u: str(u)[:-1] + " ") | st.uuids().map(lambda u: " " + str(u)[1:])
numbers = st.integers(0, 2**32 + 5).map(str) | st.integers(2**64 - 3, 2**64 + 3).map(str) \
    | st.sampled_from(["00", "07", "-1", "+5", "1_0", "٣", "", "5 "])
flow_ids = st.text(min_size=1, max_size=60) | st.builds(lambda b, n: f"h1:{b}:{n}", boot_ids, numbers) \
    | st.builds(lambda n: f"h1:{n}", numbers) | st.builds(lambda p, n: f"{p}:{n}", st.sampled_from(["h", "h11", "h1:"]), numbers)


@settings(max_examples=300, deadline=None)
@given(
    family=st.sampled_from([ipv4, ipv6]).flatmap(lambda f: st.tuples(f, f)),
    ports=st.tuples(st.integers(0, 65535), st.integers(0, 65535)),
    flow_id=flow_ids,
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
    [read] = lookups(pack_lookup(flow, table), table)  # as it waits for the clock
    assert read.flow(table) == flow and read.start_ms() == read.start == times[0]
    data = timed(flow, table, start, 9, 8, unnamed=True)
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
        buffer += timed(f, table, f["start_ms"] - i, i + 1, i + 2, carried=carried)
    read = list(lookups(buffer, table))
    assert [p.flow(table) for p in read] == flows
    assert [[read_report(v) for v in p.carried] for p in read] == [
        [(f["start_ms"] + j, j, i) for j in range(i)] for i, f in enumerate(flows)]
    marked = PackedLookup(with_flags(read[2].raw, read[2].flags | SAMPLED), 0, table)
    assert marked.flags & SAMPLED and marked.flow(table) == flows[2]


def test_the_exporters_clock_offset_takes_room_only_when_there_is_one():
    table = Names()
    flow = contract_flow()
    on_time = timed(flow, table, flow["start_ms"], 2, 3)
    ahead, behind = (timed(flow, table, flow["start_ms"] - offset, 2, 3) for offset in (3000, -86_400_000))
    assert len(ahead) == len(behind) == len(on_time) + 4
    for data, offset in ((on_time, 0), (ahead, 3000), (behind, -86_400_000)):
        [p] = lookups(data, table)
        assert p.flow(table) == flow and p.start_ms() == flow["start_ms"] and p.start == flow["start_ms"] - offset
        assert p.offset() == offset


def test_a_flow_id_in_the_exporters_form_is_packed_as_its_boot_id_and_number():
    """The exporter's own flow_ids take 9 bytes or fewer instead of their text (the boot id as a name,
    kept once per shard); the same id with any part out of its exact form keeps its text, and both read
    back as they went in."""
    table = Names()
    boot = "0f3c2a9e-1b7d-4c55-9a0e-6d2f8b1c4e70"
    sizes = {}
    for flow_id in (f"h1:{boot}:123456", f"h1:{boot}:{2**64 - 1}", "h1:987", f"h1:{boot.upper()}:123456",
                    f"h1:{boot}:0123456", f"h2:{boot}:123456"):
        flow = contract_flow(flow_id=flow_id)
        data = timed(flow, table, flow["start_ms"], 2, 3)
        [p] = lookups(data, table)
        assert p.flow(table) == flow and not p.flags & WHOLE
        sizes[flow_id] = len(data)
    as_text = sizes[f"h2:{boot}:123456"]
    rest = as_text - 1 - len(f"h2:{boot}:123456")  # the lookup without its flow_id
    assert sizes[f"h1:{boot}:123456"] == rest + 1 + 4 + 4
    assert sizes[f"h1:{boot}:{2**64 - 1}"] == rest + 1 + 4 + 8
    assert table.names.count(boot) == 1, "one name for the boot id, however many flows carry it"
    assert sizes["h1:987"] == rest + 1 + 4
    assert sizes[f"h1:{boot.upper()}:123456"] == sizes[f"h1:{boot}:0123456"] - 1 == as_text


def test_a_record_outside_the_contract_shape_is_kept_whole():
    table = Names()
    odd = {"flow_id": "x", "exporter": "h1", "local_ip": "192.0.2.1", "local_port": 1, "remote_ip": "fd00::3",
           "remote_port": 443, "start_ms": 5, "end_ms": 6}
    long_id = contract_flow(flow_id="x" * 300)
    for flow in (odd, long_id):
        [p] = lookups(timed(flow, table, flow["start_ms"] - 7, 2, 3), table)
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


class ListsOfReports:
    """What the report table stands in for: a dict of lists of reports, each key in the order it came."""

    def __init__(self):
        self.held = {}

    def add(self, key, value):
        self.held.setdefault(key, []).append(value)

    def drop(self, key):
        return tuple(self.held.pop(key, ()))

    def sift(self, drop, limit=-1):
        gone = []
        for key in list(self.held):
            if 0 <= limit <= len(gone):
                break
            values = self.held[key]
            kept = [v for v in values if not drop(v)]
            if len(kept) < len(values):
                gone += [v for v in values if drop(v)]
                if kept:
                    self.held[key] = kept
                else:
                    del self.held[key]
        return gone


def held(table):
    """The table's reports as a dict of lists, its keys in the order the table keeps them."""
    lists = {}
    for key, value in table.items():
        lists.setdefault(key, []).append(value)
    return lists


def assert_alike(table, model):
    assert held(table) == model.held and list(held(table)) == list(model.held)
    assert len(table) == sum(len(v) for v in model.held.values())
    for key, values in model.held.items():
        assert key in table and table.values(key) == tuple(values)


V4 = connection_key("10.0.0.2", 443, "10.0.0.1", 40000)
V6 = connection_key("fd00::2", 443, "fd00::1", 40000)
MIXED = connection_key("fd00::2", 443, "10.0.0.1", 40000)


def test_the_table_holds_many_keys_of_every_family_and_several_reports_under_one():
    table, model = ReportTable(8), ListsOfReports()
    keys = [connection_key(f"10.0.{i // 250}.{i % 250}", 1000 + i, "10.1.0.1", 443) for i in range(3000)]
    keys += [connection_key(f"fd00::{i:x}", 443, "fd00::1", 2000 + i) for i in range(1, 3000)]
    keys += [V4, V6, MIXED]
    assert {len(k) for k in keys} == {12, 36, 24}
    for i, key in enumerate(keys):
        for v in (report(1_780_000_000_000 + i, i % 7, i % 11, i), report(-i, 2**24 - 1, 2**24 - 1, 2**16 - 1)):
            table.add(key, v)
            model.add(key, v)
    assert_alike(table, model)
    assert table.values(connection_key("10.9.9.9", 1, "10.1.0.1", 443)) == ()
    assert connection_key("10.9.9.9", 1, "10.1.0.1", 443) not in table
    for key in keys[::3]:
        assert table.drop(key) == model.drop(key) and len(table.drop(key)) == 0
    assert_alike(table, model)
    # A key whose reports all went, heard of again, comes after every key held.
    table.add(keys[0], 5)
    model.add(keys[0], 5)
    assert_alike(table, model)
    assert list(held(table))[-1] == keys[0]


def test_a_sweep_by_period_keeps_each_key_in_its_place_and_an_eviction_goes_oldest_key_first():
    table, model = ReportTable(), ListsOfReports()
    # Three reports a key, from two exporters, over three periods.
    for period in range(3):
        for i in range(200):
            key = connection_key(f"10.0.0.{i}", 443, "10.0.1.1", 40000 + period)
            for m in (table, model):
                m.add(key, report(i, 1, i % 2, period))
                m.add(V4, report(i, 1, i % 2, period))
    old = lambda v: period_before(v, 1)  # noqa: E731
    assert sorted(table.sift(old)) == sorted(model.sift(old))
    assert_alike(table, model)
    assert list(held(table))[0] == V4  # the first key keeps its place though its first reports went
    of_one = lambda v: reporter(v) == 1  # noqa: E731
    assert table.sift(of_one, 50) == model.sift(of_one, 50)
    assert_alike(table, model)


def test_a_table_goes_through_a_snapshot_and_keeps_working():
    table, model = ReportTable(8), ListsOfReports()
    for i in range(500):
        key = V6 if i % 5 == 0 else connection_key("10.0.0.1", i % 97, "10.0.0.2", 443)
        table.add(key, report(i, i, i, i))
        model.add(key, report(i, i, i, i))
        if i % 3 == 0:
            assert table.drop(connection_key("10.0.0.1", i % 97, "10.0.0.2", 443)) == model.drop(
                connection_key("10.0.0.1", i % 97, "10.0.0.2", 443))
    for t in (table, ReportTable()):
        copy = pickle.loads(pickle.dumps(t, protocol=pickle.HIGHEST_PROTOCOL))
        assert list(copy.items()) == list(t.items()) and len(copy) == len(t)
    copy = pickle.loads(pickle.dumps(table, protocol=pickle.HIGHEST_PROTOCOL))
    copy.add(V4, 1)
    model.add(V4, 1)
    assert_alike(copy, model)
    assert copy.drop(V6) == model.drop(V6)
    assert_alike(copy, model)


KEYS = [connection_key(f"10.0.0.{i}", 443, "10.0.0.9", 40000) for i in range(6)] + [V6, MIXED]
operations = st.lists(st.one_of(
    st.tuples(st.just("add"), st.sampled_from(KEYS), st.integers(-(2**80), 2**100)),
    st.tuples(st.just("drop"), st.sampled_from(KEYS), st.just(0)),
    st.tuples(st.just("sift"), st.integers(2, 5), st.integers(-1, 6)),
    st.tuples(st.just("snapshot"), st.just(None), st.just(0)),
), max_size=300)


@settings(max_examples=300, deadline=None)
@given(operations)
def test_the_table_answers_as_a_dict_of_lists_of_reports_under_any_operations(ops):
    table, model = ReportTable(8), ListsOfReports()  # the fewest slots: rebuilt after a few changes
    for op, a, b in ops:
        if op == "add":
            table.add(a, b)
            model.add(a, b)
        elif op == "drop":
            assert table.drop(a) == model.drop(a)
        elif op == "sift":
            drop = lambda v: v % a == 0  # noqa: E731
            gone = table.sift(drop, b)
            expected = model.sift(drop, b)
            assert gone == expected if b >= 0 else sorted(gone) == sorted(expected)
        else:
            table = pickle.loads(pickle.dumps(table))
        assert_alike(table, model)
