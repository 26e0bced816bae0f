"""The one configuration object: defaults, overlaid by a TOML file, then FLOWATTR_* environment
variables, then command-line flags, each in this one place, then passed down to whatever needs it."""

from __future__ import annotations

import dataclasses
import ipaddress
import os
import socket
import tomllib
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Mapping


class ConfigError(ValueError):
    """A setting that cannot be used; the message names it."""


@dataclass(frozen=True)
class KafkaConfig:
    brokers: str = ""
    raw_topic: str = "flows.raw"
    ip_events_topic: str = "ip-events"
    attributed_topic: str = "flows.attributed"
    dlq_topic: str = "flows.dlq"
    forward_prefix: str = "flows.forward."
    # Topics the job creates when missing; existing topics keep theirs. -1: the cluster's own default
    # (num.partitions, default.replication.factor), except that a replication factor of 1 on a
    # cluster of several brokers is raised to min(3, brokers) (dataflow/kafka_io.py says so when it does).
    partitions: int = -1
    replication_factor: int = -1
    # Compacted: which addresses each exporter may claim, written by a trusted platform component.
    exporters_topic: str = "exporters"
    # A reader that has caught up with a partition vouches for it up to this long before now: the
    # broker's and this host's clocks, and a fetch in flight, may differ by that much. Every answer
    # waits this long; evidence that comes later than it is counted as `late` (and may answer
    # differently in a replay): raise it when that count grows.
    caught_up_margin_ms: int = 1000
    # Without recovery, a restarted job reads from here: "beginning" (backfill) or "end".
    starting_offset: str = "beginning"
    # Messages each input partition's reader hands on at once. A worker routes a batch whole before it
    # polls its next reader, so a large one delays every other reader (and the arrival clock with it),
    # while what was read waits in memory; small ones cost no measurable CPU.
    batch_size: int = 100
    # What each input partition's reader may fetch ahead of the job (librdkafka's
    # queued.max.messages.kbytes, one reader per partition): a job that is behind, as in every replay,
    # holds this much per partition besides its own state. librdkafka's own default is 64 MiB.
    prefetch_kbytes: int = 8192
    # How far, in arrival time, one input partition may be read ahead of the slowest one the same process
    # reads (dataflow/kafka_io.py, ReadPace): in a replay, what is read ahead waits in the shards' memory.
    read_ahead_ms: int = 5000
    # Security of every client (job, exporter, tail, admin): dataflow/kafka_client.py. PLAINTEXT, SSL,
    # SASL_PLAINTEXT or SASL_SSL; SASL with PLAIN, SCRAM-SHA-256 or SCRAM-SHA-512.
    security_protocol: str = "PLAINTEXT"
    sasl_mechanism: str = ""
    sasl_username: str = ""
    sasl_password: str = field(default="", repr=False)
    # PEM files: the CAs that signed the brokers' certificates (empty: the system's), and for mutual
    # TLS this client's certificate and key.
    ssl_ca_file: str = ""
    ssl_cert_file: str = ""
    ssl_key_file: str = ""
    ssl_key_password: str = field(default="", repr=False)
    # 0 turns off the check that the broker's certificate names the host connected to.
    ssl_verify_hostname: int = 1
    # The job's producer refuses a message larger than this (librdkafka's message.max.bytes); output
    # messages are split to fit it and each output topic's own max.message.bytes.
    max_message_bytes: int = 1_000_000
    # A broker that does not answer for this long is an error, not a wait.
    timeout_s: float = 10.0


@dataclass(frozen=True)
class MetricsConfig:
    # The HTTP endpoint of a job process or an exporter: /metrics (Prometheus), /healthz, /readyz.
    # 0: none. Each process of a job on one host needs its own port.
    port: int = 0
    host: str = "0.0.0.0"


@dataclass(frozen=True)
class AttributionConfig:
    delay_s: float = 60.0
    max_wait_s: float = 300.0
    retention_s: float = 3600.0
    max_ranges_per_ip: int = 32  # and port ranges per shared address; beyond it the oldest goes, counted
    # Bounds on one shard's state under a scan or a flood (memory grows with them): beyond them the
    # lookup due soonest is answered at once from what is known, the oldest connection report dropped;
    # each eviction is counted (evicted.* in the summary).
    max_pending_per_shard: int = 50_000
    max_connections_per_shard: int = 100_000
    # Host clocks disagree by a few hundred ms; a range lookup this close to another owner's range
    # is reported as a conflict rather than guessed.
    skew_guard_ms: int = 1000
    # The remote host's report of the same connection matches when its start is this close.
    connection_window_ms: int = 2000
    # Assignment events arrive up to minutes late; an answer from them waits this much event time
    # past the flow's start (at most max_wait_s), so that an unassignment already made has arrived.
    event_settle_s: float = 120.0
    shards: int = 128
    max_future_s: float = 3600.0
    max_age_s: float = 7 * 86400.0


