"""OpenTelemetry: set-up from settings and the standard `OTEL_*` variables, trace context in
Kafka headers, messaging attributes, and the pipeline's instruments.

Off (the default), the API's no-op tracer and meter are all that runs. On, spans go over OTLP
(`OTEL_EXPORTER_OTLP_ENDPOINT`, `OTEL_TRACES_SAMPLER`, ... are read by the SDK itself) and
metrics go over OTLP and, when a port is set, to a Prometheus endpoint.
"""

from __future__ import annotations

import logging
import os
from collections.abc import Callable, Iterable, Mapping, Sequence
from typing import Any

from opentelemetry import metrics, propagate, trace
from opentelemetry.context import Context
from opentelemetry.metrics import CallbackOptions, Observation
from opentelemetry.trace import Link, SpanContext, Status, StatusCode

from streamproc.settings import TelemetrySettings

log = logging.getLogger(__name__)

KafkaHeaders = Sequence[tuple[str, bytes]]
TRACE_HEADERS = ("traceparent", "tracestate")

tracer = trace.get_tracer("streamproc")
meter = metrics.get_meter("streamproc")

# Instruments come from the global proxy meter, so they work (as no-ops) before set-up.
batch_size = meter.create_histogram(
    "streamproc.embed.batch.size", unit="{message}", description="Messages per embedder batch"
)
encode_duration = meter.create_histogram(
    "streamproc.embed.encode.duration", unit="s", description="Model encode time per batch"
)
write_duration = meter.create_histogram(
    "streamproc.weaviate.write.duration", unit="s", description="Weaviate write time per batch"
)
ingest_latency = meter.create_histogram(
    "streamproc.ingest_to_embed_done.duration",
    unit="s",
    description="From the ingest-complete event to the chunk's embed-done",
)
chunks_counter = meter.create_counter(
    "streamproc.chunks", unit="{chunk}", description="Chunks by outcome"
)
dlq_counter = meter.create_counter(
    "streamproc.dlq.messages", unit="{message}", description="Messages dead-lettered, by reason"
)
retries_counter = meter.create_counter(
    "streamproc.weaviate.retries", unit="{retry}", description="Weaviate calls retried"
)

# Model rotation, with DESIGN.md's names (the Prometheus exporter keeps a trailing `_total`).
reembed_completed = meter.create_counter(
    "reembed_jobs_completed_total", unit="{job}", description="Backfill jobs completed"
)
reembed_failed = meter.create_counter(
    "reembed_jobs_failed_total", unit="{job}", description="Backfill jobs failed"
)
reembed_batches = meter.create_counter(
    "reembed_batches_processed_total", unit="{batch}", description="Backfill replay batches"
)
reembed_items = meter.create_counter(
    "reembed_items_reembedded_total",
    unit="{chunk}",
    description="Chunks a backfill embedded into its target collection",
)
# "active" and "queued" -> how the worker that owns the job table counts them now; the
# gauges ask at each collection.
backfill_jobs: dict[str, Callable[[], int]] = {}


def _observe_jobs(kind: str) -> Any:
    def observe(_options: CallbackOptions) -> Iterable[Observation]:
        if kind in backfill_jobs:
            yield Observation(backfill_jobs[kind]())

    return observe


meter.create_observable_gauge(
    "reembed_jobs_active",
    callbacks=[_observe_jobs("active")],
    unit="{job}",
    description="Backfill jobs replaying now",
)
meter.create_observable_gauge(
    "reembed_jobs_queued",
    callbacks=[_observe_jobs("queued")],
    unit="{job}",
    description="Backfill jobs waiting for a slot",
)

# (topic, partition, consumer group) -> messages behind the high watermark; a worker timer
# refreshes it, the gauge reports it at each collection.
consumer_lag: dict[tuple[str, int, str], int] = {}


def _observe_lag(_options: CallbackOptions) -> Iterable[Observation]:
    for (topic, partition, group), lag in list(consumer_lag.items()):
        yield Observation(
            lag,
            {
                "messaging.destination.name": topic,
                "messaging.destination.partition.id": str(partition),
                "messaging.consumer.group.name": group,
            },
        )


meter.create_observable_gauge(
    "streamproc.consumer.lag",
    callbacks=[_observe_lag],
    unit="{message}",
    description="Messages between a partition's high watermark and the consumer's position",
)


# Consumer group -> the age of the worker's oldest unfinished work (see streamproc.health).
oldest_work: dict[str, Callable[[], float]] = {}


def _observe_oldest_work(_options: CallbackOptions) -> Iterable[Observation]:
    for group, age in list(oldest_work.items()):
        yield Observation(age(), {"messaging.consumer.group.name": group})


meter.create_observable_gauge(
    "streamproc.work.oldest_age",
    callbacks=[_observe_oldest_work],
    unit="s",
    description="Age of the oldest work taken from Kafka and not yet finished, or of a "
    "partition left behind its high watermark without progress",
)


