"""The librdkafka settings every flowattr Kafka client starts from (the job's sources, sinks and admin,
`flowattr tail`, the exporter's producer): brokers, TLS and SASL from the [kafka] section, in one place.
Nothing here prints or logs a setting's value: passwords pass through to librdkafka only."""

from __future__ import annotations

import os

from dataflow.config import ConfigError, KafkaConfig


def security_settings(kafka: KafkaConfig) -> dict[str, str]:
    """Everything but the bootstrap servers (Bytewax's connectors take those apart)."""
    protocol = kafka.security_protocol.upper()
    settings = {"security.protocol": protocol.lower()}
    if protocol.startswith("SASL_"):
        settings["sasl.mechanism"] = kafka.sasl_mechanism.upper()
        settings["sasl.username"] = kafka.sasl_username
        settings["sasl.password"] = kafka.sasl_password
    if protocol in ("SSL", "SASL_SSL"):
        for name, path, key in (
            ("kafka.ssl_ca_file", kafka.ssl_ca_file, "ssl.ca.location"),
            ("kafka.ssl_cert_file", kafka.ssl_cert_file, "ssl.certificate.location"),
            ("kafka.ssl_key_file", kafka.ssl_key_file, "ssl.key.location"),
        ):
            if path:
                _readable(name, path)
                settings[key] = path
        if kafka.ssl_key_password:
            settings["ssl.key.password"] = kafka.ssl_key_password
        settings["ssl.endpoint.identification.algorithm"] = "https" if kafka.ssl_verify_hostname else "none"
    return settings


def client_settings(kafka: KafkaConfig, **extra) -> dict:
    """A confluent-kafka client's configuration: bootstrap servers, security, then `extra`."""
    if not kafka.brokers:
        raise ConfigError("kafka.brokers is not set (FLOWATTR_KAFKA__BROKERS, [kafka] brokers or --brokers)")
    return {"bootstrap.servers": kafka.brokers, **security_settings(kafka), **extra}


def _readable(name: str, path: str) -> None:
    # librdkafka's own error for a missing file is a page of OpenSSL text, and comes late.
    if not os.access(path, os.R_OK):
        reason = "does not exist" if not os.path.exists(path) else "is not readable"
        raise ConfigError(f"{name} {path} {reason}")
