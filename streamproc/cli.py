"""The `streamproc` command: a thin layer over the library."""

from __future__ import annotations

import asyncio
import os
import sys
from collections.abc import Coroutine
from enum import StrEnum
from typing import Annotated, Any, TypeVar

import typer

from streamproc.backfill.jobs import PRIORITIES
from streamproc.errors import StreamprocError
from streamproc.logs import configure_logging, silence_dependency_warnings
from streamproc.search import DEFAULT_FUSION, DEFAULT_MODE, DEFAULT_TARGETS, Fusion, Mode
from streamproc.settings import Settings, load_settings
from streamproc.topics import dead_letter_topic, topic_name, topics_for

T = TypeVar("T")

app = typer.Typer(no_args_is_help=True, add_completion=False, help=__doc__)
dev_app = typer.Typer(no_args_is_help=True, help="Local Kafka and Weaviate without Docker.")
topology_app = typer.Typer(
    no_args_is_help=True,
    help="Apply the topic topology (streamproc/topology/topics.yaml) to a cluster.",
)
app.add_typer(dev_app, name="dev")
app.add_typer(topology_app, name="topology")


def _fail(exc: Exception) -> typer.Exit:
    typer.secho(f"error: {exc}", fg=typer.colors.RED, err=True)
    return typer.Exit(code=1)


def _run(work: Coroutine[Any, Any, T]) -> T:
    """The one event loop of a command: the library's operations are coroutines, and each
    command awaits all of its own in this loop."""
    return asyncio.run(work)


def _settings() -> Settings:
    try:
        return load_settings()
    except StreamprocError as exc:
        raise _fail(exc) from exc


@dev_app.command("up")
def dev_up() -> None:
    """Provision (cached) and start Kafka and Weaviate on 127.0.0.1."""
    from streamproc.localservices.manager import LocalServices

    try:
        for line in LocalServices(_settings()).up():
            typer.echo(line)
    except StreamprocError as exc:
        raise _fail(exc) from exc


@dev_app.command("down")
def dev_down() -> None:
    """Stop exactly the processes `dev up` started."""
    from streamproc.localservices.manager import LocalServices

    for line in LocalServices(_settings()).down():
        typer.echo(line)


@dev_app.command("status")
def dev_status() -> None:
    """Show whether the local services run, where, and where their logs are."""
    from streamproc.localservices.manager import LocalServices

    services = LocalServices(_settings())
    for status in services.status():
        typer.echo(str(status))
    typer.echo(f"kafka console tools: {services.kafka.home / 'bin'}")


@dev_app.command(
    "kafka-tool",
    context_settings={"allow_extra_args": True, "ignore_unknown_options": True},
)
def dev_kafka_tool(
    ctx: typer.Context,
    tool: Annotated[
        str,
        typer.Argument(help="kafka-console-producer, kafka-console-consumer, kafka-topics, ..."),
    ],
) -> None:
    """Run one of Kafka's own console tools from the cached jars."""
    from streamproc.localservices.kafka import LocalKafka

    kafka = LocalKafka(_settings())
    try:
        kafka.provision()
        argv = kafka.tool_argv(tool, list(ctx.args))
    except StreamprocError as exc:
        raise _fail(exc) from exc
    os.execv(argv[0], argv)


def _reconcile(apply: bool) -> None:
    from streamproc.topology import load_topology
    from streamproc.topology.kafka_admin import reconcile

    settings = _settings()
    specs = load_topology(settings.topology_file, prefix=settings.kafka.topic_prefix)
    try:
        report = _run(reconcile(settings, specs, apply=apply))
    except StreamprocError as exc:
        raise _fail(exc) from exc
    for note in report.notes:
        typer.echo(f"note: {note}")
    if not report.changes:
        typer.echo(f"no drift: {len(specs)} topics match {settings.topology_file.name}")
        return
    verb = "applied" if apply else "drift"
    for change in report.changes:
        typer.echo(f"{verb}: {change}")
    if not apply:
        raise typer.Exit(code=2)


@topology_app.command("apply")
def topology_apply() -> None:
    """Create missing topics and align partitions and configs; idempotent."""
    _reconcile(apply=True)


