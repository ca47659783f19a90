"""Model rotation under load, measured side by side in one run.

    .venv/bin/python -m bench.backfill            # local services (started if down)
    .venv/bin/python -m bench.backfill --external # the services the settings point at

With `copies` copies of the corpus embedded by a live worker, it measures:
  replay    a real backfill job into a fresh collection of the target model (the PCA-128
            model derived from all-MiniLM-L6-v2), chunks re-embedded per second from RUNNING
            to COMPLETED, against raw `encode` of the target model on the same chunk texts
            (the mean of runs just before and just after it, length-sorted at the batch size
            a sweep found fastest on this machine: the real limit; repeats, medians);
  latency   live ingest-to-searchable (produce to embed-done) at a fixed rate, first with no
            backfill, then with a backfill replaying beside it; p50 and p99 of each.
Numbers go to bench/results/backfill.json.
"""

from __future__ import annotations

import asyncio
import json
import statistics
import time
from collections.abc import Callable
from datetime import UTC, datetime
from pathlib import Path
from typing import Annotated, Any

import typer

from bench.pipeline import (
    RAW_BATCH,
    TENANT,
    _percentile,
    _produce,
    _wait_done,
    _warm_up,
    bench_latency,
    bench_raw,
    best_batch_size,
    machine,
    make_requests,
    run_isolated,
    single_chunk_texts,
)
from streamproc.avro_codec import load_schemas
from streamproc.backfill.alias import retire
from streamproc.backfill.commands import start_job, wait_for
from streamproc.derive import projected_model
from streamproc.kafka_io import end_offsets
from streamproc.models import load_model
from streamproc.naming import document_key
from streamproc.produce import event_for, expand
from streamproc.registry import ModelSpec
from streamproc.settings import CORPUS, REPO_ROOT, Settings
from streamproc.topics import topic_name
from streamproc.worker.runner import worker_subprocess

RESULTS = REPO_ROOT / "bench" / "results" / "backfill.json"

app = typer.Typer(add_completion=False)


def fill(settings: Settings, copies: int, alive: Callable[[], bool]) -> list[str]:
    """Produce the corpus copies to chunk-requested and wait until every chunk is embedded;
    returns the chunk texts."""
    requests = make_requests(settings, copies)
    codec = load_schemas(settings.schemas_dir).codec("ChunkRequested")
    items = []
    for copy in range(copies):
        for doc in expand([str(CORPUS)]):
            event = {**event_for(doc, TENANT), "doc_id": f"copy{copy}/{doc.doc_id}"}
            record = codec.decode_json(json.dumps(event))
            items.append((document_key(TENANT, record["doc_id"]).encode(), codec.encode(record)))
    start = asyncio.run(end_offsets(settings, topic_name(settings, "embed-done")))
    asyncio.run(_produce(settings, "chunk-requested", items))
    asyncio.run(
        _wait_done(settings, start, lambda d: d["doc_id"].startswith("copy"), len(requests), alive)
    )
    return [r["chunk"]["text"] for _, r in requests]


def replay_rate(settings: Settings, model: str) -> tuple[float, dict[str, Any]]:
    job_id = asyncio.run(start_job(settings, model))
    job = asyncio.run(
        wait_for(
            settings, job_id, lambda j: j["state"] in ("COMPLETED", "FAILED", "CANCELLED"), 1800
        )
    )
    if job["state"] != "COMPLETED":
        raise RuntimeError(f"backfill ended {job['state']}: {job['error']}")
    seconds = (job["finished_at"] - job["started_at"]).total_seconds()
    return job["items_reembedded"] / seconds, job


@app.command()
def main(
    copies: Annotated[int, typer.Option(help="Copies of the corpus (about 210 chunks each).")] = 2,
    repeats: Annotated[int, typer.Option(help="Backfill runs; medians reported.")] = 3,
    latency_seconds: Annotated[float, typer.Option(help="Seconds per latency phase.")] = 30.0,
    latency_rate: Annotated[float, typer.Option(help="Live chunks a second.")] = 4.0,
    external: Annotated[bool, typer.Option(help="Use the services the settings point at.")] = False,
    out: Annotated[Path, typer.Option(help="Where the JSON goes.")] = RESULTS,
) -> None:
    target = projected_model(Settings().local.cache_dir)
    # One version per run, so every replay writes a fresh collection.
    versions = [
        target.model_copy(update={"name": f"{target.name}-r{i}"}) for i in range(repeats + 1)
    ]
    run_isolated(
        external,
        lambda base, tmp: base.isolated(tmp / "worker", models=[*base.models, *versions]),
        lambda settings, tmp: _run(settings, versions, copies, latency_seconds, latency_rate, tmp),
        out,
    )


