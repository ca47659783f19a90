"""Weaviate client errors, classified at the edge: the client's real exception objects."""

from __future__ import annotations

import time
from uuid import uuid4

import grpc
import httpx
import pytest
import weaviate.connect.v4 as connection
from grpc.aio import AioRpcError, Metadata
from weaviate.exceptions import (
    InsufficientPermissionsError,
    UnexpectedStatusCodeError,
    WeaviateBaseError,
    WeaviateBatchError,
    WeaviateConnectionError,
    WeaviateDeleteManyError,
    WeaviateQueryError,
    WeaviateRetryError,
    WeaviateTenantGetError,
    WeaviateTimeoutError,
)

import streamproc.weaviate_client as weaviate_client
from streamproc.errors import (
    CollectionMissingError,
    ConfigurationError,
    PermanentError,
    TransientError,
)
from streamproc.weaviate_errors import (
    UNRULED,
    Recovery,
    Verdict,
    error_verdict,
    mapped_error,
    message_verdict,
)
from streamproc.weaviate_store import WeaviateStore
from tests.stand_ins import unconnected_store


def _status(code: int, body: object = None) -> UnexpectedStatusCodeError:
    return UnexpectedStatusCodeError("Object was not added", httpx.Response(code, json=body))


def _rpc(code: grpc.StatusCode, details: str) -> AioRpcError:
    return AioRpcError(code, Metadata(), Metadata(), details=details)


def _wrapped(code: grpc.StatusCode, details: str) -> WeaviateBaseError:
    """As the sync client raises it: inside `except RpcError`, so the call is the context."""
    try:
        raise _rpc(code, details)
    except AioRpcError as exc:
        try:
            raise WeaviateBatchError(str(exc.details())) from None
        except WeaviateBatchError as batch:
            batch.__context__ = exc
            return batch


@pytest.mark.parametrize(
    ("error", "verdict"),
    [
        (_status(429), Verdict.TRANSIENT),
        (_status(408), Verdict.TRANSIENT),
        (_status(500), Verdict.TRANSIENT),
        (_status(503), Verdict.TRANSIENT),
        (_status(501), Verdict.PERMANENT),
        (_status(400), Verdict.PERMANENT),
        (_status(422, {"error": [{"message": "invalid property"}]}), Verdict.PERMANENT),
        (_status(401), Verdict.CONFIGURATION),
        (InsufficientPermissionsError(httpx.Response(403)), Verdict.CONFIGURATION),
        (WeaviateConnectionError("refused"), Verdict.TRANSIENT),
        (WeaviateTimeoutError("read"), Verdict.TRANSIENT),
        (WeaviateRetryError("unavailable", 5), Verdict.TRANSIENT),
        (httpx.ReadError("connection reset by peer"), Verdict.TRANSIENT),
        (httpx.WriteTimeout("slow"), Verdict.TRANSIENT),
        # What Weaviate 1.38 answers once `collections retire` dropped the collection.
        (
            _status(
                422, {"error": [{"message": "updating schema: TYPE_ADD_TENANT: class not found"}]}
            ),
            Verdict.COLLECTION_MISSING,
        ),
        (
            WeaviateTenantGetError("could not get tenants: class not found"),
            Verdict.COLLECTION_MISSING,
        ),
        (
            WeaviateDeleteManyError(
                "[UNKNOWN] batch delete params: could not find class X in schema"
            ),
            Verdict.COLLECTION_MISSING,
        ),
    ],
)
def test_by_type_and_http_status(error: BaseException, verdict: Verdict) -> None:
    assert error_verdict(error) is verdict


@pytest.mark.parametrize(
    ("code", "verdict"),
    [
        (grpc.StatusCode.UNAVAILABLE, Verdict.TRANSIENT),
        (grpc.StatusCode.DEADLINE_EXCEEDED, Verdict.TRANSIENT),
        (grpc.StatusCode.RESOURCE_EXHAUSTED, Verdict.TRANSIENT),
        (grpc.StatusCode.ABORTED, Verdict.TRANSIENT),
        (grpc.StatusCode.INVALID_ARGUMENT, Verdict.PERMANENT),
        (grpc.StatusCode.FAILED_PRECONDITION, Verdict.PERMANENT),
        (grpc.StatusCode.PERMISSION_DENIED, Verdict.CONFIGURATION),
    ],
)
def test_by_grpc_status_of_the_wrapped_call(code: grpc.StatusCode, verdict: Verdict) -> None:
    assert error_verdict(_wrapped(code, "some details")) is verdict
    # The async client chains it as the cause instead.
    query = WeaviateQueryError("some details", "GRPC search")
    query.__cause__ = _rpc(code, "some details")
    assert error_verdict(query) is verdict


def test_grpc_unknown_is_judged_by_its_message() -> None:
    assert error_verdict(_wrapped(grpc.StatusCode.UNKNOWN, "store is read-only")) is (
        Verdict.TRANSIENT
    )
    assert error_verdict(_wrapped(grpc.StatusCode.UNKNOWN, "context deadline exceeded")) is (
        Verdict.TRANSIENT
    )
    assert error_verdict(
        _wrapped(grpc.StatusCode.UNKNOWN, "could not find class Chunk_m_v1 in schema")
    ) is (Verdict.COLLECTION_MISSING)
    # Nothing says what it is: unexpected, so the process ends.
    assert error_verdict(_wrapped(grpc.StatusCode.UNKNOWN, 'tenant not found: "x"')) is None


