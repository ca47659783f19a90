"""A stop or a rebalance while Weaviate hangs: bounded, nothing acked that was not written, and
no member writes partitions it has lost."""

from __future__ import annotations

import asyncio
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import pytest

from streamproc.backfill.commands import embedder_members
from streamproc.delivery import CRASH_EXIT_CODE
from streamproc.localservices.manager import LocalServices
from streamproc.settings import Settings
from tests.conftest import with_topics
from tests.pipeline_support import Workers, collect, corpus_events, drained, exact, produce_events

pytestmark = pytest.mark.integration

EXACT = {"missing": [], "stale": [], "extra": []}


@contextmanager
def weaviate_hung(settings: Settings) -> Iterator[None]:
    """Weaviate stopped with SIGSTOP: connections open, nothing answers."""
    proc = LocalServices(settings).weaviate.proc.process()
    if proc is None:
        pytest.fail("these tests hang the local Weaviate process; run them with local services")
    members = [proc, *proc.children(recursive=True)]
    for member in members:
        member.suspend()
    try:
        yield
    finally:
        for member in members:
            member.resume()


def _embedding_started(settings: Settings) -> None:
    collect(settings, "embed-done", lambda vs: len(vs) > 0, timeout=240)


def _settings(settings: Settings) -> Settings:
    return with_topics(
        settings.model_copy(
            update={
                "embedder": settings.embedder.model_copy(update={"max_events": 8}),
                "worker": settings.worker.model_copy(update={"rebalance_grace_s": 5.0}),
            }
        )
    )


def _members(settings: Settings, *members: Workers, timeout: float = 240) -> None:
    """Until the embedder group is Stable with one member per embedder of `members`."""
    deadline = time.monotonic() + timeout
    while (group := asyncio.run(embedder_members(settings)))[0] != "Stable" or len(group[1]) != len(
        members
    ):
        for workers in members:
            if workers.procs["embedder"].poll() is not None:
                raise AssertionError(f"an embedder ended:\n{workers.log('embedder')[-3000:]}")
        if time.monotonic() > deadline:
            raise AssertionError(f"the embedder group is {group}, not {len(members)} members")
        time.sleep(1)


def test_a_stop_while_weaviate_hangs_ends_within_the_grace_and_acks_nothing_unwritten(
    settings: Settings, tmp_path: Path
) -> None:
    settings = _settings(settings)
    collection = settings.collection_for(settings.target_models[0])
    workers = Workers(settings, tmp_path)
    try:
        workers.start("chunker")
        embedder = workers.start("embedder")
        produce_events(settings, corpus_events("stop"))
        _embedding_started(settings)
        with weaviate_hung(settings):
            time.sleep(3)  # a batch is now waiting on Weaviate
            started = time.monotonic()
            embedder.terminate()
            embedder.wait(timeout=60)
            # Faust used to wait for every unacked event: as long as Weaviate hung.
            assert time.monotonic() - started < settings.worker.rebalance_grace_s + 20
        workers.procs.pop("embedder")
        workers.start("embedder")
        drained(settings)
        assert exact(settings, collection) == EXACT
    finally:
        workers.stop()


def test_a_rebalance_while_weaviate_hangs_ends_the_member_that_cannot_finish(
    settings: Settings, tmp_path: Path
) -> None:
    settings = _settings(settings)
    collection = settings.collection_for(settings.target_models[0])
    workers = Workers(settings, tmp_path)
    (tmp_path / "second").mkdir()
    second = Workers(settings, tmp_path / "second")
    try:
        workers.start("chunker")
        first = workers.start("embedder")
        second.start("embedder")
        _members(settings, workers, second)
        # Twenty documents, so that both members' partitions have work.
        produce_events(
            settings, [e for i in range(4) for e in corpus_events("rebalance", suffix=f"-{i}")]
        )
        _embedding_started(settings)
        with weaviate_hung(settings):
            time.sleep(3)
            # The second member leaves: the group rebalances while the first one's batch hangs.
            second.stop()
            # It cannot finish in the grace, so it ends instead of being evicted later and
            # writing beside the partitions' next owner.
            assert first.wait(timeout=120) == CRASH_EXIT_CODE
            assert "rebalance" in workers.log("embedder")
        workers.procs.pop("embedder")
        workers.start("embedder")
        drained(settings)
        assert exact(settings, collection) == EXACT
    finally:
        second.stop()
        workers.stop()
