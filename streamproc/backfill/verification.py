"""The checks before an alias flip: something keeps the collection fresh, per tenant the key
set and text hashes against the chunk topic's live chunks, a sample held in its live version
(hash and `ingested_at`), the vector dimension against the model, chunks that must find
themselves first, and a retrieval quality not worse than the serving collection's."""

from __future__ import annotations

import asyncio
import logging
import random
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any
from uuid import UUID

from streamproc.backfill.commands import read_jobs
from streamproc.backfill.jobs import Job, live_writer
from streamproc.backfill.quality import Scores, derive_queries, sample_queries
from streamproc.backfill.recall import measure
from streamproc.backfill.replay import in_scope
from streamproc.errors import StreamprocError
from streamproc.kafka_io import live_chunks
from streamproc.models import EmbeddingModel, load_model
from streamproc.naming import CONTENT_VECTOR, object_uuid
from streamproc.registry import ModelSpec
from streamproc.settings import Settings
from streamproc.topics import topics_for
from streamproc.verify import EXAMPLES, TenantReport, compare_collection
from streamproc.weaviate_store import WeaviateStore

log = logging.getLogger(__name__)

QUALITY_CHECK = "retrieval quality"


@dataclass(frozen=True)
class Check:
    name: str
    ok: bool
    detail: str


@dataclass(frozen=True)
class Verification:
    collection: str
    checks: list[Check] = field(default_factory=list)

    @property
    def ok(self) -> bool:
        return all(c.ok for c in self.checks)

    @property
    def failures(self) -> list[Check]:
        return [c for c in self.checks if not c.ok]

    def lines(self) -> list[str]:
        return [f"{'ok  ' if c.ok else 'FAIL'} {c.name}: {c.detail}" for c in self.checks]

    def summary(self) -> str:
        return "; ".join(f"{c.name} {'ok' if c.ok else 'FAILED'} ({c.detail})" for c in self.checks)


def key_checks(reports: Sequence[TenantReport]) -> list[Check]:
    """Per tenant: the collection holds every live chunk key, no other, each with its live text."""
    return [
        Check(f"keys[{r.tenant}]", r.ok, r.detail() if r.ok else f"STALE: {r.detail()}")
        for r in reports
    ]


def content_check(
    records: Sequence[Mapping[str, Any]], held: Mapping[UUID, tuple[Any, str]]
) -> Check:
    """Sampled live records against what the collection holds for them: the same text hash,
    and an `ingested_at` not older than the record's (newer is fine: an unchanged chunk sent
    again is written with the newer time)."""
    wrong: list[str] = []
    for record in records:
        found = held.get(object_uuid(record["chunk_key"]))
        if found is None or found[1] != record["text_sha256"] or found[0] < record["ingested_at"]:
            wrong.append(record["chunk_key"])
    detail = (
        f"{len(records) - len(wrong)}/{len(records)} sampled live chunks held in their live version"
    )
    if wrong:
        more = f" (+{len(wrong) - EXAMPLES})" if len(wrong) > EXAMPLES else ""
        detail += f"; e.g. {', '.join(sorted(wrong)[:EXAMPLES])}{more}"
    return Check("content", not wrong, detail)


def live_writes_check(collection: str, configured: bool, writer: Job | None) -> Check:
    """Something keeps the collection fresh once it serves: otherwise it goes stale."""
    if configured:
        return Check("live writes", True, "the embedders are configured to write it")
    if writer is not None:
        scope = f"tenant {writer['tenant']}" if writer["tenant"] else "all tenants"
        return Check(
            "live writes",
            True,
            f"backfill job {writer['job_id']} ({writer['state']}, {scope}) has live traffic write it",
        )
    return Check(
        "live writes",
        False,
        f"no configured model and no running or completed backfill job writes {collection}; "
        "it would go stale once served",
    )


def self_retrieval_check(hits: int, sampled: int, threshold: float) -> Check:
    share = hits / sampled if sampled else 1.0
    return Check(
        "self-retrieval",
        share >= threshold,
        f"{hits}/{sampled} sampled chunks found themselves first ({share:.0%}, "
        f"threshold {threshold:.0%})",
    )


def quality_check(
    candidate: Scores, serving: str | None, served: Scores | None, max_drop: float
) -> Check:
    """The candidate's recall@k against the serving collection's on the same queries: a drop
    of more than `max_drop` fails (a failure `alias promote --force` may override)."""
    figures = f"recall@{candidate.k} {candidate.recall:.3f} (MRR {candidate.mrr:.3f})"
    queries = f"{candidate.queries} queries sampled from its chunks"
    if candidate.queries == 0:
        return Check(QUALITY_CHECK, True, "no query could be derived from its chunks")
    if serving is None or served is None:
        return Check(QUALITY_CHECK, True, f"{figures} on {queries}; no other collection serves")
    # The figures as printed decide, so the verdict can be checked from the report; rounded
    # again after the subtraction, whose float error would make 0.850 - 0.830 exceed 0.02.
    drop = round(round(served.recall, 3) - round(candidate.recall, 3), 9)
    detail = (
        f"{figures} against {served.recall:.3f} (MRR {served.mrr:.3f}) for the serving "
        f"{serving}, on the same {queries}: "
    )
    if drop <= max_drop:
        return Check(QUALITY_CHECK, True, detail + f"within backfill.max_recall_drop {max_drop}")
    return Check(
        QUALITY_CHECK,
        False,
        detail + f"a drop of {drop:.3f}, more than backfill.max_recall_drop {max_drop} "
        "(`alias promote --force` flips anyway)",
    )


