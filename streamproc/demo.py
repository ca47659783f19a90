"""`streamproc demo`: the main job end to end on the configured services.

Services up (when local), topology applied, the inference endpoint of both models and a worker
started, the shipped corpus produced as ingest-complete events, a progress bar until every chunk
has its embed-done, searches through Weaviate on the alias (nearText, embedded by the served
collection's endpoint); then a model rotation (backfill with a progress bar, verification, the
flip, the same search answered by the new model, a rollback), and everything this run started
stopped again.
"""

from __future__ import annotations

import subprocess
import time
from collections.abc import Iterator
from contextlib import aclosing, contextmanager
from pathlib import Path

import typer
from aiokafka import TopicPartition
from tqdm import tqdm

from streamproc.backfill.alias import rollback, verify_and_promote
from streamproc.backfill.commands import follow_job, read_jobs, start_job
from streamproc.backfill.jobs import conflicting_job, describe, now
from streamproc.chunking.extract import extract_sections
from streamproc.chunking.tokenizers import splitter_for
from streamproc.derive import projected_model
from streamproc.errors import StreamprocError
from streamproc.inference.process import serving
from streamproc.kafka_io import end_offsets, follow
from streamproc.localservices.manager import LocalServices
from streamproc.naming import chunk_key
from streamproc.produce import Document, content_type, expand, produce_documents
from streamproc.registry import ModelSpec
from streamproc.search import search_alias
from streamproc.settings import CORPUS, Settings
from streamproc.topics import topics_for
from streamproc.topology import load_topology
from streamproc.topology.kafka_admin import reconcile
from streamproc.verify import verify_collection
from streamproc.weaviate_client import connect
from streamproc.weaviate_store import WeaviateStore
from streamproc.worker.runner import worker_subprocess

TENANT = "demo"
QUERIES = [
    "When is the exit of a goroutine guaranteed to be observed by another goroutine?",
    "What must a licensee do when redistributing the work?",
]


@contextmanager
def local_services(settings: Settings, manage: bool) -> Iterator[None]:
    """Start the local services when asked, and stop at the end only what this run started."""
    if not manage:
        yield
        return
    services = LocalServices(settings)
    already = all(s.pid and s.ready for s in services.status())
    for line in services.up():
        typer.echo(f"services: {line}")
    try:
        yield
    finally:
        if not already:
            for line in services.down():
                typer.echo(f"services: {line}")


def expected_keys(settings: Settings, docs: list[Document]) -> set[str]:
    """The chunk keys the corpus gives, by the same pure code the chunker runs."""
    splitter = splitter_for(settings)
    policy = settings.chunking.policy_version
    return {
        chunk_key(TENANT, d.doc_id, policy, draft.index)
        for d in docs
        for draft in splitter.split(extract_sections(d.path.read_text(), content_type(d.path)))
    }


def demo_settings(settings: Settings) -> tuple[Settings, ModelSpec]:
    """The settings plus the model the demo rotates to (derived on this machine, no model hub
    needed) and the corpus as a readable file root (`produce` names large or non-UTF-8 files
    by file:// URI; the worker may read only these); and that model."""
    second = projected_model(settings.local.cache_dir)
    if second.name not in {m.name for m in settings.models}:
        settings = settings.model_copy(update={"models": [*settings.models, second]})
    sources = settings.sources.model_copy(
        update={"file_roots": [*settings.sources.file_roots, CORPUS.resolve()]}
    )
    return settings.model_copy(update={"sources": sources}), second


async def run_demo(settings: Settings, second: ModelSpec) -> None:
    """The demo on running services, with `demo_settings`, rotating to `second`."""
    started = time.monotonic()
    specs = load_topology(settings.topology_file, prefix=settings.kafka.topic_prefix)
    report = await reconcile(settings, specs, apply=True)
    typer.echo(f"topology: {len(specs)} topics, {len(report.changes)} change(s) applied")
    _replace_collections_without_endpoint(settings, [settings.active_model, second.name])
    docs = expand([str(CORPUS)])
    keys = expected_keys(settings, docs)
    configured = {settings.collection_for(m) for m in settings.target_models}
    start_offsets = await end_offsets(settings, topics_for(settings).embed_done.name)
    log = settings.local.state_dir / "demo-worker.log"
    serve_log = settings.local.state_dir / "demo-serve.log"
    served = [settings.active_model, second.name]
    with (
        serving(settings, served, serve_log),
        worker_subprocess(settings, "all", log) as proc,
    ):
        typer.echo(
            f"inference endpoint: serving {', '.join(served)} on port "
            f"{settings.inference.port}; log: {serve_log}"
        )
        typer.echo(f"worker: started (roles chunker and embedder); log: {log}")
        # DELETE first and force the UPSERT, so a second run re-embeds everything (its
        # collections may have been recreated above) and shows the same progress.
        await produce_documents(settings, docs, TENANT, "DELETE")
        await produce_documents(settings, docs, TENANT, "UPSERT", force=True)
        wanted = {(k, c) for k in keys for c in configured}
        typer.echo(f"produced {len(docs)} documents; waiting for {len(wanted)} embed-done records")
        await _await_embedded(settings, start_offsets, wanted, proc, log)
        for query in QUERIES:
            _search(settings, query)
        await _rotate(settings, second)
        await _verify(settings)
    typer.echo(f"worker: stopped (exit {proc.returncode}); its log: {log}")
    typer.echo(f"\ndone in {time.monotonic() - started:.0f}s")


