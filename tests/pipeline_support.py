"""Helpers for tests that run the real workers against real Kafka and Weaviate."""

from __future__ import annotations

import asyncio
import json
import os
import re
import shutil
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import httpx

from streamproc.avro_codec import load_schemas
from streamproc.chunking.extract import extract_sections
from streamproc.chunking.tokenizers import splitter_for
from streamproc.kafka_io import (
    admin_client,
    consumer_client,
    decode_value,
    live_chunks,
    partitions_of,
    producer,
    read_to_end,
)
from streamproc.localservices.kafka import LocalKafka
from streamproc.localservices.process import check_ports_free
from streamproc.localservices.weaviate import LocalWeaviate
from streamproc.models import load_model
from streamproc.naming import CONTENT_VECTOR
from streamproc.search import search_alias
from streamproc.settings import CORPUS, Settings, child_env
from streamproc.topics import topic_name
from streamproc.weaviate_client import connect
from streamproc.weaviate_store import WeaviateStore
from streamproc.worker.runner import child_environ, worker_argv


def free_ports(count: int) -> list[int]:
    """`count` consecutive ports nothing listens on now, for a second local service beside the
    tests' own (other sessions on this machine use fixed ports with their own offsets);
    consecutive because Weaviate finds a node's data and raft RPC ports one above the others."""
    for _ in range(100):
        with socket.socket() as probe:
            probe.bind(("127.0.0.1", 0))
            base = int(probe.getsockname()[1])
        sockets = []
        try:
            for port in range(base, base + count):
                sock = socket.socket()
                sockets.append(sock)
                sock.bind(("127.0.0.1", port))
            return list(range(base, base + count))
        except OSError:
            continue
        finally:
            for sock in sockets:
                sock.close()
    raise AssertionError(f"no {count} consecutive free ports found")


@contextmanager
def private_weaviate(
    settings: Settings, tag: str, api_key: str | None = None
) -> Iterator[Settings]:
    """A second local Weaviate beside the tests' own, on free ports and empty data, for a case
    that must reconfigure or restart one; yields `settings` pointing at it."""
    http, grpc, gossip, data_port, raft, rpc = free_ports(6)
    data = settings.model_dump()
    data["weaviate"].update(http_port=http, grpc_port=grpc, api_key=api_key)
    data["local"].update(
        profile=f"test-{tag}-{http}",
        weaviate_gossip_port=gossip,
        weaviate_data_port=data_port,
        weaviate_raft_port=raft,
        weaviate_raft_rpc_port=rpc,
    )
    private = Settings(**data)
    with on_empty_data(LocalWeaviate(private), private):
        yield private


@contextmanager
def on_empty_data(service: LocalKafka | LocalWeaviate, settings: Settings) -> Iterator[None]:
    """A private local service started on empty data (ports checked free first); stopped, and
    its profile's state dropped, after."""
    service.provision()
    service.proc.stop()
    shutil.rmtree(service.state, ignore_errors=True)
    check_ports_free(service.ports)
    try:
        service.start()
        yield
    finally:
        service.proc.stop()
        shutil.rmtree(settings.local.state_dir, ignore_errors=True)


def expected_chunks(settings: Settings, text: str, content_type: str) -> list[tuple[str, str]]:
    """(heading path, text) of each chunk, computed by the same pure code the chunker runs."""
    splitter = splitter_for(settings)
    return [
        (" > ".join(d.heading_path), d.text)
        for d in splitter.split(extract_sections(text, content_type))
    ]


def event(tenant: str, doc_id: str, content: str | None = None, **fields: Any) -> dict[str, Any]:
    return {
        "event_id": f"{tenant}-{doc_id}-{time.monotonic_ns()}",
        "tenant": tenant,
        "doc_id": doc_id,
        "content": content,
        "content_type": "text/markdown",
        **fields,
    }


Item = tuple[bytes, bytes] | tuple[bytes, bytes, list[tuple[str, bytes]]]


async def _produce(settings: Settings, items: Sequence[Item], topic: str) -> None:
    async with producer(settings) as prod:
        for key, value, *headers in items:
            await (
                await prod.send(
                    topic_name(settings, topic),
                    value,
                    key=key,
                    headers=headers[0] if headers else None,
                )
            )


def produce_events(settings: Settings, events: list[dict[str, Any]]) -> None:
    codec = load_schemas(settings.schemas_dir).codec("ChunkRequested")
    items = [
        (f"{e['tenant']}/{e['doc_id']}".encode(), codec.encode(codec.decode_json(json.dumps(e))))
        for e in events
    ]
    asyncio.run(_produce(settings, items, "chunk-requested"))


