"""The Faust app every role runs on, and what its agents share: health and the rebalance guard,
the check of the offsets an agent is handed, the outbox."""

from __future__ import annotations

import logging
import time
from collections.abc import Awaitable, Callable, Iterable
from dataclasses import dataclass
from typing import Any

import faust
from aiokafka import TopicPartition
from faust.types import EventT
from faust.web import Request, Response, View

from streamproc import telemetry
from streamproc.delivery import Outbox, crash, retry_transient
from streamproc.errors import SkippedRecordsError
from streamproc.health import Health, InFlight
from streamproc.kafka_io import faust_credentials, records_between
from streamproc.pipeline.offsets import HandedOffsets
from streamproc.settings import Settings
from streamproc.topics import Topics, group_id, topics_for

log = logging.getLogger(__name__)

ROLES = ("chunker", "embedder")


def faust_app(settings: Settings, role: str) -> faust.App:
    worker = settings.worker
    app_id = group_id(settings, role)
    datadir = worker.data_dir / app_id
    datadir.mkdir(parents=True, exist_ok=True)
    return faust.App(
        app_id,
        broker=[f"kafka://{host}" for host in settings.kafka.bootstrap_servers.split(",")],
        broker_credentials=faust_credentials(settings.kafka),
        store="memory://",
        autodiscover=False,
        datadir=str(datadir),
        # What Faust gives a topic it creates without a count; every table names its own.
        topic_partitions=topics_for(settings).chunk_requested.partitions,
        topic_replication_factor=worker.internal_replication_factor,
        consumer_auto_offset_reset="earliest",
        producer_acks=-1,
        broker_commit_interval=worker.commit_interval_s,
        processing_guarantee="at_least_once",
        # Heartbeats run beside processing, so a short session only speeds up failover.
        broker_session_timeout=10.0,
        broker_heartbeat_interval=3.0,
        stream_recovery_delay=0.0,
        # Faust would wait for every unacked event before a rebalance or a stop goes on:
        # forever while Weaviate is down, until the group evicts this member and another one
        # writes beside it. `_watch` bounds that wait instead.
        stream_wait_empty=False,
        web_enabled=worker.health_port is not None,
        web_port=worker.health_port or 6066,
        web_bind=worker.health_host,
        consumer_group_instance_id=worker.group_instance_id,
    )


def watch(app: faust.App, settings: Settings, topic: str, group: str) -> Health:
    """The worker's health: work in flight, stalled partitions and lag, a rebalance guard, the
    oldest-work gauge and, when `health_port` is set, `/healthz` and `/readyz`."""
    health = Health(settings.worker.stall_threshold_s)
    grace = settings.worker.rebalance_grace_s
    telemetry.oldest_work[group] = health.oldest_work_s

    # Work in flight gets `rebalance_grace_s` to finish when partitions are revoked or the
    # worker stops. A rebalance cannot complete before this member rejoins, so nobody else
    # processes these partitions meanwhile; work still unfinished then ends the process, which
    # leaves its offsets uncommitted and can write nothing more.
    @app.on_partitions_revoked.connect
    async def finish_before_revoke(_app: faust.App, revoked: Any, **_kwargs: Any) -> None:
        if not await health.inflight.drained(grace):
            crash("rebalance", TimeoutError(f"work still in flight after {grace}s"))

    @app.on_before_shutdown.connect
    async def finish_before_stop(_app: faust.App, **_kwargs: Any) -> None:
        # Unfinished work is cancelled unacked after this: delivered again on restart.
        await health.inflight.drained(grace)

    @app.timer(interval=5.0)
    async def measure_lag() -> None:
        now = time.monotonic()
        assigned = [tp for tp in app.consumer.assignment() if tp.topic == topic]
        health.stalls.forget_others(assigned)
        for tp in assigned:
            position = await app.consumer.position(tp)
            highwater = app.consumer.highwater(tp)
            if position is not None and highwater is not None:
                telemetry.consumer_lag[(tp.topic, tp.partition, group)] = max(
                    0, highwater - position
                )
                health.stalls.observe(tp, position, highwater, now)

    if settings.worker.health_port is not None:

        @app.page("/healthz")
        async def healthz(view: View, _request: Request) -> Response:
            verdict = health.verdict()
            return view.json(
                {
                    "healthy": verdict.healthy,
                    "oldest_work_s": round(verdict.oldest_work_s, 3),
                    "retrying": verdict.retrying,
                    "threshold_s": health.threshold_s,
                },
                status=200 if verdict.healthy else 503,
            )

        @app.page("/readyz")
        async def readyz(view: View, _request: Request) -> Response:
            ready = not app.in_recovery and app.consumer is not None
            return view.json({"ready": ready}, status=200 if ready else 503)

    return health


