"""Commands over the data: tail a topic, produce documents, verify a collection, search, replay a DLQ."""

from __future__ import annotations

import sys
from typing import Annotated

import typer

from streamproc.cli.common import app, current_settings, run
from streamproc.search import DEFAULT_FUSION, DEFAULT_MODE, DEFAULT_TARGETS, Fusion, Mode
from streamproc.topics import dead_letter_topic, topic_name, topics_for


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

    settings = current_settings()
    run(
        tail_topic(
            settings,
            topic_name(settings, topic),
            from_beginning,
            max_messages,
            idle_timeout,
            sys.stdout,
        )
    )


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

    settings = current_settings()
    telemetry.setup(settings.telemetry, "streamproc-produce")
    docs = expand(paths)
    sent = run(
        produce_documents(settings, docs, tenant, "DELETE" if delete else "UPSERT", force=force)
    )
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

    settings = current_settings()
    name, reports = run(verify_collection(settings, collection))
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

    settings = current_settings()
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


dlq_app = typer.Typer(no_args_is_help=True, help="Dead-letter topics.")
app.add_typer(dlq_app, name="dlq")


@dlq_app.command("replay")
def dlq_replay(
    topic: Annotated[str, typer.Argument(help="The source topic, e.g. chunk-requested")],
) -> None:
    """Send every dead letter not yet replayed back to its topic (after a fix)."""
    from streamproc.dlq import replay

    settings = current_settings()
    count = run(replay(settings, topic))
    typer.echo(f"replayed {count} message(s) from {dead_letter_topic(topic_name(settings, topic))}")
