"""Model rotation and serving: backfill jobs, the serving alias, collections."""

from __future__ import annotations

from enum import StrEnum
from typing import Annotated

import typer

from streamproc.backfill.jobs import PRIORITIES
from streamproc.cli.common import app, current_settings, fail, print_verification, run
from streamproc.errors import StreamprocError

backfill_app = typer.Typer(no_args_is_help=True, help="Model rotation: replay jobs.")
alias_app = typer.Typer(no_args_is_help=True, help="The serving alias: show, promote, rollback.")
collections_app = typer.Typer(no_args_is_help=True, help="One collection per model version.")
app.add_typer(backfill_app, name="backfill")
app.add_typer(alias_app, name="alias")
app.add_typer(collections_app, name="collections")


# The job table's priorities, as the CLI's choices.
Priority = StrEnum("Priority", {p: p for p in PRIORITIES})  # type: ignore[misc]


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

    settings = current_settings()

    async def start() -> Job | None:
        job_id = await start_job(settings, model, tenant, priority.value, auto_promote)
        typer.echo(
            f"job {job_id}: PENDING, model {model} -> "
            f"{settings.collection_for(settings.model(model))}"
        )
        if not wait:
            return None
        return await follow_job(settings, job_id)

    job = run(start())
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

    settings = current_settings()
    jobs = run(read_jobs(settings))
    if job_id is not None:
        if job_id not in jobs:
            raise fail(
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

    jobs = run(read_jobs(current_settings()))
    for job in sorted(jobs.values(), key=lambda j: j["created_at"]):
        typer.echo(summary(job, now()))


@backfill_app.command("cancel")
def backfill_cancel(job_id: Annotated[str, typer.Argument(help="Job id")]) -> None:
    """Stop a job; the alias and the collections stay as they are."""
    from streamproc.backfill.commands import cancel_job

    run(cancel_job(current_settings(), job_id))
    typer.echo(f"job {job_id}: cancel requested")


@alias_app.command("show")
def alias_show() -> None:
    """Where the alias points, and its history of flips."""
    from streamproc.backfill.alias import history
    from streamproc.weaviate_client import connect
    from streamproc.weaviate_store import WeaviateStore

    settings = current_settings()
    alias = settings.weaviate.collection_prefix

    async def show() -> tuple[str | None, list[dict[str, object]]]:
        with connect(settings.weaviate) as client:
            target = WeaviateStore(client).alias_target(alias)
        return target, await history(settings)

    target, changes = run(show())
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

    settings = current_settings()

    async def flip(collection: str | None) -> tuple[str, Verification, str | None]:
        target = collection or await default_promotion_target(settings)
        typer.echo(f"verifying {target}")
        return target, *await verify_and_promote(settings, target, force=force)

    try:
        if model is not None:
            collection = settings.collection_for(settings.model(model))
        target, report, previous = run(flip(collection))
    except VerificationFailed as exc:
        print_verification(exc.report.lines())
        if exc.forcible:
            typer.echo(
                "only the retrieval quality check failed: `streamproc alias promote --force` "
                "flips anyway"
            )
        raise fail(exc) from exc
    print_verification(report.lines())
    if not report.ok:
        typer.echo("forced past the retrieval quality check")
    typer.echo(f"alias {settings.weaviate.collection_prefix}: {previous} -> {target}")


@alias_app.command("rollback")
def alias_rollback() -> None:
    """Point the alias back at the collection it served before the last flip."""
    from streamproc.backfill.alias import rollback

    settings = current_settings()
    current, previous = run(rollback(settings))
    typer.echo(f"alias {settings.weaviate.collection_prefix}: {current} -> {previous}")


@collections_app.command("list")
def collections_list() -> None:
    """Every collection: model, version, objects, whether the alias serves it, who writes it."""
    from streamproc.backfill.alias import list_collections

    infos = run(list_collections(current_settings()))
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

    run(retire(current_settings(), name))
    typer.echo(f"retired {name}")
