"""Coverage-guided fuzzing of the decoder with atheris: bytes in, the same promises as
test_fuzz_records.py out (never raises, every element accounted for, dead letters bounded).

    python tests/unit/fuzz_decoder.py CORPUS_DIR -runs=20000        (what `make test` runs, bounded)
    python tests/unit/fuzz_decoder.py CORPUS_DIR -max_total_time=600 (what `make fuzz` runs)

A crash leaves its input in out/fuzz/ (libFuzzer's crash-* file) to replay: the harness with that file."""

import sys
from pathlib import Path

import atheris

with atheris.instrument_imports():
    import orjson

    from dataflow.config import LimitsConfig
    from dataflow.records import RAW, Origin, TimeBounds, attributed, decode_message

NOW = 1_780_000_000_000
BOUNDS = TimeBounds(NOW - 7 * 86_400_000, NOW + 3_600_000)
LIMITS = LimitsConfig(message_bytes=64 * 1024, records_per_message=50, depth=6, string_chars=300, dead_letter_bytes=200)
ORIGIN = Origin("flows.raw", 0, 1, RAW)


def seeds() -> list[bytes]:
    flow = {"v": 1, "kind": "flow", "flow_id": "h:1", "exporter": "h", "region": "r", "local_ip": "10.0.0.1",
            "local_port": 40000, "remote_ip": "10.0.0.2", "remote_port": 443, "direction": "outbound",
            "start_ms": NOW - 5000, "end_ms": NOW - 4000, "bytes_sent": 1, "bytes_received": 2,
            "local_workload": "web", "comm": "curl"}
    heartbeat = {"v": 1, "kind": "heartbeat", "exporter": "h", "region": "r", "ip": "fd00::1", "workload": "web",
                 "start_ms": NOW - 60000, "end_ms": NOW}
    return [orjson.dumps(flow), orjson.dumps([flow, heartbeat, flow]), orjson.dumps([heartbeat]), b"[]", b"[[{}]]"]


def elements_in(value: bytes) -> int:
    try:
        parsed = orjson.loads(value) if value and len(value) <= LIMITS.message_bytes else None
    except orjson.JSONDecodeError:
        return 1
    return len(parsed) if isinstance(parsed, list) and 0 < len(parsed) <= LIMITS.records_per_message else 1


def one_input(value: bytes) -> None:
    records, dead = decode_message(value, ORIGIN, BOUNDS, limits=LIMITS)
    if len(records) + len(dead) != elements_in(value):
        raise AssertionError(f"{len(records)} valid + {len(dead)} dead letters for {elements_in(value)} elements")
    for letter in dead:
        if len(orjson.dumps(letter.to_record())) > 4 * LIMITS.dead_letter_bytes + 3000:
            raise AssertionError(f"a dead letter of {len(orjson.dumps(letter.to_record()))} bytes")
    for record in records:
        orjson.dumps([attributed(record, "attributed", "w") if record["kind"] == "flow" else record])


def main() -> None:
    corpus = next((Path(a) for a in sys.argv[1:] if not a.startswith("-")), None)
    if corpus is not None and not any(corpus.glob("*")):
        corpus.mkdir(parents=True, exist_ok=True)
        for i, seed in enumerate(seeds()):
            (corpus / f"seed-{i}").write_bytes(seed)
    Path("out/fuzz").mkdir(parents=True, exist_ok=True)
    atheris.Setup([*sys.argv, "-artifact_prefix=out/fuzz/", "-max_len=4096"], one_input)
    atheris.Fuzz()


if __name__ == "__main__":
    main()
