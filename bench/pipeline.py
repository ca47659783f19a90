"""Embedding throughput and ingest-to-searchable latency, measured side by side in one run.

    .venv/bin/python -m bench.pipeline            # local services (started if down)
    .venv/bin/python -m bench.pipeline --external # the services the settings point at

On the same chunks of the shipped corpus it measures:
  raw best  the real limit: `SentenceTransformer.encode` over all chunk texts, length-sorted, at
            the batch size that is fastest on this machine (found by a sweep first; on a CPU,
            padding makes large batches slower than small ones);
  raw 32    the same at batch size 32, the library's default, what a user would run first;
  naive     what a user would write first: a Kafka-less loop that encodes one chunk and inserts
            it into Weaviate before the next (on a subset, it is slow);
  pipeline  the real embedder worker, from the first `embed-requested` produced to the last
            `embed-done` read back (Avro, Kafka, Weaviate writes and commits included), twice:
            telemetry off, and a second worker beside it with telemetry on (every message
            traced, OTLP export to a receiver on loopback), both alive for the whole run;
and then ingest-to-searchable latency: single-chunk documents produced to `chunk-requested` at
half of the measured pipeline rate, timed to their `embed-done` (emitted only after Weaviate
confirmed the write, and Weaviate indexes synchronously, so the chunk is searchable by then).
The throughput runs interleave (raw best, raw 32, pipeline off, pipeline on, repeated), so
drift on a shared machine hits each alike. Medians; numbers go to bench/results/latest.json.
"""

from __future__ import annotations

import asyncio
import json
import os
import platform
import statistics
import tempfile
import time
from collections.abc import Callable, Iterator
from contextlib import aclosing, contextmanager
from datetime import UTC, datetime
from pathlib import Path
from typing import Annotated, Any

import psutil
import typer
from aiokafka import TopicPartition

from streamproc.avro_codec import load_schemas
from streamproc.chunking.extract import extract_sections
from streamproc.chunking.tokenizers import splitter_for
from streamproc.demo import local_services
from streamproc.errors import StreamprocError
from streamproc.kafka_io import admin_client, end_offsets, follow, producer
from streamproc.models import EmbeddingModel, load_model
from streamproc.naming import CONTENT_VECTOR, document_key, object_uuid
from streamproc.otlp_receiver import OtlpReceiver
from streamproc.pipeline.chunker import Chunker
from streamproc.produce import event_for, expand
from streamproc.settings import CORPUS, REPO_ROOT, Settings
from streamproc.topics import topic_name
from streamproc.topology import load_topology
from streamproc.topology.kafka_admin import reconcile
from streamproc.weaviate_client import connect
from streamproc.weaviate_schema import ChunkObject
from streamproc.weaviate_store import WeaviateStore
from streamproc.worker.runner import worker_subprocess

RESULTS = REPO_ROOT / "bench" / "results" / "latest.json"
TENANT = "bench"
RAW_BATCH = 32
# Batch sizes tried for the raw limit.
SWEEP = (1, 2, 4, 8, 16, 32, 64, 128)

app = typer.Typer(add_completion=False)


def make_requests(settings: Settings, copies: int) -> list[tuple[bytes, dict[str, Any]]]:
    """(key, embed request) for every chunk of `copies` copies of the corpus, made by the same
    pure chunker the worker runs."""
    codec = load_schemas(settings.schemas_dir).codec("ChunkRequested")
    chunker = Chunker(settings.chunking, splitter_for(settings))
    now = datetime.now(UTC)
    out = []
    for copy in range(copies):
        for doc in expand([str(CORPUS)]):
            event = {**event_for(doc, TENANT), "doc_id": f"copy{copy}/{doc.doc_id}"}
            record = codec.decode_json(json.dumps(event))
            key = document_key(TENANT, record["doc_id"]).encode()
            out += [(key, r) for r in chunker.process(record, None, now).embed_requests]
    return out


def bench_raw(model: Any, texts: list[str], batch_size: int = RAW_BATCH) -> float:
    """Chunks a second of one `encode` call over `texts`, length-sorted (the library sorts
    within the call too; sorted here so every batch size sees the same order)."""
    ordered = sorted(texts, key=len)
    started = time.perf_counter()
    model.encode(ordered, batch_size=batch_size, normalize_embeddings=True)
    return len(texts) / (time.perf_counter() - started)


def best_batch_size(model: Any, texts: list[str], repeats: int = 3) -> tuple[int, dict[int, float]]:
    """The batch size at which raw `encode` is fastest on this machine, and the sweep (median
    chunks/s per size, each size measured in every round so drift hits all alike)."""
    runs: dict[int, list[float]] = {size: [] for size in SWEEP}
    for _ in range(repeats):
        for size in SWEEP:
            runs[size].append(bench_raw(model, texts, size))
    sweep = {size: statistics.median(r) for size, r in runs.items()}
    return max(sweep, key=lambda size: sweep[size]), sweep


