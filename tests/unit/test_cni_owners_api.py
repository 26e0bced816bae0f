"""KubernetesOwners over HTTP with the official client: the GETs it makes, the token it sends, and
its fallbacks, against a loopback stand-in (tests/k8s_api.py; there is no API server here)."""

from __future__ import annotations

import time

import pytest

from exporter.owners import KubernetesOwners
from tests.k8s_api import serving, uid_of


@pytest.fixture
def api(tmp_path):
    with serving(tmp_path) as (kubeconfig, stand_in):
        yield KubernetesOwners(str(kubeconfig), timeout_s=0.5), stand_in


def test_a_deployments_pod_is_read_then_its_replicaset_with_the_token(api):
    owners, stand_in = api
    assert owners.workload("shop", "cart-7d9f8c6b5d-x2k9q", uid_of("deployment_pod")) == ("shop/cart", "api")
    assert stand_in.seen == [("/api/v1/namespaces/shop/pods/cart-7d9f8c6b5d-x2k9q", "Bearer node-token"),
                             ("/apis/apps/v1/namespaces/shop/replicasets/cart-7d9f8c6b5d", "Bearer node-token")]
    assert owners.workload("shop", "orders-db-1", None) == ("shop/orders-db", "api")


def test_another_pod_of_that_name_a_missing_pod_and_a_stalled_api_fall_back_to_the_pod_name(api):
    owners, stand_in = api
    workload, how = owners.workload("shop", "cart-7d9f8c6b5d-x2k9q", "another-uid")
    assert (workload, how) == ("shop/pod/cart-7d9f8c6b5d-x2k9q", "fallback: pod uid differs")
    workload, how = owners.workload("shop", "gone-1", None)
    assert workload == "shop/pod/gone-1" and "HTTP 404" in how
    stand_in.stall.set()
    started = time.monotonic()
    workload, how = owners.workload("shop", "orders-db-1", None)
    assert workload == "shop/pod/orders-db-1" and "fallback" in how
    assert time.monotonic() - started < 2.5  # the read timeout, not the server's 3 s