def produce_raw(settings: Settings, items: Sequence[Item], topic: str = "chunk-requested") -> None:
    asyncio.run(_produce(settings, items, topic))


def collect(
    settings: Settings, topic: str, until: Callable[[list[Any]], bool], timeout: float = 120.0
) -> list[Any]:
    """Decoded values of `topic` from the beginning, read until `until(values)` holds."""

    async def run() -> list[Any]:
        schemas = load_schemas(settings.schemas_dir)
        consumer = consumer_client(
            settings,
            topic_name(settings, topic),
            auto_offset_reset="earliest",
            enable_auto_commit=False,
        )
        await consumer.start()
        values: list[Any] = []
        deadline = time.monotonic() + timeout
        try:
            while not until(values):
                if time.monotonic() > deadline:
                    raise AssertionError(
                        f"{topic}: condition not met within {timeout:.0f}s; got {len(values)} records"
                    )
                batch = await consumer.getmany(timeout_ms=500)
                for records in batch.values():
                    for record in records:
                        values.append((record, decode_value(schemas, record.value)))
        finally:
            await consumer.stop()
        return values

    return asyncio.run(run())


def records_with_headers(values: list[Any]) -> list[tuple[dict[str, str], Any]]:
    return [({k: v.decode() for k, v in r.headers}, v) for r, v in values]


class Workers:
    """The real worker processes (`streamproc worker --role ...`), by name: a role, or a role
    and an instance (`embedder#2`) for a second member of the same group."""

    def __init__(self, settings: Settings, log_dir: Path) -> None:
        self.settings = settings
        self.log_dir = log_dir
        self.procs: dict[str, subprocess.Popen[bytes]] = {}

    def start(self, role: str, env: dict[str, str] | None = None) -> subprocess.Popen[bytes]:
        log = (self.log_dir / f"{role}.log").open("ab")
        proc = subprocess.Popen(
            worker_argv(role.partition("#")[0]),
            stdout=log,
            stderr=subprocess.STDOUT,
            env=child_environ(self.settings, env),
        )
        self.procs[role] = proc
        return proc

    def kill(self, role: str) -> None:
        proc = self.procs.pop(role)
        proc.send_signal(signal.SIGKILL)
        proc.wait()

    def stop(self) -> None:
        for proc in self.procs.values():
            proc.terminate()
        for proc in self.procs.values():
            try:
                proc.wait(timeout=60)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait()
        self.procs.clear()

    def log(self, role: str) -> str:
        return (self.log_dir / f"{role}.log").read_text(errors="replace")


@contextmanager
def running_workers(
    settings: Settings, log_dir: Path, roles: tuple[str, ...] = ("chunker", "embedder")
) -> Iterator[Workers]:
    workers = Workers(settings, log_dir)
    for role in roles:
        workers.start(role)
    try:
        yield workers
    finally:
        workers.stop()


def drained(settings: Settings, timeout: float = 180.0) -> None:
    """Wait until the chunker and the embedder groups have committed every message so far."""

    async def lag() -> int:
        from aiokafka import TopicPartition

        admin = admin_client(settings)
        consumer = consumer_client(settings)
        await admin.start()
        await consumer.start()
        try:
            total = 0
            for role, topic in (("chunker", "chunk-requested"), ("embedder", "embed-requested")):
                name = topic_name(settings, topic)
                tps = [TopicPartition(name, p) for p in await partitions_of(consumer, name)]
                committed = await admin.list_consumer_group_offsets(
                    f"{settings.worker.app_id}-{role}"
                )
                ends = await consumer.end_offsets(tps)
                total += sum(
                    ends[tp] - (committed[tp].offset if tp in committed else 0) for tp in tps
                )
            return total
        finally:
            await consumer.stop()
            await admin.close()

    deadline = time.monotonic() + timeout
    while (behind := asyncio.run(lag())) > 0:
        if time.monotonic() > deadline:
            raise AssertionError(f"workers still {behind} messages behind after {timeout:.0f}s")
        time.sleep(0.5)


def corpus_events(tenant: str, suffix: str = "") -> list[dict[str, Any]]:
    kinds = {".html": "text/html", ".md": "text/markdown"}
    return [
        event(
            tenant,
            f"{path.stem}{suffix}",
            path.read_text(),
            content_type=kinds.get(path.suffix, "text/plain"),
        )
        for path in sorted(CORPUS.iterdir())
    ]