def bench_naive(settings: Settings, model: EmbeddingModel, requests: list[dict[str, Any]]) -> float:
    """One encode and one insert per chunk, into a scratch collection."""
    collection = f"{settings.weaviate.collection_prefix}_naive"
    with connect(settings.weaviate) as client:
        store = WeaviateStore(client)
        store.ensure_collection(collection, model.dimension)
        model.encode([requests[0]["chunk"]["text"]])
        started = time.perf_counter()
        for request in requests:
            chunk = request["chunk"]
            vector = model.encode([chunk["text"]])[0].tolist()
            store.upsert(
                collection,
                [
                    ChunkObject(
                        uuid=object_uuid(chunk["chunk_key"]),
                        tenant=chunk["tenant"],
                        properties={"chunk_key": chunk["chunk_key"], "text": chunk["text"]},
                        vectors={CONTENT_VECTOR: vector},
                    )
                ],
            )
        return len(requests) / (time.perf_counter() - started)


async def _wait_done(
    settings: Settings,
    start: dict[TopicPartition, int],
    want: Callable[[dict[str, Any]], bool],
    count: int,
    proc_alive: Callable[[], bool],
    timeout: float = 600.0,
) -> list[tuple[int, dict[str, Any]]]:
    """(Kafka timestamp ms, record) of the first `count` embed-done records `want` accepts."""
    codec = load_schemas(settings.schemas_dir).codec("EmbedDone")
    got: list[tuple[int, dict[str, Any]]] = []
    deadline = time.monotonic() + timeout
    async with aclosing(follow(settings, start)) as polls:
        async for records in polls:
            for record in records:
                done = codec.decode(record.value)
                if want(done):
                    got.append((record.timestamp, done))
            if len(got) >= count:
                return got
            if not proc_alive():
                raise StreamprocError("the worker exited during the benchmark; see its log")
            if time.monotonic() > deadline:
                raise StreamprocError(f"only {len(got)}/{count} embed-done within {timeout:.0f}s")
    raise AssertionError("unreachable: follow() never ends")


async def _produce(settings: Settings, topic: str, items: list[tuple[bytes, bytes]]) -> None:
    async with producer(settings) as prod:
        futures = [
            await prod.send(topic_name(settings, topic), value, key=key) for key, value in items
        ]
        await asyncio.gather(*futures)


def bench_pipeline(
    settings: Settings, items: list[tuple[bytes, bytes]], alive: Callable[[], bool]
) -> float:
    start = asyncio.run(end_offsets(settings, topic_name(settings, "embed-done")))
    started = time.perf_counter()
    asyncio.run(_produce(settings, "embed-requested", items))
    asyncio.run(_wait_done(settings, start, lambda d: d["tenant"] == TENANT, len(items), alive))
    return len(items) / (time.perf_counter() - started)


def _warm_up(settings: Settings, texts: list[str], alive: Callable[[], bool]) -> None:
    """Also the readiness check: one document all the way through both roles."""
    warm = single_chunk_texts(settings, texts[:20])[:1]
    bench_latency(settings, warm, 10.0, 0.0, alive, prefix=f"warm-up-{time.monotonic_ns()}")


def single_chunk_texts(settings: Settings, texts: list[str]) -> list[str]:
    splitter = splitter_for(settings)
    return [t for t in texts if len(splitter.split(extract_sections(t, "text/plain"))) == 1]


async def _paced(
    settings: Settings, events: list[tuple[bytes, bytes]], rate: float
) -> dict[bytes, float]:
    """Produce at `rate` events a second; the wall time each was handed to the producer."""
    sent: dict[bytes, float] = {}
    async with producer(settings) as prod:
        futures = []
        origin = time.monotonic()
        for i, (key, value) in enumerate(events):
            # Pacing an open-loop load generator, not waiting for readiness.
            await asyncio.sleep(max(0.0, origin + i / rate - time.monotonic()))
            sent[key] = time.time()
            futures.append(await prod.send(topic_name(settings, "chunk-requested"), value, key=key))
        await asyncio.gather(*futures)
    return sent


