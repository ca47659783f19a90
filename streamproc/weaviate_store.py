"""Weaviate edge: one multi-tenant collection per model version, named vectors, the serving alias."""

from __future__ import annotations

import logging
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from typing import Any
from uuid import UUID

import httpx
import weaviate
from weaviate.classes.config import Configure
from weaviate.classes.query import Filter
from weaviate.classes.tenants import Tenant
from weaviate.collections import Collection
from weaviate.collections.classes.data import DataObject
from weaviate.exceptions import (
    UnexpectedStatusCodeError,
    WeaviateBaseError,
    WeaviateDeleteManyError,
    WeaviateInsertManyAllFailedError,
)

import streamproc.weaviate_client  # noqa: F401  (a store's client retries our way, always)
from streamproc.errors import (
    CollectionMissingError,
    ConfigurationError,
    TransientError,
)
from streamproc.naming import CONTENT_VECTOR, weaviate_tenant
from streamproc.weaviate_errors import (
    Recovery,
    away,
    mapped_error,
    message_verdict,
    redacted,
    sorted_outcomes,
)
from streamproc.weaviate_schema import (
    PROPERTIES,
    ChunkObject,
    Found,
    WriteResult,
    query_endpoint,
    target_vector,
    vector_configs,
)

log = logging.getLogger(__name__)


