"""The metrics a job process and an exporter expose, from what they count, in Prometheus's names."""

import time

from prometheus_client import generate_latest
from prometheus_client.parser import text_string_to_metric_families

from dataflow.attribution import Connection, Lookup, Shard, ShardWork
from dataflow.config import load_config
from dataflow.metrics import STALE_READER_S, JobMetrics
from dataflow.routing import Tally
from exporter.metrics import ExporterMetrics
from exporter.ship import FileShipper
from tests.unit.test_attribution import flow


def samples(registry) -> dict:
    text = generate_latest(registry).decode()
    return {(s.name, tuple(sorted(s.labels.items()))): s.value
            for family in text_string_to_metric_families(text) for s in family.samples}


class Held:
    """What Bytewax holds for a shard: its logic object, with the shard in `.shard`."""

    def __init__(self, shard):
        self.shard = shard


def test_the_tally_becomes_counters_by_outcome_reason_and_role():
    tally = Tally()
    tally.add({"in.raw": 10, "in.forwarded": 2, "out.attributed": 6, "out.unattributed.no_owner": 2,
               "out.external": 1, "dead.not_json": 1, "forwarded.eu-west": 3, "absorbed.heartbeat": 4,
               "refused.unentitled": 1})
    got = samples(JobMetrics(load_config(environ={}), tally).registry)
    assert got[("flowattr_records_in_total", (("role", "raw"),))] == 10
    assert got[("flowattr_records_in_total", (("role", "forwarded"),))] == 2
    assert got[("flowattr_answers_total", (("outcome", "attributed"), ("reason", "")))] == 6
    assert got[("flowattr_answers_total", (("outcome", "unattributed"), ("reason", "no_owner")))] == 2
    assert got[("flowattr_answers_total", (("outcome", "external"), ("reason", "")))] == 1
    assert got[("flowattr_dead_letters_total", (("reason", "not_json"),))] == 1
    assert got[("flowattr_forwarded_total", (("region", "eu-west"),))] == 3
    assert got[("flowattr_absorbed_total", (("kind", "heartbeat"),))] == 4
    assert got[("flowattr_refused_claims_total", (("reason", "unentitled"),))] == 1


def test_consumer_lag_from_the_readers_own_positions():
    config = load_config(environ={})
    metrics = JobMetrics(config, Tally())
    metrics.position("flows.raw", 0, 40, 0, 100)  # read up to 39 of 0..99
    metrics.position("flows.raw", 1, -2, 5, 25)  # nothing read yet, from the beginning
    metrics.position("flows.raw", 2, 25, 0, 25)  # caught up
    got = samples(metrics.registry)
    lag = {dict(k)["partition"]: v for (name, k), v in got.items() if name == "flowattr_consumer_lag_messages"}
    assert lag == {"0": 60, "1": 20, "2": 0}


def test_a_reader_that_stopped_polling_fails_liveness():
    metrics = JobMetrics(load_config(environ={}), Tally())
    assert metrics.live() is None
    metrics.position("flows.raw", 0, 1, 0, 1)
    assert metrics.live() is None
    metrics.positions[("flows.raw", 0)] = (1, 0, 1, time.monotonic() - STALE_READER_S - 1)
    assert "flows.raw[0]" in metrics.live()
    assert metrics.ready() == "starting: the dataflow is not built yet"


def test_shard_gauges_sum_every_shard_and_lag_follows_the_slowest_clock():
    config = load_config(environ={})
    metrics = JobMetrics(config, Tally())
    shards = [Shard(config.attribution, frozenset(), 30_000) for _ in range(2)]
    held = [metrics.shard(Held(s)) for s in shards]  # watched while Bytewax holds them
    now_ms = int(time.time() * 1000)
    shards[0].now_ms, shards[1].now_ms = now_ms - 5_000, now_ms - 1_000
    got = samples(metrics.registry)
    assert got[("flowattr_shards", ())] == 2
    assert got[("flowattr_pending_lookups", ())] == 0
    assert 5 <= got[("flowattr_event_time_lag_seconds", ())] < 10
    # A shard the runtime lets go (a restart resumes new ones) is no longer counted.
    del held[0]
    assert samples(metrics.registry)[("flowattr_shards", ())] == 1


def test_exporter_counters_and_map_fill(tmp_path):
    config = load_config(environ={})
    shipper = FileShipper(str(tmp_path / "out"), batch_records=2)
    metrics = ExporterMetrics(config, shipper)
    assert metrics.ready() is not None  # not capturing yet
    shipper.ship([{"n": i} for i in range(5)])
    metrics.connections, metrics.flows, metrics.heartbeats, metrics.workloads = 7, 4, 1, 3
    metrics.kernel = {"lost_events": 2, "connections_full": 0}
    metrics.capturing = True
    metrics.turned()
    got = samples(metrics.registry)
    assert got[("flowattr_exporter_connections_total", ())] == 7
    assert got[("flowattr_exporter_lost_events_total", ())] == 2
    assert got[("flowattr_exporter_records_total", (("kind", "flow"),))] == 4
    assert got[("flowattr_exporter_records_delivered_total", ())] == 5
    assert got[("flowattr_exporter_batches_sent_total", ())] == 3
    assert got[("flowattr_exporter_map_entries", (("map", "workloads"),))] == 3
    assert got[("flowattr_exporter_map_capacity", (("map", "workloads"),))] == config.exporter.max_workloads
    assert metrics.ready() is None and metrics.live() is None
    shipper.close(0)


def test_held_bytes_and_reports_sum_the_shards_packed_state():
    config = load_config(environ={})
    metrics = JobMetrics(config, Tally())
    shards = [Shard(config.attribution, frozenset(), 30_000) for _ in range(2)]
    held = [metrics.shard(Held(s)) for s in shards]
    now_ms = int(time.time() * 1000)
    for i, shard in enumerate(shards):
        shard.now_ms = now_ms  # work that arrived before the shard's clock is applied at once
        local = f"10.0.0.{i + 1}"
        shard.absorb(ShardWork(now_ms - 1_000, (2, 0, i), [
            Lookup(flow(remote_ip="10.0.0.9", local_ip=local, start=now_ms - 5_000)),
            Connection(("10.0.0.7", 443, local, 40_001), now_ms - 6_000, "web", "h"),
        ]))
    got = samples(metrics.registry)
    assert got[("flowattr_pending_lookups", ())] == 2 and got[("flowattr_connection_reports", ())] == 2
    for kind in ("lookups", "reports", "clocks"):
        assert got[("flowattr_held_bytes", (("kind", kind),))] == sum(s.held_bytes()[kind] for s in shards)
    assert shards[0].held_bytes()["lookups"] > 0 and shards[0].held_bytes()["reports"] > 0
    held.clear()  # the runtime lets them go
    assert samples(metrics.registry).get(("flowattr_held_bytes", (("kind", "lookups"),)), 0) == 0
