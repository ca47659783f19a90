"""The arithmetic of `verify` and of the checks before an alias flip: key sets, text hashes,
samples and verdicts, without Kafka or Weaviate."""

from __future__ import annotations

import hashlib
from collections.abc import Iterator, Sequence
from datetime import UTC, datetime, timedelta
from typing import Any, cast
from uuid import UUID

import pytest

from streamproc.backfill.verification import (
    Check,
    Verification,
    content_check,
    key_checks,
    sample_keys,
    self_retrieval_check,
)
from streamproc.naming import object_uuid
from streamproc.verify import EXAMPLES, TenantReport, compare, compare_collection, held_hashes
from streamproc.weaviate_schema import Found
from streamproc.weaviate_store import WeaviateStore

T0 = datetime(2026, 1, 1, tzinfo=UTC)


def sha(text: str) -> str:
    return hashlib.sha256(text.encode()).hexdigest()


def test_a_tenant_on_one_side_only_is_all_missing_or_all_unexpected() -> None:
    expected = {"acme": {"acme/a/p/0": sha("a0"), "acme/a/p/1": sha("a1")}}
    actual = {"globex": {"globex/g/p/0": sha("g0")}}
    acme, globex = compare(expected, actual)
    assert acme == TenantReport("acme", 2, 0, missing=["acme/a/p/0", "acme/a/p/1"])
    assert globex == TenantReport("globex", 0, 1, unexpected=["globex/g/p/0"])
    assert not acme.ok and not globex.ok


def test_reports_come_sorted_by_tenant_and_keys_sorted_within() -> None:
    expected = {
        "zeta": {"zeta/d/p/2": "x", "zeta/d/p/10": "y"},
        "alpha": {"alpha/d/p/1": "h"},
    }
    reports = compare(expected, {"alpha": {"alpha/d/p/1": "h"}, "mid": {}})
    assert [(r.tenant, r.ok) for r in reports] == [("alpha", True), ("mid", True), ("zeta", False)]
    assert reports[2].missing == ["zeta/d/p/10", "zeta/d/p/2"]  # string order, as printed
    assert compare({}, {}) == []


def test_a_key_is_stale_only_when_both_sides_hold_it_with_different_hashes() -> None:
    expected = {"t": {"t/d/p/0": sha("new"), "t/d/p/1": sha("same"), "t/d/p/2": sha("gone")}}
    actual = {"t": {"t/d/p/0": sha("old"), "t/d/p/1": sha("same"), "t/d/p/3": sha("extra")}}
    (report,) = compare(expected, actual)
    assert (report.missing, report.unexpected, report.stale) == (
        ["t/d/p/2"],
        ["t/d/p/3"],
        ["t/d/p/0"],
    )
    assert (report.expected, report.actual) == (3, 3)


def test_a_report_lists_up_to_the_example_count_without_a_remainder() -> None:
    keys = [f"t/d/p/{i}" for i in range(EXAMPLES)]
    (report,) = compare({}, {"t": dict.fromkeys(keys, "h")})
    assert report.detail() == (
        f"{EXAMPLES} objects, 0 live chunks, 0 missing, {EXAMPLES} unexpected, 0 stale; "
        f"unexpected e.g. {', '.join(keys)}"
    )
    (clean,) = compare({"t": {"t/d/p/0": "h"}}, {"t": {"t/d/p/0": "h"}})
    assert clean.detail() == "1 objects, 1 live chunks, 0 missing, 0 unexpected, 0 stale"
    # A check that passes says so without the STALE mark.
    assert key_checks([clean]) == [Check("keys[t]", True, clean.detail())]


class InMemoryStoreForTests:
    """A test-local stand-in for the two WeaviateStore reads `verify` makes: tenant names and
    one tenant's objects."""

    def __init__(self, held: dict[str, dict[str, str]]) -> None:
        self.held = held
        self.opened: list[str] = []

    def tenants(self, name: str) -> list[str]:
        return sorted(self.held)

    def objects(self, name: str, tenant: str, properties: Sequence[str]) -> Iterator[Found]:
        assert list(properties) == ["chunk_key", "text_sha256"]
        self.opened.append(tenant)
        for i, (key, sha) in enumerate(self.held[tenant].items()):
            yield Found(UUID(int=i), {"chunk_key": key, "text_sha256": sha})


def _as_store(store: InMemoryStoreForTests) -> WeaviateStore:
    """The stand-in has only the reads `verify` makes, which is all it is handed for."""
    return cast(WeaviateStore, store)


