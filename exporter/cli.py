"""`flowattr export` (the agent) and `flowattr ipman add|remove|list` (the pinned workload maps).
dataflow/cli.py calls register(subparsers); `python -m exporter.cli` runs them on their own."""

from __future__ import annotations

import argparse
import signal
import sys
import threading
from pathlib import Path

from dataflow.config import Config, ConfigError, load_config
from exporter.ipman import IP_MAP, PORTS_MAP, IpmanError, Registration, WorkloadMaps, parse_ports


def register(subparsers) -> None:
    export = subparsers.add_parser(
        "export", help="run the eBPF exporter: capture TCP connections, ship flows to Kafka"
    )
    export.add_argument(
        "--out", metavar="FILE", help="write JSON-array lines to FILE ('-': stdout) instead of Kafka"
    )
    export.set_defaults(handler=export_command)

    ipman = subparsers.add_parser("ipman", help="fill or inspect the pinned IP -> workload maps")
    actions = ipman.add_subparsers(dest="ipman_action", required=True)
    add = actions.add_parser("add", help="register a workload on a local IP (or IPv4 and ports)")
    add.add_argument("ip")
    add.add_argument("workload")
    _ports_options(add, "only these local ports of a shared IPv4 address")
    remove = actions.add_parser("remove", help="unregister a local IP (or IPv4 and ports)")
    remove.add_argument("ip")
    _ports_options(remove, "the port range it was added with")
    actions.add_parser("list", help="print every registration")
    ipman.set_defaults(handler=ipman_command)


def _ports_options(parser: argparse.ArgumentParser, what: str) -> None:
    ports = parser.add_mutually_exclusive_group()
    ports.add_argument("--ports", metavar="LO-HI", help=what)
    ports.add_argument("--port", metavar="PORT", dest="ports", help="one port: --ports PORT-PORT")


def export_command(args: argparse.Namespace, config: Config) -> int:
    from exporter.agent import run
    from exporter.capture import CaptureError
    from exporter.identity import IdentityError

    stop = threading.Event()
    for signum in (signal.SIGTERM, signal.SIGINT):
        signal.signal(signum, lambda *_: stop.set())
    try:
        run(config, args.out, stop)
    except (CaptureError, IpmanError, IdentityError, ValueError) as e:
        print(f"flowattr export: {e}", file=sys.stderr)
        return 1
    return 0


def ipman_command(args: argparse.Namespace, config: Config) -> int:
    settings = config.exporter
    try:
        if args.ipman_action == "list":
            if not _pinned(settings.pin_dir):
                return 0  # nothing registered yet: an empty list
            with WorkloadMaps(settings.pin_dir, create=False) as maps:
                for registration in maps.registrations():
                    print(f"{registration.where()}\t{registration.workload}")
            return 0
        create = args.ipman_action == "add"
        ports = parse_ports(args.ports) if args.ports else None
        with WorkloadMaps(settings.pin_dir, create=create, max_entries=settings.max_workloads) as maps:
            if create:
                maps.add(args.ip, args.workload, ports)
            elif not maps.remove(args.ip, ports):
                where = Registration(args.ip, ports, "").where()
                print(f"flowattr ipman: {where} is not registered", file=sys.stderr)
                return 1
    except (IpmanError, OSError) as e:
        print(f"flowattr ipman: {e}", file=sys.stderr)
        return 1
    return 0


def _pinned(pin_dir: str) -> bool:
    try:
        return any((Path(pin_dir) / name).exists() for name in (IP_MAP, PORTS_MAP))
    except PermissionError:
        return True  # exists as far as we can tell: let opening it say why it fails


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="flowattr", description=__doc__)
    parser.add_argument("--config", help="TOML configuration file")
    register(parser.add_subparsers(dest="command", required=True))
    args = parser.parse_args(argv)
    try:
        config = load_config(args.config)
    except ConfigError as e:
        print(f"flowattr: {e}", file=sys.stderr)
        return 2
    return args.handler(args, config)


if __name__ == "__main__":
    sys.exit(main())
