"""The `streamproc` command: a thin layer over the library."""

from __future__ import annotations

import asyncio
import os
import sys
from typing import Annotated

import typer

from streamproc.errors import StreamprocError
from streamproc.logs import configure_logging, silence_dependency_warnings
from streamproc.settings import Settings, load_settings

app = typer.Typer(no_args_is_help=True, add_completion=False, help=__doc__)
dev_app = typer.Typer(no_args_is_help=True, help="Local Kafka and Weaviate without Docker.")
topology_app = typer.Typer(no_args_is_help=True, help="Apply topology/topics.yaml to a cluster.")
app.add_typer(dev_app, name="dev")
app.add_typer(topology_app, name="topology")


def _settings() -> Settings:
    return load_settings()


def _fail(exc: Exception) -> typer.Exit:
    typer.secho(f"error: {exc}", fg=typer.colors.RED, err=True)
    return typer.Exit(code=1)


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
        report = asyncio.run(reconcile(settings.kafka.bootstrap_servers, specs, apply=apply))
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
    """Print Strimzi KafkaTopic manifests (deploy/k8s/topics.yaml is this output)."""
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
        asyncio.run(
            tail_topic(
                settings,
                settings.topic(topic),
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
    from streamproc.runner import run_all, run_role
    from streamproc.workers import ROLES

    settings = _settings()
    try:
        if role == "all":
            raise typer.Exit(code=run_all(settings, ROLES))
        if role not in ROLES:
            raise StreamprocError(f"unknown role {role!r}; use one of {', '.join(ROLES)} or all")
        configure_logging()
        run_role(settings, role)
    except StreamprocError as exc:
        raise _fail(exc) from exc


@app.command("produce")
def produce(
    paths: Annotated[list[str], typer.Argument(help="Files, folders (recursive) or globs")],
    tenant: Annotated[str, typer.Option(help="Tenant of every document")] = "default",
    delete: Annotated[bool, typer.Option("--delete", help="Send op=DELETE events")] = False,
) -> None:
    """Publish one ingest-complete event per document to chunk-requested."""
    from streamproc import telemetry
    from streamproc.produce import expand, produce_documents

    settings = _settings()
    telemetry.setup(settings.telemetry, "streamproc-produce")
    try:
        docs = expand(paths)
        sent = asyncio.run(
            produce_documents(settings, docs, tenant, "DELETE" if delete else "UPSERT")
        )
    except StreamprocError as exc:
        raise _fail(exc) from exc
    typer.echo(f"produced {sent} event(s) to {settings.topic('chunk-requested')}")


@app.command("verify")
def verify(
    collection: Annotated[
        str | None, typer.Option(help="Collection to check; default: the one the alias serves")
    ] = None,
) -> None:
    """Compare the live keys of the chunk topic with a collection's objects, per tenant."""
    from streamproc.verify import verify_collection

    settings = _settings()
    try:
        name, reports = verify_collection(settings, collection)
    except StreamprocError as exc:
        raise _fail(exc) from exc
    for report in reports:
        mark = "ok" if report.ok else "MISMATCH"
        typer.echo(
            f"{name} tenant {report.tenant}: {report.actual} objects, {report.expected} live "
            f"chunks, {len(report.missing)} missing, {len(report.unexpected)} unexpected: {mark}"
        )
    if not all(r.ok for r in reports):
        raise typer.Exit(code=1)


@app.command("search")
def search(
    text: Annotated[str, typer.Argument(help="What to look for")],
    tenant: Annotated[str, typer.Option(help="Tenant to search in")] = "default",
    limit: Annotated[int, typer.Option(help="Number of hits")] = 5,
) -> None:
    """Embed the query with the model behind the alias and search through the alias."""
    from streamproc.search import search_alias

    settings = _settings()
    try:
        result = search_alias(settings, text, tenant, limit)
    except StreamprocError as exc:
        raise _fail(exc) from exc
    typer.echo(f"alias {result.alias} -> {result.collection} ({result.model})")
    for rank, hit in enumerate(result.hits, 1):
        typer.echo(
            f"{rank:2}. {hit.score:.3f}  {hit.doc_id}#{hit.chunk_index}  {' > '.join(hit.heading_path)}"
        )


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
        count = asyncio.run(replay(settings, topic))
    except StreamprocError as exc:
        raise _fail(exc) from exc
    typer.echo(f"replayed {count} message(s) from {settings.topic(topic)}.dlq")


@app.command("demo")
def demo(
    external: Annotated[
        bool, typer.Option("--external", help="Use the configured cluster; start nothing locally.")
    ] = False,
) -> None:
    """The main job end to end on the configured services (see README)."""
    from streamproc.demo import run_demo

    try:
        run_demo(_settings(), manage_services=not external)
    except StreamprocError as exc:
        raise _fail(exc) from exc


def main() -> None:
    silence_dependency_warnings()
    app()
