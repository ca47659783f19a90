"""The pipeline end to end: real workers, real Kafka, real Weaviate, two real models."""

from __future__ import annotations

import asyncio
import hashlib
import json
from collections import Counter
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from streamproc.chunking.changes import compare, fingerprint
from streamproc.derive import projected_model
from streamproc.search import search_alias
from streamproc.settings import Settings
from streamproc.topics import topic_name
from streamproc.verify import verify_collection
from streamproc.weaviate_client import connect
from streamproc.weaviate_store import WeaviateStore
from tests.conftest import with_topics
from tests.pipeline_support import (
    CORPUS,
    assert_tenants_isolated,
    cli,
    collect,
    event,
    expected_chunks,
    produce_events,
    produce_raw,
    records_with_headers,
    running_workers,
)

MAX_BYTES = 200_000
MAX_CHUNKS = 150


@pytest.fixture(scope="module")
def pipeline(
    service_settings: Settings,
    tmp_path_factory: pytest.TempPathFactory,
    inference_endpoint: Settings,
) -> Iterator[Settings]:
    base = tmp_path_factory.mktemp("pipeline")
    second = projected_model(service_settings.local.cache_dir)
    settings = service_settings.isolated(
        base / "worker",
        models=[*service_settings.models, second],
        embedder={
            **service_settings.embedder.model_dump(),
            "target_models": [service_settings.active_model, second.name],
        },
        chunking={
            **service_settings.chunking.model_dump(),
            "max_document_bytes": MAX_BYTES,
            "max_chunks_per_document": MAX_CHUNKS,
        },
        # Every test's tmp_path lies under the session's base folder.
        sources={"file_roots": [tmp_path_factory.getbasetemp()]},
    )
    with_topics(settings)
    with running_workers(settings, base) as workers:
        yield settings
        assert all(p.poll() is None for p in workers.procs.values()), "a worker died"


def _done_for(values: list[Any], tenant: str, doc_id: str | None = None) -> list[dict[str, Any]]:
    return [
        v
        for _, v in values
        if isinstance(v, dict)
        and v.get("tenant") == tenant
        and (doc_id is None or v["doc_id"] == doc_id)
    ]


def _collections(settings: Settings) -> list[str]:
    return [settings.collection_for(spec) for spec in settings.target_models]


def _doc_count(settings: Settings, collection: str, tenant: str, doc_id: str) -> int:
    from weaviate.classes.query import Filter

    with connect(settings.weaviate) as client:
        store = WeaviateStore(client)
        if tenant not in store.tenants(collection):
            return 0
        result = store.collection(collection, tenant).aggregate.over_all(
            filters=Filter.by_property("doc_id").equal(doc_id), total_count=True
        )
        return result.total_count or 0


def test_documents_become_exactly_their_chunks_in_every_collection(pipeline: Settings) -> None:
    docs = {
        "go_mem.html": "text/html",
        "godebug.md": "text/markdown",
        "apache-license-2.0.txt": "text/plain",
    }
    expected = {
        name: expected_chunks(pipeline, (CORPUS / name).read_text(), kind)
        for name, kind in docs.items()
    }
    produce_events(
        pipeline,
        [
            event("e2e", name, (CORPUS / name).read_text(), content_type=kind)
            for name, kind in docs.items()
        ],
    )
    total = sum(len(v) for v in expected.values()) * 2
    values = collect(pipeline, "embed-done", lambda vs: len(_done_for(vs, "e2e")) >= total)
    done = _done_for(values, "e2e")
    assert len(done) == total
    assert Counter((d["chunk_key"], d["collection"]) for d in done).most_common(1)[0][1] == 1
    assert {d["vector_dim"] for d in done} == {384, 128}
    assert all(d["status"] == "EMBEDDED" for d in done)

    for collection in _collections(pipeline):
        for name, chunks in expected.items():
            assert _doc_count(pipeline, collection, "e2e", name) == len(chunks)
        checked, reports = asyncio.run(verify_collection(pipeline, collection))
        assert checked == collection
        assert [r for r in reports if r.tenant == "e2e" and not r.ok] == []

    with connect(pipeline.weaviate) as client:
        store = WeaviateStore(client)
        name = _collections(pipeline)[0]
        first = store.collection(name, "e2e").query.fetch_objects(limit=500).objects
    by_key = {o.properties["chunk_key"]: o.properties for o in first}
    props = by_key[f"e2e/godebug.md/{pipeline.chunking.policy_version}/1"]
    heading, text = expected["godebug.md"][1]
    assert props["text"] == text and " > ".join(props["heading_path"]) == heading
    assert props["text_sha256"] == hashlib.sha256(text.encode()).hexdigest()
    assert props["model_version"] == "v1" and props["truncated"] is False
    assert props["policy_version"] == pipeline.chunking.policy_version
    assert 0 < props["token_count"] <= pipeline.chunking.max_tokens
    assert props["ingested_at"] is not None and props["embedded_at"] is not None


