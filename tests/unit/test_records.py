import json
import orjson
import pytest

from dataflow.config import LimitsConfig
from dataflow.records import (
    FORWARDED, IP_EVENTS, RAW, BadRecord, Origin, TimeBounds, canonical_ip, decode_message, encode_batches,
)

NOW = 1_780_000_000_000
BOUNDS = TimeBounds(NOW - 7 * 86_400_000, NOW + 3_600_000)
RAW_ORIGIN = Origin("flows.raw", 3, 42, RAW)


def flow(**changes):
    record = {
        "v": 1,
        "kind": "flow",
        "flow_id": "host-a:1",
        "exporter": "host-a",
        "region": "us-east",
        "local_ip": "10.0.0.1",
        "local_port": 40000,
        "remote_ip": "10.0.0.2",
        "remote_port": 443,
        "direction": "outbound",
        "start_ms": NOW - 5000,
        "end_ms": NOW - 4000,
        "bytes_sent": 10,
        "bytes_received": 20,
        "local_workload": "web",
    }
    record.update(changes)
    return {k: v for k, v in record.items() if v is not DROP}


DROP = object()


def reason_for(record, origin=RAW_ORIGIN):
    records, dead = decode_message(orjson.dumps(record), origin, BOUNDS)
    assert records == []
    [letter] = dead
    return letter.reason


def test_a_valid_flow_decodes_unchanged():
    records, dead = decode_message(orjson.dumps(flow()), RAW_ORIGIN, BOUNDS)
    assert dead == [] and records == [flow()]


@pytest.mark.parametrize(
    "changes, reason",
    [
        ({"v": 3}, "bad_version"),
        ({"v": True}, "bad_version"),
        ({"v": 1.0}, "bad_version"),
        ({"local_ports": [20000, 20999], "remote_ip": "fd00::1", "local_ip": "fd00::2"}, "bad_ports"),
        ({"local_ports": [2000, 1000]}, "bad_ports"),
        ({"local_ports": [2000, 3000], "local_workload": None}, "bad_ports"),
        ({"kind": "flowz"}, "unknown_kind"),
        ({"flow_id": DROP}, "missing_field"),
        ({"local_workload": DROP}, "missing_field"),
        ({"local_port": "443"}, "bad_type"),
        ({"local_port": True}, "bad_type"),
        ({"remote_ip": "10.0.0.300"}, "bad_ip"),
        ({"remote_ip": "fd00::2"}, "mixed_family"),
        ({"remote_port": 70000}, "bad_port"),
        ({"direction": "sideways"}, "bad_direction"),
        ({"end_ms": NOW - 6000}, "end_before_start"),
        ({"start_ms": 1, "end_ms": 2}, "time_out_of_range"),
        ({"end_ms": NOW + 86_400_000}, "time_out_of_range"),
        ({"bytes_sent": -1}, "negative_bytes"),
        ({"local_workload": ""}, "bad_type"),
    ],
)
def test_each_broken_flow_is_dead_lettered_with_its_reason(changes, reason):
    assert reason_for(flow(**changes)) == reason


def test_not_json_and_not_objects():
    [letter] = decode_message(b"{nope", RAW_ORIGIN, BOUNDS)[1]
    assert (letter.reason, letter.original, letter.origin.offset) == ("not_json", b"{nope", 42)
    assert decode_message(b"17", RAW_ORIGIN, BOUNDS)[1][0].reason == "not_object"
    assert decode_message(b"", RAW_ORIGIN, BOUNDS)[1][0].reason == "empty_message"


def test_a_batch_dead_letters_only_its_bad_elements():
    batch = [flow(), flow(flow_id="host-a:2", remote_ip="nope"), 5, flow(flow_id="host-a:3")]
    records, dead = decode_message(orjson.dumps(batch), RAW_ORIGIN, BOUNDS)
    assert [r["flow_id"] for r in records] == ["host-a:1", "host-a:3"]
    assert [(d.reason, d.index) for d in dead] == [("bad_ip", 1), ("not_object", 2)]
    assert orjson.loads(dead[0].original)["remote_ip"] == "nope"


def test_records_on_the_wrong_topic():
    assert reason_for(flow(), Origin("ip-events", 0, 0, IP_EVENTS)) == "wrong_topic"
    heartbeat = {"v": 1, "kind": "heartbeat", "exporter": "h", "region": "r", "ip": "10.0.0.1",
                 "workload": "web", "start_ms": NOW - 10, "end_ms": NOW}
    assert reason_for(heartbeat, Origin("flows.forward.us-east", 0, 0, FORWARDED)) == "wrong_topic"


