"""The embedder's lanes and results, over an in-memory store and a stub model: live before
live-backfill before replay, and exactly the objects and embed-done records asked for."""

from __future__ import annotations

import asyncio
import hashlib
import threading
from collections.abc import Awaitable, Callable, Sequence
from datetime import UTC, datetime, timedelta
from typing import Any, cast
from uuid import UUID

import numpy as np

from streamproc.backfill.replay import as_request
from streamproc.models import EmbeddingModel
from streamproc.naming import CONTENT_VECTOR, HEADING_VECTOR, object_uuid
from streamproc.pipeline.embedder import BatchResult, Embedder
from streamproc.pipeline.lanes import Background, Lane
from streamproc.pipeline.objects import Target
from streamproc.registry import ModelSpec
from streamproc.settings import EmbedderSettings
from streamproc.weaviate_schema import ChunkObject, WriteResult
from streamproc.weaviate_store import WeaviateStore

T0 = datetime(2026, 1, 1, tzinfo=UTC)
DIMENSION = 8
SPEC = ModelSpec(name="stub", source="package:none", dimension=DIMENSION, max_seq_len=64)
# Two texts per encode call and per write, so one batch takes several of each.
SETTINGS = EmbedderSettings(max_batch=2)
BACKGROUND = Background(slice_s=0.01, idle_slice_s=0.01)


def stub_vector(text: str) -> list[float]:
    """The stub model's vector of `text`: its SHA-256 bytes scaled into [-1, 1]."""
    digest = hashlib.sha256(text.encode()).digest()[:DIMENSION]
    return [float(np.float32(b / 127.5 - 1.0)) for b in digest]


class StubSentenceTransformer:
    """A stub in place of sentence-transformers, so no weights load in a unit test: vectors
    are derived from a hash of each text (deterministic, and the test can compute the exact
    vector each object must carry), never random. Each call is logged."""

    def __init__(self, log: list[tuple[str, str]]) -> None:
        self.log = log

    def encode(self, texts: list[str], **_: Any) -> np.ndarray:
        self.log.extend(("encode", t) for t in texts)
        return np.array([stub_vector(t) for t in texts], dtype=np.float32)


_OPEN = threading.Event()
_OPEN.set()


class InMemoryStore:
    """A test-local store with the calls the embedder makes of WeaviateStore, returning the
    real WriteResult. Writes to a collection wait while its gate is closed."""

    def __init__(self, log: list[tuple[str, str]]) -> None:
        self.log = log
        # (collection, tenant) -> uuid -> object
        self.objects: dict[tuple[str, str], dict[UUID, ChunkObject]] = {}
        self.gates: dict[str, threading.Event] = {}

    def close_gate(self, collection: str) -> threading.Event:
        gate = self.gates[collection] = threading.Event()
        return gate

    def held(self, name: str, tenant: str, uuids: Sequence[UUID]) -> dict[UUID, tuple[Any, str]]:
        found = self.objects.get((name, tenant), {})
        return {
            u: (found[u].properties["ingested_at"], found[u].properties["text_sha256"])
            for u in uuids
            if u in found
        }

    def upsert(self, name: str, objects: Sequence[ChunkObject]) -> WriteResult:
        self.log.append(("upsert started", name))
        self.gates.get(name, _OPEN).wait()
        for obj in objects:
            self.objects.setdefault((name, obj.tenant), {})[obj.uuid] = obj
        self.log.extend(("upserted", str(o.properties["chunk_key"])) for o in objects)
        return WriteResult([o.uuid for o in objects], {})

    def delete(self, name: str, tenant: str, uuids: Sequence[UUID]) -> WriteResult:
        held = self.objects.get((name, tenant), {})
        for uuid in uuids:
            held.pop(uuid, None)
        return WriteResult(list(uuids), {})

    def keys(self, name: str) -> dict[str, str]:
        """Chunk key -> text_sha256 of every object of `name`."""
        return {
            str(o.properties["chunk_key"]): str(o.properties["text_sha256"])
            for (collection, _), objects in self.objects.items()
            if collection == name
            for o in objects.values()
        }