SECTIONS = [
    f"## Part {i}\n\n" + " ".join(f"Sentence {i}.{j} about topic {i}." for j in range(40))
    for i in range(6)
]


def test_update_reembeds_only_changed_chunks_and_shrink_deletes(pipeline: Settings) -> None:
    v1 = "# Manual\n\n" + "\n\n".join(SECTIONS)
    v2 = v1.replace("Sentence 2.5 about topic 2.", "Sentence 2.5 was rewritten entirely.")
    v3 = v2[: v2.index("## Part 4")]

    def fps(text: str) -> dict[str, str]:
        chunks = expected_chunks(pipeline, text, "text/markdown")
        return {
            str(i): fingerprint(h.split(" > ") if h else [], t) for i, (h, t) in enumerate(chunks)
        }

    changed = len(compare(fps(v1), fps(v2)).changed)
    shrink = compare(fps(v2), fps(v3))
    vanished = len(shrink.vanished)
    # One sentence changed: its chunk, and the neighbour that carries it as overlap, at most.
    assert 1 <= changed <= 2 < len(fps(v1)) and vanished >= 2 and shrink.changed == []

    produce_events(
        pipeline,
        [event("upd", "manual", v1), event("upd", "manual", v2), event("upd", "manual", v3)],
    )
    # Same key, same partition: once the deletes of v3 are out, everything before them is too.
    values = collect(
        pipeline,
        "embed-done",
        lambda vs: sum(d["status"] == "DELETED" for d in _done_for(vs, "upd")) >= vanished * 2,
    )
    done = _done_for(values, "upd")
    embedded = [d for d in done if d["status"] == "EMBEDDED" and not d["unchanged"]]
    assert len(embedded) == (len(fps(v1)) + changed) * 2
    # The unchanged chunks of v2 and v3 were reported current, not embedded again.
    current = [d for d in done if d["unchanged"]]
    assert len(current) == (len(fps(v2)) - changed + len(fps(v3))) * 2
    assert sum(d["status"] == "DELETED" for d in done) == vanished * 2
    for collection in _collections(pipeline):
        assert _doc_count(pipeline, collection, "upd", "manual") == len(fps(v3))


def test_delete_removes_every_chunk_from_every_collection(pipeline: Settings) -> None:
    text = (CORPUS / "godebug.md").read_text()
    chunks = len(expected_chunks(pipeline, text, "text/markdown"))
    produce_events(pipeline, [event("del", "doc", text), event("del", "doc", None, op="DELETE")])
    values = collect(
        pipeline,
        "embed-done",
        lambda vs: sum(d["status"] == "DELETED" for d in _done_for(vs, "del")) >= chunks * 2,
    )
    assert sum(d["status"] == "DELETED" for d in _done_for(values, "del")) == chunks * 2
    for collection in _collections(pipeline):
        assert _doc_count(pipeline, collection, "del", "doc") == 0


