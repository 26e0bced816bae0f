import pytest

import dataclasses

from dataflow.config import _SECTIONS, RANGES, ConfigError, check_job, load_config


def test_file_then_environment_then_flags(tmp_path):
    path = tmp_path / "flowattr.toml"
    path.write_text('region = "eu-west"\n[kafka]\nbrokers = "k1:9092"\npartitions = 3\n'
                    '[attribution]\ndelay_s = 30\n[regions]\neu-west = ["10.1.0.0/16"]\n')
    config = load_config(path, environ={"FLOWATTR_KAFKA__PARTITIONS": "12", "FLOWATTR_ATTRIBUTION__DELAY_S": "45"},
                         overrides={"attribution.delay_s": 20})
    assert config.region == "eu-west"
    assert config.kafka.brokers == "k1:9092" and config.kafka.partitions == 12
    assert config.attribution.delay_s == 20.0
    assert config.regions == {"eu-west": ("10.1.0.0/16",)}
    assert config.forward_topic("us-east") == "flows.forward.us-east"


@pytest.mark.parametrize("environ, message", [
    ({"FLOWATTR_KAFKA__PARTITIONS": "many"}, "kafka.partitions must be a int"),
    ({"FLOWATTR_KAFKA__NOPE": "1"}, "unknown setting kafka.nope"),
    ({"FLOWATTR_ATTRIBUTION__MAX_WAIT_S": "10"}, "max_wait_s must be at least"),
    ({"FLOWATTR_KAFKA__STARTING_OFFSET": "middle"}, "starting_offset"),
])
def test_bad_settings_are_named(environ, message):
    with pytest.raises(ConfigError, match=message):
        load_config(environ=environ)


def test_unreadable_or_invalid_file(tmp_path):
    with pytest.raises(ConfigError, match="cannot read"):
        load_config(tmp_path / "missing.toml", environ={})
    bad = tmp_path / "bad.toml"
    bad.write_text("region = \n")
    with pytest.raises(ConfigError, match="not valid TOML"):
        load_config(bad, environ={})


def test_statefulset_pods_find_their_peers_and_their_own_index():
    config = load_config(environ={"FLOWATTR_CLUSTER__REPLICAS": "3", "FLOWATTR_CLUSTER__PEER_DOMAIN": "flowattr.ns.svc"})
    addresses, me = config.cluster_addresses("flowattr-2")
    assert addresses == [f"flowattr-{i}.flowattr.ns.svc:9999" for i in range(3)] and me == 2
    with pytest.raises(ConfigError, match="ordinal"):
        config.cluster_addresses("laptop")
    assert load_config(environ={}).cluster_addresses("flowattr-0") == (None, None)


def test_explicit_cluster_addresses():
    config = load_config(environ={"FLOWATTR_CLUSTER__ADDRESSES": "a:1;b:2", "FLOWATTR_CLUSTER__PROCESS_ID": "1"})
    assert config.cluster_addresses("whatever") == (["a:1", "b:2"], 1)
    with pytest.raises(ConfigError, match="process_id"):
        load_config(environ={"FLOWATTR_CLUSTER__ADDRESSES": "a:1"}).cluster_addresses("x")


@pytest.mark.parametrize("name, value", [
    ("attribution.retention_s", "-5"),
    ("attribution.max_future_s", "-1"),
    ("attribution.delay_s", "-3"),
    ("trust.clock_bound_s", "0"),
    ("attribution.shards", "0"),
    ("kafka.timeout_s", "0"),
    ("limits.depth", "300"),
    ("limits.message_bytes", "10"),
    ("cluster.port", "70000"),
])
def test_a_number_out_of_range_is_refused_with_the_setting_and_the_fix(name, value):
    section, field = name.split(".")
    with pytest.raises(ConfigError) as e:
        load_config(environ={f"FLOWATTR_{section.upper()}__{field.upper()}": value})
    message = str(e.value)
    assert message.startswith(f"{name} is {value}: set it between ") and f"FLOWATTR_{section.upper()}__" in message
    assert "\n" not in message


def test_every_number_has_a_range():
    numbers = {f"{section}.{f.name}" for section, cls in _SECTIONS.items()
               for f in dataclasses.fields(cls) if f.type in ("int", "float")}
    assert numbers == set(RANGES)
    load_config(environ={})  # and the defaults are inside them


def test_retention_shorter_than_the_wait_is_refused():
    with pytest.raises(ConfigError, match="retention_s must be at least attribution.max_wait_s"):
        load_config(environ={"FLOWATTR_ATTRIBUTION__RETENTION_S": "100"})


def test_the_job_needs_regions_with_its_own_among_them():
    with pytest.raises(ConfigError, match="no regions are configured"):
        check_job(load_config(environ={}))
    with pytest.raises(ConfigError, match="region 'eu' is not in \\[regions\\] \\(us\\)"):
        check_job(load_config(environ={"FLOWATTR_REGION": "eu", "FLOWATTR_REGIONS": "us=10.0.0.0/8"}))
    with pytest.raises(ConfigError, match="not a CIDR"):
        check_job(load_config(environ={}, overrides={"region": "us", "regions": "us=10.0.0.0/33"}))
    config = load_config(environ={}, overrides={"region": "us", "regions": "us=10.0.0.0/8,fd00::/48; eu=10.1.0.0/16"})
    check_job(config)
    assert config.regions == {"us": ("10.0.0.0/8", "fd00::/48"), "eu": ("10.1.0.0/16",)}