def _sha(text: str) -> str:
    return hashlib.sha256(text.encode()).hexdigest()


def upsert(
    key: str,
    text: str,
    heading: Sequence[str] = (),
    *,
    at: datetime = T0,
    if_changed: bool = False,
) -> dict[str, Any]:
    tenant, doc_id, policy, index = key.split("/")
    chunk = {
        "chunk_key": key,
        "tenant": tenant,
        "doc_id": doc_id,
        "chunk_index": int(index),
        "policy_version": policy,
        "text": text,
        "text_sha256": _sha(text),
        "heading_path": list(heading),
        "char_count": len(text),
        "token_counts": {SPEC.name: len(text.split())},
        "truncated": False,
        "source_uri": None,
        "ingested_at": at,
    }
    return {
        "op": "UPSERT",
        "chunk_key": key,
        "tenant": tenant,
        "doc_id": doc_id,
        "chunk": chunk,
        "ingested_at": at,
        "if_changed": if_changed,
    }


def delete(key: str, *, at: datetime = T0) -> dict[str, Any]:
    return as_request(key, None, at)


class Rig:
    """An embedder with a live, a backfill and a replay target over one in-memory store."""

    def __init__(self) -> None:
        self.log: list[tuple[str, str]] = []
        self.store = InMemoryStore(self.log)
        self.encoder = StubSentenceTransformer(self.log)
        model = EmbeddingModel(SPEC, self.encoder, "cpu")
        self.live = Target(model, "Live")
        self.backfill = Target(model, "Backfill")
        self.replay = Target(model, "Replay")
        # The in-memory store has every call the embedder makes of a WeaviateStore.
        self.embedder = Embedder([self.live], cast(WeaviateStore, self.store), SETTINGS, BACKGROUND)

    def run(self, body: Callable[[Rig], Awaitable[None]]) -> None:
        try:
            asyncio.run(asyncio.wait_for(body(self), timeout=20))
        finally:
            # A failed assertion leaves a write hanging on its gate: open them all, or
            # closing the embedder's thread pools would wait forever.
            for gate in self.store.gates.values():
                gate.set()
            self.embedder.close()

    def position(self, entry: tuple[str, str]) -> int:
        return self.log.index(entry)


async def until(condition: Callable[[], bool]) -> None:
    while not condition():
        await asyncio.sleep(0.005)


def _done(result: BatchResult) -> dict[str, tuple[str, str, bool]]:
    return {d["chunk_key"]: (d["collection"], d["status"], d["unchanged"]) for d in result.done}


def test_live_batches_write_exactly_their_objects_and_vectors() -> None:
    rig = Rig()
    rig.store.upsert("Live", [_object(upsert("acme/old/p1/0", "Old text.")["chunk"])])
    requests = [
        upsert("acme/a/p1/0", "Keys rotate every 90 days.", ["Security", "Keys"]),
        upsert("acme/a/p1/1", "Rotation is automatic.", ["Security", "Keys"]),
        upsert("acme/a/p1/2", "No heading here."),
        upsert("globex/g/p1/0", "Another tenant.", ["Intro"]),
        upsert("globex/g/p1/1", "A fifth chunk.", ["Intro"]),
        delete("acme/old/p1/0"),
    ]

    async def body(rig: Rig) -> None:
        result = await rig.embedder.handle(requests)
        assert result.failed == {}
        assert _done(result) == {
            "acme/a/p1/0": ("Live", "EMBEDDED", False),
            "acme/a/p1/1": ("Live", "EMBEDDED", False),
            "acme/a/p1/2": ("Live", "EMBEDDED", False),
            "globex/g/p1/0": ("Live", "EMBEDDED", False),
            "globex/g/p1/1": ("Live", "EMBEDDED", False),
            "acme/old/p1/0": ("Live", "DELETED", False),
        }
        assert {d["object_uuid"] for d in result.done} == {
            str(object_uuid(r["chunk_key"])) for r in requests
        }

    rig.run(body)
    upserts = [r for r in requests if r["op"] == "UPSERT"]
    assert rig.store.keys("Live") == {r["chunk_key"]: r["chunk"]["text_sha256"] for r in upserts}
    for request in upserts:
        chunk = request["chunk"]
        obj = rig.store.objects[("Live", chunk["tenant"])][object_uuid(chunk["chunk_key"])]
        heading = " > ".join(chunk["heading_path"])
        assert obj.vectors[CONTENT_VECTOR] == stub_vector(chunk["text"])
        # Without a heading, the content vector stands in for the heading vector.
        assert obj.vectors[HEADING_VECTOR] == stub_vector(heading or chunk["text"])
        assert obj.properties["text"] == chunk["text"]
        assert obj.properties["model_name"] == SPEC.name
        assert obj.properties["token_count"] == len(chunk["text"].split())
    # Each heading was encoded once, however many chunks share it.
    encoded = [text for kind, text in rig.log if kind == "encode"]
    assert sorted(encoded) == sorted(
        [r["chunk"]["text"] for r in upserts] + ["Security > Keys", "Intro"]
    )