@topology_app.command("diff")
def topology_diff() -> None:
    """Report drift between the cluster and the topology; exit 2 if there is any."""
    _reconcile(apply=False)


@topology_app.command("render-k8s")
def topology_render_k8s() -> None:
    """Print Strimzi KafkaTopic manifests (deploy/k8s/base/topics.yaml is this output)."""
    from streamproc.topology.model import load_topology, render_strimzi

    settings = _settings()
    typer.echo(render_strimzi(load_topology(settings.topology_file)), nl=False)


@app.command("tail")
def tail(
    topic: Annotated[str, typer.Argument(help="Topic name, e.g. embed-done")],
    from_beginning: Annotated[bool, typer.Option("--from-beginning")] = False,
    max_messages: Annotated[
        int, typer.Option("--max", help="Stop after N messages (0 = never)")
    ] = 0,
    idle_timeout: Annotated[
        float, typer.Option(help="Stop after this many idle seconds (0 = never)")
    ] = 0.0,
) -> None:
    """Print any topic as JSON lines (Avro decoded by its fingerprint)."""
    from streamproc.kafka_io import tail_topic

    settings = _settings()
    try:
        _run(
            tail_topic(
                settings,
                topic_name(settings, topic),
                from_beginning,
                max_messages,
                idle_timeout,
                sys.stdout,
            )
        )
    except StreamprocError as exc:
        raise _fail(exc) from exc


@app.command("worker")
def worker(
    role: Annotated[
        str, typer.Option(help="chunker, embedder, or all (one process per role)")
    ] = "all",
) -> None:
    """Run the pipeline's Faust agents."""
    from streamproc.kafka_io import connection_problem
    from streamproc.worker.app import ROLES
    from streamproc.worker.runner import die_with_parent, run_all, run_role

    die_with_parent()
    settings = _settings()
    try:
        configure_logging()
        # Faust would retry refused credentials or an untrusted certificate forever.
        if (problem := _run(connection_problem(settings.kafka))) is not None:
            raise problem
        if role == "all":
            raise typer.Exit(code=run_all(settings, ROLES))
        if role not in ROLES:
            raise StreamprocError(f"unknown role {role!r}; use one of {', '.join(ROLES)} or all")
        run_role(settings, role)
    except StreamprocError as exc:
        raise _fail(exc) from exc


@app.command("produce")
def produce(
    paths: Annotated[list[str], typer.Argument(help="Files, folders (recursive) or globs")],
    tenant: Annotated[str, typer.Option(help="Tenant of every document")] = "default",
    delete: Annotated[bool, typer.Option("--delete", help="Send op=DELETE events")] = False,
    force: Annotated[
        bool,
        typer.Option(
            "--force", help="Re-embed every chunk, even unchanged ones (after a lost write)"
        ),
    ] = False,
) -> None:
    """Publish one ingest-complete event per document to chunk-requested."""
    from streamproc import telemetry
    from streamproc.produce import expand, produce_documents

    settings = _settings()
    telemetry.setup(settings.telemetry, "streamproc-produce")
    try:
        docs = expand(paths)
        sent = _run(
            produce_documents(settings, docs, tenant, "DELETE" if delete else "UPSERT", force=force)
        )
    except StreamprocError as exc:
        raise _fail(exc) from exc
    typer.echo(f"produced {sent} event(s) to {topics_for(settings).chunk_requested.name}")


@app.command("verify")
def verify(
    collection: Annotated[
        str | None, typer.Option(help="Collection to check; default: the one the alias serves")
    ] = None,
) -> None:
    """Compare the live chunks of the chunk topic with a collection's objects, per tenant, by
    key and text hash: missing, unexpected and stale (held with another text) objects."""
    from streamproc.verify import verify_collection

    settings = _settings()
    try:
        name, reports = _run(verify_collection(settings, collection))
    except StreamprocError as exc:
        raise _fail(exc) from exc
    for report in reports:
        mark = "ok" if report.ok else "MISMATCH"
        typer.echo(f"{name} tenant {report.tenant}: {report.detail()}: {mark}")
    if not all(r.ok for r in reports):
        raise typer.Exit(code=1)


