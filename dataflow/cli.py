"""The `flowattr` command: run the job (embedded, on files, or on Kafka) and simulate a fleet here; every
other command lives in its own module and registers itself (tail, deps, submit, scale, replay, and the
exporter's)."""

from __future__ import annotations

import argparse
import shutil
import socket
import sys
import threading
import time
from dataclasses import replace
from datetime import timedelta
from pathlib import Path

from dataflow import deps, entitle, replay, scale, submit, tail
from dataflow import simulate as sim
from dataflow.config import Config, ConfigError, check_job, load_config
from dataflow.local_cluster import DEFAULT_RUN_DIR, Supervisor
from dataflow.routing import Tally
from dataflow.shutdown import Shutdown
from dataflow.summary import file_run_summary, render
from exporter.cli import register as register_exporter

# An epoch without recovery. Each epoch's end costs a waiting cluster a spin (see _epochs); the epoch
# also bounds how far a reader may run ahead of the slowest worker, which a backfill's read-ahead
# evidence in the shards' inboxes grows with. A minute keeps most of the saving and that bound.
QUIET_EPOCH_S = 60.0


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="flowattr", description=__doc__)
    parser.add_argument("--config", help="TOML configuration file (also FLOWATTR_CONFIG)")
    sub = parser.add_subparsers(dest="command", required=True)

    run = sub.add_parser("run", help="run the attribution job")
    run.add_argument("--embedded", action="store_true", help="simulate a small fleet and attribute it, no Kafka needed")
    run.add_argument("--input-dir", help="file mode: read flows.ndjson, forwarded.ndjson, ip_events.ndjson here")
    run.add_argument("--output-dir", help="file mode: write outputs here")
    run.add_argument("--brokers", help="Kafka bootstrap servers (Kafka mode)")
    run.add_argument("--region", help="this job's region")
    run.add_argument("--regions", help='every region\'s CIDRs, "NAME=CIDR,CIDR;OTHER=CIDR" (replaces [regions])')
    run.add_argument("-w", "--workers", type=int, default=1, help="worker threads in this process")
    run.add_argument("--summary-every", type=float, default=30.0, help="Kafka mode: seconds between summary lines")
    run.add_argument("--processes", type=int, help="Kafka mode: a local deployment of this many processes, "
                     "rescalable with `flowattr scale` (recovery on)")
    run.add_argument("--run-dir", default=DEFAULT_RUN_DIR, help="the local deployment's folder: status, logs, recovery")
    run.set_defaults(handler=_run)

    simulate = sub.add_parser("simulate", help="write a simulated fleet's input files and its truth, "
                              "or publish it to Kafka as it happens (--brokers)")
    simulate.add_argument("output", nargs="?", help="folder to write")
    simulate.add_argument("--brokers", help="publish to Kafka instead, each batch when it arrives, starting now")
    simulate.add_argument("--interval-s", type=int, default=sim.Scenario.interval_s,
                          help="seconds between a host's reports (attribution.delay_s should exceed it)")
    simulate.add_argument("--seed", type=int, default=sim.Scenario.seed)
    simulate.add_argument("--minutes", type=int, default=sim.Scenario.duration_s // 60)
    simulate.add_argument("--start-ms", type=int, help="simulated start (default: that many minutes ago)")
    simulate.set_defaults(handler=_simulate)

    for command in (tail, deps, submit, scale, replay, entitle):
        command.register(sub)
    register_exporter(sub)
    for command in sub.choices.values():
        # `flowattr run --config F` reads as naturally as `flowattr --config F run`.
        command.add_argument("--config", default=argparse.SUPPRESS, help=argparse.SUPPRESS)

    args = parser.parse_args(argv)
    overrides = {
        "kafka.brokers": getattr(args, "brokers", None),
        "region": getattr(args, "region", None),
        "regions": getattr(args, "regions", None),
        "files.input_dir": getattr(args, "input_dir", None),
        "files.output_dir": getattr(args, "output_dir", None),
    }
    try:
        config = load_config(args.config, overrides=overrides)
        return args.handler(args, config) or 0
    except (ConfigError, ConnectionError) as e:
        print(f"flowattr: {e}", file=sys.stderr)
        return 2


def _run(args, config: Config) -> int:
    from bytewax.run import cli_main

    from dataflow.flow import build

    if args.processes is not None:
        if args.processes < 1:
            raise ConfigError("--processes must be at least 1")
        return Supervisor(config, args.config, Path(args.run_dir), args.processes, args.workers,
                          args.summary_every).run()
    truth = None
    if args.embedded:
        config, truth = _embedded(config)
    elif not config.files.input_dir and not config.kafka.brokers:
        raise ConfigError("give --embedded, --input-dir DIR, or --brokers HOST:PORT (or kafka.brokers in the config)")
    elif config.files.input_dir and not Path(config.files.input_dir).is_dir():
        raise ConfigError(f"input folder {config.files.input_dir} does not exist")
    check_job(config)

    tally = Tally()
    addresses, process_id = config.cluster_addresses(socket.gethostname())
    cluster = {} if addresses is None else {"addresses": addresses, "process_id": process_id}
    if config.files.input_dir and addresses is not None:
        # One process of a cluster sees only its own part of the tally; the outputs are shared.
        cli_main(build(config, tally), workers_per_process=args.workers, **cluster, **_epochs(config))
        print(f"flowattr run: process {process_id} of {len(addresses)} done; " + _tally_line(tally))
        return 0
    if config.files.input_dir:
        out = Path(config.files.output_dir)
        shutil.rmtree(out, ignore_errors=True)
        started = time.monotonic()
        cli_main(build(config, tally), workers_per_process=args.workers, **_epochs(config))
        elapsed = time.monotonic() - started
        summary = file_run_summary(out, tally.snapshot(), truth)
        print(f"flowattr run: {config.files.input_dir} -> {out} in {elapsed:.1f} s, region {config.region}")
        print(render(summary))
        if summary["unaccounted"]:
            print(f"flowattr: {summary['unaccounted']} input records are unaccounted for", file=sys.stderr)
            return 1
        if summary.get("misattributed"):
            print(f"flowattr: {summary['misattributed']} flows misattributed", file=sys.stderr)
            return 1
        return 0

    shutdown = Shutdown()
    flow = build(config, tally, shutdown)
    stop = threading.Event()
    reporter = threading.Thread(target=_report_every, args=(tally, args.summary_every, stop), daemon=True)
    reporter.start()
    where = "" if addresses is None else f", process {process_id} of {len(addresses)}"
    print(
        f"flowattr run: Kafka {config.kafka.brokers}, region {config.region}, {args.workers} worker(s){where}",
        flush=True,
    )
    shutdown.install()
    try:
        cli_main(flow, workers_per_process=args.workers, **cluster, **_epochs(config), **_recovery(config))
    except KeyboardInterrupt:
        pass
    except Exception as e:
        # A second signal interrupts a step; the runtime wraps that in its own error.
        if not _interrupted(e):
            raise
    finally:
        stop.set()
        print("flowattr run: stopped; " + _tally_line(tally), flush=True)
    return 0


def _epochs(config: Config) -> dict:
    """How often the runtime closes an epoch: at each snapshot with recovery, else rarely.

    Bytewax holds a reader that has begun a new epoch until every worker of the cluster has finished
    the last one, and while holding it reactivates it without pause: the worker spins at full speed.
    Each worker's epochs keep the phase they took while the backlog was read (seconds apart after a
    large one), so every epoch a waiting cluster's workers spun until the last one's epoch ended.
    Without recovery an epoch marks only a snapshot not taken, so it is longer."""
    seconds = config.recovery.snapshot_s if config.recovery.dir and not config.files.input_dir else QUIET_EPOCH_S
    return {"epoch_interval": timedelta(seconds=seconds)}


def _recovery(config: Config) -> dict:
    """Bytewax's recovery settings, creating the recovery partitions on first use."""
    if not config.recovery.dir:
        return {}
    from bytewax.recovery import RecoveryConfig, init_db_dir

    folder = Path(config.recovery.dir)
    if not any(folder.glob("*.sqlite3")):
        folder.mkdir(parents=True, exist_ok=True)
        init_db_dir(folder, 1)
    return {"recovery_config": RecoveryConfig(folder, timedelta(seconds=config.recovery.backup_s))}


def _interrupted(error: BaseException | None) -> bool:
    while error is not None:
        if isinstance(error, KeyboardInterrupt):
            return True
        error = error.__cause__ or error.__context__
    return False


def _embedded(config: Config):
    """A simulated fleet of a few dozen workloads, written to out/embedded, with the job set up for it."""
    minutes = sim.Scenario.duration_s // 60
    start_ms = (int(time.time()) // 60 - minutes - 5) * 60_000
    scenario = sim.Scenario(start_ms=start_ms)
    fleet = sim.simulate(scenario)
    folder = sim.write(fleet, Path("out/embedded/input"))
    print(
        f"flowattr simulate: {scenario.services} workloads x {scenario.instances_per_service} instances, "
        f"{minutes} min, {fleet.records} flow reports ({fleet.lost_records} lost with their batches) -> {folder}"
    )
    config = replace(
        config,
        region=sim.HOME,
        regions=sim.regions_config(),
        files=replace(config.files, input_dir=str(folder), output_dir="out/embedded/output"),
    )
    return config, fleet.truth


def _simulate(args, config: Config) -> int:
    minutes = args.minutes
    if args.brokers:
        from dataflow.publish import publish

        # Live: the fleet starts now and every batch is sent when it arrives.
        scenario = sim.Scenario(seed=args.seed, start_ms=int(time.time() * 1000), duration_s=minutes * 60,
                                interval_s=args.interval_s)
        fleet = sim.simulate(scenario)
        # The simulated fleet lives in region us-east, whatever this configuration's region.
        print(f"flowattr simulate: {fleet.records} flow reports over {minutes} min to Kafka {config.kafka.brokers}, "
              f"region {sim.HOME}", flush=True)
        sent = publish(replace(config, region=sim.HOME), fleet, lambda line: print(line, flush=True))
        print(f"flowattr simulate: {sent} batches sent")
        return 0
    if not args.output:
        raise ConfigError("give a folder to write, or --brokers HOST:PORT to publish to Kafka")
    start_ms = args.start_ms if args.start_ms is not None else (int(time.time()) // 60 - minutes - 5) * 60_000
    scenario = sim.Scenario(seed=args.seed, start_ms=start_ms, duration_s=minutes * 60, interval_s=args.interval_s)
    fleet = sim.simulate(scenario)
    folder = sim.write(fleet, args.output)
    print(f"{fleet.records} flow reports, {len(fleet.truth)} with known truth -> {folder}")
    return 0


def _report_every(tally: Tally, every_s: float, stop: threading.Event) -> None:
    while not stop.wait(every_s):
        print("flowattr run: " + _tally_line(tally), flush=True)


def _tally_line(tally: Tally) -> str:
    counts = tally.snapshot()
    return " ".join(f"{k}={v}" for k, v in sorted(counts.items())) or "nothing yet"


if __name__ == "__main__":
    sys.exit(main())
