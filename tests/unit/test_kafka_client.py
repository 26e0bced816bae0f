"""Kafka client settings from the configuration: TLS and SASL for every client, secrets never shown,
and the replication factor topics are created with."""

import pytest

from dataflow.config import ConfigError, load_config
from dataflow.kafka_client import client_settings, security_settings
from dataflow.kafka_io import replication_factor

SECRET = "s3cret-Pa55"


def secured(tmp_path, **extra):
    ca = tmp_path / "ca.pem"
    ca.write_text("-----BEGIN CERTIFICATE-----\n")
    environ = {
        "FLOWATTR_KAFKA__BROKERS": "kafka-1:9093,kafka-2:9093",
        "FLOWATTR_KAFKA__SECURITY_PROTOCOL": "SASL_SSL",
        "FLOWATTR_KAFKA__SASL_MECHANISM": "scram-sha-512",
        "FLOWATTR_KAFKA__SASL_USERNAME": "flowattr",
        "FLOWATTR_KAFKA__SASL_PASSWORD": SECRET,
        "FLOWATTR_KAFKA__SSL_CA_FILE": str(ca),
        **extra,
    }
    return load_config(environ=environ)


def test_sasl_ssl_from_the_environment_reaches_librdkafka(tmp_path):
    config = secured(tmp_path)
    settings = client_settings(config.kafka, **{"group.id": "g"})
    assert settings == {
        "bootstrap.servers": "kafka-1:9093,kafka-2:9093",
        "security.protocol": "sasl_ssl",
        "sasl.mechanism": "SCRAM-SHA-512",
        "sasl.username": "flowattr",
        "sasl.password": SECRET,
        "ssl.ca.location": str(tmp_path / "ca.pem"),
        "ssl.endpoint.identification.algorithm": "https",
        "group.id": "g",
    }


def test_plaintext_by_default_and_nothing_more():
    config = load_config(environ={"FLOWATTR_KAFKA__BROKERS": "k:9092"})
    assert client_settings(config.kafka) == {"bootstrap.servers": "k:9092", "security.protocol": "plaintext"}


def test_mutual_tls_without_sasl(tmp_path):
    for name in ("ca.pem", "client.pem", "client.key"):
        (tmp_path / name).write_text("x")
    config = load_config(environ={}, overrides={
        "kafka.brokers": "k:9093", "kafka.security_protocol": "SSL", "kafka.ssl_ca_file": str(tmp_path / "ca.pem"),
        "kafka.ssl_cert_file": str(tmp_path / "client.pem"), "kafka.ssl_key_file": str(tmp_path / "client.key"),
        "kafka.ssl_verify_hostname": 0,
    })
    settings = security_settings(config.kafka)
    assert settings["ssl.certificate.location"] == str(tmp_path / "client.pem")
    assert settings["ssl.key.location"] == str(tmp_path / "client.key")
    assert settings["ssl.endpoint.identification.algorithm"] == "none"
    assert "sasl.mechanism" not in settings


def test_the_password_is_never_in_the_configs_text(tmp_path):
    config = secured(tmp_path, FLOWATTR_KAFKA__SSL_KEY_PASSWORD="key-" + SECRET)
    assert SECRET not in repr(config) and SECRET not in str(config.kafka)


@pytest.mark.parametrize("environ, complaint", [
    ({"FLOWATTR_KAFKA__SECURITY_PROTOCOL": "TLS"}, "kafka.security_protocol must be one of"),
    ({"FLOWATTR_KAFKA__SECURITY_PROTOCOL": "SASL_SSL", "FLOWATTR_KAFKA__SASL_MECHANISM": "GSSAPI",
      "FLOWATTR_KAFKA__SASL_USERNAME": "u", "FLOWATTR_KAFKA__SASL_PASSWORD": SECRET}, "kafka.sasl_mechanism"),
    ({"FLOWATTR_KAFKA__SECURITY_PROTOCOL": "SASL_SSL", "FLOWATTR_KAFKA__SASL_MECHANISM": "PLAIN",
      "FLOWATTR_KAFKA__SASL_PASSWORD": SECRET}, "kafka.sasl_username and kafka.sasl_password are needed"),
    ({"FLOWATTR_KAFKA__SASL_PASSWORD": SECRET}, "need kafka.security_protocol SASL_SSL"),
    ({"FLOWATTR_KAFKA__SSL_CA_FILE": "/ca.pem"}, "need kafka.security_protocol SSL or SASL_SSL"),
    ({"FLOWATTR_KAFKA__SECURITY_PROTOCOL": "SSL", "FLOWATTR_KAFKA__SSL_CERT_FILE": "/c.pem"}, "go together"),
])
def test_a_setting_that_cannot_work_is_one_line_naming_it_without_its_value(environ, complaint):
    with pytest.raises(ConfigError) as e:
        load_config(environ=environ)
    assert complaint in str(e.value) and SECRET not in str(e.value) and "\n" not in str(e.value)


def test_an_unreadable_ca_file_is_named_when_a_client_is_made(tmp_path):
    config = secured(tmp_path, FLOWATTR_KAFKA__SSL_CA_FILE=str(tmp_path / "missing.pem"))
    with pytest.raises(ConfigError, match=r"kafka.ssl_ca_file .*missing.pem does not exist"):
        client_settings(config.kafka)


def test_replication_factor_is_the_clusters_unless_that_is_one_copy_on_several_brokers():
    assert replication_factor(2, brokers=5, cluster_default=1) == 2  # configured wins
    assert replication_factor(-1, brokers=1, cluster_default=1) == -1  # one broker: its default
    assert replication_factor(-1, brokers=6, cluster_default=3) == -1  # the cluster's own default
    assert replication_factor(-1, brokers=2, cluster_default=1) == 2
    assert replication_factor(-1, brokers=6, cluster_default=1) == 3
    assert replication_factor(-1, brokers=6, cluster_default=None) == -1  # not allowed to ask: checked after


def test_topic_shape_defaults_to_the_clusters():
    k = load_config(environ={}).kafka
    assert (k.partitions, k.replication_factor) == (-1, -1)
    with pytest.raises(ConfigError, match="kafka.replication_factor"):
        load_config(environ={"FLOWATTR_KAFKA__REPLICATION_FACTOR": "0"})
