"""Backfill jobs survive a SIGKILLed worker and can be cancelled (real Kafka and Weaviate)."""

from __future__ import annotations

import asyncio
import json
import re
import socket
import time
import urllib.request
from collections.abc import Iterator
from typing import Any

import pytest
from prometheus_client.parser import text_string_to_metric_families

from streamproc.avro_codec import load_schemas
from streamproc.backfill.commands import cancel_job, start_job, wait_for
from streamproc.derive import projected_model
from streamproc.kafka_io import read_to_end
from streamproc.settings import REPO_ROOT, Settings
from streamproc.topics import jobs_changelog
from streamproc.verify import verify_collection
from streamproc.weaviate_client import connect
from streamproc.weaviate_store import WeaviateStore
from tests.conftest import with_topics
from tests.pipeline_support import (
    Workers,
    corpus_events,
    drained,
    produce_events,
)

TENANTS = ("acme", "globex")
NO_EXPORT = {"OTEL_TRACES_EXPORTER": "none", "OTEL_METRICS_EXPORTER": "none"}
DASHBOARD = REPO_ROOT / "deploy" / "observability" / "dashboards" / "streamproc.json"


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def scrape(settings: Settings) -> dict[str, float]:
    """Every sample of the embedder's Prometheus endpoint, by series name (summed)."""
    url = f"http://127.0.0.1:{settings.telemetry.prometheus_port}/metrics"
    text = urllib.request.urlopen(url, timeout=10).read().decode()
    samples: dict[str, float] = {}
    for family in text_string_to_metric_families(text):
        for sample in family.samples:
            samples[sample.name] = samples.get(sample.name, 0.0) + sample.value
    return samples


def job_history(settings: Settings, job_id: str) -> list[dict[str, Any]]:
    """Every state the job table ever recorded for the job, in order (before compaction)."""
    codec = load_schemas(settings.schemas_dir).codec("BackfillJob")

    async def read() -> list[dict[str, Any]]:
        return [
            job
            async for r in read_to_end(settings, jobs_changelog(settings))
            if r.value is not None and (job := codec.decode(r.value))["job_id"] == job_id
        ]

    return asyncio.run(read())


def wait_for_log(workers: Workers, role: str, text: str, timeout: float = 120.0) -> None:
    deadline = time.monotonic() + timeout
    while text not in workers.log(role):
        assert time.monotonic() < deadline, f"{role} never logged {text!r}"
        time.sleep(0.2)


@pytest.fixture(scope="module")
def lifecycle(
    service_settings: Settings, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[tuple[Settings, Workers]]:
    base = tmp_path_factory.mktemp("lifecycle")
    second = projected_model(service_settings.local.cache_dir)
    third = second.model_copy(update={"name": "minilm-pca128b"})
    settings = service_settings.isolated(
        base / "worker",
        models=[*service_settings.models, second, third],
        # Small batches: the replay takes long enough to be killed and cancelled half-way.
        backfill={**service_settings.backfill.model_dump(), "batch_size": 4},
        # The embedder's Prometheus endpoint shows the backfill metrics.
        telemetry={"enabled": True, "prometheus_port": free_port()},
    )
    with_topics(settings)
    workers = Workers(settings, base)
    workers.start("chunker", {"STREAMPROC_TELEMETRY__ENABLED": "false"})
    workers.start("embedder", NO_EXPORT)
    try:
        produce_events(settings, [e for t in TENANTS for e in corpus_events(t)])
        drained(settings)
        yield settings, workers
    finally:
        workers.stop()


def test_a_sigkilled_worker_resumes_the_job_where_it_was(
    lifecycle: tuple[Settings, Workers],
) -> None:
    settings, workers = lifecycle
    target = settings.collection_for(settings.model("minilm-pca128"))
    job_id = asyncio.run(start_job(settings, "minilm-pca128"))
    half = asyncio.run(
        wait_for(
            settings,
            job_id,
            lambda j: j["items_total"] > 0 and j["items_done"] >= j["items_total"] // 4,
            300,
        )
    )
    assert half["state"] == "RUNNING"
    workers.kill("embedder")
    saved = job_history(settings, job_id)
    at_kill = saved[-1]
    assert 0 < at_kill["items_done"] < at_kill["items_total"], at_kill

    workers.start("embedder", NO_EXPORT)
    done = asyncio.run(
        wait_for(settings, job_id, lambda j: j["state"] in ("COMPLETED", "FAILED"), 600)
    )
    assert done["state"] == "COMPLETED", done["error"]
    resumed = job_history(settings, job_id)[len(saved) :]
    assert resumed, "the restarted worker recorded no progress"
    # It went on from the saved offsets: no record after the restart is behind them.
    assert min(j["items_done"] for j in resumed) >= at_kill["items_done"]
    assert all(
        int(resumed[0]["positions"][p]) >= int(at_kill["positions"][p])
        for p in at_kill["positions"]
    )

    drained(settings)
    _, reports = asyncio.run(verify_collection(settings, target))
    assert [r.tenant for r in reports] == sorted(TENANTS)
    assert all(r.ok for r in reports), reports  # none missing, none unexpected

    # The restarted worker's metrics: this job completed there, after replaying batches.
    samples = scrape(settings)
    assert samples["reembed_jobs_completed_total"] == 1
    assert samples["reembed_batches_processed_total"] > 0
    assert samples["reembed_items_reembedded_total"] > 0
    assert samples.get("reembed_jobs_failed_total", 0) == 0
    assert samples["reembed_jobs_active"] == 0 and samples["reembed_jobs_queued"] == 0
    plotted = {
        name
        for panel in json.loads(DASHBOARD.read_text())["panels"]
        for t in panel["targets"]
        for name in re.findall(r"reembed_[a-z_]+", t["expr"])
    }
    assert plotted and plotted <= set(samples), plotted - set(samples)


def test_cancel_stops_the_job_and_leaves_the_alias(lifecycle: tuple[Settings, Workers]) -> None:
    settings, workers = lifecycle
    alias = settings.weaviate.collection_prefix
    with connect(settings.weaviate) as client:
        serving = WeaviateStore(client).alias_target(alias)
    job_id = asyncio.run(start_job(settings, "minilm-pca128b"))
    asyncio.run(
        wait_for(settings, job_id, lambda j: j["state"] == "RUNNING" and j["items_done"] > 0, 300)
    )
    asyncio.run(cancel_job(settings, job_id))
    cancelled = asyncio.run(wait_for(settings, job_id, lambda j: j["state"] == "CANCELLED", 60))
    wait_for_log(workers, "embedder", '"backfill stopped", "job_id": "' + job_id)

    history = job_history(settings, job_id)
    first_cancel = next(i for i, j in enumerate(history) if j["state"] == "CANCELLED")
    assert all(j["state"] == "CANCELLED" for j in history[first_cancel:])
    assert cancelled["items_done"] < cancelled["items_total"]
    with connect(settings.weaviate) as client:
        store = WeaviateStore(client)
        assert store.alias_target(alias) == serving
    with pytest.raises(Exception, match="already CANCELLED"):
        asyncio.run(cancel_job(settings, job_id))
