"""`dlq replay` against a real broker: nothing replayed twice, nothing skipped."""

from __future__ import annotations

import asyncio
from collections import Counter

from streamproc.dlq import replay
from streamproc.kafka_io import end_offsets, producer
from streamproc.settings import Settings
from streamproc.topics import topic_name
from tests.pipeline_support import collect

SOURCE = "chunk-requested"


async def _dead_letter(settings: Settings, values: list[bytes]) -> None:
    # One partition, so the records that arrive later share a fetch with the earlier ones.
    async with producer(settings) as prod:
        for value in values:
            await prod.send_and_wait(
                topic_name(settings, f"{SOURCE}.dlq"),
                value,
                key=value,
                partition=0,
                headers=[("origin", b"test"), ("streamproc.dlq.reason", b"schema")],
            )


def test_dead_letters_arriving_during_a_replay_are_replayed_by_the_next(topics: Settings) -> None:
    first = [f"first-{i}".encode() for i in range(20)]
    later = [f"later-{i}".encode() for i in range(5)]
    asyncio.run(_dead_letter(topics, first))
    # The replay has taken its end offsets; then more dead letters arrive.
    ends = asyncio.run(end_offsets(topics, topic_name(topics, f"{SOURCE}.dlq")))
    asyncio.run(_dead_letter(topics, later))

    assert asyncio.run(replay(topics, SOURCE, until=ends)) == len(first)
    assert asyncio.run(replay(topics, SOURCE)) == len(later)
    assert asyncio.run(replay(topics, SOURCE)) == 0

    records = collect(topics, SOURCE, lambda vs: len(vs) >= len(first) + len(later))
    assert Counter(r.value for r, _ in records) == Counter(first + later)
    for record, _ in records:
        assert dict(record.headers) == {"origin": b"test"}
