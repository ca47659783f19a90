"""Traces, metrics and logs of a real run: workers export over OTLP to a real receiver on
loopback, the producing side records into an in-memory exporter, Prometheus is scraped."""

from __future__ import annotations

import asyncio
import json
import re
import socket
import time
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest
from opentelemetry import trace
from opentelemetry.sdk.trace import ReadableSpan, TracerProvider
from opentelemetry.sdk.trace.export import SimpleSpanProcessor
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter
from pydantic import SecretStr

from streamproc.otlp_receiver import OtlpReceiver, ReceivedSpan
from streamproc.produce import expand, produce_documents
from streamproc.settings import REPO_ROOT, Settings
from streamproc.topics import topic_name
from tests.pipeline_support import (
    collect,
    event,
    expected_chunks,
    produce_events,
    records_with_headers,
    running_workers,
)

DASHBOARD = REPO_ROOT / "deploy" / "observability" / "dashboards" / "streamproc.json"
# Counters that only exist once their event happened (no Weaviate outage in this run).
ONLY_AFTER_FAILURES = {"streamproc_weaviate_retries_total"}
SECRET = "zq-SECRET-5e1f0c-do-not-log"
# Checked against every log of the run (tests/conftest.py).
NEVER_LOGGED = (SECRET, "zq-otlp-token-c03e")
# Secret settings the workers are given (PLAINTEXT leaves them unused, but they travel in the
# workers' settings all the same): none may reach a log line, a span or a metric.
SASL_PASSWORD = "zq-sasl-password-41d7"
KEY_PASSWORD = "zq-ssl-key-password-9b20"
OTLP_TOKEN = NEVER_LOGGED[1]
CONSUMER, PRODUCER = 5, 4  # OTLP SpanKind numbers
STATUS_ERROR = 2

DOCS = {
    "alpha.md": f"# Alpha\n\nThe first paragraph carries {SECRET} inside it.\n\n"
    "## Details\n\n" + "Alpha details about brokers and partitions. " * 60,
    "beta.md": "# Beta\n\nA second document about embeddings and vector search. " * 30
    + f"\n\n## Notes\n\nAnother mention of {SECRET}.",
}


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


@pytest.fixture(scope="module")
def local_spans() -> Iterator[InMemorySpanExporter]:
    """This process's spans (the producing side) in memory."""
    exporter = InMemorySpanExporter()
    provider = TracerProvider()
    provider.add_span_processor(SimpleSpanProcessor(exporter))
    trace.set_tracer_provider(provider)
    yield exporter
    provider.shutdown()


def _wait_for(condition: object, what: str, timeout: float = 90.0) -> None:
    deadline = time.monotonic() + timeout
    while not condition():  # type: ignore[operator]
        if time.monotonic() > deadline:
            raise AssertionError(f"not within {timeout:.0f}s: {what}")
        time.sleep(0.2)


def _scrape(port: int) -> str:
    return httpx.get(f"http://127.0.0.1:{port}/metrics", timeout=10).text


def _prometheus_value(text: str, name: str, **labels: str) -> float:
    total = 0.0
    for line in text.splitlines():
        if not line.startswith(name + "{") and not line.startswith(name + " "):
            continue
        if all(f'{k}="{v}"' in line for k, v in labels.items()):
            total += float(line.rsplit(" ", 1)[1])
    return total


