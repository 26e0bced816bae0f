"""The HTTP endpoint of a flowattr process (a job process or an exporter): /metrics for Prometheus,
/healthz while the process is working, /readyz while it can do its job; 503 with the reason otherwise."""

from __future__ import annotations

import sys
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Callable

from prometheus_client import CONTENT_TYPE_LATEST, CollectorRegistry, generate_latest

from dataflow.config import ConfigError, MetricsConfig

# A check returns None when all is well, else why not, in a few words.
Check = Callable[[], "str | None"]


class Endpoint:
    def __init__(self, settings: MetricsConfig, registry: CollectorRegistry, live: Check, ready: Check):
        routes = {
            "/metrics": lambda: (200, CONTENT_TYPE_LATEST, generate_latest(registry)),
            "/healthz": lambda: _probe(live),
            "/readyz": lambda: _probe(ready),
        }

        class Handler(BaseHTTPRequestHandler):
            def do_GET(self):
                route = routes.get(self.path.split("?", 1)[0])
                status, kind, body = route() if route else (404, "text/plain", b"not found\n")
                self.send_response(status)
                self.send_header("Content-Type", kind)
                self.send_header("Content-Length", str(len(body)))
                self.end_headers()
                self.wfile.write(body)

            def log_message(self, *args):
                pass  # a probe every few seconds would bury the job's own lines

        try:
            self._server = ThreadingHTTPServer((settings.host, settings.port), Handler)
        except OSError as e:
            raise ConfigError(f"metrics.port {settings.port} on {settings.host}: {e.strerror}") from None
        self._server.daemon_threads = True
        self.port = self._server.server_address[1]
        print(f"flowattr: /metrics, /healthz and /readyz on http://{settings.host}:{self.port}", file=sys.stderr,
              flush=True)
        threading.Thread(target=self._server.serve_forever, name="metrics-endpoint", daemon=True).start()

    def close(self) -> None:
        self._server.shutdown()
        self._server.server_close()


def _probe(check: Check) -> tuple[int, str, bytes]:
    try:
        problem = check()
    except Exception as e:  # noqa: BLE001 - a check that fails says so in the answer, not in a traceback
        problem = f"check failed: {type(e).__name__}: {e}"
    if problem is None:
        return 200, "text/plain", b"ok\n"
    return 503, "text/plain", problem.encode() + b"\n"
