"""The health endpoint a Kubernetes liveness probe asks: unhealthy on a real stall."""

from __future__ import annotations

import socket
import time
from pathlib import Path

import httpx
import pytest

from streamproc.settings import Settings
from tests.conftest import with_topics
from tests.pipeline_support import Workers, embed_done_keys, event, produce_events

pytestmark = pytest.mark.integration


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def _get(url: str) -> httpx.Response | None:
    try:
        return httpx.get(url, timeout=2)
    except httpx.TransportError:
        return None


def _poll(url: str, status: int, timeout: float) -> httpx.Response:
    deadline = time.monotonic() + timeout
    while (response := _get(url)) is None or response.status_code != status:
        if time.monotonic() > deadline:
            got = None if response is None else (response.status_code, response.text)
            raise AssertionError(f"{url}: not {status} within {timeout:.0f}s; last: {got}")
        time.sleep(0.5)
    return response


def test_a_stalled_chunker_turns_unhealthy_and_a_working_one_is_healthy(
    settings: Settings, tmp_path: Path
) -> None:
    port = _free_port()
    settings = with_topics(
        settings.model_copy(
            update={
                "worker": settings.worker.model_copy(
                    update={
                        "health_port": port,
                        "health_host": "127.0.0.1",
                        "stall_threshold_s": 5.0,
                    }
                )
            }
        )
    )
    collection = settings.collection_for(settings.target_models[0])
    workers = Workers(settings, tmp_path)
    try:
        # The second document's chunking hangs for good: a stall nothing retries.
        workers.start("chunker", env={"STREAMPROC_FAILPOINTS": "chunker.process=2@hang"})
        base = f"http://127.0.0.1:{port}"
        _poll(f"{base}/readyz", 200, timeout=180)
        produce_events(settings, [event("health", "one", "# One\n\nFine.")])
        workers.start("embedder", env={"STREAMPROC_WORKER__HEALTH_PORT": str(_free_port())})
        embed_done_keys(settings, collection, {"health/one/p1/0"})
        healthy = _poll(f"{base}/healthz", 200, timeout=30).json()
        assert healthy["healthy"] is True
        produce_events(settings, [event("health", "two", "# Two\n\nHangs.")])
        stalled = _poll(f"{base}/healthz", 503, timeout=60).json()
        assert stalled["healthy"] is False
        assert stalled["oldest_work_s"] > 5.0
        assert stalled["retrying"] is False
        # Its chunking thread never returns, so it would not stop on SIGTERM either.
        workers.kill("chunker")
    finally:
        workers.stop()
