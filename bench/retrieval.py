"""Retrieval quality on a real documentation corpus, per query mode, with and without the
HTML boilerplate removal.

    .venv/bin/python -m bench.retrieval              # a local Weaviate (started if down)
    .venv/bin/python -m bench.retrieval --external   # the Weaviate the settings point at

The corpus is the HTML manual of a Debian package nobody here wrote (`postgresql-doc-15`),
fetched with `apt-get download` into `~/.cache/streamproc/corpora/` on first use, never into
the checkout. A deterministic sample of its pages (by a hash of the file name) is chunked by
streamproc's own Chunker, embedded and written by its own Embedder with the registry's active
model, into one Weaviate collection per extraction variant:

  main      the HTML extraction as shipped: main content only
  whole     the same with `chunking.html_main_content=false`: navigation, headers and footers
            of every page kept, as before boilerplate removal

Queries come from `streamproc.backfill.quality` on the `main` variant's chunks: every
section's title and its first sentence, the relevant set being that section's chunks (in the
`whole` variant, the chunks of the same document and heading path). Each query is asked in
every mode below; recall@10 (capped by the relevant set's size) and MRR@10 per mode, variant
and query kind, and the latency of each search through Weaviate, go to
bench/results/retrieval.json.
"""

from __future__ import annotations

import asyncio
import hashlib
import json
import os
import shutil
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import replace
from datetime import UTC, datetime
from pathlib import Path
from typing import Annotated, Any

import typer
from weaviate.classes.query import TargetVectors
from weaviate.collections import Collection

from bench.pipeline import _percentile, machine
from streamproc.backfill.quality import Query, derive_queries, sample_queries, score
from streamproc.chunking.tokenizers import splitter_for
from streamproc.errors import PermanentError
from streamproc.inference.process import serving
from streamproc.localservices.weaviate import LocalWeaviate
from streamproc.models import EmbeddingModel, load_model
from streamproc.naming import CONTENT_VECTOR, HEADING_VECTOR
from streamproc.pipeline.chunker import Chunker
from streamproc.pipeline.embedder import Embedder
from streamproc.pipeline.objects import Target
from streamproc.settings import REPO_ROOT, Settings, child_env
from streamproc.weaviate_client import connect
from streamproc.weaviate_store import WeaviateStore
from streamproc.worker.embedder import background_pacing

RESULTS = REPO_ROOT / "bench" / "results" / "retrieval.json"
PACKAGE = "postgresql-doc-15"
TENANT = "bench"
K = 10
VARIANTS = {"main": True, "whole": False}  # name -> chunking.html_main_content
EMBED_SLICE = 256
SEED = "retrieval-bench"
CLI_QUERIES = 20  # each one a new Python process
# What bm25 reads, as `streamproc search` does: not the ids, file names and model fields that
# are text properties too ("sql-truncate.html" would answer "TRUNCATE").
KEYWORD_PROPERTIES = ["text", "heading_path"]

Search = Callable[[Collection[Any, Any], str, Sequence[float]], list[str]]


def _keys(result: Any) -> list[str]:
    return [str(o.properties["chunk_key"]) for o in result.objects]


def _vectors(target: Any, vector: Sequence[float]) -> Any:
    """The query vector for one target, or the same vector for each of several."""
    return vector if isinstance(target, str) else {CONTENT_VECTOR: vector, HEADING_VECTOR: vector}


def _near(target: Any) -> Search:
    def search(collection: Collection[Any, Any], _text: str, vector: Sequence[float]) -> list[str]:
        return _keys(
            collection.query.near_vector(
                _vectors(target, vector),
                target_vector=target,
                limit=K,
                return_properties=["chunk_key"],
            )
        )

    return search


def _hybrid(target: Any) -> Search:
    def search(collection: Collection[Any, Any], text: str, vector: Sequence[float]) -> list[str]:
        # Weaviate 1.38 defaults: alpha 0.75 (the vector side's weight), relative-score fusion.
        return _keys(
            collection.query.hybrid(
                text,
                vector=_vectors(target, vector),
                target_vector=target,
                query_properties=KEYWORD_PROPERTIES,
                limit=K,
                return_properties=["chunk_key"],
            )
        )

    return search


def _near_text(target: Any) -> Search:
    def search(collection: Collection[Any, Any], text: str, _vector: Sequence[float]) -> list[str]:
        return _keys(
            collection.query.near_text(
                text, target_vector=target, limit=K, return_properties=["chunk_key"]
            )
        )

    return search