class WeaviateStore:
    def __init__(self, client: weaviate.WeaviateClient) -> None:
        self.client = client
        self._known_tenants: dict[str, set[str]] = {}
        self._recovery = Recovery()

    def ensure_collection(
        self,
        name: str,
        dimension: int,
        *,
        heading_vector: bool = True,
        inference_url: str | None = None,
    ) -> None:
        """Create the collection if missing; refuse if it exists with another vector dimension.

        With `inference_url` (the endpoint of the collection's own model version), its named
        vectors name the `text2vec-transformers` vectorizer, so Weaviate embeds nearText and
        hybrid queries with that model; objects still arrive with their vectors, which Weaviate
        then never computes itself. Without it the vectors are only self-provided (nearVector).
        """
        if not self.client.collections.exists(name):
            try:
                self._create_collection(
                    name, dimension, heading_vector=heading_vector, inference_url=inference_url
                )
                return
            except UnexpectedStatusCodeError as exc:
                # Workers starting together race to create it; the loser uses the winner's.
                if not _already_exists(exc):
                    raise
        self._add_missing_properties(name)
        existing = self.vector_dimension(name)
        if existing is not None and existing != dimension:
            raise ConfigurationError(
                f"collection {name} holds {existing}-dimensional vectors but the model gives "
                f"{dimension}; register the model under a new version (a new collection) "
                f"or fix its dimension in the registry"
            )

    def _add_missing_properties(self, name: str) -> None:
        """A collection made by an older streamproc lacks newer properties (auto-schema is off,
        so a write carrying one would be refused): add them."""
        collection = self.client.collections.get(name)
        have = {p.name for p in collection.config.get().properties}
        for prop in PROPERTIES:
            if prop.name in have:
                continue
            try:
                collection.config.add_property(prop)
            except UnexpectedStatusCodeError as exc:
                if not _already_exists(exc):
                    raise

    def _create_collection(
        self, name: str, dimension: int, *, heading_vector: bool, inference_url: str | None
    ) -> None:
        vectors = vector_configs(heading_vector, inference_url)
        self.client.collections.create(
            name,
            properties=PROPERTIES,
            vector_config=vectors,
            multi_tenancy_config=Configure.multi_tenancy(
                enabled=True, auto_tenant_creation=True, auto_tenant_activation=True
            ),
            description=f"streamproc chunks, {dimension}-dimensional",
        )

    def vector_dimension(self, name: str) -> int | None:
        """The dimension of the collection's `content` vectors, from any one object, if it has any."""
        collection = self.client.collections.get(name)
        for tenant in collection.tenants.get():
            result = collection.with_tenant(tenant).query.fetch_objects(
                limit=1, include_vector=[CONTENT_VECTOR]
            )
            for obj in result.objects:
                vector = obj.vector.get(CONTENT_VECTOR)
                if vector:
                    return len(vector)
        return None

    def vector_names(self, name: str) -> set[str]:
        """The named vectors the collection was created with (no `heading` on older ones)."""
        return set(self.client.collections.get(name).config.get().vector_config or {})

    @contextmanager
    def _edge(self, name: str) -> Iterator[None]:
        """Client errors on the data path raised as streamproc's (`mapped_error`); one that
        nothing classifies is raised as it is, and the process ends on it.

        Except while Weaviate is coming back (`Recovery`: it was seen away or restarting): a
        restarted node answers its first seconds with messages of its startup that no rule may
        know yet (CI met three in turn), and ending the embedder on one costs a restart and
        proves nothing. Then it is transient; the grace ends with the outage's last failure, so
        a lasting unknown error still ends the process."""
        try:
            try:
                yield
            except (WeaviateBaseError, httpx.TransportError) as exc:
                error = mapped_error(exc, name)
                if isinstance(error, TransientError) and away(exc):
                    self._recovery.failed()
                if error is not None:
                    raise error from exc
                recovering = self._recovery.recovering()
                # The message, without the value Weaviate may quote, is what tells an operator
                # (and us) which rule is missing.
                message = redacted(str(exc))
                log.log(
                    logging.WARNING if recovering else logging.ERROR,
                    "weaviate error nothing classifies",
                    extra={
                        "collection": name,
                        "exc_type": type(exc).__name__,
                        "error": message[:800],
                        "recovering": recovering,
                    },
                )
                if recovering:
                    raise TransientError(f"{type(exc).__name__}: {message}") from exc
                raise
        except CollectionMissingError:
            # A collection made again under the same name starts without tenants.
            self._known_tenants.pop(name, None)
            raise

    def ensure_tenants(self, name: str, tenants: set[str]) -> None:
        known = self._known_tenants.setdefault(name, set())
        missing = {weaviate_tenant(t) for t in tenants} - known
        if not missing:
            return
        collection = self.client.collections.get(name)
        existing = set(collection.tenants.get())
        new = missing - existing
        if new:
            collection.tenants.create([Tenant(name=t) for t in sorted(new)])
        known.update(missing)

    def upsert(self, name: str, objects: Sequence[ChunkObject]) -> WriteResult:
        """Batch upsert; every object's result is checked and classified, none is dropped."""
        errors: dict[UUID, str] = {}
        with self._edge(name):
            self.ensure_tenants(name, {o.tenant for o in objects})
            for tenant, group in _by_tenant(objects).items():
                errors.update(_insert(self._with_tenant(name, tenant), group))
            return self._sorted(name, [o.uuid for o in objects], errors)

    def delete(self, name: str, tenant: str, uuids: Sequence[UUID]) -> WriteResult:
        """Delete by id; `written` holds the ids that are gone, absent ones included."""
        if not uuids:
            return WriteResult([], {})
        with self._edge(name):
            held = self._held_tenant(name, tenant)
            if held is None:
                return WriteResult(list(uuids), {})
            try:
                outcome = held.data.delete_many(
                    where=Filter.by_id().contains_any(list(uuids)), verbose=True
                )
            except WeaviateDeleteManyError as exc:
                if "batch delete reply" not in str(exc):
                    raise
                # Weaviate (1.38) cannot build the verbose reply when the shard as a whole
                # refused (read-only, say): its error names no object. Nothing is known to be
                # deleted, and deleting again is harmless.
                return WriteResult(
                    [], {}, dict.fromkeys(uuids, f"shard refused: {redacted(str(exc))}")
                )
            errors = {
                UUID(str(o.uuid)): o.error or "delete failed"
                for o in outcome.objects
                if not o.successful
            }
            return self._sorted(name, uuids, errors)

    def held(self, name: str, tenant: str, uuids: Sequence[UUID]) -> dict[UUID, tuple[Any, str]]:
        """(ingested_at, text_sha256) of those of `uuids` the collection holds."""
        if not uuids:
            return {}
        with self._edge(name):
            held = self._held_tenant(name, tenant)
            if held is None:
                return {}
            result = held.query.fetch_objects(
                filters=Filter.by_id().contains_any(list(uuids)),
                limit=len(uuids),
                return_properties=["ingested_at", "text_sha256"],
            )
        return {
            o.uuid: (o.properties["ingested_at"], str(o.properties["text_sha256"]))
            for o in result.objects
        }

    def count(self, name: str, tenant: str) -> int:
        with self._edge(name):
            held = self._held_tenant(name, tenant)
            if held is None:
                return 0
            return held.aggregate.over_all(total_count=True).total_count or 0

    def uuids(self, name: str, tenant: str) -> set[UUID]:
        return {o.uuid for o in self.objects(name, tenant, [])}

    def objects(self, name: str, tenant: str, properties: Sequence[str]) -> Iterator[Found]:
        """Every object of one tenant with `properties`; none when the collection lacks it."""
        with self._edge(name):
            held = self._held_tenant(name, tenant)
            if held is None:
                return
            for o in held.iterator(return_properties=list(properties)):
                yield Found(o.uuid, dict(o.properties))

    def near_vector(
        self,
        name: str,
        tenant: str,
        vector: Sequence[float],
        *,
        targets: Sequence[str],
        limit: int,
        properties: Sequence[str],
    ) -> list[Found]:
        """The `limit` objects of one tenant nearest to `vector` on the named vectors
        `targets` (their distances averaged), nearest first."""
        with self._edge(name):
            response = self._with_tenant(name, tenant).query.near_vector(
                list(vector),
                target_vector=target_vector(targets),
                limit=limit,
                return_properties=list(properties),
            )
        return [Found(o.uuid, dict(o.properties)) for o in response.objects]

    def exists(self, name: str) -> bool:
        with self._edge(name):
            return self.client.collections.exists(name)

    def query_endpoint(self, name: str, vector: str = CONTENT_VECTOR) -> str | None:
        """The endpoint the collection's named vector embeds queries with, if it names one."""
        with self._edge(name):
            return query_endpoint(self.client.collections.get(name).config.get(), vector)

    def collections(self, prefix: str) -> list[str]:
        """Every collection named `{prefix}_...`: one per model version."""
        return sorted(
            n for n in self.client.collections.list_all(simple=True) if n.startswith(f"{prefix}_")
        )

    def drop(self, name: str) -> None:
        self.client.collections.delete(name)

    def tenants(self, name: str) -> list[str]:
        with self._edge(name):
            return sorted(self.client.collections.get(name).tenants.get())

    def collection(self, name: str, tenant: str) -> Collection[Any, Any]:
        """One tenant of the collection as the client's handle, for the benchmark and tests,
        which query it in ways streamproc itself does not."""
        return self._with_tenant(name, tenant)

    def _with_tenant(self, name: str, tenant: str) -> Collection[Any, Any]:
        """One tenant of the collection, named as Weaviate's rules allow (`weaviate_tenant`):
        every per-tenant call comes through here."""
        return self.client.collections.get(name).with_tenant(weaviate_tenant(tenant))

    def _held_tenant(self, name: str, tenant: str) -> Collection[Any, Any] | None:
        """As `_with_tenant`, or None when the collection holds no such tenant (so no object of
        it): Weaviate refuses a read of a tenant it does not hold."""
        if weaviate_tenant(tenant) not in set(self.client.collections.get(name).tenants.get()):
            return None
        return self._with_tenant(name, tenant)

    def _sorted(self, name: str, uuids: Sequence[UUID], errors: dict[UUID, str]) -> WriteResult:
        return sorted_outcomes(name, uuids, errors, self._recovery)

    # --- the serving alias -------------------------------------------------------------------

    def alias_target(self, alias: str) -> str | None:
        found = self.client.alias.get(alias_name=alias)
        return found.collection if found else None

    def point_alias(self, alias: str, collection: str) -> str | None:
        """Point `alias` at `collection`, creating it if needed; returns the previous target."""
        previous = self.alias_target(alias)
        if previous is None:
            try:
                self.client.alias.create(alias_name=alias, target_collection=collection)
                return None
            except UnexpectedStatusCodeError as exc:
                if not _already_exists(exc):
                    raise
                previous = self.alias_target(alias)
        if previous is not None and previous != collection:
            self.client.alias.update(alias_name=alias, new_target_collection=collection)
        return previous