def test_ip_events_and_heartbeats_validate():
    event = {"v": 1, "kind": "ip_event", "ip": "10.0.255.1", "owner": "lb/x", "action": "moved", "time_ms": NOW}
    assert reason_for(event, Origin("ip-events", 0, 0, IP_EVENTS)) == "bad_action"
    event["action"] = "assigned"
    assert decode_message(orjson.dumps(event), Origin("ip-events", 0, 0, IP_EVENTS), BOUNDS)[0] == [event]


def test_dead_letter_record_keeps_the_bytes_and_where_they_came_from():
    [letter] = decode_message(b"\xff\xfe", RAW_ORIGIN, BOUNDS)[1]
    record = letter.to_record()
    assert record["reason"] == "not_json"
    assert record["original"] is None and record["original_b64"] == "//4="
    assert (record["topic"], record["partition"], record["offset"]) == ("flows.raw", 3, 42)


def test_addresses_are_keyed_by_one_canonical_form():
    assert canonical_ip("2001:DB8::0:1") == ("2001:db8::1", 10)
    assert canonical_ip("::ffff:10.0.3.7")[0] == "10.0.3.7"
    with pytest.raises(BadRecord) as e:
        canonical_ip("example.com")
    assert e.value.reason == "bad_ip"


# Limits: no input is too big or too deep for the job; over a limit is a dead letter with its reason.
SMALL = LimitsConfig(message_bytes=4096, records_per_message=3, depth=4, string_chars=64, dead_letter_bytes=100)


def decode(value, limits=SMALL):
    return decode_message(value, RAW_ORIGIN, BOUNDS, limits=limits)


@pytest.mark.parametrize("v", [True, 1.0, "1", None])
def test_the_version_must_be_an_integer(v):
    assert reason_for(flow(v=v)) == "bad_version"


def test_an_empty_batch_is_counted_as_a_dead_letter():
    records, [letter] = decode(b"[]")
    assert records == [] and letter.reason == "empty_batch"


def test_an_oversize_message_keeps_a_bounded_prefix_and_its_coordinates():
    value = orjson.dumps([flow(flow_id=f"h:{i}", comm="x" * 60) for i in range(30)])
    assert len(value) > SMALL.message_bytes
    records, [letter] = decode(value)
    record = letter.to_record()
    assert records == [] and record["reason"] == "message_too_large"
    assert record["original"] == value[:100].decode() and record["truncated"] is True
    assert record["original_bytes"] == len(value)
    assert (record["topic"], record["partition"], record["offset"]) == ("flows.raw", 3, 42)


def test_a_prefix_cut_inside_a_character_stays_text():
    value = b'"' + "\u00e9".encode() * 80 + b'"'
    letter = decode(value, LimitsConfig(dead_letter_bytes=6))[1][0]
    assert letter.reason == "not_object" and letter.to_record()["original"] == '"\u00e9\u00e9'


def test_too_many_records_in_one_message():
    records, [letter] = decode(orjson.dumps([flow(flow_id=f"h:{i}") for i in range(4)]))
    assert records == [] and letter.reason == "too_many_records"


def test_nesting_is_checked_before_anything_encodes_the_element_again():
    # 256 deep is more than orjson can encode: the dead letter must not try.
    deep = b"[" * 256 + b"]" * 256
    records, [letter] = decode(deep, LimitsConfig())
    assert letter.reason == "too_deep" and letter.index == 0 and letter.original == b""
    assert orjson.loads(orjson.dumps(letter.to_record()))["reason"] == "too_deep"
    nested = {"a": 1}
    for _ in range(300):
        nested = {"a": nested}
    records, [letter] = decode(json.dumps(flow(extra=nested)).encode(), LimitsConfig())
    assert records == [] and letter.reason == "too_deep"


def test_a_batch_dead_letters_only_its_oversize_elements():
    batch = [flow(flow_id="h:1"), flow(flow_id="h:2", comm="c" * 65), flow(flow_id="h:3", x={"y": [[[1]]]})]
    records, dead = decode(orjson.dumps(batch))
    assert [r["flow_id"] for r in records] == ["h:1"]
    assert [(d.reason, d.index) for d in dead] == [("string_too_long", 1), ("too_deep", 2)]
    assert all(len(d.original) <= SMALL.dead_letter_bytes for d in dead)


