"""Every worker's view of the backfill jobs: the job table's changelog, read up to its end.

The table lives in the worker that owns it; the other embedders learn which collections they
must also write from its changelog. `refresh()` before a live batch writes backfill targets
reads up to the changelog's end offset at that moment; the batch's events were produced before
then, so if the job was not RUNNING yet they lie below the watermarks the replay takes after
it is, and otherwise the batch writes the job's collection too.
"""

from __future__ import annotations

import asyncio
from collections.abc import Iterable

from aiokafka import AIOKafkaConsumer, TopicPartition

from streamproc.backfill.jobs import Job
from streamproc.kafka_io import consumer_client, partitions_of
from streamproc.settings import Settings
from streamproc.topics import job_codec, jobs_changelog


class Writers:
    """The tasks of this worker that may still write each backfill collection: a live batch's
    finishing task from the moment it resolved its targets, a replay for as long as it runs.
    A retire is acknowledged only once none is left, so the collection is never dropped under
    a write."""

    def __init__(self) -> None:
        self._tasks: dict[str, set[asyncio.Task[object]]] = {}

    def hold(self, collections: Iterable[str]) -> None:
        """The current task may write `collections` until it ends, however it ends."""
        task = asyncio.current_task()
        assert task is not None, "Writers.hold outside a task"
        for collection in collections:
            tasks = self._tasks.setdefault(collection, set())
            if task not in tasks:
                tasks.add(task)
                task.add_done_callback(lambda t, c=collection: self._tasks[c].discard(t))

    def busy(self, collection: str) -> bool:
        return bool(self._tasks.get(collection))


class JobsView:
    def __init__(self, settings: Settings) -> None:
        self.settings = settings
        self.writers = Writers()
        self.topic = jobs_changelog(settings)
        self.codec = job_codec(settings)
        self.jobs: dict[str, Job] = {}
        self._consumer: AIOKafkaConsumer | None = None
        self._tps: list[TopicPartition] = []
        # The live agent and a job's runner share one consumer; one reader at a time.
        self._lock = asyncio.Lock()

    async def start(self) -> None:
        consumer = consumer_client(
            self.settings,
            enable_auto_commit=False,
            fetch_max_wait_ms=50,
            auto_offset_reset="earliest",
        )
        await consumer.start()
        try:
            partitions = await partitions_of(consumer, self.topic)
        except Exception:
            await consumer.stop()
            raise
        self._tps = [TopicPartition(self.topic, p) for p in sorted(partitions)]
        consumer.assign(self._tps)
        await consumer.seek_to_beginning(*self._tps)
        self._consumer = consumer

    async def stop(self) -> None:
        if self._consumer is not None:
            await self._consumer.stop()
            self._consumer = None

    async def refresh(self) -> dict[str, Job]:
        async with self._lock:
            return await self._refresh()

    async def _refresh(self) -> dict[str, Job]:
        if self._consumer is None:
            await self.start()
        consumer = self._consumer
        assert consumer is not None
        ends = await consumer.end_offsets(self._tps)
        behind = {tp for tp in self._tps if await consumer.position(tp) < ends[tp]}
        while behind:
            batch = await consumer.getmany(*behind, timeout_ms=1000)
            for records in batch.values():
                for record in records:
                    # Jobs are never deleted from the table, so every record is a job.
                    if record.value is not None:
                        job = self.codec.decode(record.value)
                        self.jobs[job["job_id"]] = job
            behind = {tp for tp in behind if await consumer.position(tp) < ends[tp]}
        return self.jobs