@dataclass(frozen=True)
class LimitsConfig:
    # Bounds on input that keep one message from stopping or swamping the job; anything over a bound
    # is a dead letter with its reason (docs/records.md).
    message_bytes: int = 4 * 1024 * 1024  # one input message (a record or a batch)
    records_per_message: int = 10_000
    depth: int = 8  # JSON nesting inside one record, the record itself counting 1
    string_chars: int = 4096  # any one string of a record, field names included
    dead_letter_bytes: int = 2048  # a dead letter keeps at most this much of the original


@dataclass(frozen=True)
class TrustConfig:
    # 1: an exporter's claim on an address counts only within its entitlement ([entitlements] and the
    # exporters topic). 0 believes every host, for a fleet whose exporters are all trusted.
    require_entitlement: int = 1
    # An exporter whose clock is off by more than this (judged from its messages' arrival) is not
    # believed at all; within it, its times are corrected.
    clock_bound_s: float = 30.0


@dataclass(frozen=True)
class ExporterConfig:
    exporter_id: str = ""
    interval_s: float = 60.0
    identity_file: str = "/etc/flowattr/identity"
    pin_dir: str = "/sys/fs/bpf/flowattr"
    buffer_max_records: int = 1_000_000
    batch_records: int = 2000
    max_connections: int = 65536
    # Entries in each pinned workload map (IP -> workload, (IP, port) -> workload).
    max_workloads: int = 16384
    # Ring buffer between kernel and agent, in 4 KiB pages (a power of two); 168 bytes per connection.
    ring_pages: int = 1024
    # 1: also report connections on 127.0.0.0/8 and ::1. Off by default: every host owns those
    # addresses, so their heartbeats would only make conflicts.
    capture_loopback: int = 0


@dataclass(frozen=True)
class FilesConfig:
    # File mode when input_dir is set: read its NDJSON files instead of Kafka, write output_dir.
    input_dir: str = ""
    output_dir: str = "out/run"


@dataclass(frozen=True)
class RecoveryConfig:
    # Bytewax recovery: Kafka offsets and the shards' state survive a restart. Without it a restart
    # reads from kafka.starting_offset and ownership is relearned from the flows within minutes.
    dir: str = ""
    snapshot_s: float = 30.0
    backup_s: float = 300.0


@dataclass(frozen=True)
class ClusterConfig:
    # Several `flowattr run` processes form one Bytewax cluster. Either list every process's
    # host:port (";"-separated, this process found by process_id), or, in a StatefulSet, give the
    # replica count and the headless service's domain: pod N is process N at <pod>.<peer_domain>:port.
    addresses: str = ""
    process_id: int = -1
    replicas: int = 1
    peer_domain: str = ""
    port: int = 9999


@dataclass(frozen=True)
class Config:
    region: str = "local"
    # region name -> list of CIDRs; a remote address in none of them is external.
    regions: Mapping[str, tuple[str, ...]] = field(default_factory=dict)
    # exporter id -> CIDRs it may claim (besides those the exporters topic grants).
    entitlements: Mapping[str, tuple[str, ...]] = field(default_factory=dict)
    kafka: KafkaConfig = field(default_factory=KafkaConfig)
    attribution: AttributionConfig = field(default_factory=AttributionConfig)
    limits: LimitsConfig = field(default_factory=LimitsConfig)
    trust: TrustConfig = field(default_factory=TrustConfig)
    exporter: ExporterConfig = field(default_factory=ExporterConfig)
    files: FilesConfig = field(default_factory=FilesConfig)
    recovery: RecoveryConfig = field(default_factory=RecoveryConfig)
    cluster: ClusterConfig = field(default_factory=ClusterConfig)
    metrics: MetricsConfig = field(default_factory=MetricsConfig)

    def exporter_id(self) -> str:
        return self.exporter.exporter_id or socket.gethostname()

    def forward_topic(self, region: str) -> str:
        return f"{self.kafka.forward_prefix}{region}"

    def cluster_addresses(self, hostname: str) -> tuple[list[str] | None, int | None]:
        """(every process's address, this one's index), or (None, None) for a single process."""
        c = self.cluster
        if c.addresses:
            addresses = [a for a in c.addresses.split(";") if a]
            if not 0 <= c.process_id < len(addresses):
                raise ConfigError(f"cluster.process_id must be 0..{len(addresses) - 1} for {len(addresses)} addresses")
            return addresses, c.process_id
        if c.replicas <= 1:
            return None, None
        base, _, ordinal = hostname.rpartition("-")
        if not base or not ordinal.isdigit() or not c.peer_domain:
            raise ConfigError(
                f"cluster.replicas is {c.replicas}: the host name ({hostname!r}) must end in a StatefulSet "
                "ordinal and cluster.peer_domain must be set"
            )
        addresses = [f"{base}-{i}.{c.peer_domain}:{c.port}" for i in range(c.replicas)]
        if int(ordinal) >= c.replicas:
            raise ConfigError(f"pod ordinal {ordinal} is beyond cluster.replicas {c.replicas}")
        return addresses, int(ordinal)