@pytest.mark.parametrize(
    ("message", "verdict"),
    [
        ("shard Chunk_m_v1_acme: store is read-only", Verdict.TRANSIENT),
        ("context deadline exceeded", Verdict.TRANSIENT),
        ("put object: connection refused", Verdict.TRANSIENT),
        ("rpc error: code = Unavailable desc = too many requests", Verdict.TRANSIENT),
        ("class 'Chunk_m_v1' not present in schema", Verdict.COLLECTION_MISSING),
        # What a restarted node answers before it knows its cluster membership.
        (
            "explorer: list class: search: object search at index chunk_m_v1: "
            "no read replica found",
            Verdict.TRANSIENT,
        ),
        ('resolve node name "node1" to host', Verdict.TRANSIENT),
        (
            "explorer: list class: search: tried to browse non-existing index for Chunk_m_v1.",
            Verdict.TRANSIENT,
        ),
        ("index for class Chunk_m_v1 not found locally", Verdict.TRANSIENT),
        (
            "batch delete: cannot find index for class Chunk_m_v1.",
            Verdict.TRANSIENT,
        ),
        (
            "invalid integer property 'chunk_index' on class 'Chunk_m_v1': requires an integer, "
            "the given value is 'a timeout, a lost connection, class not found'",
            None,
        ),
        (
            "Validate vector index content for target vector 0: new node has a vector with "
            "length 3. Existing nodes have vectors with length 2",
            None,
        ),
    ],
)
def test_per_object_messages(message: str, verdict: Verdict | None) -> None:
    assert message_verdict(message) is verdict


def test_mapped_errors_are_streamprocs() -> None:
    assert isinstance(mapped_error(_status(503), "C"), TransientError)
    permanent = mapped_error(_status(422), "C")
    assert isinstance(permanent, PermanentError) and permanent.reason == "weaviate"
    assert isinstance(mapped_error(_status(403), "C"), ConfigurationError)
    missing = mapped_error(WeaviateTenantGetError("class not found"), "C")
    assert isinstance(missing, CollectionMissingError) and missing.collection == "C"
    assert mapped_error(_wrapped(grpc.StatusCode.UNKNOWN, "no idea"), "C") is None


def test_a_rejection_travels_on_without_the_value_weaviate_quotes_back() -> None:
    uuid = uuid4()
    message = "invalid text property 'chunk_index': the given value is 'secret document text'"
    result = unconnected_store()._sorted("C", [uuid], {uuid: message})
    assert "secret document text" not in result.failed[uuid]
    assert "chunk_index" in result.failed[uuid]


def _raising(store: WeaviateStore, error: BaseException) -> None:
    with store._edge("C"):
        raise error


def test_an_unknown_error_ends_the_process_unless_weaviate_is_coming_back() -> None:
    """A restarted node's first answers (CI met three in turn that no rule knew) are waited out
    for the grace after the outage's last transient failure, not crashed on."""
    clock = [1000.0]
    store = unconnected_store()
    store._recovery = Recovery(30.0, clock=lambda: clock[0])
    unknown = _wrapped(grpc.StatusCode.UNKNOWN, "some startup message nobody knows")
    with pytest.raises(WeaviateBatchError):
        _raising(store, unknown)

    with pytest.raises(TransientError):
        _raising(store, _wrapped(grpc.StatusCode.UNAVAILABLE, "connection refused"))
    clock[0] += 29
    with pytest.raises(TransientError):
        _raising(store, unknown)
    uuid = uuid4()
    retried = store._sorted("C", [uuid], {uuid: "some startup message nobody knows"})
    assert (retried.failed, list(retried.retry)) == ({}, [uuid])
    assert retried.retry[uuid].startswith(UNRULED)

    # An unknown error does not extend the grace: one that lasts still ends the process.
    clock[0] += 2
    with pytest.raises(WeaviateBatchError):
        _raising(store, unknown)
    assert list(store._sorted("C", [uuid], {uuid: "still unknown"}).failed) == [uuid]
    # A refusal for now while Weaviate serves (a read-only shard) opens no grace...
    other = uuid4()
    busy = store._sorted("C", [uuid, other], {uuid: "store is read-only", other: "odd"})
    assert (list(busy.retry), list(busy.failed)) == ([uuid], [other])
    with pytest.raises(TransientError):
        _raising(store, _wrapped(grpc.StatusCode.RESOURCE_EXHAUSTED, "too many requests"))
    with pytest.raises(WeaviateBatchError):
        _raising(store, unknown)
    # ...a restarting node's per-object message does, for the batch's other objects as well.
    mixed = store._sorted("C", [uuid, other], {uuid: "no read replica found", other: "odd"})
    assert (mixed.failed, set(mixed.retry)) == ({}, {uuid, other})


class _Unavailable(grpc.RpcError):
    def code(self) -> grpc.StatusCode:
        return grpc.StatusCode.UNAVAILABLE


def test_a_call_weaviate_answers_unavailable_raises_at_once_for_our_retry() -> None:
    """The client's own retry would sleep up to 32 s inside the call (weaviate-client looks
    `_Retry` up at each call, so importing `weaviate_client` replaces it everywhere)."""
    assert connection._Retry is weaviate_client._RaiseAtOnce

    def call() -> None:
        raise _Unavailable()

    started = time.monotonic()
    with pytest.raises(WeaviateRetryError) as raised:
        connection._Retry(4).with_exponential_backoff(0, "Batch objects", call)
    assert time.monotonic() - started < 0.5
    assert error_verdict(raised.value) is Verdict.TRANSIENT
