"""`streamproc serve`'s HTTP side with the real default model: Weaviate's text2vec-transformers
protocol, the same vectors the embedder computes, and a refusal (422) instead of truncation."""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Awaitable, Callable
from typing import Any

import numpy as np
import pytest
from aiohttp.test_utils import TestClient, TestServer

from streamproc.inference.server import SERVED, build_app
from streamproc.models import EmbeddingModel, load_model
from streamproc.settings import InferenceSettings, Settings

SECRET = "zebra-quartz-marker"


@pytest.fixture(scope="module")
def model() -> EmbeddingModel:
    settings = Settings()
    return load_model(settings.model(settings.active_model), "cpu")


def with_client(
    model: EmbeddingModel, body: Callable[[TestClient[Any, Any]], Awaitable[None]]
) -> None:
    async def run() -> None:
        async with TestClient(TestServer(build_app([model], InferenceSettings()))) as client:
            await body(client)

    asyncio.run(run())


def test_vectors_are_the_embedders_vectors(model: EmbeddingModel) -> None:
    text = "How often do keys rotate?"

    async def body(client: TestClient[Any, Any]) -> None:
        for path in (f"/models/{model.spec.name}/vectors", "/vectors"):
            response = await client.post(
                path, json={"text": text, "config": {"task_type": "query"}}
            )
            assert response.status == 200
            answer = await response.json()
            assert answer["text"] == text
            assert answer["dims"] == model.spec.dimension == len(answer["vector"])
            expected = model.encode([text])[0]
            assert np.allclose(answer["vector"], expected, atol=1e-5)
        served = client.server.app[SERVED][model.spec.name]
        assert served.vectors_served == {"query": 2}

    with_client(model, body)


def test_concurrent_queries_are_encoded_in_batches(model: EmbeddingModel) -> None:
    texts = [f"question number {i}" for i in range(12)]

    async def body(client: TestClient[Any, Any]) -> None:
        responses = await asyncio.gather(
            *(client.post("/vectors", json={"text": t, "config": {}}) for t in texts)
        )
        answers = [await r.json() for r in responses]
        assert [a["text"] for a in answers] == texts
        expected = model.encode(texts)
        assert np.allclose([a["vector"] for a in answers], expected, atol=1e-5)
        sizes = client.server.app[SERVED][model.spec.name].batcher.batch_sizes
        assert sum(sizes) == len(texts) and max(sizes) > 1

    with_client(model, body)


def test_text_over_the_token_limit_is_refused_with_422_not_truncated(
    model: EmbeddingModel, caplog: pytest.LogCaptureFixture
) -> None:
    long_text = " ".join([SECRET] * 300)

    async def body(client: TestClient[Any, Any]) -> None:
        response = await client.post(
            f"/models/{model.spec.name}/vectors", json={"text": long_text, "config": {}}
        )
        assert response.status == 422
        error = (await response.json())["error"]
        assert f"at most {model.spec.max_seq_len}" in error and "not truncated" in error
        assert SECRET not in error
        assert client.server.app[SERVED][model.spec.name].vectors_served == {}

    with caplog.at_level(logging.DEBUG):
        with_client(model, body)
    assert "refused text over the token limit" in caplog.text
    assert SECRET not in caplog.text


def test_meta_readiness_and_bad_requests(model: EmbeddingModel) -> None:
    async def body(client: TestClient[Any, Any]) -> None:
        for path in (
            "/.well-known/live",
            "/.well-known/ready",
            f"/models/{model.spec.name}/.well-known/ready",
        ):
            assert (await client.get(path)).status == 200
        meta = await (await client.get(f"/models/{model.spec.name}/meta")).json()
        assert meta["model"]["name"] == model.spec.name
        assert meta["model"]["revision"] == model.revision
        assert model.revision.startswith("sha256:")
        assert (await client.post("/vectors", data=b"not json")).status == 400
        assert (await client.post("/vectors", json={"config": {}})).status == 400
        assert (await client.post("/models/unknown/vectors", json={"text": "x"})).status == 404

    with_client(model, body)