def handed_check(settings: Settings, group: str) -> Callable[[Iterable[EventT]], Awaitable[None]]:
    """Checks the events an agent is handed, in the order it was handed them, against the
    offsets before them (see pipeline/offsets.py). A record the consumer stepped over ends the
    process before anything after it is acked, so the next start reads it again."""
    handed = HandedOffsets()

    async def check(events: Iterable[EventT]) -> None:
        ranges: dict[TopicPartition, tuple[int | None, int]] = {}
        offsets: dict[TopicPartition, set[int]] = {}
        for event in events:
            m = event.message
            tp = TopicPartition(m.topic, m.partition)
            offsets.setdefault(tp, set()).add(m.offset)
            jump = handed.hand(m.topic, m.partition, m.generation_id, m.offset)
            if jump is not None:
                # Two jumps of one partition in one batch: one range over both, less what
                # was handed over in between.
                ranges[tp] = (
                    (ranges[tp][0], max(ranges[tp][1], jump.end))
                    if tp in ranges
                    else (jump.start, jump.end)
                )
        if not ranges:
            return
        if stepped := {
            f"{tp.topic}[{tp.partition}]": r for tp, r in ranges.items() if r[0] is not None
        }:
            # Legitimate after compaction or transaction markers only; anything else is a
            # consumer bug this check exists for.
            log.warning("offsets jumped", extra={"ranges": stepped})
        found = await retry_transient(
            "offset check", lambda: records_between(settings, group, ranges)
        )
        skipped = {
            f"{tp.topic}[{tp.partition}]": missed
            for tp, records in found.items()
            if (missed := sorted(set(records) - offsets[tp]))
        }
        if skipped:
            log.error(
                "the consumer stepped over records",
                extra={"skipped": {tp: [o[0], o[-1], len(o)] for tp, o in skipped.items()}},
            )
            crash("consumer", SkippedRecordsError(f"records stepped over: {skipped}"))

    return check


async def _send(
    app: faust.App,
    topic: str,
    key: bytes | None,
    value: bytes | None,
    headers: list[tuple[str, bytes]] | None = None,
) -> Awaitable[Any]:
    return await app.producer.send(
        topic, key, value, partition=None, timestamp=None, headers=headers
    )


def outbox_for(app: faust.App) -> Outbox:
    return Outbox(lambda *args: _send(app, *args))


@dataclass(frozen=True)
class AgentContext:
    """What an agent of a role is handed besides its own objects: the app, the topics, its
    consumer group, the health's record of work in flight, and the check of handed offsets."""

    app: faust.App
    topics: Topics
    group: str
    inflight: InFlight
    check_handed: Callable[[Iterable[EventT]], Awaitable[None]]


def agent_context(app: faust.App, settings: Settings, role: str, source: str) -> AgentContext:
    """The context of the role's agent consuming `source`, with the role's health watch."""
    group = group_id(settings, role)
    return AgentContext(
        app,
        topics_for(settings),
        group,
        watch(app, settings, source, group).inflight,
        handed_check(settings, group),
    )
