"""The simulated fleet every throughput benchmark reads, as Kafka topics and as a file-mode folder, and
the job's configuration for it."""

from __future__ import annotations

import time
from dataclasses import dataclass, replace
from pathlib import Path

import orjson

from bench.harness import REPO  # noqa: F401 - puts the repository on the path
from dataflow import simulate as sim
from dataflow.config import AttributionConfig, Config, load_config

# The fleet reports every 10 s instead of every minute, so that ten minutes of it hold many batches; the
# job runs at the default delay and max wait, so a run ends only once the lookups nothing answered have
# waited out their max wait on the arrival clock.
INTERVAL_S = 10
DELAY_S = AttributionConfig().delay_s
MAX_WAIT_S = AttributionConfig().max_wait_s
RAW_PARTITIONS = 6
CEILING_FORWARDED = "ceiling.forwarded"  # the ceilings' copy of the forward input topic


@dataclass
class Records:
    fleet: sim.Fleet
    scenario: sim.Scenario
    folder: Path
    raw: list[tuple[bytes, bytes]]  # (exporter key, batch) in arrival order
    forwarded: list[bytes]
    ip_events: list[bytes]
    raw_flows: int
    raw_records: int
    forwarded_flows: int

    @property
    def flows(self) -> int:
        """Every flow the job must answer or forward: raw flows and forwarded-in lookups."""
        return self.raw_flows + self.forwarded_flows

    @property
    def messages(self) -> int:
        return len(self.raw) + len(self.forwarded) + len(self.ip_events)

    @property
    def records(self) -> int:
        return self.raw_records + self.forwarded_flows + len(self.ip_events)

    def describe(self) -> dict:
        s = self.scenario
        return {"seed": s.seed, "services": s.services, "instances_per_service": s.instances_per_service,
                "minutes": s.duration_s // 60, "connections_per_instance_s": s.connections_per_instance_s,
                "interval_s": s.interval_s, "delay_s": DELAY_S, "max_wait_s": MAX_WAIT_S, "flows": self.flows,
                "raw_flows": self.raw_flows, "forwarded_flows": self.forwarded_flows, "records": self.records,
                "messages": self.messages, "raw_bytes": sum(len(v) for _, v in self.raw),
                "raw_partitions": RAW_PARTITIONS}


def generate(scale: float, folder: Path) -> Records:
    minutes = 10
    start_ms = (int(time.time()) // 60 - minutes - 5) * 60_000
    scenario = sim.Scenario(
        seed=11, start_ms=start_ms, duration_s=minutes * 60, services=20, instances_per_service=10,
        connections_per_instance_s=2.0 * scale, interval_s=INTERVAL_S, mean_delay_s=0.5, late_delay_s=15.0,
    )
    fleet = sim.simulate(scenario)
    sim.write(fleet, folder)
    raw, raw_flows, raw_records = [], 0, 0
    for m in fleet.flow_messages:
        batch = orjson.loads(m.value)
        raw.append((m.key, m.value))
        raw_records += len(batch)
        raw_flows += sum(1 for r in batch if r["kind"] == "flow")
    forwarded = [m.value for m in fleet.forwarded_messages]
    forwarded_flows = sum(len(orjson.loads(v)) for v in forwarded)
    return Records(fleet, scenario, folder, raw, forwarded, [m.value for m in fleet.ip_event_messages],
                   raw_flows, raw_records, forwarded_flows)


def job_config(bootstrap: str = "", prefix: str = "", shared: str = "") -> Config:
    config = load_config(environ={}, overrides={"attribution.delay_s": DELAY_S, "attribution.max_wait_s": MAX_WAIT_S})
    kafka = replace(
        config.kafka, brokers=bootstrap, partitions=RAW_PARTITIONS, raw_topic=f"{shared}flows.raw",
        ip_events_topic=f"{shared}ip-events", exporters_topic=f"{shared}exporters",
        attributed_topic=f"{prefix}flows.attributed", dlq_topic=f"{prefix}flows.dlq",
        forward_prefix=f"{prefix}flows.forward.",
    )
    return replace(config, region=sim.HOME, regions=sim.regions_config(), kafka=kafka)


def write_toml(config: Config, path: Path) -> Path:
    regions = "\n".join(f"{r} = {orjson.dumps(list(c)).decode()}" for r, c in config.regions.items())
    k, a = config.kafka, config.attribution
    path.write_text(
        f'region = "{config.region}"\n[regions]\n{regions}\n[kafka]\nbrokers = "{k.brokers}"\n'
        f'partitions = {k.partitions}\nraw_topic = "{k.raw_topic}"\nip_events_topic = "{k.ip_events_topic}"\n'
        f'exporters_topic = "{k.exporters_topic}"\nattributed_topic = "{k.attributed_topic}"\n'
        f'dlq_topic = "{k.dlq_topic}"\nforward_prefix = "{k.forward_prefix}"\nstarting_offset = "{k.starting_offset}"\n'
        f"[attribution]\ndelay_s = {a.delay_s}\nmax_wait_s = {a.max_wait_s}\n"
    )
    return path


def load_topics(bootstrap: str, records: Records) -> None:
    """The shared input topics, filled once: raw (keyed by exporter), assignment events, entitlements,
    and the ceilings' copy of the forwarded lookups."""
    from tests.integration.kafka_io import create_topics, produce, publish_entitlements

    config = job_config(bootstrap)
    k = config.kafka
    create_topics(bootstrap, [k.raw_topic], RAW_PARTITIONS, {"message.timestamp.type": "LogAppendTime"})
    create_topics(bootstrap, [k.ip_events_topic, CEILING_FORWARDED], 1, {"message.timestamp.type": "LogAppendTime"})
    create_topics(bootstrap, [k.exporters_topic], 1, {"cleanup.policy": "compact"})
    publish_entitlements(bootstrap, k.exporters_topic, records.fleet)
    produce(bootstrap, k.ip_events_topic, records.ip_events, timeout=120)
    produce(bootstrap, k.raw_topic, [v for _, v in records.raw], keys=[key for key, _ in records.raw], timeout=300)
    produce(bootstrap, CEILING_FORWARDED, records.forwarded, timeout=120)


def prepare_run_topics(bootstrap: str, records: Records, prefix: str) -> Config:
    """Per run: its own output topics and its own copy of the (small) forward input topic."""
    from dataflow.kafka_io import ensure_topics
    from tests.integration.kafka_io import produce

    config = job_config(bootstrap, prefix)
    ensure_topics(config)
    produce(bootstrap, config.forward_topic(config.region), records.forwarded, timeout=120)
    return config
