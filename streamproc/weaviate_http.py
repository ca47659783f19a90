"""Weaviate's REST and GraphQL API over plain httpx, for read paths that must start fast.

`weaviate-client` takes about 1.7 s to import; `streamproc search` needs three HTTP calls, so
it uses this instead and never imports the client (or gRPC).
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

import httpx

from streamproc.errors import ConfigurationError, StreamprocError, TransientError
from streamproc.settings import WeaviateSettings

TIMEOUT_S = 30.0


def refused_key(settings: WeaviateSettings, status: int) -> ConfigurationError:
    problem = (
        "refused the API key in STREAMPROC_WEAVIATE__API_KEY"
        if settings.api_key
        else "needs an API key: set STREAMPROC_WEAVIATE__API_KEY"
    )
    return ConfigurationError(f"Weaviate at {settings.http_url} {problem} (HTTP {status})")


class GraphQLError(StreamprocError):
    """Weaviate answered a GraphQL query with errors; `messages` are Weaviate's own."""

    def __init__(self, messages: list[str]) -> None:
        super().__init__("; ".join(messages))
        self.messages = messages


class WeaviateHttp:
    def __init__(self, settings: WeaviateSettings, client: httpx.Client) -> None:
        self.settings = settings
        self.client = client

    def get(self, path: str) -> Any | None:
        """The JSON at `/v1{path}`, or None where Weaviate answers 404."""
        response = self._send("GET", path)
        return None if response.status_code == 404 else response.json()

    def graphql(self, query: str) -> dict[str, Any]:
        """`data` of a GraphQL answer; its `errors` raise GraphQLError."""
        answer = self._send("POST", "/graphql", json={"query": query}).json()
        errors = answer.get("errors")
        if errors:
            raise GraphQLError([str(e.get("message", e)) for e in errors])
        return dict(answer.get("data") or {})

    def _send(self, method: str, path: str, **kwargs: Any) -> httpx.Response:
        url = self.settings.http_url
        try:
            response = self.client.request(method, f"/v1{path}", **kwargs)
        except httpx.TransportError as exc:
            raise TransientError(f"cannot reach Weaviate at {url}: {exc!r}") from exc
        status = response.status_code
        if status in (401, 403):
            raise refused_key(self.settings, status)
        if status in (408, 429) or (status >= 500 and status != 501):
            raise TransientError(f"Weaviate at {url} answered HTTP {status} to {method} {path}")
        if status >= 400 and status != 404:
            raise StreamprocError(
                f"Weaviate at {url} refused {method} {path} (HTTP {status}): {response.text[:500]}"
            )
        return response


@contextmanager
def connect_http(settings: WeaviateSettings) -> Iterator[WeaviateHttp]:
    key = settings.api_key
    headers = {"Authorization": f"Bearer {key.get_secret_value()}"} if key else {}
    with httpx.Client(base_url=settings.http_url, headers=headers, timeout=TIMEOUT_S) as client:
        yield WeaviateHttp(settings, client)