def _replace_collections_without_endpoint(settings: Settings, models: list[str]) -> None:
    """A collection an earlier demo made before collections named their model's endpoint
    cannot answer nearText. Outside the demo such a collection moves over by a rotation; the
    demo re-embeds its corpus anyway, so it drops its own and lets them be made again."""
    with connect(settings.weaviate) as client:
        store = WeaviateStore(client)
        for name in models:
            collection = settings.collection_for(settings.model(name))
            if not store.exists(collection):
                continue
            if store.query_endpoint(collection) is None:
                store.drop(collection)
                typer.echo(f"{collection}: made by an earlier demo without its endpoint; recreated")


def _search(settings: Settings, query: str) -> None:
    """Through Weaviate, as `streamproc search` does: the query embedded by the served
    collection's endpoint."""
    result = search_alias(settings, query, TENANT, 3)
    typer.echo(f'\nsearch "{query}"')
    typer.echo(
        f"  via alias {result.alias} -> {result.collection} ({result.model}), "
        f"{result.mode.value} on {'+'.join(result.targets)} ({result.fusion.value})"
    )
    for rank, hit in enumerate(result.hits, 1):
        where = " > ".join(hit.heading_path) or "(no heading)"
        typer.echo(f"  {rank}. {hit.score:.3f}  {hit.doc_id}  {where}")


async def _rotate(settings: Settings, model: ModelSpec) -> None:
    """Backfill to the second model, verify, flip, search again, roll back."""
    target = settings.collection_for(model)
    typer.echo(f"\nmodel rotation: backfill into {target} ({model.name}, {model.dimension}d)")
    # An earlier run stopped half-way left its job unfinished: follow that one to its end.
    unfinished = conflicting_job((await read_jobs(settings)).values(), target)
    job_id = unfinished["job_id"] if unfinished else await start_job(settings, model.name)
    job = await follow_job(settings, job_id)
    for line in describe(job, now()):
        typer.echo(line)
    if job["state"] != "COMPLETED":
        raise StreamprocError(f"the backfill ended {job['state']}: {job['error']}")
    typer.echo(f"verifying {target} before the flip:")
    report, previous = await verify_and_promote(settings, target)
    for line in report.lines():
        typer.echo(f"  {line}")
    typer.echo(f"alias {settings.weaviate.collection_prefix}: {previous} -> {target}")
    _search(settings, QUERIES[1])
    current, back = await rollback(settings)
    typer.echo(f"\nrollback: alias {settings.weaviate.collection_prefix}: {current} -> {back}")
    _search(settings, QUERIES[1])


async def _await_embedded(
    settings: Settings,
    start: dict[TopicPartition, int],
    wanted: set[tuple[str, str]],
    proc: subprocess.Popen[bytes],
    log: Path,
) -> None:
    """Until every (chunk key, configured collection) has an EMBEDDED record: records of other
    collections (a completed backfill's target keeps getting live writes) do not count."""
    embed_done = topics_for(settings).embed_done
    seen: set[tuple[str, str]] = set()
    idle_since = time.monotonic()
    with tqdm(total=len(wanted), desc="embedded", unit="chunk") as bar:
        async with aclosing(follow(settings, start)) as polls:
            async for records in polls:
                for record in records:
                    done = embed_done.decode(record.value)
                    key = (done["chunk_key"], done["collection"])
                    if done["status"] == "EMBEDDED" and key in wanted and key not in seen:
                        seen.add(key)
                        bar.update(1)
                        idle_since = time.monotonic()
                if len(seen) == len(wanted):
                    return
                if proc.poll() is not None:
                    raise StreamprocError(f"the worker exited ({proc.returncode}); see {log}")
                if time.monotonic() - idle_since > 300:
                    raise StreamprocError(f"no progress for 5 minutes; see the worker log {log}")


async def _verify(settings: Settings) -> None:
    """The served collection against the chunk topic: the demo ends only when it is exact."""
    name, reports = await verify_collection(settings, None)
    for report in reports:
        if not report.ok:
            raise StreamprocError(
                f"verify {name}[{report.tenant}]: {len(report.missing)} missing, "
                f"{len(report.unexpected)} unexpected"
            )
    typer.echo(f"\nverify {name}: ok ({sum(r.actual for r in reports)} objects)")
