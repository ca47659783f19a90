"""The backfill side of the embedder worker: the job table, the agent applying backfill
commands to it, the supervisor of running jobs and the acknowledgement of retires."""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Awaitable, Callable, Iterable
from typing import Any

import faust
from faust.types import TP, EventT

from streamproc import telemetry
from streamproc.backfill.job_store import JobStore
from streamproc.backfill.jobs import apply_command, jobs_to_start, now, retire, retired_collections
from streamproc.backfill.live_load import LiveLoad
from streamproc.backfill.replayer import Replayer
from streamproc.backfill.view import JobsView
from streamproc.delivery import crash, is_transient
from streamproc.dlq import dead_letter
from streamproc.errors import SchemaError
from streamproc.models import ModelPool
from streamproc.pipeline.embedder import Embedder
from streamproc.settings import Settings
from streamproc.topics import JOBS_TABLE, Topic, group_id, topics_for
from streamproc.weaviate_store import WeaviateStore
from streamproc.worker.app import handed_check, outbox_for

log = logging.getLogger(__name__)


def add_backfill(
    app: faust.App,
    settings: Settings,
    embedder: Embedder,
    store: WeaviateStore,
    models: ModelPool,
    view: JobsView,
    live: LiveLoad,
) -> None:
    """The job table, the agent applying backfill commands to it, and the supervisor that runs
    jobs, all in the embedder worker that owns the table's one partition."""
    command_topic = topics_for(settings).backfill_commands
    commands = app.topic(command_topic.name, key_serializer="raw", value_serializer="raw")
    # One partition (the topology's): one worker owns every job, so a job never runs in two
    # places.
    table = app.Table(
        JOBS_TABLE,
        default=None,
        key_type=str,
        value_type=bytes,
        partitions=command_topic.partitions,
        use_partitioner=True,
    )
    # Values are the Avro records themselves, so the CLI and other workers can read the
    # changelog. Set before the changelog topic is first built, which copies it.
    table.value_serializer = "raw"
    commands_tp = TP(commands.get_topic_name(), 0)

    def owns() -> bool:
        return not app.rebalancing and commands_tp in app.assignor.assigned_actives()

    jobs = JobStore(table, settings, owns)
    agents = BackfillAgents(
        app,
        command_topic,
        jobs,
        owns,
        Replayer(settings, store, embedder, models, jobs, view, live),
        view,
        store,
        settings.backfill.max_concurrent_jobs,
        handed_check(settings, group_id(settings, "embedder")),
    )
    app.agent(commands, name="backfill_commands")(agents.apply_commands)
    app.timer(interval=1.0, name="supervise_backfills")(agents.supervise)
    app.timer(interval=1.0, name="acknowledge_retires")(agents.acknowledge_retires)
    app.on_before_shutdown.connect(agents.stop)