def bench_latency(
    settings: Settings,
    texts: list[str],
    rate: float,
    seconds: float,
    alive: Callable[[], bool],
    prefix: str = "latency",
) -> list[float]:
    """Seconds from handing each document to the producer until its last chunk is in the
    serving collection (its last embed-done record there), one value per document."""
    codec = load_schemas(settings.schemas_dir).codec("ChunkRequested")
    splitter = splitter_for(settings)
    count = max(10, int(rate * seconds))
    events = []
    chunks = 0
    for i in range(count):
        doc_id = f"{prefix}/{i}"
        content = texts[i % len(texts)] + f"\n\n(copy {i})"
        # The marker can push a text over a chunk boundary: wait for every chunk.
        chunks += len(splitter.split(extract_sections(content, "text/plain")))
        event = {
            "event_id": doc_id,
            "tenant": TENANT,
            "doc_id": doc_id,
            "content": content,
            "content_type": "text/plain",
        }
        events.append(
            (
                document_key(TENANT, doc_id).encode(),
                codec.encode(codec.decode_json(json.dumps(event))),
            )
        )
    # Searchable when it is in the collection the alias serves: a backfill target written
    # beside it has its own embed-done records.
    serving = settings.collection_for(settings.model(settings.active_model))
    start = asyncio.run(end_offsets(settings, topic_name(settings, "embed-done")))
    sent = asyncio.run(_paced(settings, events, rate))
    done = asyncio.run(
        _wait_done(
            settings,
            start,
            lambda d: d["doc_id"].startswith(f"{prefix}/") and d["collection"] == serving,
            chunks,
            alive,
        )
    )
    searchable: dict[bytes, float] = {}
    for ts, d in done:
        key = document_key(TENANT, d["doc_id"]).encode()
        searchable[key] = max(searchable.get(key, 0.0), ts / 1000)
    return [at - sent[key] for key, at in searchable.items()]


def _percentile(values: list[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, round(q / 100 * (len(ordered) - 1)))]


def machine() -> dict[str, Any]:
    import torch

    cpu = platform.processor() or platform.machine()
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    return {
        "cpu": cpu,
        "cores": psutil.cpu_count(logical=True),
        "memory_gib": round(psutil.virtual_memory().total / 2**30, 1),
        "gpu": torch.cuda.get_device_name(0) if torch.cuda.is_available() else None,
        "python": platform.python_version(),
        "torch": torch.__version__,
        "torch_threads": torch.get_num_threads(),
    }


async def _drop_topics(settings: Settings) -> None:
    admin = admin_client(settings)
    await admin.start()
    try:
        topics = [t for t in await admin.list_topics() if t.startswith(settings.kafka.topic_prefix)]
        if topics:
            await admin.delete_topics(topics)
    finally:
        await admin.close()


def _drop_collections(settings: Settings) -> None:
    with connect(settings.weaviate) as client:
        for name in client.collections.list_all():
            if name.startswith(settings.weaviate.collection_prefix):
                client.collections.delete(name)
        client.alias.delete(alias_name=settings.weaviate.collection_prefix)


@app.command()
def main(
    copies: Annotated[int, typer.Option(help="Copies of the corpus (about 210 chunks each).")] = 2,
    repeats: Annotated[int, typer.Option(help="Runs per throughput figure; medians reported.")] = 5,
    naive_chunks: Annotated[int, typer.Option(help="Chunks for the one-at-a-time loop.")] = 64,
    latency_seconds: Annotated[
        float, typer.Option(help="How long to produce at half saturation.")
    ] = 30.0,
    external: Annotated[bool, typer.Option(help="Use the services the settings point at.")] = False,
    out: Annotated[Path, typer.Option(help="Where the JSON goes.")] = RESULTS,
) -> None:
    run_isolated(
        external,
        lambda base, tmp: base.isolated(tmp / "worker"),
        lambda settings, tmp: _run(settings, copies, repeats, naive_chunks, latency_seconds, tmp),
        out,
    )


@contextmanager
def own_topology(settings: Settings) -> Iterator[None]:
    """The settings' own topics made, and they and its collections dropped afterwards."""
    specs = load_topology(settings.topology_file, prefix=settings.kafka.topic_prefix)
    asyncio.run(reconcile(settings, specs, apply=True))
    try:
        yield
    finally:
        asyncio.run(_drop_topics(settings))
        _drop_collections(settings)


def run_isolated(
    external: bool,
    make_settings: Callable[[Settings, Path], Settings],
    body: Callable[[Settings, Path], dict[str, Any]],
    out: Path,
) -> None:
    """`body` on its own topics and collections (dropped afterwards) of the local services
    (started if down) or the configured ones; its results written to `out` as JSON."""
    base = Settings()
    with tempfile.TemporaryDirectory() as tmp, local_services(base, manage=not external):
        settings = make_settings(base, Path(tmp))
        with own_topology(settings):
            results = body(settings, Path(tmp))
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(results, indent=2) + "\n")
    typer.echo(json.dumps(results["summary"], indent=2))
    typer.echo(f"written to {out}")