def test_long_field_names_are_strings_too():
    assert decode(orjson.dumps(flow(**{"k" * 65: 1})))[1][0].reason == "string_too_long"


def test_the_limits_accept_what_the_exporter_writes():
    batch = [flow(flow_id=f"h:{i}", comm="nginx", pid=7, ports=[1, 2]) for i in range(2000)]
    records, dead = decode_message(orjson.dumps(batch), RAW_ORIGIN, BOUNDS, limits=LimitsConfig())
    assert dead == [] and len(records) == 2000


def test_output_batches_fit_the_message_limit_and_keep_every_record_in_order():
    answers = [flow(flow_id=f"h:{i}", comm="c" * (i % 7 * 100)) for i in range(300)]
    values, oversize = encode_batches(answers, 5000, 50)
    assert oversize == [] and all(len(v) <= 5000 for v in values)
    assert [r for v in values for r in orjson.loads(v)] == answers
    assert max(len(orjson.loads(v)) for v in values) <= 50


def test_an_answer_too_large_for_any_message_comes_back_apart():
    answers = [flow(flow_id="h:1"), flow(flow_id="h:2", comm="c" * 6000), flow(flow_id="h:3")]
    values, oversize = encode_batches(answers, 5000, 500)
    assert [r["flow_id"] for v in values for r in orjson.loads(v)] == ["h:1", "h:3"]
    assert [(r["flow_id"], orjson.loads(part)) for r, part in oversize] == [("h:2", answers[1])]


def test_a_shared_address_claim_keeps_its_port_range():
    records, dead = decode_message(orjson.dumps(flow(v=2, local_ports=[20000, 20999])), RAW_ORIGIN, BOUNDS)
    assert dead == [] and records[0]["local_ports"] == (20000, 20999)


def test_an_entitlement_names_cidrs():
    from dataflow.records import check_entitlement

    record = check_entitlement({"v": 2, "kind": "entitlement", "exporter": "node-a", "cidrs": ["10.0.1.7/24", "fd00::1/64"]})
    assert record["cidrs"] == ["10.0.1.0/24", "fd00::/64"]
    with pytest.raises(BadRecord, match="bad_cidr"):
        check_entitlement({"v": 2, "kind": "entitlement", "exporter": "node-a", "cidrs": ["10.0.1.0/33"]})


@pytest.mark.parametrize(
    "changes, reason",
    [
        ({"direction": DROP}, "bad_direction"),
        ({"open": None}, "bad_type"),
        ({"pid": "1234"}, "bad_type"),
        ({"exporter": None}, "missing_field"),
        ({"local_ports": None}, "bad_ports"),
        ({"local_ports": [0, 10]}, "bad_ports"),
        ({"local_ports": [1, 2, 3]}, "bad_ports"),
        ({"flow_id": "f" * 201}, "bad_type"),
        ({"remote_port": -1}, "bad_port"),
        ({"bytes_received": "many"}, "bad_type"),
    ],
)
def test_each_broken_flow_field_names_its_reason(changes, reason):
    assert reason_for(flow(**changes)) == reason


HEARTBEAT = {"v": 2, "kind": "heartbeat", "exporter": "h", "region": "r", "ip": "10.0.0.1", "workload": "web",
             "start_ms": NOW - 10, "end_ms": NOW}


@pytest.mark.parametrize(
    "changes, reason",
    [
        ({"ports": None}, "bad_ports"),
        ({"ports": [30, 20]}, "bad_ports"),
        ({"ports": [20, 30], "ip": "fd00::1"}, "bad_ports"),
        ({"workload": ""}, "bad_type"),
        ({"ip": None}, "missing_field"),
        ({"end_ms": NOW - 20}, "end_before_start"),
    ],
)
def test_each_broken_heartbeat_is_dead_lettered_with_its_reason(changes, reason):
    assert reason_for({**HEARTBEAT, **changes}) == reason