def exact(settings: Settings, collection: str) -> dict[str, list[str]]:
    """The collection against the chunk topic, by key set and content hash, per tenant:
    `missing` live chunks, `stale` ones held with another text, `extra` objects with no live
    chunk. All three empty means exact."""
    codec = load_schemas(settings.schemas_dir).codec("ChunkRecord")
    live = {
        key: codec.decode(value)["text_sha256"]
        for key, value in asyncio.run(live_chunks(settings)).items()
    }
    held: dict[str, str] = {}
    with connect(settings.weaviate) as client:
        store = WeaviateStore(client)
        for tenant in store.tenants(collection):
            for obj in store.collection(collection, tenant).iterator(
                return_properties=["chunk_key", "text_sha256"]
            ):
                held[str(obj.properties["chunk_key"])] = str(obj.properties["text_sha256"])
    return {
        "missing": sorted(live.keys() - held.keys()),
        "stale": sorted(k for k in live.keys() & held.keys() if live[k] != held[k]),
        "extra": sorted(held.keys() - live.keys()),
    }


def embed_done_keys(settings: Settings, collection: str, expected: set[str]) -> set[str]:
    """Chunk keys with an EMBEDDED record for `collection` on embed-done, read until every key
    of `expected` has one (or the timeout of `collect`)."""
    seen: set[str] = set()

    def covered(values: list[Any]) -> bool:
        seen.update(
            v["chunk_key"]
            for _, v in values
            if isinstance(v, dict)
            and v.get("status") == "EMBEDDED"
            and v.get("collection") == collection
        )
        return expected <= seen

    collect(settings, "embed-done", covered)
    return seen


def records_to_end(settings: Settings, topic: str) -> list[Any]:
    """Every record of `topic` (prefixed by the settings) up to its end, as `collect` gives them."""

    async def run() -> list[Any]:
        schemas = load_schemas(settings.schemas_dir)
        return [
            (r, decode_value(schemas, r.value))
            async for r in read_to_end(settings, topic_name(settings, topic))
        ]

    return asyncio.run(run())


_CLI_HIT = re.compile(r"^\s*\d+\.\s+\S+\s+(\S+#\d+)\s", re.MULTILINE)


def cli(settings: Settings, *args: str) -> subprocess.CompletedProcess[str]:
    """`streamproc ARGS` in a child process that gets exactly these settings."""
    return subprocess.run(
        [sys.executable, "-m", "streamproc", *args],
        env={**os.environ, **child_env(settings)},
        capture_output=True,
        text=True,
        timeout=300,
        check=False,
    )


def graphql(settings: Settings, query: str) -> dict[str, Any]:
    key = settings.weaviate.api_key
    response = httpx.post(
        f"{settings.weaviate.http_url}/v1/graphql",
        json={"query": query},
        headers={"Authorization": f"Bearer {key.get_secret_value()}"} if key else {},
        timeout=60,
    )
    response.raise_for_status()
    return dict(response.json())


def assert_tenants_isolated(settings: Settings, tenants: Sequence[str], query: str) -> None:
    """A search in each tenant finds only that tenant's chunks, through `search_alias`, through
    `streamproc search` and through GraphQL on the collection the alias serves (a vector search
    with that tenant); GraphQL without a tenant is refused."""
    limit = 50
    collection = None
    for tenant in tenants:
        result = search_alias(settings, query, tenant, limit)
        collection = result.collection
        assert result.hits, f"no hit in tenant {tenant}"
        assert [h.chunk_key for h in result.hits if not h.chunk_key.startswith(f"{tenant}/")] == []

        searched = cli(settings, "search", query, "--tenant", tenant, "--limit", str(limit))
        assert searched.returncode == 0, searched.stderr[-3000:]
        assert f"-> {collection}" in searched.stdout
        assert set(_CLI_HIT.findall(searched.stdout)) == {
            f"{h.doc_id}#{h.chunk_index}" for h in result.hits
        }

        spec = settings.model_for_collection(collection)
        vector = load_model(spec, settings.embedder.device).encode([query])[0].tolist()
        found = graphql(
            settings,
            f'{{ Get {{ {collection}(tenant: "{tenant}", limit: {limit}, nearVector: '
            f'{{vector: {vector}, targetVectors: ["{CONTENT_VECTOR}"]}}) {{ chunk_key tenant }} }} }}',
        )
        assert "errors" not in found, found["errors"]
        objects = found["data"]["Get"][collection]
        assert objects, f"GraphQL found nothing in tenant {tenant}"
        assert [
            o
            for o in objects
            if o["tenant"] != tenant or not o["chunk_key"].startswith(f"{tenant}/")
        ] == []
    untenanted = graphql(settings, f"{{ Get {{ {collection}(limit: 5) {{ chunk_key }} }} }}")
    assert untenanted.get("errors"), untenanted
