"""The operator's side of backfill jobs: commands to the job table, and reading it back.

Commands go to `backfill-commands`, which the embedder that owns the job table consumes; the
table's state is read from its changelog, so these work from any machine with Kafka access.
"""

from __future__ import annotations

import asyncio
import time
import uuid
from collections.abc import Callable
from typing import Any

from streamproc.backfill.jobs import TERMINAL, Job, conflicting_job, new_job, now
from streamproc.backfill.view import JobsView
from streamproc.errors import StreamprocError
from streamproc.kafka_io import admin_client, producer, read_to_end
from streamproc.settings import Settings
from streamproc.topics import group_id, job_codec, jobs_changelog, topics_for
from streamproc.weaviate_client import connect
from streamproc.weaviate_store import WeaviateStore


async def _send(settings: Settings, key: str, command: dict[str, Any]) -> None:
    topic = topics_for(settings).backfill_commands
    async with producer(settings) as prod:
        await (await prod.send(topic.name, topic.encode(command), key=key.encode()))


async def _records(settings: Settings, topic: str) -> list[tuple[str, bytes | None]]:
    try:
        return [
            (r.key.decode() if r.key is not None else "", r.value)
            async for r in read_to_end(settings, topic)
        ]
    except StreamprocError:
        return []  # the topic does not exist yet: no worker has created the job table


async def read_jobs(settings: Settings) -> dict[str, Job]:
    """The job table as its changelog says, plus STARTs no worker has picked up yet (PENDING)."""
    jobs_codec, commands = job_codec(settings), topics_for(settings).backfill_commands
    jobs: dict[str, Job] = {}
    for _, value in await _records(settings, jobs_changelog(settings)):
        if value is not None:  # jobs are never deleted from the table
            job = jobs_codec.decode(value)
            jobs[job["job_id"]] = job
    for _, value in await _records(settings, commands.name):
        command = commands.decode(value) if value is not None else None
        if command and command["op"] == "START" and command["job_id"] not in jobs:
            jobs[command["job_id"]] = new_job(command, command["requested_at"])
    return jobs


async def start_job(
    settings: Settings,
    model_name: str,
    tenant: str | None = None,
    priority: str = "MEDIUM",
    auto_promote: bool = False,
) -> str:
    """Queue a replay of the chunk topic into `model_name`'s collection; returns the job id."""
    spec = settings.model(model_name)
    collection = settings.collection_for(spec)
    if await asyncio.to_thread(_serving, settings) == collection:
        raise StreamprocError(
            f"{collection} is the collection the alias serves; a backfill never writes the "
            "serving collection. Register the model under a new version for a new collection."
        )
    busy = conflicting_job((await read_jobs(settings)).values(), collection)
    if busy is not None:
        raise StreamprocError(
            f"job {busy['job_id']} is already {busy['state']} into {collection}; "
            f"cancel it first (`streamproc backfill cancel {busy['job_id']}`)"
        )
    job_id = uuid.uuid4().hex[:12]
    command = {
        "op": "START",
        "job_id": job_id,
        "model_name": model_name,
        "target_collection": collection,
        "tenant": tenant,
        "priority": priority,
        "auto_promote": auto_promote,
        "requested_at": now(),
    }
    await _send(settings, job_id, command)
    return job_id


def _serving(settings: Settings) -> str | None:
    with connect(settings.weaviate) as client:
        return WeaviateStore(client).alias_target(settings.weaviate.collection_prefix)


async def cancel_job(settings: Settings, job_id: str) -> Job:
    job = (await read_jobs(settings)).get(job_id)
    if job is None:
        raise StreamprocError(f"no backfill job {job_id!r}; `streamproc backfill list` shows them")
    if job["state"] in TERMINAL:
        raise StreamprocError(f"job {job_id} is already {job['state']}; nothing to cancel")
    await _send(settings, job_id, {"op": "CANCEL", "job_id": job_id, "requested_at": now()})
    return job