def _keyword(collection: Collection[Any, Any], text: str, _vector: Sequence[float]) -> list[str]:
    return _keys(
        collection.query.bm25(
            text, query_properties=KEYWORD_PROPERTIES, limit=K, return_properties=["chunk_key"]
        )
    )


BOTH = [CONTENT_VECTOR, HEADING_VECTOR]
MODES: dict[str, Search] = {
    "content": _near(CONTENT_VECTOR),
    "heading": _near(HEADING_VECTOR),
    "content+heading (average)": _near(TargetVectors.average(BOTH)),
    "content+heading (relative score)": _near(
        TargetVectors.relative_score({CONTENT_VECTOR: 1.0, HEADING_VECTOR: 1.0})
    ),
    "hybrid (bm25 + content)": _hybrid(CONTENT_VECTOR),
    "hybrid (bm25 + content+heading average)": _hybrid(TargetVectors.average(BOTH)),
    "keyword (bm25)": _keyword,
    # The same searches with the query embedded by Weaviate through `streamproc serve`: the
    # endpoint runs the embedder's model code, so the figures must match the nearVector ones.
    "content (nearText via the endpoint)": _near_text(CONTENT_VECTOR),
    "content+heading average (nearText via the endpoint)": _near_text(TargetVectors.average(BOTH)),
}


def corpus_root(cache_dir: Path, package: str) -> Path:
    return cache_dir / "corpora" / package


def provision_corpus(cache_dir: Path, package: str = PACKAGE) -> Path:
    """The package's HTML folder, fetched with apt and unpacked under `cache_dir` once."""
    root = corpus_root(cache_dir, package)
    html = root / "usr" / "share" / "doc" / package / "html"
    if html.is_dir():
        return html
    if shutil.which("apt-get") is None or shutil.which("dpkg-deb") is None:
        raise typer.BadParameter(f"fetching {package} needs apt-get and dpkg-deb (Debian)")
    with tempfile.TemporaryDirectory() as tmp:
        subprocess.run(["apt-get", "download", package], cwd=tmp, check=True, capture_output=True)
        (deb,) = Path(tmp).glob(f"{package}_*.deb")
        unpacked = Path(tmp) / "x"
        subprocess.run(["dpkg-deb", "-x", str(deb), str(unpacked)], check=True)
        root.parent.mkdir(parents=True, exist_ok=True)
        shutil.rmtree(root, ignore_errors=True)
        shutil.move(str(unpacked), root)
        (root / "SOURCE").write_text(deb.name + "\n")
    return html


def sample_pages(html: Path, chunker: Chunker, max_chunks: int) -> list[Path]:
    """Pages in a fixed pseudo-random order (hash of the name) until `max_chunks` chunks."""
    pages = sorted(html.glob("*.html"), key=lambda p: hashlib.sha256(p.name.encode()).digest())
    chosen, chunks = [], 0
    for page in pages:
        n = len(_chunk(chunker, page))
        if n == 0:
            continue
        if chunks + n > max_chunks:
            break
        chosen.append(page)
        chunks += n
    return chosen


def _event(page: Path) -> dict[str, Any]:
    return {
        "event_id": page.name,
        "tenant": TENANT,
        "doc_id": page.name,
        "op": "UPSERT",
        "content": page.read_text(encoding="utf-8"),
        "content_uri": None,
        "content_type": "text/html",
        "content_sha256": None,
        "metadata": {},
        "ingested_at": None,
        "force": False,
    }


def _chunk(chunker: Chunker, page: Path) -> list[dict[str, Any]]:
    """The embed requests streamproc's chunker makes of the page (none for an empty page)."""
    try:
        return chunker.process(_event(page), None, datetime.now(UTC)).embed_requests
    except PermanentError as exc:
        if exc.reason == "empty":
            return []
        raise


