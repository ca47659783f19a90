"""Search through Weaviate itself, against real Kafka, Weaviate and `streamproc serve`: GraphQL
nearText on the alias embedded by the endpoint of the served collection's model, before a flip,
after `alias promote` and after `alias rollback`; hybrid and BM25; `streamproc search` in every
mode without torch or weaviate-client; and collections made before this change."""

from __future__ import annotations

import asyncio
import os
import subprocess
import sys
from collections.abc import Iterator
from typing import Any

import httpx
import pytest
from weaviate.classes.config import Configure, VectorDistances

from streamproc.backfill.alias import rollback, verify_and_promote
from streamproc.backfill.commands import start_job, wait_for
from streamproc.errors import StreamprocError
from streamproc.models import model_revision, resolve_source
from streamproc.naming import CONTENT_VECTOR
from streamproc.search import Fusion, Mode, search_alias
from streamproc.settings import Settings, child_env
from streamproc.weaviate_client import connect
from streamproc.weaviate_schema import PROPERTIES
from streamproc.weaviate_store import WeaviateStore
from tests.conftest import with_topics
from tests.pipeline_support import (
    cli,
    corpus_events,
    drained,
    graphql,
    produce_events,
    running_workers,
)

TENANT = "acme"
QUERY = "What must a licensee do when redistributing the work?"
LICENSES = {"apache-license-2.0", "gpl-3.0"}
SECOND = "minilm-pca128"