async def send_retire(settings: Settings, collection: str) -> None:
    await _send(
        settings,
        collection,
        {"op": "RETIRE", "job_id": "", "target_collection": collection, "requested_at": now()},
    )


async def retire_acks(settings: Settings, collection: str) -> dict[str, set[str]]:
    """Member id -> the retired jobs of `collection` it acknowledged (all its acks together)."""
    commands = topics_for(settings).backfill_commands
    acks: dict[str, set[str]] = {}
    for _, value in await _records(settings, commands.name):
        command = commands.decode(value) if value is not None else None
        if command and command["acked_by"] and command["target_collection"] == collection:
            acks.setdefault(command["acked_by"], set()).update(command["acked_jobs"])
    return acks


async def embedder_members(settings: Settings) -> tuple[str, set[str]]:
    """The embedder group's state and the member ids in it."""
    group = group_id(settings, "embedder")
    admin = admin_client(settings)
    await admin.start()
    try:
        responses = await admin.describe_consumer_groups([group])
    finally:
        await admin.close()
    for response in responses:
        for error_code, listed, state, _type, _protocol, members, *_ in response.groups:
            if listed != group:
                continue
            if error_code:
                return f"error {error_code}", set()
            return str(state), {str(m[0]) for m in members}
    return "Dead", set()


async def wait_for_retire_acks(
    settings: Settings, collection: str, job_ids: set[str], timeout_s: float
) -> None:
    """Until every member of the embedder group has acknowledged that it no longer writes
    `collection` for any of `job_ids`: then nothing can write it any more. A member that
    joins later reads the job table before its first write and never writes it."""
    deadline = time.monotonic() + timeout_s
    while True:
        # Mid-rebalance the member list is not final: a member leaving may still be writing.
        state, members = await embedder_members(settings)
        acks = await retire_acks(settings, collection)
        waiting = sorted(m for m in members if not job_ids <= acks.get(m, set()))
        if state in ("Stable", "Empty", "Dead") and not waiting:
            return
        if time.monotonic() > deadline:
            raise StreamprocError(
                f"{collection} was not dropped: after {timeout_s:.0f}s the embedder group is "
                f"{state} and {len(waiting)} member(s) have not acknowledged the retire "
                f"({', '.join(waiting) or 'none'}), so they may still write it. Live writes to "
                f"it stop where acknowledged; run `streamproc collections retire {collection}` "
                "again once the embedders are healthy"
            )
        await asyncio.sleep(0.5)


async def wait_for(
    settings: Settings,
    job_id: str,
    until: Callable[[Job], bool],
    timeout_s: float,
    on_change: Callable[[Job], None] | None = None,
) -> Job:
    """Follow the job table until `until(job)` holds; `on_change` sees every new state."""
    # One follower reading only what is new, not the whole changelog again every poll.
    view = JobsView(settings)
    deadline = time.monotonic() + timeout_s
    last: Job | None = None
    try:
        while True:
            try:
                job = (await view.refresh()).get(job_id)
            except StreamprocError:
                job = None  # no worker has created the job table yet
            if job is not None and job != last:
                last = job
                if on_change:
                    on_change(job)
                if until(job):
                    return job
            if time.monotonic() > deadline:
                state = last["state"] if last else "unknown"
                raise StreamprocError(
                    f"job {job_id} is still {state} after {timeout_s:.0f}s; is an embedder running?"
                )
            await asyncio.sleep(0.5)
    finally:
        await view.stop()


async def follow_job(settings: Settings, job_id: str, timeout_s: float = 3600) -> Job:
    """A progress bar (offsets replayed of the total, throttling shown) until the job ends."""
    from tqdm import tqdm

    with tqdm(desc=f"backfill {job_id}", unit="offset") as bar:

        def show(job: Job) -> None:
            bar.total = int(job["items_total"])
            bar.n = int(job["items_done"])
            bar.set_postfix_str(str(job["throttled"] or job["state"]))
            bar.refresh()

        return await wait_for(settings, job_id, lambda j: j["state"] in TERMINAL, timeout_s, show)
