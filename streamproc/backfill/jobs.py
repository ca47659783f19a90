"""Backfill job records (Avro `BackfillJob`) and the pure rules over them: commands, which
jobs run next, which collections live traffic must also write, progress and its summary."""

from __future__ import annotations

from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any, TypeVar

Job = dict[str, Any]
R = TypeVar("R", bound=Mapping[str, Any])

PRIORITIES = ("LOW", "MEDIUM", "HIGH", "CRITICAL")
TERMINAL = frozenset({"COMPLETED", "FAILED", "CANCELLED"})
# States whose target collection receives every live write: the replay is under way, or it is
# done and the collection stays fresh for the flip (and for a rollback to it) until retired.
LIVE_WRITE_STATES = frozenset({"RUNNING", "COMPLETED"})


def now() -> datetime:
    return datetime.now(UTC)


def new_job(command: Mapping[str, Any], at: datetime) -> Job:
    return {
        "job_id": command["job_id"],
        "model_name": command["model_name"],
        "target_collection": command["target_collection"],
        "tenant": command.get("tenant"),
        "priority": command.get("priority", "MEDIUM"),
        "state": "PENDING",
        "auto_promote": bool(command.get("auto_promote")),
        "watermarks": {},
        "positions": {},
        "range_starts": {},
        "pass_number": 0,
        "items_total": 0,
        "items_done": 0,
        "items_reembedded": 0,
        "items_skipped": 0,
        "items_deleted": 0,
        "batches": 0,
        "error": None,
        "throttled": None,
        "verification": None,
        "retired": False,
        "created_at": at,
        "updated_at": at,
        "started_at": None,
        "finished_at": None,
    }


def apply_command(job: Job | None, command: Mapping[str, Any], at: datetime) -> Job | None:
    """The job after `command` (START or CANCEL), or None when there is no such job.

    A repeated START (the CLI retried) changes nothing; CANCEL of a finished job changes nothing.
    """
    op = command["op"]
    if op == "START":
        return job if job is not None else new_job(command, at)
    if op == "CANCEL":
        if job is None or job["state"] in TERMINAL:
            return job
        return {**job, "state": "CANCELLED", "throttled": None, "finished_at": at, "updated_at": at}
    raise ValueError(f"apply_command does not handle {op}")


def retire(jobs: Iterable[Job], collection: str, at: datetime) -> list[Job]:
    """Every job writing `collection`, marked retired (and cancelled if it was not finished)."""
    changed = []
    for job in jobs:
        if job["target_collection"] != collection or job["retired"]:
            continue
        state = "CANCELLED" if job["state"] not in TERMINAL else job["state"]
        changed.append({**job, "retired": True, "state": state, "updated_at": at})
    return changed


def jobs_to_start(jobs: Iterable[Job], running: int, limit: int) -> list[Job]:
    """PENDING jobs for the free slots: highest priority first, then oldest."""
    free = max(0, limit - running)
    pending = [j for j in jobs if j["state"] == "PENDING"]
    pending.sort(key=lambda j: (-PRIORITIES.index(j["priority"]), j["created_at"]))
    return pending[:free]


def live_write_collections(jobs: Iterable[Job]) -> dict[str, str]:
    """Collection -> model name, for every job whose collection live traffic must also write."""
    return {c: name for c, (name, _) in live_write_scopes(jobs).items()}


def live_write_scopes(jobs: Iterable[Job]) -> dict[str, tuple[str, str | None]]:
    """Collection -> (model name, tenant or None for all tenants), for every job whose
    collection live traffic must also write: a tenant-scoped job's collection gets only that
    tenant's chunks, as its replay does."""
    return {
        j["target_collection"]: (j["model_name"], j["tenant"])
        for j in jobs
        if j["state"] in LIVE_WRITE_STATES and not j["retired"]
    }


