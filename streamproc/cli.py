"""The `streamproc` command: a thin layer over the library."""

from __future__ import annotations

import asyncio
import os
import sys
from typing import Annotated

import typer

from streamproc.errors import StreamprocError
from streamproc.logs import silence_dependency_warnings
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