@app.command("search")
def search(
    text: Annotated[str, typer.Argument(help="What to look for")],
    tenant: Annotated[str, typer.Option(help="Tenant to search in")] = "default",
    limit: Annotated[int, typer.Option(help="Number of hits")] = 5,
    mode: Annotated[
        Mode,
        typer.Option(help="vector: nearText; hybrid: BM25 + nearText; keyword: BM25"),
    ] = DEFAULT_MODE,
    targets: Annotated[
        str, typer.Option(help="Named vectors to search, comma-separated: content, heading")
    ] = ",".join(DEFAULT_TARGETS),
    fusion: Annotated[
        Fusion, typer.Option(help="How several targets combine (Weaviate multi-target)")
    ] = DEFAULT_FUSION,
    weights: Annotated[
        str | None,
        typer.Option(help="For relative-score and weights: e.g. content=0.3,heading=0.7"),
    ] = None,
) -> None:
    """Search through the alias; Weaviate embeds the query with the served collection's model
    endpoint (`streamproc serve`), so no model is loaded here. Default: hybrid, BM25 with the
    content and heading vectors averaged (the best recall measured; see README)."""
    from streamproc.search import parse_weights, search_alias

    settings = _settings()
    try:
        result = search_alias(
            settings,
            text,
            tenant,
            limit,
            mode=mode,
            targets=[t.strip() for t in targets.split(",") if t.strip()],
            fusion=fusion,
            weights=parse_weights(weights),
        )
    except StreamprocError as exc:
        raise _fail(exc) from exc
    how = result.mode.value
    if result.mode.value != "keyword":
        how += f" on {'+'.join(result.targets)}"
        if len(result.targets) > 1:
            how += f" ({result.fusion.value})"
    typer.echo(f"alias {result.alias} -> {result.collection} ({result.model}); {how}")
    for rank, hit in enumerate(result.hits, 1):
        heading = " > ".join(hit.heading_path) or "(no heading)"
        typer.echo(f"{rank:2}. {hit.score:.3f}  {hit.doc_id}#{hit.chunk_index}  {heading}")
        if hit.snippet:
            typer.echo(f"      {hit.snippet}")


@app.command("serve")
def serve(
    model: Annotated[
        list[str],
        typer.Option(help="Registered model to serve at /models/NAME (repeat for several)"),
    ],
) -> None:
    """The inference endpoint Weaviate's text2vec-transformers module calls for nearText and
    hybrid queries: one URL per model version, on inference.host:inference.port."""
    from streamproc.inference.server import serve as run_server
    from streamproc.models import load_model
    from streamproc.worker.runner import die_with_parent

    die_with_parent()
    settings = _settings()
    try:
        configure_logging()
        specs = [settings.model(name) for name in model]
        loaded = [load_model(spec, settings.embedder.device) for spec in specs]
    except (StreamprocError, KeyError) as exc:
        raise _fail(exc) from exc
    run_server(loaded, settings.inference)


dlq_app = typer.Typer(no_args_is_help=True, help="Dead-letter topics.")
app.add_typer(dlq_app, name="dlq")


@dlq_app.command("replay")
def dlq_replay(
    topic: Annotated[str, typer.Argument(help="The source topic, e.g. chunk-requested")],
) -> None:
    """Send every dead letter not yet replayed back to its topic (after a fix)."""
    from streamproc.dlq import replay

    settings = _settings()
    try:
        count = _run(replay(settings, topic))
    except StreamprocError as exc:
        raise _fail(exc) from exc
    typer.echo(f"replayed {count} message(s) from {dead_letter_topic(topic_name(settings, topic))}")


backfill_app = typer.Typer(no_args_is_help=True, help="Model rotation: replay jobs.")
alias_app = typer.Typer(no_args_is_help=True, help="The serving alias: show, promote, rollback.")
collections_app = typer.Typer(no_args_is_help=True, help="One collection per model version.")
app.add_typer(backfill_app, name="backfill")
app.add_typer(alias_app, name="alias")
app.add_typer(collections_app, name="collections")


