"""KubernetesOwners over HTTP with the official client: the GETs it makes, the token it sends, and
its fallbacks. There is no API server here: a loopback HTTP server answers with the object shapes
of tests/unit/k8s_objects, a stand-in for the requests and responses, not for Kubernetes' behaviour."""

from __future__ import annotations

import json
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import pytest

from exporter.owners import KubernetesOwners

OBJECTS = Path(__file__).parent / "k8s_objects"
ROUTES = {
    "/api/v1/namespaces/shop/pods/cart-7d9f8c6b5d-x2k9q": "deployment_pod",
    "/apis/apps/v1/namespaces/shop/replicasets/cart-7d9f8c6b5d": "deployment_replicaset",
    "/api/v1/namespaces/shop/pods/orders-db-1": "statefulset_pod",
}


@pytest.fixture
def api(tmp_path):
    seen = []
    stall = threading.Event()

    class Handler(BaseHTTPRequestHandler):
        def do_GET(self):
            seen.append((self.path, self.headers.get("Authorization")))
            if stall.is_set():
                time.sleep(3)
            name = ROUTES.get(self.path)
            body = (OBJECTS / f"{name}.json").read_bytes() if name else b'{"kind":"Status","code":404}'
            self.send_response(200 if name else 404)
            self.send_header("Content-Type", "application/json")
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            self.wfile.write(body)

        def log_message(self, *args):
            pass

    server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    kubeconfig = tmp_path / "kubeconfig"
    token = tmp_path / "token"
    token.write_text("node-token")
    kubeconfig.write_text(json.dumps({
        "apiVersion": "v1", "kind": "Config", "current-context": "c",
        "clusters": [{"name": "k", "cluster": {"server": f"http://127.0.0.1:{server.server_port}"}}],
        "users": [{"name": "u", "user": {"tokenFile": str(token)}}],
        "contexts": [{"name": "c", "context": {"cluster": "k", "user": "u"}}],
    }))
    yield KubernetesOwners(str(kubeconfig), timeout_s=0.5), seen, stall
    server.shutdown()


def test_a_deployments_pod_is_read_then_its_replicaset_with_the_token(api):
    owners, seen, _ = api
    assert owners.workload("shop", "cart-7d9f8c6b5d-x2k9q", "c1a4e2d8-3b6f-4f0a-8c2e-9e7d5a1b3c44") == ("shop/cart", "api")
    assert seen == [("/api/v1/namespaces/shop/pods/cart-7d9f8c6b5d-x2k9q", "Bearer node-token"),
                    ("/apis/apps/v1/namespaces/shop/replicasets/cart-7d9f8c6b5d", "Bearer node-token")]
    assert owners.workload("shop", "orders-db-1", None) == ("shop/orders-db", "api")


def test_another_pod_of_that_name_a_missing_pod_and_a_stalled_api_fall_back_to_the_pod_name(api):
    owners, seen, stall = api
    workload, how = owners.workload("shop", "cart-7d9f8c6b5d-x2k9q", "another-uid")
    assert (workload, how) == ("shop/pod/cart-7d9f8c6b5d-x2k9q", "fallback: pod uid differs")
    workload, how = owners.workload("shop", "gone-1", None)
    assert workload == "shop/pod/gone-1" and "HTTP 404" in how
    stall.set()
    started = time.monotonic()
    workload, how = owners.workload("shop", "orders-db-1", None)
    assert workload == "shop/pod/orders-db-1" and "fallback" in how
    assert time.monotonic() - started < 2.5  # the read timeout, not the server's 3 s