_SECTIONS = {
    "kafka": KafkaConfig,
    "attribution": AttributionConfig,
    "limits": LimitsConfig,
    "trust": TrustConfig,
    "exporter": ExporterConfig,
    "files": FilesConfig,
    "recovery": RecoveryConfig,
    "cluster": ClusterConfig,
    "metrics": MetricsConfig,
}
ENV_PREFIX = "FLOWATTR_"


def load_config(
    path: str | Path | None = None,
    environ: Mapping[str, str] | None = None,
    overrides: Mapping[str, Any] | None = None,
) -> Config:
    """Build the Config. `overrides` uses dotted names (`kafka.brokers`, `region`) as flags do."""
    environ = os.environ if environ is None else environ
    settings: dict[str, Any] = {}
    path = path or environ.get(ENV_PREFIX + "CONFIG")
    if path:
        try:
            with open(path, "rb") as f:
                settings = tomllib.load(f)
        except OSError as e:
            raise ConfigError(f"cannot read config file {path}: {e.strerror}") from None
        except tomllib.TOMLDecodeError as e:
            raise ConfigError(f"config file {path} is not valid TOML: {e}") from None
    for name, value in _from_environ(environ).items():
        _set(settings, name, value)
    for name, value in (overrides or {}).items():
        if value is not None:
            _set(settings, name, value)
    return _build(settings)


def _from_environ(environ: Mapping[str, str]) -> dict[str, str]:
    """FLOWATTR_REGION, FLOWATTR_KAFKA__BROKERS, FLOWATTR_ATTRIBUTION__DELAY_S, ..."""
    found = {}
    for key, value in environ.items():
        if not key.startswith(ENV_PREFIX) or key == ENV_PREFIX + "CONFIG":
            continue
        found[key[len(ENV_PREFIX) :].lower().replace("__", ".")] = value
    return found


def _set(settings: dict[str, Any], dotted: str, value: Any) -> None:
    section, _, name = dotted.partition(".")
    if name:
        settings.setdefault(section, {})[name] = value
    else:
        settings[section] = value


def _build(settings: Mapping[str, Any]) -> Config:
    known = {"region", "regions", "entitlements", *_SECTIONS}
    unknown = sorted(set(settings) - known)
    if unknown:
        raise ConfigError(f"unknown setting(s): {', '.join(unknown)}")
    sections = {}
    for name, cls in _SECTIONS.items():
        raw = settings.get(name, {})
        if not isinstance(raw, Mapping):
            raise ConfigError(f"[{name}] must be a table")
        sections[name] = _build_section(name, cls, raw)
    config = Config(
        region=str(settings.get("region", Config.region)),
        regions=_cidr_table(settings, "regions", "region name"),
        entitlements=_cidr_table(settings, "entitlements", "exporter id"),
        **sections,
    )
    _check(config)
    return config


def _cidr_table(settings: Mapping[str, Any], name: str, what: str) -> dict[str, tuple[str, ...]]:
    table = settings.get(name, {})
    if isinstance(table, str):  # --regions, FLOWATTR_REGIONS
        table = parse_cidr_table(table, name)
    if not isinstance(table, Mapping) or not all(isinstance(cidrs, (list, tuple)) for cidrs in table.values()):
        raise ConfigError(f"[{name}] maps each {what} to a list of CIDRs")
    return {str(k): tuple(str(c) for c in cidrs) for k, cidrs in table.items()}