# The job table's priorities, as the CLI's choices.
Priority = StrEnum("Priority", {p: p for p in PRIORITIES})  # type: ignore[misc]


def _print_verification(lines: list[str]) -> None:
    for line in lines:
        typer.echo(f"  {line}")


@backfill_app.command("start")
def backfill_start(
    model: Annotated[str, typer.Option(help="Registered model to re-embed everything with")],
    tenant: Annotated[str | None, typer.Option(help="Only this tenant's chunks")] = None,
    priority: Annotated[Priority, typer.Option(case_sensitive=False)] = Priority.MEDIUM,
    auto_promote: Annotated[
        bool, typer.Option("--auto-promote", help="Verify and flip the alias when done")
    ] = False,
    wait: Annotated[bool, typer.Option("--wait", help="Show progress until the job ends")] = False,
) -> None:
    """Queue a replay of the chunk topic into the model's own collection."""
    from streamproc.backfill.commands import follow_job, start_job
    from streamproc.backfill.jobs import Job, describe, now

    settings = _settings()

    async def start() -> Job | None:
        try:
            job_id = await start_job(settings, model, tenant, priority.value, auto_promote)
        except (StreamprocError, KeyError) as exc:
            raise _fail(exc) from exc
        typer.echo(
            f"job {job_id}: PENDING, model {model} -> "
            f"{settings.collection_for(settings.model(model))}"
        )
        if not wait:
            return None
        try:
            return await follow_job(settings, job_id)
        except StreamprocError as exc:
            raise _fail(exc) from exc

    job = _run(start())
    if job is None:
        return
    for line in describe(job, now()):
        typer.echo(line)
    if job["state"] != "COMPLETED":
        raise typer.Exit(code=1)


@backfill_app.command("status")
def backfill_status(
    job_id: Annotated[
        str | None, typer.Argument(help="Job id; default: every unfinished job")
    ] = None,
) -> None:
    """State, progress (done/total, rate, ETA), throttling and errors of a job."""
    from streamproc.backfill.commands import read_jobs
    from streamproc.backfill.jobs import TERMINAL, describe, now

    settings = _settings()
    jobs = _run(read_jobs(settings))
    if job_id is not None:
        if job_id not in jobs:
            raise _fail(
                StreamprocError(f"no backfill job {job_id!r}; see `streamproc backfill list`")
            )
        shown = [jobs[job_id]]
    else:
        shown = [j for j in jobs.values() if j["state"] not in TERMINAL]
        if not shown:
            typer.echo("no unfinished backfill jobs (`streamproc backfill list` shows all)")
    for job in shown:
        for line in describe(job, now()):
            typer.echo(line)


@backfill_app.command("list")
def backfill_list() -> None:
    """Every job, newest last."""
    from streamproc.backfill.commands import read_jobs
    from streamproc.backfill.jobs import now, summary

    jobs = _run(read_jobs(_settings()))
    for job in sorted(jobs.values(), key=lambda j: j["created_at"]):
        typer.echo(summary(job, now()))


@backfill_app.command("cancel")
def backfill_cancel(job_id: Annotated[str, typer.Argument(help="Job id")]) -> None:
    """Stop a job; the alias and the collections stay as they are."""
    from streamproc.backfill.commands import cancel_job

    try:
        _run(cancel_job(_settings(), job_id))
    except StreamprocError as exc:
        raise _fail(exc) from exc
    typer.echo(f"job {job_id}: cancel requested")


@alias_app.command("show")
def alias_show() -> None:
    """Where the alias points, and its history of flips."""
    from streamproc.backfill.alias import history
    from streamproc.weaviate_store import WeaviateStore, connect

    settings = _settings()
    alias = settings.weaviate.collection_prefix

    async def show() -> tuple[str | None, list[dict[str, object]]]:
        with connect(settings.weaviate) as client:
            target = WeaviateStore(client).alias_target(alias)
        return target, await history(settings)

    try:
        target, changes = _run(show())
    except StreamprocError as exc:
        raise _fail(exc) from exc
    typer.echo(f"alias {alias} -> {target or '(none)'}")
    for change in changes:
        typer.echo(
            f"  {change['changed_at']:%Y-%m-%d %H:%M:%S}  {change['action']:<8}  "
            f"{change['previous'] or '(none)'} -> {change['current']}"
        )


