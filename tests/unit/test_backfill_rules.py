"""The pure rules of model rotation: job commands, scheduling, live writes, replay decisions."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

import pytest

from streamproc.backfill import replay
from streamproc.backfill.jobs import (
    apply_command,
    conflicting_job,
    describe,
    jobs_to_start,
    live_write_collections,
    new_job,
    progress,
    retire,
)
from streamproc.backfill.replay import Action, Held
from streamproc.backfill.verification import count_checks, self_retrieval_check

T0 = datetime(2026, 1, 1, tzinfo=UTC)


def start(job_id: str, priority: str = "MEDIUM", at: datetime = T0, collection: str = "C_b_v1"):
    command = {
        "op": "START",
        "job_id": job_id,
        "model_name": "b",
        "target_collection": collection,
        "priority": priority,
    }
    return new_job(command, at)


def test_start_is_idempotent_and_cancel_only_stops_unfinished_jobs() -> None:
    job = start("j1")
    assert apply_command(job, {"op": "START", "job_id": "j1"}, T0) is job
    cancelled = apply_command(job, {"op": "CANCEL", "job_id": "j1"}, T0)
    assert cancelled is not None and cancelled["state"] == "CANCELLED"
    done = {**job, "state": "COMPLETED"}
    assert apply_command(done, {"op": "CANCEL", "job_id": "j1"}, T0) is done
    assert apply_command(None, {"op": "CANCEL", "job_id": "nope"}, T0) is None


def test_pending_jobs_start_by_priority_then_age_within_the_limit() -> None:
    jobs = [
        start("low", "LOW", T0),
        start("old-high", "HIGH", T0),
        start("new-high", "HIGH", T0 + timedelta(seconds=1)),
        start("critical", "CRITICAL", T0 + timedelta(seconds=2)),
    ]
    assert [j["job_id"] for j in jobs_to_start(jobs, running=0, limit=3)] == [
        "critical",
        "old-high",
        "new-high",
    ]
    assert jobs_to_start(jobs, running=2, limit=2) == []


def test_live_traffic_writes_running_and_completed_targets_until_retired() -> None:
    running = {**start("a", collection="C_a_v1"), "state": "RUNNING"}
    completed = {**start("b", collection="C_b_v1"), "state": "COMPLETED"}
    pending = start("c", collection="C_c_v1")
    cancelled = {**start("d", collection="C_d_v1"), "state": "CANCELLED"}
    jobs = [running, completed, pending, cancelled]
    assert set(live_write_collections(jobs)) == {"C_a_v1", "C_b_v1"}
    retired = retire(jobs, "C_b_v1", T0)
    assert [j["job_id"] for j in retired] == ["b"] and retired[0]["retired"]
    assert set(live_write_collections([running, *retired])) == {"C_a_v1"}
    assert retire(jobs, "C_a_v1", T0)[0]["state"] == "CANCELLED"
    assert conflicting_job(jobs, "C_a_v1") is running
    assert conflicting_job(jobs, "C_d_v1") is None


def test_progress_rate_and_eta() -> None:
    job = {
        **start("p"),
        "state": "RUNNING",
        "started_at": T0,
        "items_total": 1000,
        "items_done": 250,
    }
    p = progress(job, T0 + timedelta(seconds=10))
    assert (p.fraction, p.rate, p.eta_s) == (0.25, 25.0, 30.0)
    assert "250/1000 offsets (25%)" in describe(job, T0 + timedelta(seconds=10))[1]


def test_only_the_last_record_of_a_key_counts() -> None:
    records = [(0, "t/d/p1/0"), (1, "t/d/p1/1"), (2, "t/d/p1/0")]
    assert replay.last_offsets(records) == {"t/d/p1/0": 2, "t/d/p1/1": 1}


@pytest.mark.parametrize(
    ("value", "held", "action"),
    [
        (None, None, Action.NOTHING),
        (None, Held(T0, "x"), Action.DELETE),
        ({"ingested_at": T0, "text_sha256": "x"}, None, Action.UPSERT),
        # The live path already wrote this very version: not embedded again.
        ({"ingested_at": T0, "text_sha256": "x"}, Held(T0, "x"), Action.SKIP),
        # ... or a newer one: the replay must not overwrite it with the older.
        ({"ingested_at": T0, "text_sha256": "x"}, Held(T0 + timedelta(1), "y"), Action.SKIP),
        ({"ingested_at": T0 + timedelta(1), "text_sha256": "y"}, Held(T0, "x"), Action.UPSERT),
    ],
)
def test_replay_decisions(value: dict | None, held: Held | None, action: Action) -> None:
    assert replay.decide(value, held) is action


def test_a_tombstone_becomes_a_delete_request_with_tenant_and_doc() -> None:
    request = replay.as_request("acme/a/b.md/p1/3", None, T0)
    assert (request["op"], request["tenant"], request["doc_id"]) == ("DELETE", "acme", "a/b.md")
    with pytest.raises(ValueError, match="not a chunk key"):
        replay.split_chunk_key("acme/doc")


def test_passes_end_when_nothing_arrived_or_a_catch_up_wrote_nothing() -> None:
    marks = {"0": 10, "1": 5}
    assert replay.finished(0, 7, marks, {"0": 10, "1": 5}, 10)
    assert not replay.finished(0, 7, marks, {"0": 12, "1": 5}, 10)
    assert replay.finished(1, 0, marks, {"0": 12, "1": 5}, 10)
    assert not replay.finished(1, 2, marks, {"0": 12, "1": 5}, 10)
    assert replay.finished(10, 2, marks, {"0": 12, "1": 5}, 10)
    assert replay.pass_size({"0": 3}, {"0": 10, "1": 5}) == 12


def test_verification_checks_say_what_failed_and_by_how_much() -> None:
    checks = count_checks({"acme": {"k1", "k2"}, "globex": {"k3"}}, {"acme": 2, "globex": 4})
    assert [(c.name, c.ok) for c in checks] == [("count[acme]", True), ("count[globex]", False)]
    assert checks[1].detail == "4 objects, 1 live chunks (+3)"
    assert not self_retrieval_check(9, 10, 0.95).ok
    assert "9/10" in self_retrieval_check(9, 10, 0.95).detail
