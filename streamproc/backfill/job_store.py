"""The backfill job table (a Faust table of Avro `BackfillJob` records) as the replay sees it:
typed jobs in and out, and a save that never overwrites a cancel or a retire."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from streamproc.backfill.jobs import Job, now
from streamproc.settings import Settings
from streamproc.topics import job_codec


class Stopped(Exception):
    """The job was cancelled or retired, or this worker no longer owns the job table."""


class JobStore:
    """The job table seen as Avro job records; `save` refuses to resurrect a stopped job."""

    def __init__(self, table: Any, settings: Settings, owns: Callable[[], bool]) -> None:
        self.table = table
        self.codec = job_codec(settings)
        self.owns = owns

    def get(self, job_id: str) -> Job | None:
        value = self.table.get(job_id)
        return self.codec.decode(value) if value is not None else None

    def all(self) -> list[Job]:
        return [self.codec.decode(v) for v in self.table.values() if v is not None]

    def put(self, job: Job) -> None:
        self.table[job["job_id"]] = self.codec.encode({**job, "updated_at": now()})

    def check(self, job_id: str) -> None:
        """Raise Stopped if the job was cancelled or retired, or the table is no longer ours."""
        current = self.get(job_id)
        if (
            not self.owns()
            or current is None
            or current["state"] == "CANCELLED"
            or current["retired"]
        ):
            raise Stopped(job_id)

    def save(self, job: Job) -> None:
        """No await between the check and the write: a CANCEL applied by the command agent is
        never overwritten by a runner that had not seen it yet."""
        self.check(job["job_id"])
        self.put(job)