def embed(
    settings: Settings,
    model: EmbeddingModel,
    store: WeaviateStore,
    collection: str,
    requests: list[dict[str, Any]],
) -> float:
    """Write the requests into `collection` through the embedder; returns chunks a second."""
    store.ensure_collection(
        collection, model.dimension, inference_url=settings.inference.url_for(model.spec.name)
    )
    embedder = Embedder(
        [Target(model, collection)], store, settings.embedder, background_pacing(settings)
    )
    started = time.perf_counter()
    try:
        for i in range(0, len(requests), EMBED_SLICE):
            result = asyncio.run(embedder.handle(requests[i : i + EMBED_SLICE]))
            if result.failed:
                raise RuntimeError(f"{len(result.failed)} chunks were not written")
    finally:
        embedder.close()
    return len(requests) / (time.perf_counter() - started)


def measure_latency(
    search: Callable[[str], object], texts: Sequence[str]
) -> dict[str, float | int]:
    """p50 and p99 of `search` over `texts`, one after another, in milliseconds.

    Any query path can be measured: today the in-process query embedding plus a Weaviate
    nearVector search; with collections that embed their own queries, a nearText call."""
    search(texts[0])  # warm-up: connection, caches
    seconds = []
    for text in texts:
        started = time.perf_counter()
        search(text)
        seconds.append(time.perf_counter() - started)
    ms = [s * 1000 for s in seconds]
    return {
        "queries": len(ms),
        "p50_ms": round(_percentile(ms, 50), 2),
        "p99_ms": round(_percentile(ms, 99), 2),
    }


def evaluate(
    collection: Collection[Any, Any], queries: Sequence[Query], vectors: Sequence[Sequence[float]]
) -> dict[str, dict[str, Any]]:
    out: dict[str, dict[str, Any]] = {}
    for mode, search in MODES.items():
        ranked = []
        seconds = []
        for query, vector in zip(queries, vectors, strict=True):
            started = time.perf_counter()
            ranked.append((query, search(collection, query.text, vector)))
            seconds.append(time.perf_counter() - started)
        ms = [s * 1000 for s in seconds]
        out[mode] = {
            **_figures(ranked),
            "by_kind": {
                kind: _figures([(q, r) for q, r in ranked if q.kind == kind])
                for kind in ("title", "sentence")
            },
            "weaviate_p50_ms": round(_percentile(ms, 50), 2),
            "weaviate_p99_ms": round(_percentile(ms, 99), 2),
        }
        typer.echo(f"  {mode:42} recall@{K} {out[mode]['recall']:.3f}  MRR {out[mode]['mrr']:.3f}")
    return out


def _figures(ranked: list[tuple[Query, list[str]]]) -> dict[str, Any]:
    s = score(ranked, K)
    return {"queries": s.queries, "recall": round(s.recall, 4), "mrr": round(s.mrr, 4)}


def _sections(requests: list[dict[str, Any]]) -> dict[tuple[str, tuple[str, ...]], set[str]]:
    sections: dict[tuple[str, tuple[str, ...]], set[str]] = {}
    for r in requests:
        chunk = r["chunk"]
        sections.setdefault((chunk["doc_id"], tuple(chunk["heading_path"])), set()).add(
            chunk["chunk_key"]
        )
    return sections


def _cli_search(settings: Settings, text: str) -> None:
    """One `streamproc search` as a user runs it: a new process, its defaults."""
    subprocess.run(
        [sys.executable, "-m", "streamproc", "search", text, "--tenant", TENANT],
        env={**os.environ, **child_env(settings)},
        check=True,
        capture_output=True,
    )


@contextmanager
def local_weaviate(settings: Settings, manage: bool) -> Iterator[None]:
    """Start the local Weaviate unless it runs (or the run is external); stop what we started."""
    if not manage:
        yield
        return
    weaviate = LocalWeaviate(settings)
    weaviate.provision()
    started = not (weaviate.proc.process() is not None and weaviate.ready())
    if started:
        weaviate.proc.stop()
        weaviate.start()
        typer.echo("services: weaviate: started")
    try:
        yield
    finally:
        if started:
            weaviate.proc.stop()
            typer.echo("services: weaviate: stopped")


app = typer.Typer(add_completion=False)


@app.command()
def main(
    max_chunks: Annotated[int, typer.Option(help="Chunks in the sample (main variant).")] = 3000,
    max_queries: Annotated[int, typer.Option(help="Queries sampled from those derived.")] = 1000,
    package: Annotated[str, typer.Option(help="Debian package of HTML documentation.")] = PACKAGE,
    external: Annotated[bool, typer.Option(help="Use the Weaviate the settings name.")] = False,
    out: Annotated[Path, typer.Option(help="Where the JSON goes.")] = RESULTS,
) -> None:
    base = Settings()
    html = provision_corpus(base.local.cache_dir, package)
    with tempfile.TemporaryDirectory() as tmp, local_weaviate(base, manage=not external):
        settings = base.isolated(Path(tmp) / "worker")
        results = _run(settings, html, package, max_chunks, max_queries, Path(tmp))
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(results, indent=2) + "\n")
    typer.echo(json.dumps(results["summary"], indent=2))
    typer.echo(f"written to {out}")


