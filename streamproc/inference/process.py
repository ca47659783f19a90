"""`streamproc serve` as a child process, for the demo and the tests: started, awaited until
it answers, stopped."""

from __future__ import annotations

import subprocess
import sys
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import httpx

from streamproc.errors import ServiceError
from streamproc.settings import Settings
from streamproc.worker.runner import child_process


def serve_argv(models: list[str]) -> list[str]:
    argv = [sys.executable, "-m", "streamproc", "serve"]
    for model in models:
        argv += ["--model", model]
    return argv


def endpoint_ready(settings: Settings, model: str) -> bool:
    try:
        url = f"{settings.inference.url_for(model)}/.well-known/ready"
        return httpx.get(url, timeout=2.0).status_code < 300
    except httpx.HTTPError:
        return False


@contextmanager
def serving(
    settings: Settings, models: list[str], log: Path, timeout_s: float = 180.0
) -> Iterator[subprocess.Popen[bytes]]:
    """The endpoint for `models` with exactly these settings, ready when this yields."""
    with child_process(serve_argv(models), settings, log, stop_timeout_s=30.0) as proc:
        deadline = time.monotonic() + timeout_s
        while not all(endpoint_ready(settings, m) for m in models):
            if proc.poll() is not None:
                raise ServiceError(f"streamproc serve exited ({proc.returncode}); see {log}")
            if time.monotonic() > deadline:
                raise ServiceError(f"streamproc serve not ready after {timeout_s:.0f}s; see {log}")
            time.sleep(0.25)
        yield proc