def sample_keys(collection: str, keys: Iterable[str], size: int) -> list[str]:
    """The live chunks sampled for `collection`: the same ones on every run over the same
    keys, so a refused flip is refused again for the same reason."""
    ordered = sorted(keys)
    return random.Random(collection).sample(ordered, min(size, len(ordered)))


async def verify_collection_for_flip(
    settings: Settings,
    store: WeaviateStore,
    collection: str,
    model: EmbeddingModel | None = None,
) -> Verification:
    """The checks, scoped to the tenant of the job that writes `collection` when that job is
    tenant-scoped (its collection holds that tenant only)."""
    spec = settings.model_for_collection(collection)
    configured = collection in {settings.collection_for(s) for s in settings.target_models}
    writer = live_writer((await read_jobs(settings)).values(), collection)
    tenant = writer["tenant"] if writer is not None and not configured else None
    codec = topics_for(settings).chunks
    live = {
        key: value for key, value in (await live_chunks(settings)).items() if in_scope(key, tenant)
    }
    records = {key: codec.decode(value) for key, value in live.items()}
    # Reading every object, loading models and searching block for seconds: off the loop.
    checks = await asyncio.to_thread(
        _store_checks, settings, store, spec, collection, tenant, records, model
    )
    return Verification(collection, [live_writes_check(collection, configured, writer), *checks])


def _store_checks(
    settings: Settings,
    store: WeaviateStore,
    spec: ModelSpec,
    collection: str,
    tenant: str | None,
    records: dict[str, dict[str, Any]],
    model: EmbeddingModel | None,
) -> list[Check]:
    expected: dict[str, dict[str, str]] = {}
    for key, record in records.items():
        expected.setdefault(record["tenant"], {})[key] = record["text_sha256"]
    sample = [
        records[k] for k in sample_keys(collection, records, settings.backfill.verify_sample_size)
    ]
    checks = key_checks(compare_collection(store, collection, expected, tenant))
    checks.append(content_check(sample, _held(store, collection, sample)))
    dimension = store.vector_dimension(collection)
    checks.append(
        Check(
            "dimension",
            dimension == spec.dimension,
            f"vectors have {dimension}, model {spec.name} {spec.version} gives {spec.dimension}",
        )
    )
    model = model or load_model(spec, settings.embedder.device)
    vectors = model.encode([r["text"] for r in sample]) if sample else []
    hits = sum(
        _finds_itself(store, collection, record, vector.tolist())
        for record, vector in zip(sample, vectors, strict=True)
    )
    checks.append(self_retrieval_check(hits, len(sample), settings.backfill.min_self_retrieval))
    checks.append(_quality(settings, store, collection, model, records.values()))
    return checks


def _quality(
    settings: Settings,
    store: WeaviateStore,
    collection: str,
    model: EmbeddingModel,
    records: Iterable[Mapping[str, Any]],
) -> Check:
    """Queries from the chunks the candidate must hold (the key checks say whether it holds
    exactly them), searched in it and in the serving collection, each with its own model."""
    config = settings.backfill
    queries = sample_queries(
        derive_queries(records), config.quality_sample_size, config.quality_sample_seed
    )
    candidate = measure(store, collection, model, queries)
    serving = store.alias_target(settings.weaviate.collection_prefix)
    served: Scores | None = None
    if serving == collection:
        serving = None
    elif serving is not None:
        try:
            spec = settings.model_for_collection(serving)
        except StreamprocError as exc:
            return Check(QUALITY_CHECK, False, f"cannot measure the serving {serving}: {exc}")
        served = measure(store, serving, load_model(spec, settings.embedder.device), queries)
    check = quality_check(candidate, serving, served, config.max_recall_drop)
    # Figures only: the queries are document text.
    log.info(
        "retrieval quality",
        extra={
            "collection": collection,
            "serving": serving,
            "queries": candidate.queries,
            "recall": round(candidate.recall, 4),
            "serving_recall": None if served is None else round(served.recall, 4),
            "max_recall_drop": config.max_recall_drop,
            "ok": check.ok,
        },
    )
    return check


def _held(
    store: WeaviateStore, collection: str, records: Sequence[Mapping[str, Any]]
) -> dict[UUID, tuple[Any, str]]:
    by_tenant: dict[str, list[UUID]] = {}
    for record in records:
        by_tenant.setdefault(record["tenant"], []).append(object_uuid(record["chunk_key"]))
    held: dict[UUID, tuple[Any, str]] = {}
    for tenant, uuids in by_tenant.items():
        held.update(store.held(collection, tenant, uuids))
    return held


def _finds_itself(
    store: WeaviateStore, collection: str, record: dict[str, Any], vector: list[float]
) -> bool:
    found = store.near_vector(
        collection,
        record["tenant"],
        vector,
        targets=[CONTENT_VECTOR],
        limit=1,
        properties=["text_sha256"],
    )
    if not found:
        return False
    top = found[0]
    # A chunk with the very same text elsewhere ties with it; either is a correct answer.
    return top.uuid == object_uuid(record["chunk_key"]) or (
        top.properties.get("text_sha256") == record["text_sha256"]
    )
