"""`streamproc dev` (local services) and `streamproc topology` (the topic topology)."""

from __future__ import annotations

import os
from typing import Annotated

import typer

from streamproc.cli.common import app, current_settings, run

dev_app = typer.Typer(no_args_is_help=True, help="Local Kafka and Weaviate without Docker.")
topology_app = typer.Typer(
    no_args_is_help=True,
    help="Apply the topic topology (streamproc/topology/topics.yaml) to a cluster.",
)
app.add_typer(dev_app, name="dev")
app.add_typer(topology_app, name="topology")


@dev_app.command("up")
def dev_up() -> None:
    """Provision (cached) and start Kafka and Weaviate on 127.0.0.1."""
    from streamproc.localservices.manager import LocalServices

    for line in LocalServices(current_settings()).up():
        typer.echo(line)


@dev_app.command("down")
def dev_down() -> None:
    """Stop exactly the processes `dev up` started."""
    from streamproc.localservices.manager import LocalServices

    for line in LocalServices(current_settings()).down():
        typer.echo(line)


@dev_app.command("status")
def dev_status() -> None:
    """Show whether the local services run, where, and where their logs are."""
    from streamproc.localservices.manager import LocalServices

    services = LocalServices(current_settings())
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

    kafka = LocalKafka(current_settings())
    kafka.provision()
    argv = kafka.tool_argv(tool, list(ctx.args))
    os.execv(argv[0], argv)


def _reconcile(apply: bool) -> None:
    from streamproc.topology import load_topology
    from streamproc.topology.kafka_admin import reconcile

    settings = current_settings()
    specs = load_topology(settings.topology_file, prefix=settings.kafka.topic_prefix)
    report = run(reconcile(settings, specs, apply=apply))
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

    settings = current_settings()
    typer.echo(render_strimzi(load_topology(settings.topology_file)), nl=False)
