"""Pure rules of a replay pass over the compacted chunk topic.

A pass covers, per partition, the offsets [range start, watermark). Only the last record of
each key in the pass matters: an older value was superseded, and a key whose last record is a
tombstone is not embedded at all. What the target already holds decides the rest, because the
live embedder writes the same collection meanwhile and may already have written this version
or a newer one.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from datetime import datetime
from enum import Enum
from typing import Any


class Action(Enum):
    UPSERT = "upsert"
    SKIP = "skip"  # the target already holds this version or a newer one
    DELETE = "delete"  # the key's last record is a tombstone and the target still has it
    NOTHING = "nothing"  # a tombstone for a key the target does not hold


@dataclass(frozen=True)
class Held:
    """What the target collection holds for one chunk."""

    ingested_at: datetime
    text_sha256: str


def last_offsets(records: Iterable[tuple[int, str]]) -> dict[str, int]:
    """(offset, key) in offset order -> the offset of each key's last record."""
    last: dict[str, int] = {}
    for offset, key in records:
        last[key] = offset
    return last


def decide(value: Mapping[str, Any] | None, held: Held | None) -> Action:
    if value is None:
        return Action.DELETE if held is not None else Action.NOTHING
    if held is not None and (
        held.ingested_at > value["ingested_at"]
        or (held.ingested_at == value["ingested_at"] and held.text_sha256 == value["text_sha256"])
    ):
        return Action.SKIP
    return Action.UPSERT


def split_chunk_key(key: str) -> tuple[str, str]:
    """`tenant/doc_id/policy/index` -> (tenant, doc_id); a doc id may itself contain '/'."""
    parts = key.split("/")
    if len(parts) < 4:
        raise ValueError(f"not a chunk key: {key!r}")
    return parts[0], "/".join(parts[1:-2])


def in_scope(key: str, tenant: str | None) -> bool:
    return tenant is None or key.split("/", 1)[0] == tenant


def as_request(key: str, value: Mapping[str, Any] | None, at: datetime) -> dict[str, Any]:
    """The embed request the live path would have got for this record."""
    if value is not None:
        return {
            "op": "UPSERT",
            "chunk_key": key,
            "tenant": value["tenant"],
            "doc_id": value["doc_id"],
            "chunk": value,
            "ingested_at": value["ingested_at"],
            "if_changed": False,
        }
    tenant, doc_id = split_chunk_key(key)
    return {
        "op": "DELETE",
        "chunk_key": key,
        "tenant": tenant,
        "doc_id": doc_id,
        "chunk": None,
        "ingested_at": at,
        "if_changed": False,
    }


def pass_size(starts: Mapping[str, int], ends: Mapping[str, int]) -> int:
    return sum(max(0, ends[p] - starts.get(p, 0)) for p in ends)


class After(Enum):
    """What follows a pass that reached its watermarks."""

    COMPLETE = "complete"
    CATCH_UP = "catch up"  # another pass over what arrived meanwhile
    OUTRUN = "outrun"  # the pass budget is spent and the last pass still had to write


def after_pass(
    pass_number: int,
    pass_writes: int,
    watermarks: Mapping[str, int],
    ends: Mapping[str, int],
    max_passes: int,
) -> After:
    """After a pass reached its watermarks, with `ends` the topic's end offsets now: complete
    when nothing arrived since, or a catch-up pass had nothing to write (the live path kept
    up, so the collection holds every key's last record; a pass that wrote nothing cannot have
    brought back a chunk deleted meanwhile). A pass that wrote may have written a record a
    tombstone after its watermark deletes, so completing then could leave a deleted chunk
    in the collection: past the budget that is a failure, never a silent completion."""
    if all(ends.get(p, 0) <= watermarks.get(p, 0) for p in ends):
        return After.COMPLETE
    if pass_number >= 1 and pass_writes == 0:
        return After.COMPLETE
    return After.OUTRUN if pass_number >= max_passes else After.CATCH_UP
