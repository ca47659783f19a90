"""The serving alias and the collections behind it: promote (verified), rollback, list, retire.

Every flip is recorded on `alias-changes`, so a rollback knows where to go back to and anyone
can read the history with `streamproc tail alias-changes --from-beginning`.
"""

from __future__ import annotations

import asyncio
from collections.abc import Mapping
from dataclasses import dataclass

from streamproc.backfill.commands import read_jobs, send_retire, wait_for, wait_for_retire_acks
from streamproc.backfill.jobs import Job, live_writer, now, writes_collection
from streamproc.backfill.verification import (
    QUALITY_CHECK,
    Verification,
    verify_collection_for_flip,
)
from streamproc.errors import StreamprocError
from streamproc.kafka_io import producer, read_to_end
from streamproc.models import EmbeddingModel
from streamproc.settings import Settings
from streamproc.topics import topics_for
from streamproc.verify import Hashes, TenantReport, compare_collection, live_hashes
from streamproc.weaviate_client import connect
from streamproc.weaviate_store import WeaviateStore


class VerificationFailed(StreamprocError):
    def __init__(self, report: Verification) -> None:
        failed = "; ".join(f"{c.name}: {c.detail}" for c in report.failures)
        super().__init__(f"refusing to flip the alias to {report.collection}: {failed}")
        self.report = report

    @property
    def forcible(self) -> bool:
        """Only the retrieval quality failed: `force` would flip."""
        return {c.name for c in self.report.failures} == {QUALITY_CHECK}


async def _record(settings: Settings, change: dict[str, object]) -> None:
    topic = topics_for(settings).alias_changes
    async with producer(settings) as prod:
        key = str(change["alias"]).encode()
        await (await prod.send(topic.name, topic.encode(change), key=key))


async def history(settings: Settings) -> list[dict[str, object]]:
    topic = topics_for(settings).alias_changes
    alias = settings.weaviate.collection_prefix
    changes = [
        topic.decode(r.value)
        async for r in read_to_end(settings, topic.name)
        if r.value is not None
    ]
    return [c for c in changes if c["alias"] == alias]


async def _flip(
    settings: Settings, store: WeaviateStore, target: str, action: str, report: str | None
) -> str | None:
    alias = settings.weaviate.collection_prefix
    if not store.exists(target):
        raise StreamprocError(f"collection {target} does not exist")
    previous = store.point_alias(alias, target)
    change = {
        "alias": alias,
        "previous": previous,
        "current": target,
        "action": action,
        "report": report,
        "changed_at": now(),
    }
    await _record(settings, change)
    return previous


async def verify_and_promote(
    settings: Settings,
    collection: str,
    model: EmbeddingModel | None = None,
    *,
    force: bool = False,
) -> tuple[Verification, str | None]:
    """Verify `collection`, then point the alias at it; refuses (alias untouched) on failure.

    `force` accepts a failed retrieval quality check, and nothing else: a collection that
    misses chunks or holds stale ones is never served. The flip's record says it was forced."""
    with connect(settings.weaviate) as client:
        store = WeaviateStore(client)
        report = await verify_collection_for_flip(settings, store, collection, model)
        if any(c.name != QUALITY_CHECK or not force for c in report.failures):
            raise VerificationFailed(report)
        summary = report.summary()
        if not report.ok:
            summary = f"FORCED past the {QUALITY_CHECK} check: {summary}"
        return report, await _flip(settings, store, collection, "PROMOTE", summary)


async def default_promotion_target(settings: Settings) -> str:
    """The newest completed backfill's collection, when the alias does not serve it yet."""
    jobs = sorted((await read_jobs(settings)).values(), key=lambda j: j["created_at"])
    with connect(settings.weaviate) as client:
        serving = WeaviateStore(client).alias_target(settings.weaviate.collection_prefix)
    for job in reversed(jobs):
        if job["state"] == "COMPLETED" and not job["retired"]:
            if job["target_collection"] == serving:
                break
            return str(job["target_collection"])
    raise StreamprocError("no completed backfill to promote; pass --collection")