def _build_section(section: str, cls: type, raw: Mapping[str, Any]):
    fields = {f.name: f for f in dataclasses.fields(cls)}
    values = {}
    for name, value in raw.items():
        if name not in fields:
            raise ConfigError(f"unknown setting {section}.{name}")
        values[name] = _coerce(f"{section}.{name}", fields[name].type, value)
    return cls(**values)


def _coerce(name: str, type_name: str, value: Any) -> Any:
    try:
        if type_name == "int":
            return int(value)
        if type_name == "float":
            return float(value)
        return str(value)
    except (TypeError, ValueError):
        raise ConfigError(f"{name} must be a {type_name}, got {value!r}") from None


# The accepted range of every number, inclusive. A value outside is refused on start: a negative
# retention or wait would not fail, it would quietly turn most answers into wrong kinds of "no answer".
DAY_S = 86400.0
RANGES: dict[str, tuple[float, float]] = {
    "kafka.partitions": (-1, 10_000),  # -1: the cluster's default
    "kafka.replication_factor": (-1, 1_000),
    "kafka.ssl_verify_hostname": (0, 1),
    "metrics.port": (0, 65535),
    "kafka.batch_size": (1, 100_000),
    "kafka.prefetch_kbytes": (1, 2_097_151),
    "kafka.read_ahead_ms": (1000, 86_400_000),
    "kafka.max_message_bytes": (10_000, 1_000_000_000),
    "kafka.timeout_s": (0.1, 3600),
    "kafka.caught_up_margin_ms": (0, 600_000),
    "attribution.delay_s": (0, DAY_S),
    "attribution.max_wait_s": (0, 7 * DAY_S),
    "attribution.retention_s": (1, 30 * DAY_S),
    "attribution.max_ranges_per_ip": (1, 100_000),
    "attribution.max_pending_per_shard": (1, 100_000_000),
    "attribution.max_connections_per_shard": (1, 30_000_000),  # a shard's report log stays under 4 GiB
    "attribution.skew_guard_ms": (0, 600_000),
    "attribution.connection_window_ms": (0, 600_000),
    "attribution.event_settle_s": (0, DAY_S),
    "attribution.shards": (1, 65_536),
    "attribution.max_future_s": (1, 30 * DAY_S),
    "attribution.max_age_s": (60, 3650 * DAY_S),
    "trust.require_entitlement": (0, 1),
    "trust.clock_bound_s": (0.001, DAY_S),
    "limits.message_bytes": (1024, 1_000_000_000),
    "limits.records_per_message": (1, 1_000_000),
    "limits.depth": (2, 200),  # orjson encodes at most 254 levels; the answer's batch adds one
    "limits.string_chars": (200, 10_000_000),  # flow_id alone may be 200
    "limits.dead_letter_bytes": (0, 10_000_000),
    "exporter.interval_s": (0.1, 3600),
    "exporter.buffer_max_records": (1, 1_000_000_000),
    "exporter.batch_records": (1, 1_000_000),
    "exporter.max_connections": (1, 100_000_000),
    "exporter.max_workloads": (1, 100_000_000),
    "exporter.ring_pages": (1, 1 << 20),
    "exporter.capture_loopback": (0, 1),
    "recovery.snapshot_s": (0.1, DAY_S),
    "recovery.backup_s": (0, 30 * DAY_S),
    "cluster.process_id": (-1, 100_000),
    "cluster.replicas": (1, 100_000),
    "cluster.port": (1, 65535),
}


def _check(config: Config) -> None:
    for section in _SECTIONS:
        values = getattr(config, section)
        for f in dataclasses.fields(values):
            if f.type not in ("int", "float"):
                continue
            name = f"{section}.{f.name}"
            low, high = RANGES[name]
            value = getattr(values, f.name)
            if not low <= value <= high:
                raise ConfigError(f"{name} is {_num(value)}: set it between {_num(low)} and {_num(high)} ({_where(name)})")
    a = config.attribution
    if a.max_wait_s < a.delay_s:
        raise ConfigError(f"attribution.max_wait_s must be at least attribution.delay_s ({a.max_wait_s:g} < {a.delay_s:g})")
    if a.retention_s < a.max_wait_s:
        raise ConfigError(
            "attribution.retention_s must be at least attribution.max_wait_s, ownership must outlive the wait"
            f" for it ({a.retention_s:g} < {a.max_wait_s:g})"
        )
    ring = config.exporter.ring_pages
    if ring & (ring - 1):
        raise ConfigError(f"exporter.ring_pages is {ring}: set it to a power of two ({_where('exporter.ring_pages')})")
    if config.kafka.starting_offset not in ("beginning", "end"):
        raise ConfigError("kafka.starting_offset must be 'beginning' or 'end'")
    _check_kafka_security(config.kafka)
    k = config.kafka
    if k.partitions == 0 or k.replication_factor == 0:
        raise ConfigError("kafka.partitions and kafka.replication_factor must be >= 1, or -1 for the cluster's default")


