"""A loopback stand-in for the Kubernetes API reads flowattr makes (flowattr-cni: GET a pod, GET a
ReplicaSet; flowattr entitle: list nodes), answering with the object shapes in tests/unit/k8s_objects. No API server runs here:
this checks flowattr's requests and its handling of the answers, not Kubernetes' behaviour."""

from __future__ import annotations

import json
import threading
import time
from contextlib import contextmanager
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

OBJECTS = Path(__file__).parent / "unit" / "k8s_objects"
ROUTES = {
    "/api/v1/namespaces/shop/pods/cart-7d9f8c6b5d-x2k9q": "deployment_pod",
    "/apis/apps/v1/namespaces/shop/replicasets/cart-7d9f8c6b5d": "deployment_replicaset",
    "/api/v1/namespaces/shop/pods/orders-db-1": "statefulset_pod",
    "/api/v1/nodes": "node_list",
}


def uid_of(name: str) -> str:
    return json.loads((OBJECTS / f"{name}.json").read_text())["metadata"]["uid"]


class StandIn:
    def __init__(self) -> None:
        self.seen: list[tuple[str, str | None]] = []  # (path, Authorization header)
        self.stall = threading.Event()  # answer only after 3 s


@contextmanager
def serving(directory: Path, token: str = "node-token"):
    """Yields (kubeconfig path, StandIn) for a server on 127.0.0.1 with a token file."""
    stand_in = StandIn()

    class Handler(BaseHTTPRequestHandler):
        def do_GET(self):
            stand_in.seen.append((self.path, self.headers.get("Authorization")))
            if stand_in.stall.is_set():
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
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    token_file = directory / "token"
    token_file.write_text(token)
    kubeconfig = directory / "kubeconfig"
    kubeconfig.write_text(json.dumps({
        "apiVersion": "v1", "kind": "Config", "current-context": "c",
        "clusters": [{"name": "k", "cluster": {"server": f"http://127.0.0.1:{server.server_port}"}}],
        "users": [{"name": "u", "user": {"tokenFile": str(token_file)}}],
        "contexts": [{"name": "c", "context": {"cluster": "k", "user": "u"}}],
    }))
    try:
        yield kubeconfig, stand_in
    finally:
        server.shutdown()
        server.server_close()