def scoped(requests: Sequence[R], tenant: str | None) -> tuple[list[int], list[R]]:
    """The requests a target scoped to `tenant` (None: every tenant) gets, with their indices
    in `requests`, so that results about them map back."""
    indices = [i for i, r in enumerate(requests) if tenant is None or r["tenant"] == tenant]
    return indices, [requests[i] for i in indices]


def live_writer(jobs: Iterable[Job], collection: str) -> Job | None:
    """The newest job that has live traffic write `collection` now."""
    writers = [
        j
        for j in jobs
        if j["target_collection"] == collection
        and j["state"] in LIVE_WRITE_STATES
        and not j["retired"]
    ]
    return max(writers, key=lambda j: j["created_at"], default=None)


def retired_collections(jobs: Iterable[Job]) -> dict[str, frozenset[str]]:
    """Collection -> ids of its retired jobs, for every collection some job retired and no
    job writes any more: what an embedder must stop writing and acknowledge before the drop."""
    jobs = list(jobs)
    retired: dict[str, set[str]] = {}
    for job in jobs:
        if job["retired"]:
            retired.setdefault(job["target_collection"], set()).add(job["job_id"])
    return {
        c: frozenset(ids)
        for c, ids in retired.items()
        if not any(writes_collection(j, c) for j in jobs)
    }


def writes_collection(job: Job, collection: str) -> bool:
    """Whether live traffic writes `collection` for this job now, or will once it runs."""
    return (
        job["target_collection"] == collection
        and not job["retired"]
        and (job["state"] in LIVE_WRITE_STATES or job["state"] == "PENDING")
    )


def conflicting_job(jobs: Iterable[Job], collection: str) -> Job | None:
    """An unfinished job already writing `collection`."""
    return next(
        (j for j in jobs if j["target_collection"] == collection and j["state"] not in TERMINAL),
        None,
    )


@dataclass(frozen=True)
class Progress:
    done: int
    total: int
    rate: float | None  # items per second since the job started
    eta_s: float | None

    @property
    def fraction(self) -> float:
        return self.done / self.total if self.total else 0.0


def progress(job: Job, at: datetime) -> Progress:
    done, total = job["items_done"], job["items_total"]
    started = job["started_at"]
    end = job["finished_at"] or at
    elapsed = (end - started).total_seconds() if started else 0.0
    rate = done / elapsed if elapsed > 0 and done else None
    eta = (total - done) / rate if rate and job["state"] == "RUNNING" else None
    return Progress(done, total, rate, eta)


def describe(job: Job, at: datetime) -> list[str]:
    """What `backfill status JOB` prints: ids and numbers only."""
    p = progress(job, at)
    scope = f"tenant {job['tenant']}" if job["tenant"] else "all tenants"
    lines = [
        f"job {job['job_id']}: {job['state']}  model {job['model_name']} -> "
        f"{job['target_collection']}  ({scope}, priority {job['priority']})",
        f"  progress: {p.done}/{p.total} offsets ({p.fraction:.0%}), pass {job['pass_number']}"
        + (f", {p.rate:.1f}/s" if p.rate else "")
        + (f", ETA {p.eta_s:.0f}s" if p.eta_s is not None else ""),
        f"  chunks: {job['items_reembedded']} re-embedded, {job['items_skipped']} already "
        f"current, {job['items_deleted']} deleted; {job['batches']} batches",
    ]
    if job["throttled"]:
        lines.append(f"  throttled: {job['throttled']}")
    if job["error"]:
        lines.append(f"  error: {job['error']}")
    if job["verification"]:
        lines.append(f"  verification: {job['verification']}")
    if job["retired"]:
        lines.append("  target collection retired")
    return lines


def summary(job: Job, at: datetime) -> str:
    """One line for `backfill list`."""
    p = progress(job, at)
    return (
        f"{job['job_id']}  {job['state']:<9}  {job['priority']:<8}  {job['model_name']} -> "
        f"{job['target_collection']}  {p.done}/{p.total} ({p.fraction:.0%})"
        + (f"  throttled: {job['throttled']}" if job["throttled"] else "")
        + (f"  error: {job['error']}" if job["error"] else "")
    )
