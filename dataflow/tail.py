"""`flowattr tail`: a topic's records as they come, filtered, as a table on a terminal (in the manner of
`hubble observe`) or as JSON lines when piped; from the beginning, the end, or a time."""

from __future__ import annotations

import argparse
import sys
from fnmatch import fnmatchcase
from typing import Any, Callable, Iterable

import orjson

from dataflow.config import Config
from dataflow.records import iter_records
from dataflow.times import HELP as TIME_HELP
from dataflow.times import format_ms, parse_time
from dataflow.topic_reader import BEGINNING, END, TopicReader, consumer

EXAMPLES = """examples:
  flowattr tail                                        # flows.attributed from the beginning, up to now
  flowattr tail --since 15m --workload 'shop/*'        # what shop's hosts reported in the last 15 minutes
  flowattr tail --from-end --outcome unattributed      # new unattributed answers as they come (Ctrl-C stops)
  flowattr tail flows.dlq --reason not_json -o json    # dead letters of one reason, as JSON lines
  flowattr tail --ip 10.0.3.7 --since 2026-11-28T12:00:00Z | jq .remote_workload
"""
TABLE_HEADER = f"{'TIME':<24} {'SOURCE':<38}    {'DESTINATION':<38} {'OUTCOME':<24} BYTES"


def register(sub) -> None:
    tail = sub.add_parser(
        "tail", help="print a topic's records, filtered: a table on a terminal, JSON lines when piped",
        epilog=EXAMPLES + f"\nTIME is {TIME_HELP}. Patterns may use * and ?; a filter given twice matches either.",
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    tail.add_argument("topic", nargs="?", help="the topic to read (default: kafka.attributed_topic)")
    tail.add_argument("--brokers", help="Kafka bootstrap servers")
    start = tail.add_mutually_exclusive_group()
    start.add_argument("--from-end", action="store_true", help="only records that arrive from now on (follows)")
    start.add_argument("--since", metavar="TIME", help="records that arrived at TIME or later")
    tail.add_argument("-f", "--follow", action="store_true", help="keep printing new records")
    tail.add_argument("--workload", action="append", metavar="W", help="local end's workload (the reporting host's)")
    tail.add_argument("--remote-workload", action="append", metavar="W", help="remote end's workload")
    tail.add_argument("--ip", action="append", metavar="IP", help="either end's address")
    tail.add_argument("--outcome", action="append", metavar="O", help="attributed, unattributed or external")
    tail.add_argument("--reason", action="append", metavar="R", help="why unattributed, or a dead letter's reason")
    tail.add_argument("-o", "--output", choices=("table", "json"),
                      help="table (default on a terminal) or json (default when piped)")
    tail.set_defaults(handler=tail_command)


def tail_command(args, config: Config) -> int:
    at: str | int = END if args.from_end else BEGINNING
    if args.since:
        at = parse_time(args.since)
    topic = args.topic or config.kafka.attributed_topic
    wanted = matcher(args)
    table = (args.output or ("table" if sys.stdout.isatty() else "json")) == "table"
    client = consumer(config)
    read = shown = 0
    try:
        reader = TopicReader(client, topic)
        reader.start(at)
        out = sys.stdout
        if table:
            print(TABLE_HEADER, file=out)
        for message in reader.messages(follow=args.follow or args.from_end):
            if message is None or message.value() is None:
                continue
            for record in iter_records(message.value()):
                read += 1
                if wanted(record):
                    shown += 1
                    line = table_line(record, message.timestamp()[1]) if table else orjson.dumps(record).decode()
                    print(line, file=out)
            out.flush()
    except (KeyboardInterrupt, BrokenPipeError):
        pass
    finally:
        client.close()
    if table:
        print(f"flowattr tail: {topic}: {read} records read, {shown} shown", file=sys.stderr)
    return 0


def matcher(args) -> Callable[[dict[str, Any]], bool]:
    """A record matches when every filter given matches one of its patterns."""
    checks: list[tuple[tuple[str, ...], list[str]]] = []
    for patterns, fields in (
        (args.workload, ("local_workload", "workload", "owner")),
        (args.remote_workload, ("remote_workload",)),
        (args.ip, ("local_ip", "remote_ip", "ip")),
        (args.outcome, ("outcome",)),
        (args.reason, ("reason",)),
    ):
        if patterns:
            checks.append((fields, patterns))

    def wanted(record: dict[str, Any]) -> bool:
        return all(_any_field_matches(record, fields, patterns) for fields, patterns in checks)

    return wanted


def _any_field_matches(record: dict[str, Any], fields: Iterable[str], patterns: list[str]) -> bool:
    for name in fields:
        value = record.get(name) if isinstance(record, dict) else None
        if isinstance(value, str) and any(fnmatchcase(value, p) for p in patterns):
            return True
    return False


def table_line(record: Any, arrived_ms: int) -> str:
    """One record as a row: the connection client -> server, whatever side reported it."""
    if not isinstance(record, dict):
        return f"{format_ms(arrived_ms):<24} {orjson.dumps(record).decode()}"
    kind = record.get("kind")
    if kind in ("flow", "attributed"):
        local = _end(record.get("local_workload"), record["local_ip"], record["local_port"])
        remote = _end(record.get("remote_workload"), record["remote_ip"], record["remote_port"])
        source, destination = (local, remote) if record.get("direction") == "outbound" else (remote, local)
        outcome = record.get("outcome") or "not answered yet"
        if record.get("reason"):
            outcome += f" ({record['reason']})"
        size = f"{format_bytes(record['bytes_sent'])} / {format_bytes(record['bytes_received'])}"
        return f"{format_ms(record['start_ms']):<24} {source:<38} -> {destination:<38} {outcome:<24} {size}"
    if kind == "heartbeat":
        span = f"{format_ms(record['start_ms'])} .. {format_ms(record['end_ms'])}"
        return f"{format_ms(record['start_ms']):<24} heartbeat {record['workload']} owns {record['ip']} {span}"
    if kind == "ip_event":
        return f"{format_ms(record['time_ms']):<24} ip_event {record['ip']} {record['action']} {record['owner']}"
    if kind == "dead_letter":
        where = f"{record.get('topic')}[{record.get('partition')}]@{record.get('offset')}"
        return f"{format_ms(arrived_ms):<24} dead_letter {record.get('reason')} from {where}: {record.get('detail')}"
    return f"{format_ms(arrived_ms):<24} {orjson.dumps(record).decode()}"


def _end(workload: str | None, ip: str, port: int) -> str:
    address = f"[{ip}]:{port}" if ":" in ip else f"{ip}:{port}"
    return f"{workload or '?'} {address}"


def format_bytes(n: float) -> str:
    """A byte count as people read it: 812 B, 45.3 kB, 1.2 MB."""
    if n < 1000:
        return f"{n:.0f} B"
    for unit in ("kB", "MB", "GB"):
        n /= 1000
        if n < 1000 or unit == "GB":
            break
    return f"{n:.1f} {unit}"
