"""Session-wide real Kafka broker for integration tests, and a factory for fresh topics.

Which broker: FLOWATTR_KAFKA_BOOTSTRAP if set; else testcontainers' Kafka if a Docker engine
answers; else Apache Kafka's own jars via broker/launch.py. A broker that cannot start fails
the tests that need it; it never skips them.
"""
from __future__ import annotations

import os
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[2]
if str(REPO) not in sys.path:
    sys.path.insert(0, str(REPO))

from kafka_io import admin, create_topics, delete_topics, unique_name  # noqa: E402

ENV_BOOTSTRAP = "FLOWATTR_KAFKA_BOOTSTRAP"


def _docker_reachable() -> bool:
    try:
        import docker

        client = docker.from_env(timeout=3)
        try:
            return bool(client.ping())
        finally:
            client.close()
    except Exception:  # noqa: BLE001 - no SDK, no socket, no daemon: all mean "no Docker"
        return False


def _check_reachable(bootstrap: str, source: str) -> None:
    try:
        md = admin(bootstrap).list_topics(timeout=15)
    except Exception as e:  # noqa: BLE001
        pytest.fail(f"Kafka at {bootstrap} ({source}) does not answer: {e}", pytrace=False)
    if not md.brokers:
        pytest.fail(f"Kafka at {bootstrap} ({source}) lists no brokers", pytrace=False)


@pytest.fixture(scope="session")
def kafka_bootstrap():
    """'host:port' of a running Kafka broker, the same one for the whole session."""
    given = os.environ.get(ENV_BOOTSTRAP)
    if given:
        _check_reachable(given, f"from ${ENV_BOOTSTRAP}")
        yield given
        return

    if _docker_reachable():
        try:
            from testcontainers.community.kafka import KafkaContainer
        except ImportError:  # testcontainers before the community/ split
            from testcontainers.kafka import KafkaContainer
        try:
            container = KafkaContainer().with_kraft().start()
        except Exception as e:  # noqa: BLE001
            pytest.fail(f"Docker answers but the Kafka container did not start: {e}", pytrace=False)
        try:
            bootstrap = container.get_bootstrap_server()
            _check_reachable(bootstrap, "testcontainers")
            yield bootstrap
        finally:
            container.stop()
        return

    from broker.launch import Broker, BrokerError

    broker = Broker()
    try:
        broker.start()
    except BrokerError as e:
        pytest.fail(f"could not start the Kafka broker from broker/launch.py: {e}", pytrace=False)
    try:
        yield broker.bootstrap
    finally:
        broker.stop()


@pytest.fixture
def kafka_topics(kafka_bootstrap):
    """Factory: kafka_topics("flows.raw", "flows.attributed", partitions=4) creates topics
    named after those bases plus a unique suffix, and returns the real names in order.
    They are deleted when the test ends."""
    created: list[str] = []

    def make(*bases: str, partitions: int = 1, config: dict[str, str] | None = None) -> list[str]:
        names = [unique_name(b) for b in (bases or ("topic",))]
        create_topics(kafka_bootstrap, names, partitions=partitions, config=config)
        created.extend(names)
        return names

    yield make
    try:
        delete_topics(kafka_bootstrap, created)
    except Exception:  # noqa: BLE001 - leftover topics are harmless on a per-session broker
        pass