def test_unchanged_chunks_and_older_versions_are_reported_current_without_a_write() -> None:
    rig = Rig()
    held_same = upsert("t/d/p1/0", "Same text.")
    held_newer = upsert("t/d/p1/1", "Newer text.", at=T0 + timedelta(hours=1))
    for request in (held_same, held_newer):
        rig.store.upsert("Replay", [_object(request["chunk"])])
    rig.log.clear()
    requests = [
        upsert("t/d/p1/0", "Same text.", if_changed=True),  # held with this text: not encoded
        upsert("t/d/p1/1", "Older text."),  # a replay's stale record: the newer write stays
        upsert("t/d/p1/2", "New text.", if_changed=True),  # not held: written
    ]

    async def body(rig: Rig) -> None:
        result = await rig.embedder.handle(requests, [rig.replay], lane=Lane.REPLAY)
        assert _done(result) == {
            "t/d/p1/0": ("Replay", "EMBEDDED", True),
            "t/d/p1/1": ("Replay", "EMBEDDED", True),
            "t/d/p1/2": ("Replay", "EMBEDDED", False),
        }

    rig.run(body)
    assert rig.store.keys("Replay") == {
        "t/d/p1/0": _sha("Same text."),
        "t/d/p1/1": _sha("Newer text."),
        "t/d/p1/2": _sha("New text."),
    }
    assert [t for kind, t in rig.log if kind == "encode"] == ["Older text.", "New text."]
    assert [t for kind, t in rig.log if kind == "upserted"] == ["t/d/p1/2"]


def _lane_batch(prefix: str, n: int) -> list[dict[str, Any]]:
    return [upsert(f"t/{prefix}/p1/{i}", f"{prefix} text {i}.") for i in range(n)]


