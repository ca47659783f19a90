"""How busy live embedding is, which the backfill yields to: the live embedder records each
batch here, and a replay asks before each of its batches whether it should wait."""

from __future__ import annotations

import time
from collections.abc import Mapping

from aiokafka import AIOKafkaConsumer, TopicPartition
from aiokafka.admin import AIOKafkaAdminClient

from streamproc.settings import Settings
from streamproc.topics import group_id, topics_for


class LiveLoad:
    """How busy live embedding is: the embedder's lag on `embed-requested` and its latest batch
    latency."""

    def __init__(self, settings: Settings) -> None:
        self.settings = settings
        self.group = group_id(settings, "embedder")
        self.topic = topics_for(settings).embed_requested.name
        self._latency: tuple[float, float] = (0.0, 0.0)  # (seconds, monotonic time seen)
        # Next offset to process, per partition this worker has processed: ahead of the group's
        # committed offsets, which Faust can leave behind for as long as no new event arrives.
        self._processed: dict[TopicPartition, int] = {}

    def observe_batch(self, seconds: float, offsets: Mapping[TopicPartition, int]) -> None:
        self._latency = (seconds, time.monotonic())
        for tp, offset in offsets.items():
            self._processed[tp] = max(offset, self._processed.get(tp, 0))

    async def reason(self, admin: AIOKafkaAdminClient, offsets: AIOKafkaConsumer) -> str | None:
        """Why a backfill batch should wait now, or None. `offsets` is a consumer never
        assigned, so its end-offset queries do not wait behind a long-poll fetch."""
        limits = self.settings.backfill
        latency, seen = self._latency
        if time.monotonic() - seen < 5.0 and latency > limits.throttle_live_latency_s:
            return (
                f"live ingest-to-embed-done latency {latency:.1f}s > "
                f"{limits.throttle_live_latency_s:.1f}s"
            )
        committed = {
            tp: meta.offset
            for tp, meta in (await admin.list_consumer_group_offsets(self.group)).items()
            if tp.topic == self.topic
        }
        done = {
            tp: max(committed.get(tp, 0), self._processed.get(tp, 0))
            for tp in committed.keys() | self._processed.keys()
        }
        if not done:
            return None
        ends = await offsets.end_offsets(list(done))
        lag = sum(max(0, ends[tp] - offset) for tp, offset in done.items())
        if lag > limits.throttle_live_lag:
            return f"live embed-requested lag {lag} > {limits.throttle_live_lag} messages"
        return None
