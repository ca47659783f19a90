"""What a Weaviate client error means here: the one mapping from weaviate-client's, gRPC's and
httpx's errors to streamproc's (transient, permanent, configuration, collection missing),
applied at the store's edge."""

from __future__ import annotations

import logging
import math
import re
import time
from collections.abc import Callable, Sequence
from enum import Enum
from uuid import UUID

import httpx
from weaviate.exceptions import (
    AuthenticationFailedError,
    InsufficientPermissionsError,
    UnexpectedStatusCodeError,
    WeaviateConnectionError,
    WeaviateGRPCUnavailableError,
    WeaviateRetryError,
    WeaviateStartUpError,
    WeaviateTimeoutError,
)

from streamproc.errors import (
    CollectionMissingError,
    ConfigurationError,
    PermanentError,
    StreamprocError,
    TransientError,
)
from streamproc.weaviate_schema import WriteResult

log = logging.getLogger(__name__)


class Verdict(Enum):
    TRANSIENT = "transient"
    PERMANENT = "permanent"
    CONFIGURATION = "configuration"
    COLLECTION_MISSING = "collection missing"


# What a Weaviate client error means here: the one mapping, by exception type, gRPC status,
# HTTP status, then message. gRPC UNKNOWN (Weaviate's answer to most failures) and DATA_LOSS
# are left to the message.
_BY_TYPE: tuple[tuple[type[BaseException], Verdict], ...] = (
    (InsufficientPermissionsError, Verdict.CONFIGURATION),
    (AuthenticationFailedError, Verdict.CONFIGURATION),
    (WeaviateConnectionError, Verdict.TRANSIENT),
    (WeaviateTimeoutError, Verdict.TRANSIENT),
    (WeaviateRetryError, Verdict.TRANSIENT),
    (WeaviateStartUpError, Verdict.TRANSIENT),
    (WeaviateGRPCUnavailableError, Verdict.TRANSIENT),
    # What the client lets through from httpx untranslated: a reset, a write or pool timeout.
    (httpx.TransportError, Verdict.TRANSIENT),
)
_BY_GRPC_STATUS = {
    "UNAVAILABLE": Verdict.TRANSIENT,
    "DEADLINE_EXCEEDED": Verdict.TRANSIENT,
    "RESOURCE_EXHAUSTED": Verdict.TRANSIENT,
    "ABORTED": Verdict.TRANSIENT,
    "INTERNAL": Verdict.TRANSIENT,
    "CANCELLED": Verdict.TRANSIENT,
    "INVALID_ARGUMENT": Verdict.PERMANENT,
    "NOT_FOUND": Verdict.PERMANENT,
    "ALREADY_EXISTS": Verdict.PERMANENT,
    "FAILED_PRECONDITION": Verdict.PERMANENT,
    "OUT_OF_RANGE": Verdict.PERMANENT,
    "UNIMPLEMENTED": Verdict.PERMANENT,
    "UNAUTHENTICATED": Verdict.CONFIGURATION,
    "PERMISSION_DENIED": Verdict.CONFIGURATION,
}
# Weaviate 1.38 says so as "class 'X' not present in schema" (insert), "could not find class X
# in schema" (delete, query) and "class not found" (tenants).
_COLLECTION_MISSING = re.compile(r"not present in schema|could not find class|class not found")
# A restarted node serves gRPC a few seconds before it knows its own cluster membership (until
# its Raft election): reads say "no read replica found", writes fail each object with "resolve
# node name ... to host"; then, while it reloads its indexes, a read of a collection the schema
# holds says "tried to browse non-existing index", a write "index ... not found locally" and a
# delete "cannot find index for class".
_RESTARTING = (
    r"no read replica found|resolve node name|browse non-existing index|not found locally"
    r"|cannot find index for class"
)
# Replication says the last line's messages when peers are away.
_TRANSIENT_MESSAGE = re.compile(
    r"read-only|read only|readonly|deadline exceeded|timeout|timed out|connection|unavailable"
    r"|too many requests|not ready|leader|shutting down|context canceled|resource exhausted"
    rf"|{_RESTARTING}|cannot reach enough replicas|cannot achieve consistency level"
)
# Weaviate away or coming back, as opposed to refusing for now while it serves (a read-only
# shard, too many requests): what opens the store's grace (`Recovery`).
_AWAY = re.compile(rf"{_RESTARTING}|connection|unavailable|not ready|shutting down|leader")
_AWAY_TYPES = (
    WeaviateConnectionError,
    WeaviateRetryError,
    WeaviateStartUpError,
    WeaviateGRPCUnavailableError,
    httpx.TransportError,
)
# Weaviate ends a validation message with the value it refused ("..., the given value is
# '...'"): document data must not decide the verdict.
_REFUSED_VALUE = re.compile(r"the given value.*", re.DOTALL)
_REFUSED_VALUE_ANY_CASE = re.compile(r"the given value.*", re.DOTALL | re.IGNORECASE)