def test_later_lanes_encode_and_write_only_once_earlier_lanes_are_done() -> None:
    rig = Rig()
    live, live_backfill, replay = (
        _lane_batch("live", 3),
        _lane_batch("lb", 5),
        _lane_batch("rp", 5),
    )

    async def body(rig: Rig) -> None:
        gate = rig.store.close_gate("Live")
        live_call = asyncio.ensure_future(rig.embedder.handle(live))
        # The live lane is in its first write, which Weaviate has not answered.
        await until(lambda: ("upsert started", "Live") in rig.log)
        replay_call = asyncio.ensure_future(
            rig.embedder.handle(replay, [rig.replay], lane=Lane.REPLAY)
        )
        backfill_call = asyncio.ensure_future(
            rig.embedder.handle(live_backfill, [rig.backfill], lane=Lane.LIVE_BACKFILL)
        )
        await asyncio.sleep(0.3)
        # Both later lanes could encode now (the encode thread is free), yet wait.
        assert {t for k, t in rig.log if k == "encode"} == {r["chunk"]["text"] for r in live}
        gate.set()
        results = await asyncio.gather(live_call, backfill_call, replay_call)
        for result, batch, collection in zip(
            results, (live, live_backfill, replay), ("Live", "Backfill", "Replay"), strict=True
        ):
            assert result.failed == {}
            assert _done(result) == {r["chunk_key"]: (collection, "EMBEDDED", False) for r in batch}

    rig.run(body)
    for batch, collection in ((live, "Live"), (live_backfill, "Backfill"), (replay, "Replay")):
        assert rig.store.keys(collection) == {
            r["chunk_key"]: r["chunk"]["text_sha256"] for r in batch
        }

    def span(batch: list[dict[str, Any]]) -> tuple[int, int]:
        """First encode and last write of a batch in the log."""
        first = min(rig.position(("encode", r["chunk"]["text"])) for r in batch)
        return first, max(rig.position(("upserted", r["chunk_key"])) for r in batch)

    live_span, backfill_span, replay_span = span(live), span(live_backfill), span(replay)
    # Live, then the live batch's backfill targets, then replays: no overlap at all.
    assert live_span[1] < backfill_span[0]
    assert backfill_span[1] < replay_span[0]


def test_the_live_lane_does_not_wait_for_a_replay_in_progress() -> None:
    rig = Rig()
    # The replay: three encode calls and three writes of two objects each.
    live, replay = _lane_batch("live", 2), _lane_batch("rp", 6)
    texts = [r["chunk"]["text"] for r in replay]

    async def body(rig: Rig) -> None:
        gate = rig.store.close_gate("Replay")
        replay_call = asyncio.ensure_future(
            rig.embedder.handle(replay, [rig.replay], lane=Lane.REPLAY)
        )
        await until(lambda: ("upsert started", "Replay") in rig.log)
        live_call = asyncio.ensure_future(rig.embedder.handle(live))
        # The live batch encodes while the replay's first write hangs...
        await until(lambda: all(("encode", r["chunk"]["text"]) in rig.log for r in live))
        encoded = [t for k, t in rig.log if k == "encode"]
        # ...the replay having encoded at most the slice after that write meanwhile.
        assert set(texts[:2]) <= set(encoded) and not set(texts[4:]) & set(encoded)
        gate.set()
        live_result, replay_result = await asyncio.gather(live_call, replay_call)
        assert _done(live_result) == {r["chunk_key"]: ("Live", "EMBEDDED", False) for r in live}
        assert _done(replay_result) == {
            r["chunk_key"]: ("Replay", "EMBEDDED", False) for r in replay
        }

    rig.run(body)
    assert rig.store.keys("Live") == {r["chunk_key"]: r["chunk"]["text_sha256"] for r in live}
    assert rig.store.keys("Replay") == {r["chunk_key"]: r["chunk"]["text_sha256"] for r in replay}
    # Once the hung write is answered, the live write goes next; the replay's next write and
    # its last slice wait until the live batch is done.
    live_written = max(rig.position(("upserted", r["chunk_key"])) for r in live)
    replay_writes = [i for i, e in enumerate(rig.log) if e == ("upsert started", "Replay")]
    assert len(replay_writes) == 3
    assert replay_writes[0] < rig.position(("encode", live[0]["chunk"]["text"]))
    assert live_written < replay_writes[1]
    assert live_written < min(rig.position(("encode", t)) for t in texts[4:])


def _object(chunk: dict[str, Any]) -> ChunkObject:
    """What a previous write left in the store for `chunk`."""
    return ChunkObject(
        uuid=object_uuid(chunk["chunk_key"]),
        tenant=chunk["tenant"],
        properties={
            "chunk_key": chunk["chunk_key"],
            "text_sha256": chunk["text_sha256"],
            "ingested_at": chunk["ingested_at"],
        },
        vectors={CONTENT_VECTOR: stub_vector(chunk["text"])},
    )
