"""Weaviate's REST and GraphQL API over the standard library's `http.client`, for read paths that
must start fast.

`weaviate-client` takes about 1.7 s to import, and httpx 0.3 s (its `httpx` command line pulls
in rich, pygments and click whenever they are installed); `streamproc search` needs three HTTP
calls on one connection, so it uses this and imports neither.
"""

from __future__ import annotations

import http.client
import json
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

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
    def __init__(self, settings: WeaviateSettings, connection: http.client.HTTPConnection) -> None:
        self.settings = settings
        self.connection = connection
        key = settings.api_key
        self.headers = {"Authorization": f"Bearer {key.get_secret_value()}"} if key else {}

    def get(self, path: str) -> Any | None:
        """The JSON at `/v1{path}`, or None where Weaviate answers 404."""
        status, body = self._send("GET", path)
        return None if status == 404 else json.loads(body)

    def graphql(self, query: str) -> dict[str, Any]:
        """`data` of a GraphQL answer; its `errors` raise GraphQLError."""
        _, body = self._send("POST", "/graphql", {"query": query})
        answer = json.loads(body)
        errors = answer.get("errors")
        if errors:
            raise GraphQLError([str(e.get("message", e)) for e in errors])
        return dict(answer.get("data") or {})

    def _send(self, method: str, path: str, payload: Any = None) -> tuple[int, bytes]:
        url = self.settings.http_url
        headers = dict(self.headers)
        body = None
        if payload is not None:
            body = json.dumps(payload).encode()
            headers["Content-Type"] = "application/json"
        try:
            self.connection.request(method, f"/v1{path}", body=body, headers=headers)
            response = self.connection.getresponse()
            status, data = response.status, response.read()
        except (OSError, http.client.HTTPException) as exc:
            raise TransientError(f"cannot reach Weaviate at {url}: {exc!r}") from exc
        if status in (401, 403):
            raise refused_key(self.settings, status)
        if status in (408, 429) or (status >= 500 and status != 501):
            raise TransientError(f"Weaviate at {url} answered HTTP {status} to {method} {path}")
        if status >= 400 and status != 404:
            text = data[:500].decode(errors="replace")
            raise StreamprocError(
                f"Weaviate at {url} refused {method} {path} (HTTP {status}): {text}"
            )
        return status, data


@contextmanager
def connect_http(settings: WeaviateSettings) -> Iterator[WeaviateHttp]:
    kind = http.client.HTTPSConnection if settings.http_secure else http.client.HTTPConnection
    connection = kind(settings.http_host, settings.http_port, timeout=TIMEOUT_S)
    try:
        yield WeaviateHttp(settings, connection)
    finally:
        connection.close()
