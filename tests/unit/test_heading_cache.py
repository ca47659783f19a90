"""The heading-vector cache that the embedder's lanes share across their awaits."""

from __future__ import annotations

import asyncio
from typing import Any

import numpy as np
import pytest

from streamproc.models import load_model
from streamproc.pipeline import embedder as embedder_module
from streamproc.pipeline.embedder import Embedder
from streamproc.pipeline.heading_cache import HeadingCache
from streamproc.pipeline.objects import Target
from streamproc.settings import Settings
from streamproc.worker.embedder import background_pacing
from tests.stand_ins import unconnected_store


def _vector(value: float) -> np.ndarray:
    return np.full(3, value, dtype=np.float32)


def test_least_recently_used_heading_is_evicted_first() -> None:
    cache = HeadingCache(2)
    cache.add({"a": _vector(1), "b": _vector(2)})
    assert set(cache.hits(["a", "missing"])) == {"a"}
    cache.add({"c": _vector(3)})
    assert set(cache.hits(["a", "b", "c"])) == {"a", "c"}
    assert len(cache) == 2


def test_hits_taken_before_another_lane_evicts_them_stay_usable() -> None:
    cache = HeadingCache(2)
    cache.add({"x": _vector(1)})
    # Lane A: "x" is cached, "y" must be encoded; it awaits the encoder.
    found = cache.hits({"x", "y"})
    # Lane B's encode lands first and evicts "x".
    cache.add({"z": _vector(3), "w": _vector(4)})
    assert not cache.hits({"x"})
    # Lane A resumes with its fresh vector.
    fresh = {"y": _vector(2)}
    cache.add(fresh)
    found.update(fresh)
    assert set(found) == {"x", "y"}
    assert float(found["x"][0]) == 1.0


def _chunk(heading: str) -> dict[str, Any]:
    return {"heading_path": [heading], "text": "t", "chunk_key": f"acme/d/p/{heading}"}


def test_an_eviction_during_a_lanes_encode_never_raises(monkeypatch: pytest.MonkeyPatch) -> None:
    """Old code: `move_to_end` after the await raised KeyError carrying the heading text."""
    monkeypatch.setattr(embedder_module, "HEADING_CACHE_SIZE", 2)
    settings = Settings()
    model = load_model(settings.model(settings.active_model), "cpu")
    target = Target(model, "Chunk_test")
    embedder = Embedder(
        [target], unconnected_store(), settings.embedder, background_pacing(settings)
    )

    async def race() -> tuple[dict[str, np.ndarray], dict[str, np.ndarray]]:
        await embedder._heading_vectors(target, [_chunk("Cached x")])
        # B submits its encode first; A finds "Cached x" and queues its encode behind B's. B's
        # lands first and evicts "Cached x" while A awaits (one encode thread, first in first out).
        return await asyncio.gather(
            embedder._heading_vectors(target, [_chunk("New z"), _chunk("New w")]),
            embedder._heading_vectors(target, [_chunk("Cached x"), _chunk("New y")]),
        )

    try:
        lane_b, lane_a = asyncio.run(race())
    finally:
        embedder.close()
    assert set(lane_b) == {"New z", "New w"}
    assert set(lane_a) == {"Cached x", "New y"}
    assert lane_a["Cached x"].shape == (model.dimension,)