def setup(settings: TelemetrySettings, service: str) -> None:
    """Install the SDK for this process; a no-op when telemetry is off."""
    if not settings.enabled or os.environ.get("OTEL_SDK_DISABLED", "").lower() == "true":
        return
    from opentelemetry.sdk.metrics import MeterProvider
    from opentelemetry.sdk.metrics.export import MetricReader, PeriodicExportingMetricReader
    from opentelemetry.sdk.resources import Resource
    from opentelemetry.sdk.trace import TracerProvider
    from opentelemetry.sdk.trace.export import BatchSpanProcessor

    # OTEL_SERVICE_NAME and OTEL_RESOURCE_ATTRIBUTES, when set, win over the role's name.
    attributes = {} if os.environ.get("OTEL_SERVICE_NAME") else {"service.name": service}
    resource = Resource.create(attributes)

    provider = TracerProvider(resource=resource)
    headers = _otlp_headers(settings)
    for name in _exporters("OTEL_TRACES_EXPORTER"):
        provider.add_span_processor(BatchSpanProcessor(_span_exporter(name, headers)))
    trace.set_tracer_provider(provider)

    readers: list[MetricReader] = [
        PeriodicExportingMetricReader(_metric_exporter(name, headers))
        for name in _exporters("OTEL_METRICS_EXPORTER")
    ]
    if settings.prometheus_port:
        from opentelemetry.exporter.prometheus import PrometheusMetricReader
        from prometheus_client import start_http_server

        start_http_server(settings.prometheus_port, addr=settings.prometheus_host)
        readers.append(PrometheusMetricReader())
    metrics.set_meter_provider(MeterProvider(resource=resource, metric_readers=readers))
    log.info(
        "telemetry on",
        extra={"service": service, "prometheus_port": settings.prometheus_port},
    )


def _exporters(variable: str) -> list[str]:
    names = [n.strip() for n in os.environ.get(variable, "otlp").split(",") if n.strip()]
    return [n for n in names if n != "none"]


def _otlp_headers(settings: TelemetrySettings) -> dict[str, str] | None:
    """The secret headers, or None to leave the exporters to OTEL_EXPORTER_OTLP_*_HEADERS."""
    if settings.otlp_headers is None:
        return None
    from opentelemetry.util.re import parse_env_headers

    # Liberal: a bearer token's space need not be percent-encoded (as other SDKs accept).
    return dict(parse_env_headers(settings.otlp_headers.get_secret_value(), liberal=True))


def _span_exporter(name: str, headers: dict[str, str] | None) -> Any:
    if name == "otlp":
        from opentelemetry.exporter.otlp.proto.http.trace_exporter import OTLPSpanExporter

        return OTLPSpanExporter(headers=headers)
    if name == "console":
        from opentelemetry.sdk.trace.export import ConsoleSpanExporter

        return ConsoleSpanExporter()
    raise ValueError(f"OTEL_TRACES_EXPORTER={name!r}: streamproc supports otlp, console, none")


def _metric_exporter(name: str, headers: dict[str, str] | None) -> Any:
    if name == "otlp":
        from opentelemetry.exporter.otlp.proto.http.metric_exporter import OTLPMetricExporter

        return OTLPMetricExporter(headers=headers)
    if name == "console":
        from opentelemetry.sdk.metrics.export import ConsoleMetricExporter

        return ConsoleMetricExporter()
    if name == "prometheus":
        # Served by the pull endpoint (telemetry.prometheus_port), not pushed.
        raise ValueError(
            "OTEL_METRICS_EXPORTER=prometheus: set STREAMPROC_TELEMETRY__PROMETHEUS_PORT instead"
        )
    raise ValueError(f"OTEL_METRICS_EXPORTER={name!r}: streamproc supports otlp, console, none")


def kafka_headers(headers: Iterable[tuple[str, bytes]] = ()) -> list[tuple[str, bytes]]:
    """`headers` plus the W3C trace context of the current span, for a Kafka record.

    This is the helper for upstream producers too: call it inside your own span and pass the
    result as the record's headers, and streamproc's spans join your trace.
    """
    carrier: dict[str, str] = {}
    propagate.inject(carrier)
    kept = [(k, v) for k, v in headers if k not in TRACE_HEADERS]
    return kept + [(k, v.encode()) for k, v in carrier.items()]


def extract(headers: KafkaHeaders | None) -> Context:
    """The trace context a Kafka record carries (an empty context when it carries none)."""
    carrier = {
        k: v.decode("ascii", errors="replace") for k, v in headers or () if k in TRACE_HEADERS
    }
    return propagate.extract(carrier)


def link_to(headers: KafkaHeaders | None) -> Link | None:
    span_context: SpanContext = trace.get_current_span(extract(headers)).get_span_context()
    return Link(span_context) if span_context.is_valid else None


def consume_attributes(
    topic: str, partition: int, offset: int | None, group: str
) -> dict[str, Any]:
    attributes: dict[str, Any] = {
        "messaging.system": "kafka",
        "messaging.destination.name": topic,
        "messaging.operation.type": "process",
        "messaging.operation.name": "process",
        "messaging.destination.partition.id": str(partition),
        "messaging.consumer.group.name": group,
    }
    if offset is not None:
        attributes["messaging.kafka.offset"] = offset
    return attributes


def publish_attributes(topic: str, **extra: Any) -> dict[str, Any]:
    return {
        "messaging.system": "kafka",
        "messaging.destination.name": topic,
        "messaging.operation.type": "send",
        "messaging.operation.name": "send",
        **extra,
    }


def record_error(span: trace.Span, error: BaseException) -> None:
    """Status and exception type and message on the span; our messages never carry payload."""
    span.set_status(Status(StatusCode.ERROR, f"{type(error).__name__}: {error}"))
    span.record_exception(error)


def count(outcomes: Mapping[str, int], **attributes: str) -> None:
    for outcome, n in outcomes.items():
        if n:
            chunks_counter.add(n, {"outcome": outcome, **attributes})


def shutdown() -> None:
    """Flush and stop the SDK's exporters (what its exit hooks do, for a process that ends
    with os._exit)."""
    for provider in (trace.get_tracer_provider(), metrics.get_meter_provider()):
        stop = getattr(provider, "shutdown", None)
        if stop is not None:
            stop()