class BackfillAgents:
    def __init__(
        self,
        app: faust.App,
        command_topic: Topic,
        jobs: JobStore,
        owns: Callable[[], bool],
        replayer: Replayer,
        view: JobsView,
        store: WeaviateStore,
        max_concurrent_jobs: int,
        check_handed: Callable[[Iterable[EventT]], Awaitable[None]],
    ) -> None:
        self.app = app
        self.command_topic = command_topic
        self.jobs = jobs
        self.owns = owns
        self.replayer = replayer
        self.view = view
        self.store = store
        self.max_concurrent_jobs = max_concurrent_jobs
        self.check_handed = check_handed
        self.running: dict[str, asyncio.Task[None]] = {}
        # Collection -> (member id, retired job ids) this worker acknowledged.
        self.acked: dict[str, tuple[str, frozenset[str]]] = {}
        # Present from the start: a rate over a series that does not exist yet is "no data".
        telemetry.reembed_completed.add(0)
        telemetry.reembed_failed.add(0)
        telemetry.backfill_jobs.update(
            active=lambda: sum(not t.done() for t in self.running.values()),
            queued=lambda: sum(j["state"] == "PENDING" for j in jobs.all()) if self.owns() else 0,
        )

    async def apply_commands(self, stream: faust.Stream) -> None:
        async for event in stream.events():
            try:
                await self.check_handed((event,))
                await self._apply(event)
            except asyncio.CancelledError:
                raise
            except BaseException as exc:
                crash("backfill commands", exc)

    async def _apply(self, event: EventT) -> None:
        try:
            command = self.command_topic.decode(event.value or b"")
        except SchemaError as exc:
            outbox = outbox_for(self.app)
            await dead_letter(outbox, event, exc)
            await outbox.confirm()
            return
        if command["acked_by"] is not None:
            return  # an embedder's acknowledgement of a retire: for the `retire` command
        at = now()
        if command["op"] == "RETIRE":
            changed = retire(self.jobs.all(), command["target_collection"], at)
        else:
            job = apply_command(self.jobs.get(command["job_id"]), command, at)
            changed = [job] if job is not None else []
        for job in changed:
            self.jobs.put(job)
        log.info(
            "backfill command",
            extra={"op": command["op"], "job_id": command["job_id"], "changed": len(changed)},
        )

    async def supervise(self) -> None:
        running = self.running
        if self.app.in_recovery or not self.owns():
            for task in running.values():
                task.cancel()
            running.clear()
            return
        all_jobs = self.jobs.all()
        retired = {j["job_id"] for j in all_jobs if j["retired"]}
        for job_id, task in running.items():
            # Its collection is about to be dropped: a replay hung on it never holds it up.
            if job_id in retired:
                task.cancel()
        for job_id in [j for j, t in running.items() if t.done()]:
            running.pop(job_id)
        resumed = [j for j in all_jobs if j["state"] == "RUNNING" and j["job_id"] not in running]
        limit = self.max_concurrent_jobs
        for job in resumed + jobs_to_start(all_jobs, len(running) + len(resumed), limit):
            running[job["job_id"]] = asyncio.ensure_future(self.replayer.run(job["job_id"]))

    async def acknowledge_retires(self) -> None:
        """Once this worker's view says a collection is retired and none of its tasks may
        still write it, say so on `backfill-commands`: `collections retire` drops it only
        when every member of the embedder group has."""
        member = _member_id(self.app)
        if member is None:
            return  # not in the group: `retire` waits for members only
        try:
            await self._acknowledge(member)
        except Exception as exc:
            if not is_transient(exc):
                raise
            # Kafka or Weaviate away for a moment: the next tick tries again.
            log.warning("retire acknowledgement postponed", extra={"exc_type": type(exc).__name__})

    async def _acknowledge(self, member: str) -> None:
        view = self.view
        for collection, job_ids in retired_collections((await view.refresh()).values()).items():
            if self.acked.get(collection) == (member, job_ids) or view.writers.busy(collection):
                continue
            # A dropped collection needs no acknowledgement (a new member id would otherwise
            # acknowledge every collection ever retired again).
            if not await asyncio.to_thread(self.store.exists, collection):
                self.acked[collection] = (member, job_ids)
                continue
            ack = {
                "op": "RETIRE",
                "job_id": "",
                "target_collection": collection,
                "acked_by": member,
                "acked_jobs": sorted(job_ids),
                "requested_at": now(),
            }
            outbox = outbox_for(self.app)
            key = f"{collection}/{member}".encode()
            await outbox.send(self.command_topic.name, key, self.command_topic.encode(ack))
            await outbox.confirm()
            self.acked[collection] = (member, job_ids)
            log.info("retire acknowledged", extra={"collection": collection, "member": member})

    async def stop(self, _app: faust.App, **_kwargs: Any) -> None:
        for task in self.running.values():
            task.cancel()
        await self.view.stop()


def _member_id(app: faust.App) -> str | None:
    """This worker's member id in the embedder group, as `describe_consumer_groups` lists it
    (None until it has joined). Faust does not expose it; its aiokafka consumer does."""
    thread = getattr(app.consumer, "_thread", None)
    coordinator = getattr(getattr(thread, "_consumer", None), "_coordinator", None)
    member = getattr(coordinator, "member_id", None)
    return str(member) if member else None