def test_held_hashes_of_an_absent_tenant_are_empty_without_reading() -> None:
    store = InMemoryStoreForTests({"acme": {"acme/a/p/0": "h"}})
    assert held_hashes(_as_store(store), "C", "acme") == {"acme/a/p/0": "h"}
    assert held_hashes(_as_store(store), "C", "globex") == {}
    assert store.opened == ["acme"]


@pytest.mark.parametrize(
    ("tenant", "reported"),
    [(None, ["acme", "globex", "initech"]), ("acme", ["acme"]), ("initech", ["initech"])],
)
def test_a_collection_is_compared_over_the_tenants_of_both_sides_or_only_the_one_asked(
    tenant: str | None, reported: list[str]
) -> None:
    store = InMemoryStoreForTests(
        {
            "acme": {"acme/a/p/0": "h0", "acme/a/p/1": "stale"},
            "initech": {"initech/i/p/0": "i0"},  # a tenant with no live chunk left
        }
    )
    expected = {"acme": {"acme/a/p/0": "h0", "acme/a/p/1": "h1"}, "globex": {"globex/g/p/0": "g"}}
    reports = compare_collection(_as_store(store), "C", expected, tenant)
    whole = {
        "acme": TenantReport("acme", 2, 2, stale=["acme/a/p/1"]),
        "globex": TenantReport("globex", 1, 0, missing=["globex/g/p/0"]),
        "initech": TenantReport("initech", 0, 1, unexpected=["initech/i/p/0"]),
    }
    assert reports == [whole[t] for t in reported]
    # Only the tenants the collection holds are read.
    assert set(store.opened) == set(reported) - {"globex"}


def _record(key: str, text: str, at: datetime = T0) -> dict[str, Any]:
    return {"chunk_key": key, "text_sha256": sha(text), "ingested_at": at}


def test_no_sample_is_a_pass_and_many_wrong_keys_are_sorted_and_counted() -> None:
    assert content_check([], {}) == Check(
        "content", True, "0/0 sampled live chunks held in their live version"
    )
    records = [_record(f"t/d/p/{i}", f"text {i}") for i in (9, 3, 7, 1, 5)]
    held = {object_uuid("t/d/p/9"): (T0, sha("text 9"))}
    check = content_check(records, held)
    assert check == Check(
        "content",
        False,
        "1/5 sampled live chunks held in their live version; e.g. t/d/p/1, t/d/p/3, t/d/p/5 (+1)",
    )


def test_a_newer_write_of_the_same_text_is_its_live_version() -> None:
    record = _record("t/d/p/0", "text")
    newer = {object_uuid("t/d/p/0"): (T0 + timedelta(milliseconds=1), sha("text"))}
    older = {object_uuid("t/d/p/0"): (T0 - timedelta(milliseconds=1), sha("text"))}
    assert content_check([record], newer).ok
    assert not content_check([record], older).ok


def test_self_retrieval_passes_at_the_threshold_and_with_nothing_sampled() -> None:
    assert self_retrieval_check(19, 20, 0.95).ok
    assert not self_retrieval_check(18, 20, 0.95).ok
    nothing = self_retrieval_check(0, 0, 0.95)
    assert nothing.ok and nothing.detail.startswith(
        "0/0 sampled chunks found themselves first (100%"
    )


def test_the_sample_is_fixed_by_the_collection_whatever_the_key_order() -> None:
    keys = [f"t/d/p/{i}" for i in range(100)]
    sample = sample_keys("C_a_v1", keys, 10)
    assert len(sample) == len(set(sample)) == 10 and set(sample) <= set(keys)
    assert sample_keys("C_a_v1", reversed(keys), 10) == sample
    assert sample_keys("C_a_v1", set(keys), 10) == sample
    assert sample_keys("C_b_v1", keys, 10) != sample
    assert sorted(sample_keys("C_a_v1", keys, 500)) == sorted(keys)
    assert sample_keys("C_a_v1", [], 10) == []


def test_a_verification_passes_only_when_every_check_passes() -> None:
    good, bad = Check("dimension", True, "384"), Check("keys[t]", False, "STALE: 1 missing")
    passed = Verification("C", [good])
    failed = Verification("C", [good, bad])
    assert passed.ok and passed.failures == []
    assert not failed.ok and failed.failures == [bad]
    assert failed.lines() == ["ok   dimension: 384", "FAIL keys[t]: STALE: 1 missing"]
    assert failed.summary() == "dimension ok (384); keys[t] FAILED (STALE: 1 missing)"
    # No check at all is vacuously fine: the caller always adds them.
    assert Verification("C").ok