def test_fields_beyond_the_contract_are_kept_and_change_nothing_else():
    plain = [flow(flow_id="h:1", open=False, pid=7, comm="curl"), {**HEARTBEAT, "ports": [20, 30]}]
    extended = [{**plain[0], "trace": {"id": [1, 2]}}, {**plain[1], "zone": "b"}]
    records, dead = decode_message(orjson.dumps(plain), RAW_ORIGIN, BOUNDS)
    more, more_dead = decode_message(orjson.dumps(extended), RAW_ORIGIN, BOUNDS)
    assert dead == more_dead == [] and records[0] == plain[0]
    assert records[1] == {**plain[1], "ports": (20, 30)}
    assert more == [{**records[0], "trace": {"id": [1, 2]}}, {**records[1], "zone": "b"}]


def test_addresses_come_out_canonical_whichever_way_the_record_was_decoded():
    value = flow(local_ip="2001:DB8::0:1", remote_ip="::ffff:10.0.0.2", v=2)
    value["remote_ip"], value["local_ip"] = "2001:db8::0:2", "2001:DB8::0:1"
    for record in (value, {**value, "extra": 1}):
        [decoded], dead = decode_message(orjson.dumps(record), RAW_ORIGIN, BOUNDS)
        assert dead == [] and (decoded["local_ip"], decoded["remote_ip"]) == ("2001:db8::1", "2001:db8::2")


def test_an_entitlement_must_be_an_entitlement_record():
    from dataflow.records import check_entitlement

    for bad, reason in [([1], "not_object"), ({"kind": "entitlement", "exporter": "a", "cidrs": []}, "bad_version"),
                        ({"v": 2, "kind": "entitlement", "exporter": "a"}, "bad_type"),
                        ({"v": 2, "kind": "flow", "exporter": "a", "cidrs": []}, "wrong_topic")]:
        with pytest.raises(BadRecord) as e:
            check_entitlement(bad)
        assert e.value.reason == reason


def test_the_committed_json_schema_is_the_one_the_contract_makes():
    from pathlib import Path

    from dataflow.records import schema_json

    committed = Path(__file__).resolve().parents[2] / "docs" / "records.schema.json"
    assert committed.read_bytes() == schema_json(), "run `make schema` and commit docs/records.schema.json"


@pytest.mark.parametrize(
    "record, valid",
    [
        (flow(), True),
        (flow(v=2, local_ports=[20000, 20999], pid=7, comm="curl", open=True, extra={"a": 1}), True),
        (HEARTBEAT, True),
        ({"v": 1, "kind": "ip_event", "ip": "10.0.0.9", "owner": "lb/x", "action": "assigned", "time_ms": NOW}, True),
        ({"v": 2, "kind": "entitlement", "exporter": "a", "cidrs": ["10.0.0.0/24"]}, True),
        (flow(v=True), False),  # (JSON Schema counts 1.0 an integer: the decoder alone refuses it)
        (flow(remote_port=70000), False),
        (flow(local_workload=DROP), False),
        (flow(direction="sideways"), False),
        (flow(bytes_sent=-1), False),
        (flow(kind="flowz"), False),
        ({**HEARTBEAT, "ports": [0, 5]}, False),
    ],
)
def test_the_json_schema_agrees_with_the_decoder_on_types_and_ranges(record, valid):
    import jsonschema

    from dataflow.records import schema_json

    validator = jsonschema.Draft202012Validator(orjson.loads(schema_json()))
    origin = {"ip_event": Origin("ip-events", 0, 0, IP_EVENTS), "entitlement": Origin("exporters", 0, 0, "exporters")}
    records, dead = decode_message(orjson.dumps(record), origin.get(record["kind"], RAW_ORIGIN), BOUNDS)
    assert validator.is_valid(record) is valid and bool(records) is valid


@pytest.mark.parametrize("changes", [{"bytes_sent": 10**30}, {"pid": -(10**30)}, {"pid": 2**64}, {"end_ms": 10**30}])
def test_an_integer_beyond_64_bits_is_not_an_integer(changes):
    # orjson reads it as a float, and writes integers within 64 bits only: the job's outputs must encode.
    records, dead = decode_message(json.dumps([flow(), flow(**changes)]).encode(), RAW_ORIGIN, BOUNDS)
    assert len(records) == 1 and [(d.reason, d.index) for d in dead] == [("bad_type", 1)]
    records, dead = decode_message(orjson.dumps(flow(bytes_sent=2**64 - 1, pid=-(2**63))), RAW_ORIGIN, BOUNDS)
    assert dead == [] and (records[0]["bytes_sent"], records[0]["pid"]) == (2**64 - 1, -(2**63))
