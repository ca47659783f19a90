"""Helpers for tests that run the real workers against real Kafka and Weaviate."""

from __future__ import annotations

import asyncio
import json
import os
import signal
import subprocess
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

from aiokafka import AIOKafkaConsumer

from streamproc.avro_codec import load_schemas
from streamproc.chunking.extract import extract_sections
from streamproc.kafka_io import decode_value, partitions_of, producer
from streamproc.runner import settings_file, worker_argv
from streamproc.settings import REPO_ROOT, Settings
from streamproc.workers import splitter_for

CORPUS = REPO_ROOT / "corpus" / "docs"


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


async def _produce(settings: Settings, items: list[tuple[bytes, bytes]], topic: str) -> None:
    async with producer(settings) as prod:
        for key, value in items:
            await (await prod.send(settings.topic(topic), value, key=key))


def produce_events(settings: Settings, events: list[dict[str, Any]]) -> None:
    codec = load_schemas(settings.schemas_dir).codec("ChunkRequested")
    items = [
        (f"{e['tenant']}/{e['doc_id']}".encode(), codec.encode(codec.decode_json(json.dumps(e))))
        for e in events
    ]
    asyncio.run(_produce(settings, items, "chunk-requested"))


def produce_raw(
    settings: Settings, items: list[tuple[bytes, bytes]], topic: str = "chunk-requested"
) -> None:
    asyncio.run(_produce(settings, items, topic))


def collect(
    settings: Settings, topic: str, until: Callable[[list[Any]], bool], timeout: float = 120.0
) -> list[Any]:
    """Decoded values of `topic` from the beginning, read until `until(values)` holds."""

    async def run() -> list[Any]:
        schemas = load_schemas(settings.schemas_dir)
        consumer = AIOKafkaConsumer(
            settings.topic(topic),
            bootstrap_servers=settings.kafka.bootstrap_servers,
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
    """The real worker processes (`streamproc worker --role ...`), one per role."""

    def __init__(self, settings: Settings, log_dir: Path) -> None:
        self.settings = settings
        self.config = settings_file(settings)
        self.log_dir = log_dir
        self.procs: dict[str, subprocess.Popen[bytes]] = {}

    def start(self, role: str, env: dict[str, str] | None = None) -> subprocess.Popen[bytes]:
        log = (self.log_dir / f"{role}.log").open("ab")
        proc = subprocess.Popen(
            worker_argv(role),
            stdout=log,
            stderr=subprocess.STDOUT,
            env={**os.environ, **(env or {}), "STREAMPROC_CONFIG": str(self.config)},
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
        self.config.unlink(missing_ok=True)

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
        from aiokafka.admin import AIOKafkaAdminClient

        admin = AIOKafkaAdminClient(bootstrap_servers=settings.kafka.bootstrap_servers)
        consumer = AIOKafkaConsumer(bootstrap_servers=settings.kafka.bootstrap_servers)
        await admin.start()
        await consumer.start()
        try:
            total = 0
            for role, topic in (("chunker", "chunk-requested"), ("embedder", "embed-requested")):
                name = settings.topic(topic)
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