SECURITY_PROTOCOLS = ("PLAINTEXT", "SSL", "SASL_PLAINTEXT", "SASL_SSL")
SASL_MECHANISMS = ("PLAIN", "SCRAM-SHA-256", "SCRAM-SHA-512")


def _check_kafka_security(k: KafkaConfig) -> None:
    # Messages name the setting, never its value: some of these are secrets.
    protocol = k.security_protocol.upper()
    if protocol not in SECURITY_PROTOCOLS:
        raise ConfigError(f"kafka.security_protocol must be one of {', '.join(SECURITY_PROTOCOLS)}")
    sasl = protocol.startswith("SASL_")
    if sasl and k.sasl_mechanism.upper() not in SASL_MECHANISMS:
        raise ConfigError(f"kafka.sasl_mechanism must be one of {', '.join(SASL_MECHANISMS)} with {protocol}")
    if sasl and not (k.sasl_username and k.sasl_password):
        raise ConfigError(f"kafka.sasl_username and kafka.sasl_password are needed with {protocol}")
    if not sasl and (k.sasl_mechanism or k.sasl_username or k.sasl_password):
        raise ConfigError("kafka.sasl_* settings need kafka.security_protocol SASL_SSL or SASL_PLAINTEXT")
    tls = protocol in ("SSL", "SASL_SSL")
    if not tls and (k.ssl_ca_file or k.ssl_cert_file or k.ssl_key_file):
        raise ConfigError("kafka.ssl_* settings need kafka.security_protocol SSL or SASL_SSL")
    if bool(k.ssl_cert_file) != bool(k.ssl_key_file):
        raise ConfigError("kafka.ssl_cert_file and kafka.ssl_key_file go together (mutual TLS)")


def _num(x: float) -> str:
    return str(int(x)) if float(x).is_integer() else str(x)


def _where(dotted: str) -> str:
    section, _, name = dotted.partition(".")
    return f"[{section}] {name} in the config file, or {ENV_PREFIX}{section.upper()}__{name.upper()}"


def check_job(config: Config) -> None:
    """What the attribution job needs beyond valid settings: regions to route by, its own among them."""
    if not config.regions:
        raise ConfigError(
            "no regions are configured, so every flow would be external: give --config FILE with region and"
            ' [regions], or --region NAME --regions "NAME=CIDR,CIDR;OTHER=CIDR"'
        )
    if config.region not in config.regions:
        known = ", ".join(sorted(config.regions))
        raise ConfigError(
            f"region {config.region!r} is not in [regions] ({known}): set region (--region, FLOWATTR_REGION)"
            " to one of them or add its CIDRs to [regions]"
        )
    for region, cidrs in config.regions.items():
        if not cidrs:
            raise ConfigError(f"region {region!r} has no CIDRs in [regions]: list its CIDRs or remove it")
        for cidr in cidrs:
            try:
                ipaddress.ip_network(cidr, strict=False)
            except ValueError:
                raise ConfigError(f"region {region!r}: {cidr!r} is not a CIDR (such as 10.0.0.0/16)") from None


def parse_cidr_table(text: str, name: str = "regions") -> dict[str, list[str]]:
    """ "us-east=10.0.0.0/16,fd00::/48;eu-west=10.1.0.0/16", as --regions and FLOWATTR_REGIONS give them."""
    regions = {}
    for part in filter(None, (p.strip() for p in text.split(";"))):
        name, sep, cidrs = part.partition("=")
        if not sep or not name.strip():
            raise ConfigError(f'{name}: {part!r} is not NAME=CIDR,CIDR (as in "us-east=10.0.0.0/16;eu-west=10.1.0.0/16")')
        regions[name.strip()] = [c.strip() for c in cidrs.split(",") if c.strip()]
    return regions
