"""Connecting to Weaviate: the client, its gRPC channel and in-call retry, and a refused key
said plainly."""

from __future__ import annotations

from collections.abc import Awaitable, Callable, Iterator
from contextlib import contextmanager
from typing import Any

import grpc
import weaviate
import weaviate.connect.v4 as weaviate_connection
from weaviate.classes.init import AdditionalConfig, GrpcConfig
from weaviate.exceptions import UnexpectedStatusCodeError, WeaviateBaseError, WeaviateRetryError

from streamproc.errors import TransientError
from streamproc.settings import WeaviateSettings
from streamproc.weaviate_http import refused_key

# gRPC waits longer and longer between reconnects while Weaviate is away (up to two minutes by
# default; about 30 s after a one-minute outage), failing every call meanwhile: capped at 2 s,
# a worker's next try after Weaviate's return finds the channel connected.
_CHANNEL = [
    ("grpc.initial_reconnect_backoff_ms", 500),
    ("grpc.min_reconnect_backoff_ms", 500),
    ("grpc.max_reconnect_backoff_ms", 2000),
]


@contextmanager
def connect(settings: WeaviateSettings) -> Iterator[weaviate.WeaviateClient]:
    auth = (
        weaviate.auth.AuthApiKey(settings.api_key.get_secret_value()) if settings.api_key else None
    )
    try:
        client = weaviate.connect_to_custom(
            http_host=settings.http_host,
            http_port=settings.http_port,
            http_secure=settings.http_secure,
            grpc_host=settings.grpc_host,
            grpc_port=settings.grpc_port,
            grpc_secure=settings.grpc_secure,
            auth_credentials=auth,
            # The default checks also ask pypi.org for the newest client: no outside calls.
            skip_init_checks=True,
            additional_config=AdditionalConfig(grpc_config=GrpcConfig(channel_options=_CHANNEL)),
        )
        if not client.is_ready():
            client.close()
            raise TransientError(f"Weaviate at {settings.http_url} is not ready")
    except WeaviateBaseError as exc:
        # Connecting reads the server's metadata, which needs the key: a refused key shows here.
        if isinstance(exc, UnexpectedStatusCodeError) and exc.status_code in (401, 403):
            raise refused_key(settings, exc.status_code) from None
        raise TransientError(f"cannot connect to Weaviate at {settings.http_url}: {exc}") from exc
    try:
        yield client
    finally:
        client.close()


class _RaiseAtOnce:
    """Stands in for the client's retry of a gRPC call that Weaviate answers UNAVAILABLE. The
    client's own sleeps 1, 2, 4, ... 32 s inside the call, so a worker would notice Weaviate's
    return up to half a minute late. Retrying in place is ours (`delivery.backoff`, capped at
    5 s): the call raises at once, with the error the client raises after its last try."""

    def __init__(self, _tries: float = 0) -> None:
        pass

    def with_exponential_backoff(
        self, count: int, error: str, f: Callable[..., Any], *args: Any, **kwargs: Any
    ) -> Any:
        try:
            return f(*args, **kwargs)
        except grpc.RpcError as exc:
            if exc.code() != grpc.StatusCode.UNAVAILABLE:  # type: ignore[attr-defined]
                raise
            raise WeaviateRetryError(str(exc), count) from exc

    async def awith_exponential_backoff(
        self, count: int, error: str, f: Callable[..., Awaitable[Any]], *args: Any, **kwargs: Any
    ) -> Any:
        try:
            return await f(*args, **kwargs)
        except grpc.aio.AioRpcError as exc:
            if exc.code() != grpc.StatusCode.UNAVAILABLE:
                raise
            raise WeaviateRetryError(str(exc), count) from exc


# weaviate-client looks `_Retry` up in this module at each call.
weaviate_connection._Retry = _RaiseAtOnce  # type: ignore[attr-defined,assignment]