def _already_exists(exc: UnexpectedStatusCodeError) -> bool:
    return exc.status_code == 422 and "already exists" in str(exc)


def _insert(collection: Collection[Any, Any], group: list[ChunkObject]) -> dict[UUID, str]:
    """UUID -> message of each object Weaviate rejected."""
    try:
        result = collection.data.insert_many(
            [
                DataObject(properties=o.properties, uuid=o.uuid, vector=dict(o.vectors))
                for o in group
            ]
        )
    except WeaviateInsertManyAllFailedError as exc:
        # Every object was rejected, and the client keeps only the set of messages, not whose
        # each is: one that implies a verdict (a rejection for now) decides for the lot.
        messages = str(exc).partition("Here is the set of all errors: ")[2].splitlines()
        decisive = [m for m in messages if message_verdict(m) is not None]
        message = decisive[0] if decisive else "; ".join(messages) or str(exc)
        return dict.fromkeys((o.uuid for o in group), message)
    return {group[index].uuid: error.message for index, error in result.errors.items()}


def _by_tenant(objects: Sequence[ChunkObject]) -> dict[str, list[ChunkObject]]:
    groups: dict[str, list[ChunkObject]] = {}
    for obj in objects:
        groups.setdefault(obj.tenant, []).append(obj)
    return groups