def _run(
    settings: Settings,
    versions: list[ModelSpec],
    copies: int,
    latency_seconds: float,
    latency_rate: float,
    tmp: Path,
) -> dict[str, Any]:
    target = load_model(versions[0], settings.embedder.device).model
    raw, replay, jobs = [], [], []
    with worker_subprocess(settings, "all", tmp / "worker.log") as proc:
        alive = lambda: proc.poll() is None  # noqa: E731
        texts = fill(settings, copies, alive)
        typer.echo(f"{len(texts)} chunks live; replaying them into the target model")
        target.encode(texts[:RAW_BATCH], batch_size=RAW_BATCH)
        best, sweep = best_batch_size(target, texts)
        typer.echo(f"raw encode fastest at batch size {best}: {sweep[best]:.1f} chunks/s")
        for spec in versions[1:]:
            # Bracketed by raw runs, so the machine's drift during the replay hits both sides.
            before = bench_raw(target, texts, best)
            rate, job = replay_rate(settings, spec.name)
            raw.append((before + bench_raw(target, texts, best)) / 2)
            replay.append(rate)
            jobs.append({k: job[k] for k in ("items_reembedded", "items_skipped", "batches")})
            typer.echo(f"raw encode {raw[-1]:.1f} chunks/s, backfill replay {rate:.1f} chunks/s")

        # As before a rotation, live traffic writes the serving collection only.
        for spec in versions[1:]:
            asyncio.run(retire(settings, settings.collection_for(spec)))
        live_texts = single_chunk_texts(settings, texts)
        _warm_up(settings, texts, alive)
        quiet = bench_latency(settings, live_texts, latency_rate, latency_seconds, alive, "quiet")
        job_id = asyncio.run(start_job(settings, versions[0].name))
        asyncio.run(wait_for(settings, job_id, lambda j: j["state"] == "RUNNING", 300))
        busy_started = time.monotonic()
        busy = bench_latency(settings, live_texts, latency_rate, latency_seconds, alive, "busy")
        busy_seconds = time.monotonic() - busy_started
        during = asyncio.run(wait_for(settings, job_id, lambda j: True, 60))
        overlapped = during["state"] == "RUNNING"
        final = asyncio.run(wait_for(settings, job_id, lambda j: j["state"] != "RUNNING", 1800))
    ratio = statistics.median(r / w for r, w in zip(replay, raw, strict=True))
    summary = {
        "chunks": len(texts),
        "target_model": f"{versions[0].source} ({versions[0].dimension}d)",
        "raw_best_batch_size": best,
        "raw_best_chunks_per_s": round(statistics.median(raw), 1),
        "raw_batch_32_chunks_per_s": round(sweep[RAW_BATCH], 1),
        "replay_chunks_per_s": round(statistics.median(replay), 1),
        "replay_over_raw_best": round(ratio, 3),
        "latency_rate_chunks_per_s": latency_rate,
        "live_p50_s_without_backfill": round(_percentile(quiet, 50), 3),
        "live_p99_s_without_backfill": round(_percentile(quiet, 99), 3),
        "live_p50_s_with_backfill": round(_percentile(busy, 50), 3),
        "live_p99_s_with_backfill": round(_percentile(busy, 99), 3),
        "live_p99_with_over_without": round(_percentile(busy, 99) / _percentile(quiet, 99), 2),
        "live_max_s_without_backfill": round(max(quiet), 3),
        "live_max_s_with_backfill": round(max(busy), 3),
        "backfill_running_through_latency_phase": overlapped,
    }
    return {
        "measured_at": datetime.now(UTC).isoformat(timespec="seconds"),
        "machine": machine(),
        "backfill": settings.backfill.model_dump(mode="json"),
        "summary": summary,
        "runs": {
            "raw_batch_size_sweep_chunks_per_s": {str(k): round(v, 1) for k, v in sweep.items()},
            "raw_best_chunks_per_s": [round(r, 1) for r in raw],
            "replay_chunks_per_s": [round(r, 1) for r in replay],
            "replay_jobs": jobs,
            "latency_phase_s": round(busy_seconds, 1),
            "concurrent_job": {
                "state_after_latency_phase": during["state"],
                "items_done_after_latency_phase": during["items_done"],
                "items_total": during["items_total"],
                "final_state": final["state"],
            },
        },
    }


if __name__ == "__main__":
    app()