@alias_app.command("promote")
def alias_promote(
    collection: Annotated[
        str | None, typer.Option(help="Default: the newest completed backfill's collection")
    ] = None,
    model: Annotated[str | None, typer.Option(help="Or name the model instead")] = None,
    force: Annotated[
        bool,
        typer.Option(
            "--force",
            help="Flip even though the candidate's sampled recall@10 is lower than the serving "
            "collection's by more than backfill.max_recall_drop (no other check can be forced)",
        ),
    ] = False,
) -> None:
    """Verify a collection and flip the alias to it; refuses, alias untouched, on failure."""
    from streamproc.backfill.alias import (
        VerificationFailed,
        default_promotion_target,
        verify_and_promote,
    )
    from streamproc.backfill.verification import Verification

    settings = _settings()

    async def flip(collection: str | None) -> tuple[str, Verification, str | None]:
        target = collection or await default_promotion_target(settings)
        typer.echo(f"verifying {target}")
        return target, *await verify_and_promote(settings, target, force=force)

    try:
        if model is not None:
            collection = settings.collection_for(settings.model(model))
        target, report, previous = _run(flip(collection))
    except VerificationFailed as exc:
        _print_verification(exc.report.lines())
        if exc.forcible:
            typer.echo(
                "only the retrieval quality check failed: `streamproc alias promote --force` "
                "flips anyway"
            )
        raise _fail(exc) from exc
    except (StreamprocError, KeyError) as exc:
        raise _fail(exc) from exc
    _print_verification(report.lines())
    if not report.ok:
        typer.echo("forced past the retrieval quality check")
    typer.echo(f"alias {settings.weaviate.collection_prefix}: {previous} -> {target}")


@alias_app.command("rollback")
def alias_rollback() -> None:
    """Point the alias back at the collection it served before the last flip."""
    from streamproc.backfill.alias import rollback

    settings = _settings()
    try:
        current, previous = _run(rollback(settings))
    except StreamprocError as exc:
        raise _fail(exc) from exc
    typer.echo(f"alias {settings.weaviate.collection_prefix}: {current} -> {previous}")


@collections_app.command("list")
def collections_list() -> None:
    """Every collection: model, version, objects, whether the alias serves it, who writes it."""
    from streamproc.backfill.alias import list_collections

    try:
        infos = _run(list_collections(_settings()))
    except StreamprocError as exc:
        raise _fail(exc) from exc
    for info in infos:
        mark = "*" if info.served else " "
        typer.echo(
            f"{mark} {info.name}  {info.model}  {info.objects} objects  live writes: "
            f"{info.live_writes}  {info.freshness}"
        )


@collections_app.command("retire")
def collections_retire(name: Annotated[str, typer.Argument(help="Collection to delete")]) -> None:
    """Delete a collection the alias does not serve (refuses the served one)."""
    from streamproc.backfill.alias import retire

    try:
        _run(retire(_settings(), name))
    except StreamprocError as exc:
        raise _fail(exc) from exc
    typer.echo(f"retired {name}")


@app.command("demo")
def demo(
    external: Annotated[
        bool, typer.Option("--external", help="Use the configured cluster; start nothing locally.")
    ] = False,
) -> None:
    """The main job end to end on the configured services (see README)."""
    import signal

    from streamproc.demo import run_demo

    # SIGTERM (a CI timeout, `kill`) unwinds like Ctrl-C, so the demo still stops the worker,
    # the endpoint and the services it started instead of leaving them running.
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(128 + signal.SIGTERM))
    try:
        run_demo(_settings(), manage_services=not external)
    except StreamprocError as exc:
        raise _fail(exc) from exc


# Commands that never import weaviate-client: they skip the warning set-up, which imports it
# (1.7 s), so `streamproc search` answers in under a second.
_WITHOUT_WEAVIATE_CLIENT = {"search"}


def main() -> None:
    if not _WITHOUT_WEAVIATE_CLIENT.intersection(sys.argv[1:2]):
        silence_dependency_warnings()
    app()