async def rollback(settings: Settings) -> tuple[str, str]:
    """Point the alias back where it was before the last flip; returns (from, to)."""
    alias = settings.weaviate.collection_prefix
    with connect(settings.weaviate) as client:
        store = WeaviateStore(client)
        current = store.alias_target(alias)
        last = next((c for c in reversed(await history(settings)) if c["current"] == current), None)
        if current is None or last is None or not last["previous"]:
            raise StreamprocError(
                f"alias {alias} has no recorded previous collection to go back to"
            )
        previous = str(last["previous"])
        await _flip(settings, store, previous, "ROLLBACK", None)
    return current, previous


@dataclass(frozen=True)
class CollectionInfo:
    name: str
    model: str
    objects: int
    served: bool
    live_writes: str  # who keeps it fresh: "configured", "backfill job <id> (<state>)", or "-"
    # Whether it holds the chunk topic's live chunks (key set and text hashes, in the writing
    # job's tenant scope): "fresh", "STALE (...)", "replaying" while a job fills it, or "-"
    # when nothing writes it (it is not expected to be fresh).
    freshness: str


def freshness(reports: list[TenantReport]) -> str:
    stale = [r for r in reports if not r.ok]
    if not stale:
        return "fresh"
    return "STALE (" + "; ".join(f"{r.tenant}: {r.detail()}" for r in stale) + ")"


async def list_collections(settings: Settings) -> list[CollectionInfo]:
    """Every collection, and for each one that something must keep fresh (the configured
    ones, a completed job's), whether it is: a worker that cannot write it shows up here as
    STALE, whatever it logged."""
    jobs = await read_jobs(settings)
    expected = await live_hashes(settings)
    with connect(settings.weaviate) as client:
        # Counting and comparing every collection's objects blocks for long: off the loop.
        return await asyncio.to_thread(
            _collection_infos, settings, WeaviateStore(client), jobs, expected
        )


def _collection_infos(
    settings: Settings, store: WeaviateStore, jobs: Mapping[str, Job], expected: Hashes
) -> list[CollectionInfo]:
    alias = settings.weaviate.collection_prefix
    configured = {settings.collection_for(s) for s in settings.target_models}
    infos = []
    serving = store.alias_target(alias)
    for name in store.collections(alias):
        try:
            spec = settings.model_for_collection(name)
            model = f"{spec.name} {spec.version} ({spec.dimension}d)"
        except StreamprocError:
            model = "unregistered"
        writers = [j for j in jobs.values() if writes_collection(j, name)]
        writer = live_writer(jobs.values(), name)
        if name in configured:
            live, scope = "configured", None
        elif writers:
            job = writer or writers[-1]
            live = f"backfill job {job['job_id']} ({job['state']})"
            scope = job["tenant"]
            if scope:
                live += f" tenant {scope}"
        else:
            live, scope = "-", None
        if live == "-":
            fresh = "-"
        elif name not in configured and (writer is None or writer["state"] != "COMPLETED"):
            fresh = "replaying" if writer is not None else "pending"
        else:
            fresh = freshness(compare_collection(store, name, expected, scope))
        objects = sum(store.count(name, t) for t in store.tenants(name))
        infos.append(CollectionInfo(name, model, objects, name == serving, live, fresh))
    return infos


async def retire(settings: Settings, name: str, timeout_s: float = 60.0) -> None:
    """Delete a collection the alias does not serve, after live writes to it have stopped."""
    alias = settings.weaviate.collection_prefix
    with connect(settings.weaviate) as client:
        store = WeaviateStore(client)
        if not store.exists(name):
            raise StreamprocError(f"collection {name} does not exist")
        if store.alias_target(alias) == name:
            raise StreamprocError(
                f"{name} is served by alias {alias}; promote or roll back to another "
                "collection first"
            )
        if name in {settings.collection_for(s) for s in settings.target_models}:
            raise StreamprocError(
                f"the embedders are configured to write {name} (active_model / "
                "embedder.target_models); change that setting and restart them first"
            )
        jobs = [j for j in (await read_jobs(settings)).values() if j["target_collection"] == name]
        await send_retire(settings, name)
        for job in jobs:
            # Once the job table says retired, no live batch resolves it as a target any more.
            await wait_for(settings, str(job["job_id"]), lambda j: bool(j["retired"]), timeout_s)
        if jobs:
            # Batches that resolved it before, and the job's replay, may still be writing it.
            await wait_for_retire_acks(settings, name, {str(j["job_id"]) for j in jobs}, timeout_s)
        await asyncio.to_thread(store.drop, name)
