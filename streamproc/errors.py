"""One exception hierarchy: transient failures are retried, permanent ones go to a DLQ."""

from __future__ import annotations


class StreamprocError(Exception):
    """Base of every error streamproc raises on purpose."""


class TransientError(StreamprocError):
    """Worth retrying: a service is unavailable or timed out."""


class PermanentError(StreamprocError):
    """Retrying cannot help; the message goes to the dead-letter topic with `reason`."""

    reason: str = "permanent"

    def __init__(self, message: str, *, reason: str | None = None) -> None:
        super().__init__(message)
        if reason is not None:
            self.reason = reason


class SchemaError(PermanentError):
    """Bytes or JSON that do not match the Avro schema they claim."""

    reason = "schema"

    def __init__(self, schema: str, message: str, *, field: str | None = None) -> None:
        where = f" field {field!r}" if field else ""
        super().__init__(f"{schema}{where}: {message}")
        self.schema = schema
        self.field = field


class CollectionMissingError(StreamprocError):
    """A Weaviate collection that is not there: dropped by `collections retire`, or never made.
    Neither retried nor dead-lettered: the caller knows whether the collection must exist."""

    def __init__(self, collection: str) -> None:
        super().__init__(f"collection {collection} does not exist in Weaviate")
        self.collection = collection


class ConfigurationError(StreamprocError):
    """Settings, registry or cluster state that stops a worker from starting."""


class UnknownModelError(ConfigurationError):
    """A model name the registry does not hold."""


class ServiceError(StreamprocError):
    """A local service could not be provisioned, started or stopped."""


class StaleEventError(StreamprocError):
    """An event older than the version of its document already applied: a redelivery after a
    restart, or a DLQ replay superseded meanwhile. Skipped, not dead-lettered: nothing is
    wrong with it, and its newer version is what the index must hold."""


class SkippedRecordsError(StreamprocError):
    """The Kafka consumer handed an agent a record after stepping over earlier ones."""