def _run(
    settings: Settings, html: Path, package: str, max_chunks: int, max_queries: int, log_dir: Path
) -> dict[str, Any]:
    splitter = splitter_for(settings)
    chunkers = {
        name: Chunker(settings.chunking.model_copy(update={"html_main_content": on}), splitter)
        for name, on in VARIANTS.items()
    }
    pages = sample_pages(html, chunkers["main"], max_chunks)
    requests = {name: [r for p in pages for r in _chunk(c, p)] for name, c in chunkers.items()}
    derived = derive_queries(r["chunk"] for r in requests["main"])
    queries = sample_queries(derived, max_queries, SEED)
    typer.echo(
        f"{len(pages)} pages of {package}: "
        + ", ".join(f"{n} {len(r)} chunks" for n, r in requests.items())
        + f"; {len(queries)} of {len(derived)} queries"
    )

    model = load_model(settings.model(settings.active_model), settings.embedder.device)
    vectors = model.encode([q.text for q in queries]).tolist()
    variants: dict[str, Any] = {}
    with (
        serving(settings, [settings.active_model], log_dir / "serve.log"),
        connect(settings.weaviate) as client,
    ):
        store = WeaviateStore(client)
        try:
            for name, reqs in requests.items():
                collection_name = f"{settings.weaviate.collection_prefix}_retrieval_{name}"
                rate = embed(settings, model, store, collection_name, reqs)
                sections = _sections(reqs)
                asked = [
                    replace(q, relevant=frozenset(sections.get((q.doc_id, q.heading_path), ())))
                    for q in queries
                ]
                collection = store.collection(collection_name, TENANT)
                typer.echo(f"{name}: {len(reqs)} chunks written ({rate:.1f}/s)")
                variants[name] = {
                    "chunks": len(reqs),
                    "embed_chunks_per_s": round(rate, 1),
                    "modes": evaluate(collection, asked, vectors),
                }
            main_collection = f"{settings.weaviate.collection_prefix}_retrieval_main"
            served = store.collection(main_collection, TENANT)
            texts = [q.text for q in queries[:200]]
            latency = {
                "embed_in_process_plus_near_vector": measure_latency(
                    lambda text: _near(CONTENT_VECTOR)(served, text, model.encode([text])[0]),
                    texts,
                ),
                "near_text_content": measure_latency(
                    lambda text: _near_text(CONTENT_VECTOR)(served, text, ()), texts
                ),
                "near_text_content_heading_average": measure_latency(
                    lambda text: _near_text(TargetVectors.average(BOTH))(served, text, ()), texts
                ),
            }
            store.point_alias(settings.weaviate.collection_prefix, main_collection)
            latency["streamproc_search_cli"] = measure_latency(
                lambda text: _cli_search(settings, text), texts[:CLI_QUERIES]
            )
        finally:
            client.alias.delete(alias_name=settings.weaviate.collection_prefix)
            for name in requests:
                client.collections.delete(f"{settings.weaviate.collection_prefix}_retrieval_{name}")

    kinds = {k: sum(q.kind == k for q in queries) for k in ("title", "sentence")}
    return {
        "measured_at": datetime.now(UTC).isoformat(timespec="seconds"),
        "machine": machine(),
        "corpus": {
            "package": package,
            "deb": (corpus_root(settings.local.cache_dir, package) / "SOURCE").read_text().strip(),
            "pages": len(pages),
            "pages_in_package": len(list(html.glob("*.html"))),
        },
        "model": settings.active_model,
        "k": K,
        "queries": {"total": len(queries), "derived": len(derived), **kinds},
        "variants": variants,
        "query_latency": latency,
        "summary": {
            name: {
                mode: f"recall@{K} {f['recall']:.3f}, MRR {f['mrr']:.3f}"
                for mode, f in v["modes"].items()
            }
            for name, v in variants.items()
        },
    }


if __name__ == "__main__":
    app()
