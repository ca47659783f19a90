"""The container image's HEALTHCHECK: `python -m streamproc.healthcheck` exits 0 when the
process the container runs says it is healthy, 1 otherwise.

One image runs every role, so it asks each endpoint the settings give a port to: the worker's
`/healthz` (and the next port's, for `worker --role all`) and the inference endpoint's
`/.well-known/live`. Healthy when at least one answers and every one that answers says 200.
"""

from __future__ import annotations

import sys

import httpx

from streamproc.settings import Settings, load_settings

TIMEOUT_S = 3.0


def endpoints(settings: Settings) -> list[str]:
    urls = []
    if settings.worker.health_port is not None:
        for port in (settings.worker.health_port, settings.worker.health_port + 1):
            urls.append(f"http://127.0.0.1:{port}/healthz")
    urls.append(f"http://127.0.0.1:{settings.inference.port}/.well-known/live")
    return urls


def check(urls: list[str]) -> tuple[bool, str]:
    answers = {}
    for url in urls:
        try:
            answers[url] = httpx.get(url, timeout=TIMEOUT_S).status_code
        except httpx.TransportError:
            continue
    if not answers:
        return False, f"nothing answered at {', '.join(urls)}"
    healthy = all(status == 200 for status in answers.values())
    return healthy, "; ".join(f"{url}: HTTP {status}" for url, status in answers.items())


def main() -> None:
    healthy, said = check(endpoints(load_settings()))
    print(said)
    sys.exit(0 if healthy else 1)


if __name__ == "__main__":
    main()