@pytest.fixture(scope="module")
def searchable(
    inference_endpoint: Settings, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[Settings]:
    """The corpus embedded by a real worker into a collection that names its endpoint."""
    base = tmp_path_factory.mktemp("search")
    settings = inference_endpoint.isolated(base / "worker")
    with_topics(settings)
    with running_workers(settings, base) as workers:
        produce_events(settings, corpus_events(TENANT))
        drained(settings)
        yield settings
        assert all(p.poll() is None for p in workers.procs.values()), "a worker died"


def served_counts(settings: Settings) -> dict[str, dict[str, int]]:
    """Per model: texts its endpoint embedded, by task type (query, passage)."""
    return {
        spec.name: httpx.get(f"{settings.inference.url_for(spec.name)}/meta", timeout=10).json()[
            "vectors_served"
        ]
        for spec in settings.models
    }


def near_text(settings: Settings, query: str, limit: int = 5) -> list[dict[str, Any]]:
    """What `curl -X POST $WEAVIATE/v1/graphql` with this body returns: nearText on the alias."""
    alias = settings.weaviate.collection_prefix
    found = graphql(
        settings,
        f'{{ Get {{ {alias}(tenant: "{TENANT}", limit: {limit}, nearText: '
        f'{{concepts: ["{query}"], targetVectors: ["{CONTENT_VECTOR}"]}}) '
        "{ chunk_key doc_id heading_path model_name model_version model_revision "
        "_additional { distance } } } }",
    )
    assert "errors" not in found, found["errors"]
    return list(found["data"]["Get"][alias])


def queries(counts: dict[str, dict[str, int]], model: str) -> int:
    return counts[model].get("query", 0)


def revision(settings: Settings, name: str) -> str:
    spec = settings.model(name)
    return model_revision(spec, resolve_source(spec.source))


def test_near_text_on_the_alias_follows_promote_and_rollback(searchable: Settings) -> None:
    settings = searchable
    active = settings.active_model
    old = settings.collection_for(settings.model(active))
    new = settings.collection_for(settings.model(SECOND))

    with connect(settings.weaviate) as client:
        endpoint = WeaviateStore(client).query_endpoint(old)
    assert endpoint == settings.inference.url_for(active)
    # Objects came with their vectors: Weaviate asked no endpoint to embed a passage.
    assert all("passage" not in c for c in served_counts(settings).values())

    before = served_counts(settings)
    hits = near_text(settings, QUERY)
    after = served_counts(settings)
    assert queries(after, active) == queries(before, active) + 1
    assert queries(after, SECOND) == queries(before, SECOND)
    assert hits and {h["doc_id"] for h in hits[:3]} & LICENSES
    assert all(h["chunk_key"].startswith(f"{TENANT}/") for h in hits)
    assert {(h["model_name"], h["model_version"]) for h in hits} == {(active, "v1")}
    assert {h["model_revision"] for h in hits} == {revision(settings, active)}
    assert revision(settings, active).startswith("sha256:")

    # A rotation into the second model's collection, then the verified flip.
    job_id = asyncio.run(start_job(settings, SECOND))
    job = asyncio.run(
        wait_for(settings, job_id, lambda j: j["state"] in ("COMPLETED", "FAILED"), 600)
    )
    assert job["state"] == "COMPLETED", job["error"]
    with connect(settings.weaviate) as client:
        assert WeaviateStore(client).query_endpoint(new) == (settings.inference.url_for(SECOND))
    report, previous = asyncio.run(verify_and_promote(settings, new))
    assert report.ok and previous == old

    # The same query, no client change: embedded by the new model's endpoint, not the old.
    before = served_counts(settings)
    hits = near_text(settings, QUERY)
    after = served_counts(settings)
    assert queries(after, SECOND) == queries(before, SECOND) + 1
    assert queries(after, active) == queries(before, active)
    assert hits and {h["doc_id"] for h in hits[:3]} & LICENSES
    assert {h["model_name"] for h in hits} == {SECOND}
    assert {h["model_revision"] for h in hits} == {revision(settings, SECOND)}

    # Rollback: the old collection, and the old model's endpoint again.
    assert asyncio.run(rollback(settings)) == (new, old)
    before = served_counts(settings)
    hits = near_text(settings, QUERY)
    after = served_counts(settings)
    assert queries(after, active) == queries(before, active) + 1
    assert queries(after, SECOND) == queries(before, SECOND)
    assert {h["model_name"] for h in hits} == {active}


def test_hybrid_and_keyword_through_weaviate(searchable: Settings) -> None:
    settings = searchable
    found = graphql(
        settings,
        f'{{ Get {{ {settings.weaviate.collection_prefix}(tenant: "{TENANT}", limit: 5, '
        f'hybrid: {{query: "{QUERY}", targetVectors: ["{CONTENT_VECTOR}"]}}) '
        "{ chunk_key doc_id model_name _additional { score } } } }",
    )
    assert "errors" not in found, found["errors"]
    hits = found["data"]["Get"][settings.weaviate.collection_prefix]
    assert hits and {h["doc_id"] for h in hits} & LICENSES

    for mode in Mode:
        result = search_alias(settings, QUERY, TENANT, 5, mode=mode)
        assert result.hits, mode
        assert {h.doc_id for h in result.hits[:3]} & LICENSES, (mode, result.hits)
        assert all(h.chunk_key.startswith(f"{TENANT}/") for h in result.hits)
        assert all(h.snippet for h in result.hits)
    for fusion in Fusion:
        result = search_alias(settings, QUERY, TENANT, 5, fusion=fusion)
        assert result.hits and result.targets == ("content", "heading")
    heading_only = search_alias(settings, "Goroutine destruction", TENANT, 3, targets=["heading"])
    assert heading_only.hits[0].heading_path[-1] == "Goroutine destruction"
    # PII mode: no snippet, whatever the collection holds.
    pii = settings.model_copy(
        update={"embedder": settings.embedder.model_copy(update={"pii_mode": True})}
    )
    assert all(h.snippet == "" for h in search_alias(pii, QUERY, TENANT, 5).hits)
    # Weaviate's GraphQL error for a tenant it does not know becomes a clear StreamprocError.
    with pytest.raises(StreamprocError, match="tenant nobody has nothing in"):
        search_alias(settings, QUERY, "nobody", 5)


def test_the_cli_searches_in_every_mode_without_torch_or_weaviate_client(
    searchable: Settings,
) -> None:
    for mode in ("vector", "hybrid", "keyword"):
        searched = cli(searchable, "search", QUERY, "--tenant", TENANT, "--mode", mode)
        assert searched.returncode == 0, searched.stderr[-3000:]
        assert f"; {mode}" in searched.stdout
        assert " 1. " in searched.stdout
        assert any(f"{doc}#" in searched.stdout for doc in LICENSES)
    fused = cli(
        searchable,
        "search",
        QUERY,
        "--tenant",
        TENANT,
        "--fusion",
        "weights",
        "--weights",
        "content=0.2,heading=0.8",
    )
    assert fused.returncode == 0, fused.stderr[-3000:]
    assert "content+heading (weights)" in fused.stdout

    # The command's own process: Weaviate embeds the query, so nothing here imports torch; it
    # speaks GraphQL over http.client, so nothing imports weaviate-client (1.7 s) or httpx.
    probe = (
        "import sys\n"
        "from streamproc.cli import main\n"
        f"sys.argv = ['streamproc', 'search', {QUERY!r}, '--tenant', {TENANT!r}]\n"
        "try:\n"
        "    main()\n"
        "except SystemExit as exc:\n"
        "    assert not exc.code, exc.code\n"
        "print('loaded:', sorted(m for m in ('torch', 'sentence_transformers', 'weaviate', "
        "'grpc', 'faust', 'httpx') if m in sys.modules))\n"
    )
    ran = subprocess.run(
        [sys.executable, "-c", probe],
        env={**os.environ, **child_env(searchable)},
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )
    assert ran.returncode == 0, ran.stderr[-3000:]
    assert "alias " in ran.stdout and " 1. " in ran.stdout
    assert "loaded: []" in ran.stdout, ran.stdout


def test_a_collection_made_before_keeps_working_and_gains_new_properties(
    searchable: Settings,
) -> None:
    """The old shape: self-provided vectors only, no `model_name` property."""
    settings = searchable
    name = f"{settings.weaviate.collection_prefix}_old_shape_v1"
    with connect(settings.weaviate) as client:
        client.collections.create(
            name,
            properties=[p for p in PROPERTIES if p.name != "model_name"],
            vector_config=[
                Configure.Vectors.self_provided(
                    name=CONTENT_VECTOR,
                    vector_index_config=Configure.VectorIndex.hnsw(
                        distance_metric=VectorDistances.COSINE
                    ),
                )
            ],
            multi_tenancy_config=Configure.multi_tenancy(enabled=True, auto_tenant_creation=True),
        )
        store = WeaviateStore(client)
        store.ensure_tenants(name, {TENANT})
        store.ensure_collection(name, 384, inference_url=settings.inference.url_for("x"))
        config = client.collections.get(name).config.get()
        assert "model_name" in {p.name for p in config.properties}
        assert store.query_endpoint(name) is None
        store.point_alias(f"{settings.weaviate.collection_prefix}Old", name)
    old = settings.model_copy(
        update={
            "weaviate": settings.weaviate.model_copy(
                update={"collection_prefix": f"{settings.weaviate.collection_prefix}Old"}
            )
        }
    )
    with pytest.raises(StreamprocError, match="rotation"):
        search_alias(old, QUERY, TENANT, 3)
    assert search_alias(old, QUERY, TENANT, 3, mode=Mode.KEYWORD).hits == []