def message_verdict(message: str) -> Verdict | None:
    """The verdict a Weaviate message implies, if it implies one."""
    plain = _REFUSED_VALUE.sub("", message.lower())
    if _COLLECTION_MISSING.search(plain):
        return Verdict.COLLECTION_MISSING
    if _TRANSIENT_MESSAGE.search(plain):
        return Verdict.TRANSIENT
    return None


def away(error: BaseException | str) -> bool:
    """Whether a transient error (or per-object message) says Weaviate is away or restarting."""
    if isinstance(error, _AWAY_TYPES) or (
        isinstance(error, BaseException) and _grpc_status(error) == "UNAVAILABLE"
    ):
        return True
    return bool(_AWAY.search(str(error).lower()))


def error_verdict(exc: BaseException) -> Verdict | None:
    """The verdict on a Weaviate client error; None when nothing says (the process ends)."""
    if message_verdict(str(exc)) is Verdict.COLLECTION_MISSING:
        return Verdict.COLLECTION_MISSING
    for kind, verdict in _BY_TYPE:
        if isinstance(exc, kind):
            return verdict
    status = _grpc_status(exc)
    if status in _BY_GRPC_STATUS:
        return _BY_GRPC_STATUS[status]
    if status is None and isinstance(exc, UnexpectedStatusCodeError):
        return _http_verdict(exc.status_code)
    return message_verdict(str(exc))


def _http_verdict(status: int) -> Verdict | None:
    if status in (401, 403):
        return Verdict.CONFIGURATION
    if status in (408, 429) or (status >= 500 and status != 501):
        return Verdict.TRANSIENT
    if 400 <= status < 500 or status == 501:
        return Verdict.PERMANENT
    return None


def _grpc_status(exc: BaseException) -> str | None:
    """The status name of the gRPC call behind `exc`: the client wraps it, as cause or context."""
    seen: BaseException | None = exc
    while seen is not None:
        code = getattr(seen, "code", None)
        if type(seen).__module__.startswith("grpc") and callable(code):
            return str(getattr(code(), "name", "")) or None
        seen = seen.__cause__ or seen.__context__
    return None


def mapped_error(exc: BaseException, collection: str) -> StreamprocError | None:
    verdict = error_verdict(exc)
    detail = f"{type(exc).__name__}: {exc}"
    if verdict is Verdict.COLLECTION_MISSING:
        return CollectionMissingError(collection)
    if verdict is Verdict.TRANSIENT:
        return TransientError(detail)
    if verdict is Verdict.PERMANENT:
        return PermanentError(detail, reason="weaviate")
    if verdict is Verdict.CONFIGURATION:
        return ConfigurationError(f"Weaviate refused access to {collection}: {detail}")
    return None


# Marks the message of an object retried only because Weaviate is coming back (`Recovery`).
UNRULED = "(no rule; retried while Weaviate comes back)"


class Recovery:
    """Whether Weaviate is coming back: it was seen away or restarting (`away`) less than
    `grace_s` ago (the store waits out what it says then, `WeaviateStore._edge`). Refusals
    for now while it serves (a read-only shard, too many requests) open no grace: a lasting
    one would otherwise keep an unknown error from ever ending the process."""

    def __init__(self, grace_s: float = 30.0, clock: Callable[[], float] = time.monotonic) -> None:
        self.grace_s = grace_s
        self._clock = clock
        self._failed_at = -math.inf

    def failed(self) -> None:
        self._failed_at = self._clock()

    def recovering(self) -> bool:
        return self._clock() - self._failed_at < self.grace_s


def sorted_outcomes(
    collection: str, uuids: Sequence[UUID], errors: dict[UUID, str], recovery: Recovery
) -> WriteResult:
    """A write's per-object outcomes by verdict (`errors`: the message of each object Weaviate
    refused). A message that implies none is a rejection for good, unless Weaviate is coming
    back (`recovery`): then it is tried again, marked `UNRULED`."""
    written: list[UUID] = []
    failed: dict[UUID, str] = {}
    retry: dict[UUID, str] = {}
    for uuid in uuids:
        message = errors.get(uuid)
        verdict = None if message is None else message_verdict(message)
        if message is None:
            written.append(uuid)
        elif verdict is Verdict.COLLECTION_MISSING:
            raise CollectionMissingError(collection)
        elif verdict is Verdict.TRANSIENT:
            retry[uuid] = redacted(message)
        else:
            failed[uuid] = redacted(message)
    if any(away(m) for m in retry.values()):
        recovery.failed()
    if failed and recovery.recovering():
        log.warning(
            "weaviate object errors nothing classifies, while it recovers: retried",
            extra={"collection": collection, "objects": len(failed)},
        )
        retry.update({u: f"{UNRULED} {m}" for u, m in failed.items()})
        failed = {}
    return WriteResult(written, failed, retry)


def redacted(message: str) -> str:
    """The message without the value Weaviate quotes back: these messages travel on to logs,
    spans and dead-letter headers, which never carry document data."""
    return _REFUSED_VALUE_ANY_CASE.sub("the given value is <redacted>", message)
