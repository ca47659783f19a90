"""`streamproc serve`: the endpoint Weaviate's `text2vec-transformers` module calls to embed
nearText and hybrid queries, one URL per registered model version.

Weaviate posts `{"text", "config": {"task_type", ...}}` to `{inferenceUrl}/vectors` and reads
`{"text", "vector", "dims"}` (or `{"error"}` with a non-200 status); it asks `{url}/meta` for
`/v1/meta` and `{url}/.well-known/ready` at start-up. Every model is served under
`/models/{name}` (the `inference.url_template`), and at the root too when it is the only one.
The vectors come from the very code the embedder uses (`load_model`, normalised, same
`max_seq_len`), so a query and the chunks it is compared with share weights and settings.
Text is never logged: only lengths, counts and timings.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Awaitable, Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from typing import Any

from aiohttp import web

from streamproc.inference.batcher import MicroBatcher
from streamproc.models import EmbeddingModel
from streamproc.settings import InferenceSettings

log = logging.getLogger(__name__)

Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]


class TextTooLong(ValueError):
    pass


@dataclass
class ServedModel:
    """One model version behind its URL: the loaded model, its batcher, its counters."""

    model: EmbeddingModel
    max_batch: int
    max_wait_s: float
    # Texts embedded, by Weaviate's task type (`query` for nearText/hybrid, `passage` for
    # objects it vectorizes itself, which streamproc's collections never ask for).
    vectors_served: dict[str, int] = field(default_factory=dict)
    _executor: ThreadPoolExecutor = field(init=False)
    batcher: MicroBatcher[str, list[float] | TextTooLong] = field(init=False)

    def __post_init__(self) -> None:
        # One thread per model does its tokenizing and encoding: torch uses every core for one
        # batch already, and a tokenizer must not be called from two threads at once.
        self._executor = ThreadPoolExecutor(1, thread_name_prefix=f"encode-{self.name}")
        self.batcher = MicroBatcher(self._encode, self.max_batch, self.max_wait_s)

    @property
    def name(self) -> str:
        return self.model.spec.name

    def _encode_sync(self, texts: list[str]) -> list[list[float] | TextTooLong]:
        """Each text's vector, or its refusal: over the token limit a text is refused, never
        truncated (a cut query would be answered for a question not asked)."""
        limit = self.model.spec.max_seq_len
        counts = self.model.count_tokens(texts)
        results: list[list[float] | TextTooLong] = [
            TextTooLong(
                f"text has {n} tokens but model {self.name} accepts at most {limit} "
                f"(special tokens included); it is not truncated: send a shorter text"
            )
            if n > limit
            else []
            for n in counts
        ]
        fitting = [i for i, n in enumerate(counts) if n <= limit]
        if fitting:
            vectors = self.model.encode([texts[i] for i in fitting])
            for i, vector in zip(fitting, vectors, strict=True):
                results[i] = vector.tolist()
        return results

    async def _encode(self, texts: list[str]) -> list[list[float] | TextTooLong]:
        started = time.perf_counter()
        results = await asyncio.get_running_loop().run_in_executor(
            self._executor, self._encode_sync, texts
        )
        log.debug(
            "encoded query batch",
            extra={
                "model": self.name,
                "texts": len(texts),
                "chars": sum(len(t) for t in texts),
                "encode_ms": round((time.perf_counter() - started) * 1000, 1),
            },
        )
        return results

    async def embed(self, text: str, task: str) -> list[float]:
        result = await self.batcher.submit(text)
        if isinstance(result, TextTooLong):
            raise result
        self.vectors_served[task] = self.vectors_served.get(task, 0) + 1
        return result

    def meta(self) -> dict[str, Any]:
        spec = self.model.spec
        return {
            "model": {
                "name": spec.name,
                "source": spec.source,
                "revision": self.model.revision,
                "version": spec.version,
                "dimension": spec.dimension,
                "max_seq_len": spec.max_seq_len,
                "device": self.model.device,
            },
            "vectors_served": dict(self.vectors_served),
        }

    async def close(self) -> None:
        await self.batcher.close()
        self._executor.shutdown(wait=False, cancel_futures=True)


# The served models by name, on the application: what tests read the counters from.
SERVED: web.AppKey[dict[str, ServedModel]] = web.AppKey("served")


def _error(status: int, message: str) -> web.Response:
    # Weaviate reads `error` from the body of any non-200 answer.
    return web.json_response({"error": message}, status=status)


def _vectors_handler(served: ServedModel) -> Handler:
    async def handle(request: web.Request) -> web.StreamResponse:
        try:
            body = await request.json()
        except ValueError:
            return _error(400, "the body is not JSON")
        text = body.get("text") if isinstance(body, dict) else None
        if not isinstance(text, str):
            return _error(400, 'the body needs "text": a string')
        config = body.get("config") or {}
        task = str(config.get("task_type") or "query") if isinstance(config, dict) else "query"
        try:
            vector = await served.embed(text, task)
        except TextTooLong as exc:
            log.info(
                "refused text over the token limit",
                extra={"model": served.name, "chars": len(text)},
            )
            return _error(422, str(exc))
        return web.json_response({"text": text, "vector": vector, "dims": len(vector)})

    return handle


def _meta_handler(served: dict[str, ServedModel], only: str | None = None) -> Handler:
    """One model's meta at its own URL; at the root, the only model's, or all of them."""

    async def handle(request: web.Request) -> web.StreamResponse:
        if only is not None:
            return web.json_response(served[only].meta())
        if len(served) == 1:
            return web.json_response(next(iter(served.values())).meta())
        return web.json_response({"models": {n: s.meta() for n, s in served.items()}})

    return handle


async def _alive(request: web.Request) -> web.StreamResponse:
    # Models load before the listener opens: answering at all means ready. 200, not 204:
    # the image's HEALTHCHECK (`streamproc.healthcheck`) wants exactly 200.
    return web.json_response({})


def build_app(models: list[EmbeddingModel], settings: InferenceSettings) -> web.Application:
    served = {
        m.spec.name: ServedModel(m, settings.max_batch, settings.max_wait_ms / 1000) for m in models
    }
    app = web.Application(client_max_size=settings.max_request_bytes)
    app[SERVED] = served
    routes = [
        web.get("/.well-known/live", _alive),
        web.get("/.well-known/ready", _alive),
        web.get("/meta", _meta_handler(served)),
    ]
    for name, one in served.items():
        base = f"/models/{name}"
        routes += [
            web.post(f"{base}/vectors", _vectors_handler(one)),
            web.post(f"{base}/vectors/", _vectors_handler(one)),
            web.get(f"{base}/meta", _meta_handler(served, name)),
            web.get(f"{base}/.well-known/live", _alive),
            web.get(f"{base}/.well-known/ready", _alive),
        ]
    if len(served) == 1:
        # Weaviate's module default (TRANSFORMERS_INFERENCE_API) may name the root.
        only = next(iter(served.values()))
        routes += [
            web.post("/vectors", _vectors_handler(only)),
            web.post("/vectors/", _vectors_handler(only)),
        ]
    app.add_routes(routes)

    async def close_models(app: web.Application) -> None:
        for one in served.values():
            await one.close()

    app.on_cleanup.append(close_models)
    return app


def serve(models: list[EmbeddingModel], settings: InferenceSettings) -> None:
    """Serve until SIGINT or SIGTERM."""
    log.info(
        "inference endpoint listening",
        extra={
            "models": [m.spec.name for m in models],
            "host": settings.host,
            "port": settings.port,
        },
    )
    web.run_app(
        build_app(models, settings),
        host=settings.host,
        port=settings.port,
        access_log=None,
        print=None,
        handle_signals=True,
    )