def _run(
    settings: Settings,
    copies: int,
    repeats: int,
    naive_chunks: int,
    latency_seconds: float,
    tmp: Path,
) -> dict[str, Any]:
    requests = make_requests(settings, copies)
    texts = [r["chunk"]["text"] for _, r in requests]
    typer.echo(f"{len(requests)} chunks from {copies} copies of the corpus")

    loaded = load_model(settings.model(settings.active_model), settings.embedder.device)
    model = loaded.model
    model.encode(texts[:RAW_BATCH], batch_size=RAW_BATCH)  # warm-up: lazy init, allocator
    best, sweep = best_batch_size(model, texts)
    typer.echo(
        "raw encode by batch size: "
        + ", ".join(f"{size}: {rate:.1f}" for size, rate in sweep.items())
        + f" chunks/s; best {best}"
    )
    naive = bench_naive(settings, loaded, [r for _, r in requests[:naive_chunks]])
    typer.echo(f"naive loop: {naive:.1f} chunks/s")

    codec = load_schemas(settings.schemas_dir).codec("EmbedRequested")
    items = [(key, codec.encode(r)) for key, r in requests]
    # The telemetry-on worker: its own topics and collections, beside the plain one.
    traced = settings.isolated(
        tmp / "worker-telemetry", telemetry={**settings.telemetry.model_dump(), "enabled": True}
    )
    runs: dict[str, list[float]] = {"raw_best": [], "raw_32": [], "off": [], "on": []}
    with (
        own_topology(traced),
        OtlpReceiver() as receiver,
        worker_subprocess(settings, "all", tmp / "worker.log") as plain,
        worker_subprocess(
            traced,
            "all",
            tmp / "worker-telemetry.log",
            {
                "OTEL_EXPORTER_OTLP_ENDPOINT": receiver.endpoint,
                "OTEL_METRIC_EXPORT_INTERVAL": "5000",
            },
        ) as tracing,
    ):
        alive = lambda: plain.poll() is None and tracing.poll() is None  # noqa: E731
        _warm_up(settings, texts, alive)
        _warm_up(traced, texts, alive)
        for _ in range(repeats):
            runs["raw_best"].append(bench_raw(model, texts, best))
            runs["raw_32"].append(bench_raw(model, texts))
            runs["off"].append(bench_pipeline(settings, items, alive))
            runs["on"].append(bench_pipeline(traced, items, alive))
            typer.echo(
                "raw encode best {raw_best:.1f}, batch 32 {raw_32:.1f}; pipeline {off:.1f}, "
                "telemetry on {on:.1f} chunks/s".format(**{k: v[-1] for k, v in runs.items()})
            )
        spans_received = len(receiver.spans())
        rate = statistics.median(runs["off"])
        latencies = bench_latency(
            settings, single_chunk_texts(settings, texts), rate / 2, latency_seconds, alive
        )

    median = {k: statistics.median(v) for k, v in runs.items()}
    summary = {
        "chunks": len(requests),
        "raw_best_batch_size": best,
        "raw_best_chunks_per_s": round(median["raw_best"], 1),
        "raw_batch_32_chunks_per_s": round(median["raw_32"], 1),
        "pipeline_chunks_per_s": round(rate, 1),
        "pipeline_over_raw_best": round(rate / median["raw_best"], 3),
        "pipeline_over_raw_batch_32": round(rate / median["raw_32"], 3),
        "pipeline_telemetry_on_chunks_per_s": round(median["on"], 1),
        # Each repeat's on/off pair ran back to back in one session: the median of the pairs.
        "telemetry_overhead": round(
            1
            - statistics.median(on / off for on, off in zip(runs["on"], runs["off"], strict=True)),
            3,
        ),
        "naive_loop_chunks_per_s": round(naive, 1),
        "pipeline_over_naive": round(rate / naive, 2),
        "latency_rate_chunks_per_s": round(rate / 2, 1),
        "ingest_to_searchable_p50_s": round(_percentile(latencies, 50), 3),
        "ingest_to_searchable_p99_s": round(_percentile(latencies, 99), 3),
    }
    return {
        "measured_at": datetime.now(UTC).isoformat(timespec="seconds"),
        "machine": machine(),
        "model": settings.active_model,
        "embedder": settings.embedder.model_dump(mode="json"),
        "chunking": settings.chunking.model_dump(mode="json"),
        "summary": summary,
        "runs": {
            "raw_batch_size_sweep_chunks_per_s": {str(k): round(v, 1) for k, v in sweep.items()},
            **{f"{k}_chunks_per_s": [round(r, 1) for r in v] for k, v in runs.items()},
            "telemetry_on_spans_received": spans_received,
            "latency_samples": len(latencies),
        },
        "env": {k: v for k, v in os.environ.items() if k.startswith("STREAMPROC_")},
    }


if __name__ == "__main__":
    app()