def test_one_connected_trace_per_document_metrics_and_no_text_anywhere(
    topics: Settings, tmp_path: Path, local_spans: InMemorySpanExporter
) -> None:
    ports = {"chunker": _free_port(), "embedder": _free_port()}
    settings = topics.model_copy(
        update={
            "telemetry": topics.telemetry.model_copy(
                update={
                    "enabled": True,
                    "otlp_headers": SecretStr(f"authorization=Bearer {OTLP_TOKEN}"),
                }
            ),
            "kafka": topics.kafka.model_copy(
                update={
                    "sasl_username": "streamproc",
                    "sasl_password": SecretStr(SASL_PASSWORD),
                    "ssl_key_password": SecretStr(KEY_PASSWORD),
                }
            ),
        }
    )
    for name, text in DOCS.items():
        (tmp_path / name).write_text(text)
    chunk_counts = {
        name: len(expected_chunks(settings, text, "text/markdown")) for name, text in DOCS.items()
    }
    total = sum(chunk_counts.values())

    with OtlpReceiver() as receiver, running_workers(settings, tmp_path, roles=()) as workers:
        otel_env = {
            "OTEL_EXPORTER_OTLP_ENDPOINT": receiver.endpoint,
            "OTEL_BSP_SCHEDULE_DELAY": "200",
            "OTEL_METRIC_EXPORT_INTERVAL": "1000",
        }
        for role, port in ports.items():
            workers.start(role, {**otel_env, "STREAMPROC_TELEMETRY__PROMETHEUS_PORT": str(port)})

        docs = [d for d in expand([str(tmp_path)]) if d.path.suffix == ".md"]
        asyncio.run(produce_documents(settings, docs, "acme", "UPSERT"))
        # A refused document: the error path must not leak the text either.
        produce_events(
            settings,
            [event("acme", "refused", f"text with {SECRET}", content_sha256="0" * 64)],
        )
        collect(
            settings,
            "embed-done",
            until=lambda values: sum(1 for _, v in values if v["status"] == "EMBEDDED") >= total,
        )
        dead = collect(settings, "chunk-requested.dlq", until=lambda values: len(values) >= 1)

        # Chunks are counted before their embed-done records are sent.
        scrape = _scrape(ports["embedder"])
        assert _prometheus_value(scrape, "streamproc_chunks_total", outcome="embedded") == total
        assert (
            _prometheus_value(scrape, "streamproc_ingest_to_embed_done_duration_seconds_count")
            == total
        )
        # A batch's durations are recorded once it is acked, after its records went out.
        _wait_for(
            lambda: all(
                _prometheus_value(_scrape(ports["embedder"]), name) > 0
                for name in (
                    "streamproc_embed_batch_size_count",
                    "streamproc_embed_encode_duration_seconds_sum",
                    "streamproc_weaviate_write_duration_seconds_sum",
                )
            ),
            "the batch metrics",
        )
        _wait_for(
            lambda: "streamproc_consumer_lag{" in _scrape(ports["embedder"]),
            "the consumer lag gauge",
        )
        chunker_scrape = _scrape(ports["chunker"])
        assert (
            _prometheus_value(
                chunker_scrape, "streamproc_dlq_messages_total", reason="sha256_mismatch"
            )
            == 1
        )

        done_spans = lambda: [s for s in receiver.spans() if s.name.endswith("embed-done")]  # noqa: E731
        _wait_for(lambda: len(done_spans()) >= total, f"{total} embed-done spans over OTLP")
        _wait_for(
            lambda: (
                {"streamproc.embed.batch.size", "streamproc.chunks"}
                <= receiver.metric_names().keys()
            ),
            "metrics over OTLP",
        )
        _wait_for(
            lambda: any(s.status_code == STATUS_ERROR for s in receiver.spans()),
            "the refused document's error span",
        )
        spans = receiver.spans()
        # The secret headers setting reached the collector, on traces and metrics alike.
        assert receiver.authorizations() == {f"Bearer {OTLP_TOKEN}"}
        logs = workers.log("chunker") + workers.log("embedder")
        scrapes = _scrape(ports["embedder"]) + _scrape(ports["chunker"])

    # Every series the Grafana dashboard plots is one the workers really expose.
    dashboard = json.loads(DASHBOARD.read_text())
    plotted = {
        re.sub(r"_bucket$", "", name)
        for panel in dashboard["panels"]
        for target in panel["targets"]
        for name in re.findall(r"streamproc_[a-z_]+", target["expr"])
    }
    missing = {name for name in plotted if name not in scrapes} - ONLY_AFTER_FAILURES
    assert not missing, f"the dashboard plots series no worker exposes: {missing}"

    produced = {
        s.attributes["streamproc.doc_id"]: s
        for s in local_spans.get_finished_spans()
        if s.name.endswith("chunk-requested")
    }
    assert set(produced) == set(DOCS)
    for doc_id, root in produced.items():
        _assert_document_trace(settings, root, spans, chunk_counts[doc_id])

    error_spans = [s for s in spans if s.status_code == STATUS_ERROR]
    assert [s.attributes["messaging.destination.name"] for s in error_spans] == [
        topic_name(settings, "chunk-requested")
    ]
    assert error_spans[0].events[0][1]["exception.type"].endswith("PermanentError")
    assert records_with_headers(dead)[0][0]["streamproc.dlq.reason"] == "sha256_mismatch"

    everything = repr([(s.name, s.attributes, s.events) for s in spans]) + repr(
        [(s.name, dict(s.attributes or {})) for s in local_spans.get_finished_spans()]
    )
    for needle in (SECRET, SASL_PASSWORD, KEY_PASSWORD, OTLP_TOKEN):
        assert needle not in everything
        assert needle not in logs
        assert needle not in scrapes
    # The logs carry the trace ids they were written under.
    assert re.search(r'"trace_id": "[0-9a-f]{32}"', logs)


def _assert_document_trace(
    settings: Settings, root: ReadableSpan, spans: list[ReceivedSpan], chunks: int
) -> None:
    trace_id = format(root.context.trace_id, "032x")
    in_trace = [s for s in spans if s.trace_id == trace_id]
    (process,) = [s for s in in_trace if s.kind == CONSUMER]
    assert process.parent_id == format(root.context.span_id, "016x")
    assert process.attributes["messaging.system"] == "kafka"
    assert process.attributes["messaging.destination.name"] == topic_name(
        settings, "chunk-requested"
    )
    assert process.attributes["messaging.operation.type"] == "process"
    assert (
        process.attributes["messaging.consumer.group.name"] == f"{settings.worker.app_id}-chunker"
    )
    assert "messaging.destination.partition.id" in process.attributes
    assert "messaging.kafka.offset" in process.attributes
    assert process.attributes["streamproc.chunks.changed"] == chunks

    sends = [s for s in in_trace if s.name == f"send {topic_name(settings, 'embed-requested')}"]
    assert len(sends) == chunks
    assert all(s.parent_id == process.span_id and s.kind == PRODUCER for s in sends)

    # Each chunk's embed: a batch span (its own trace) linking to the chunk's send span.
    send_ids = {(s.trace_id, s.span_id) for s in sends}
    batches = [s for s in spans if s.kind == CONSUMER and send_ids & set(s.links)]
    linked = {link for b in batches for link in b.links} & send_ids
    assert linked == send_ids
    for batch in batches:
        assert batch.attributes["messaging.destination.name"] == topic_name(
            settings, "embed-requested"
        )
        assert batch.attributes["messaging.batch.message_count"] >= 1
        children = {s.name for s in spans if s.parent_id == batch.span_id}
        assert {"encode", "weaviate batch upsert"} <= children

    # And the embed-done publish of each chunk, back in the document's trace.
    done = [s for s in in_trace if s.name == f"send {topic_name(settings, 'embed-done')}"]
    assert len(done) == chunks
    assert {s.parent_id for s in done} == {s.span_id for s in sends}
    batch_ids = {(b.trace_id, b.span_id) for b in batches}
    assert all(set(s.links) & batch_ids for s in done)