def test_bad_inputs_go_to_the_dlq_and_the_partition_moves_on(
    pipeline: Settings, tmp_path: Path
) -> None:
    latin1 = tmp_path / "latin1.txt"
    latin1.write_bytes("caf\xe9 cr\xe8me".encode("latin-1"))
    many = "\n\n".join(" ".join(f"w{i}x{j}" for j in range(120)) for i in range(MAX_CHUNKS + 10))
    bad: dict[str, bytes | dict[str, Any]] = {
        "schema-bytes": b"\x00\x01\x02 not avro",
        "schema-json": {"event_id": "x", "doc_id": "missing-tenant"},
        "empty": event("bad", "empty", "   \n"),
        "not_utf8": event("bad", "not_utf8", None, content_uri=latin1.as_uri()),
        "unreadable_uri": event(
            "bad", "unreadable_uri", None, content_uri=(tmp_path / "missing.md").as_uri()
        ),
        "not_a_file": event("bad", "not_a_file", None, content_uri=tmp_path.as_uri()),
        "proc": event("bad", "proc", None, content_uri="file:///proc/self/environ"),
        "outside": event("bad", "outside", None, content_uri="file:///etc/passwd"),
        "metadata": event(
            "bad", "metadata", None, content_uri="http://169.254.169.254/latest/meta-data/"
        ),
        "sha256_mismatch": event("bad", "sha256_mismatch", "hello", content_sha256="0" * 64),
        "too_large": event("bad", "too_large", "x" * (MAX_BYTES + 1)),
        "too_many_chunks": event("bad", "too_many_chunks", many),
    }
    from streamproc.avro_codec import load_schemas

    codec = load_schemas(pipeline.schemas_dir).codec("ChunkRequested")
    items: list[tuple[bytes, bytes]] = []
    for case, payload in bad.items():
        key = f"bad/{case}".encode()
        raw = (
            payload
            if isinstance(payload, bytes)
            else (
                codec.encode(codec.decode_json(json.dumps(payload)))
                if "tenant" in payload
                else json.dumps(payload).encode()
            )
        )
        follower = event("bad", f"{case}-after", f"# After {case}\n\nThis one is fine.")
        items += [(key, raw), (key, codec.encode(codec.decode_json(json.dumps(follower))))]
    produce_raw(pipeline, items)

    dlq = records_with_headers(
        collect(pipeline, "chunk-requested.dlq", lambda vs: len(vs) >= len(bad))
    )
    reasons = sorted(h["streamproc.dlq.reason"] for h, _ in dlq)
    assert reasons == sorted(
        [
            "schema",
            "schema",
            "empty",
            "not_utf8",
            "unreadable_uri",
            "not_a_file",
            "uri_not_allowed",
            "uri_not_allowed",
            "uri_not_allowed",
            "sha256_mismatch",
            "too_large",
            "too_many_chunks",
        ]
    )
    assert all(h["streamproc.dlq.topic"] == topic_name(pipeline, "chunk-requested") for h, _ in dlq)
    assert all("streamproc.dlq.error" in h for h, _ in dlq)
    followers = {f"{case}-after" for case in bad}
    values = collect(
        pipeline, "embed-done", lambda vs: {d["doc_id"] for d in _done_for(vs, "bad")} >= followers
    )
    assert {d["doc_id"] for d in _done_for(values, "bad")} == followers


def test_a_search_in_one_tenant_never_sees_another(pipeline: Settings) -> None:
    text = "# Passwords\n\nRotate the database password every ninety days."
    # The same text in both tenants, under a shared id and under an id only one tenant has:
    # a leak would rank the other tenant's copy as high as the own one.
    docs = [(t, d) for t in ("alpha", "beta") for d in ("policy", f"{t}-only")]
    produce_events(pipeline, [event(t, d, text) for t, d in docs])
    collect(
        pipeline,
        "embed-done",
        lambda vs: all(len(_done_for(vs, t, d)) >= 2 for t, d in docs),
    )
    result = search_alias(pipeline, "how often to rotate the password", "alpha", 10)
    assert result.hits, "no hit in tenant alpha"
    assert all(hit.chunk_key.startswith("alpha/") for hit in result.hits)
    assert result.hits[0].doc_id in {"policy", "alpha-only"}
    assert_tenants_isolated(pipeline, ["alpha", "beta"], "how often to rotate the password")
    for tenant, other in (("alpha", "beta"), ("beta", "alpha")):
        searched = cli(pipeline, "search", "rotate the password", "--tenant", tenant)
        assert f"{tenant}-only#0" in searched.stdout
        assert f"{other}-only" not in searched.stdout
