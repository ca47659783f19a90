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
    live_write_scopes,
    live_writer,
    new_job,
    progress,
    retire,
    retired_collections,
    scoped,
)
from streamproc.backfill.replay import Action, After, Held
from streamproc.backfill.verification import (
    content_check,
    key_checks,
    live_writes_check,
    self_retrieval_check,
)
from streamproc.naming import object_uuid
from streamproc.verify import compare

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
    after = replay.after_pass
    assert after(0, 7, marks, {"0": 10, "1": 5}, 10) is After.COMPLETE
    assert after(0, 7, marks, {"0": 12, "1": 5}, 10) is After.CATCH_UP
    assert after(1, 0, marks, {"0": 12, "1": 5}, 10) is After.COMPLETE
    assert after(1, 2, marks, {"0": 12, "1": 5}, 10) is After.CATCH_UP
    assert replay.pass_size({"0": 3}, {"0": 10, "1": 5}) == 12


def test_a_spent_pass_budget_with_writes_left_is_never_a_completion() -> None:
    marks = {"0": 10}
    # The last allowed pass still wrote and more arrived: it may have written a version that
    # a later tombstone deletes, so the job is not caught up.
    assert replay.after_pass(10, 2, marks, {"0": 12}, 10) is After.OUTRUN
    assert replay.after_pass(10, 0, marks, {"0": 12}, 10) is After.COMPLETE
    assert replay.after_pass(10, 2, marks, {"0": 10}, 10) is After.COMPLETE


def test_key_sets_and_hashes_are_compared_not_counts() -> None:
    expected = {"acme": {"acme/a/p/0": "h0", "acme/a/p/1": "h1"}, "globex": {"globex/g/p/0": "g"}}
    # Same counts as expected, yet one key swapped for another and one text stale.
    actual = {"acme": {"acme/a/p/0": "old", "acme/x/p/0": "h1"}, "globex": {"globex/g/p/0": "g"}}
    reports = compare(expected, actual)
    assert [(r.tenant, r.ok) for r in reports] == [("acme", False), ("globex", True)]
    acme = reports[0]
    assert (acme.missing, acme.unexpected, acme.stale) == (
        ["acme/a/p/1"],
        ["acme/x/p/0"],
        ["acme/a/p/0"],
    )
    checks = key_checks(reports)
    assert [(c.name, c.ok) for c in checks] == [("keys[acme]", False), ("keys[globex]", True)]
    assert checks[0].detail == (
        "STALE: 2 objects, 2 live chunks, 1 missing, 1 unexpected, 1 stale; "
        "missing e.g. acme/a/p/1; unexpected e.g. acme/x/p/0; stale e.g. acme/a/p/0"
    )


def test_a_report_names_a_few_keys_and_counts_the_rest() -> None:
    expected = {"t": {f"t/d/p/{i}": "h" for i in range(5)}}
    (report,) = compare(expected, {})
    assert report.detail().endswith("missing e.g. t/d/p/0, t/d/p/1, t/d/p/2 (+2)")


def test_the_content_sample_wants_the_live_hash_and_no_older_ingested_at() -> None:
    def record(key: str, sha: str) -> dict:
        return {"chunk_key": key, "text_sha256": sha, "ingested_at": T0}

    records = [record("t/d/p/0", "a"), record("t/d/p/1", "b"), record("t/d/p/2", "c")]
    records.append(record("t/d/p/3", "d"))
    held = {
        object_uuid("t/d/p/0"): (T0, "a"),  # the live version
        object_uuid("t/d/p/1"): (T0 + timedelta(seconds=1), "b"),  # re-sent unchanged: newer
        object_uuid("t/d/p/2"): (T0 - timedelta(seconds=1), "c"),  # an older write
        # t/d/p/3 is not held at all
    }
    check = content_check(records, held)
    assert not check.ok
    assert check.detail == (
        "2/4 sampled live chunks held in their live version; e.g. t/d/p/2, t/d/p/3"
    )
    held[object_uuid("t/d/p/0")] = (T0, "other")  # same time, another text
    assert "t/d/p/0" in content_check(records[:1], held).detail
    assert content_check(records[:2], {**held, object_uuid("t/d/p/0"): (T0, "a")}).ok


def test_a_collection_nobody_writes_fails_the_flip() -> None:
    job = {**start("j"), "state": "COMPLETED", "tenant": "acme"}
    assert live_writes_check("C", configured=True, writer=None).ok
    assert "tenant acme" in live_writes_check("C", configured=False, writer=job).detail
    refused = live_writes_check("C", configured=False, writer=None)
    assert not refused.ok and "stale" in refused.detail
    assert not self_retrieval_check(9, 10, 0.95).ok
    assert "9/10" in self_retrieval_check(9, 10, 0.95).detail


def test_a_tenant_scoped_job_gets_only_its_tenant_live() -> None:
    scoped_job = {**start("a", collection="C_a_v1"), "state": "RUNNING", "tenant": "acme"}
    everyone = {**start("b", collection="C_b_v1"), "state": "COMPLETED"}
    assert live_write_scopes([scoped_job, everyone]) == {
        "C_a_v1": ("b", "acme"),
        "C_b_v1": ("b", None),
    }
    requests = [{"tenant": "acme"}, {"tenant": "globex"}, {"tenant": "acme"}]
    assert scoped(requests, "acme") == ([0, 2], [requests[0], requests[2]])
    assert scoped(requests, None) == ([0, 1, 2], requests)
    assert scoped(requests, "initech") == ([], [])


def test_the_newest_live_job_writes_a_collection() -> None:
    old = {**start("old", at=T0), "state": "COMPLETED"}
    new = {**start("new", at=T0 + timedelta(seconds=1)), "state": "RUNNING", "tenant": "t"}
    cancelled = {**start("x", at=T0 + timedelta(seconds=2)), "state": "CANCELLED"}
    assert live_writer([old, new, cancelled], "C_b_v1") is new
    assert live_writer([cancelled], "C_b_v1") is None


def test_a_retired_collection_needs_acknowledging_until_a_job_writes_it_again() -> None:
    done = {**start("a"), "state": "COMPLETED"}
    retired = retire([done], "C_b_v1", T0)
    assert retired_collections(retired) == {"C_b_v1": frozenset({"a"})}
    assert retired_collections([done]) == {}
    again = {**start("b", at=T0 + timedelta(seconds=1)), "state": "RUNNING"}
    assert retired_collections([*retired, again]) == {}
