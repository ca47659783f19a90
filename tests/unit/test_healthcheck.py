"""The image's HEALTHCHECK against real HTTP servers answering like a worker's /healthz."""

from __future__ import annotations

import threading
from collections.abc import Iterator
from contextlib import contextmanager
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

from streamproc.healthcheck import check, endpoints
from streamproc.settings import Settings


@contextmanager
def _server(status: int) -> Iterator[str]:
    class Handler(BaseHTTPRequestHandler):
        def do_GET(self) -> None:
            self.send_response(status)
            self.end_headers()

        def log_message(self, *args: object) -> None:
            pass

    server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    try:
        yield f"http://127.0.0.1:{server.server_address[1]}/healthz"
    finally:
        server.shutdown()
        server.server_close()


def test_healthy_only_when_every_answering_endpoint_says_200() -> None:
    with _server(200) as ok, _server(503) as stalled:
        closed = "http://127.0.0.1:1/healthz"
        assert check([closed, ok])[0] is True
        assert check([ok, stalled])[0] is False
        assert check([closed])[0] is False


def test_it_asks_the_worker_ports_and_the_inference_endpoint() -> None:
    settings = Settings(worker={"health_port": 8081}, inference={"port": 8090})
    assert endpoints(settings) == [
        "http://127.0.0.1:8081/healthz",
        "http://127.0.0.1:8082/healthz",
        "http://127.0.0.1:8090/.well-known/live",
    ]
