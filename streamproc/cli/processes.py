"""Long-running processes: the workers, the query-embedding endpoint, the demo."""

from __future__ import annotations

import sys
from typing import Annotated

import typer

from streamproc.cli.common import app, current_settings, run
from streamproc.errors import StreamprocError
from streamproc.logs import configure_logging


@app.command("worker")
def worker(
    role: Annotated[
        str, typer.Option(help="chunker, embedder, or all (one process per role)")
    ] = "all",
) -> None:
    """Run the pipeline's Faust agents."""
    from streamproc.backfill.commands import read_jobs
    from streamproc.kafka_io import connection_problem
    from streamproc.worker.app import ROLES
    from streamproc.worker.runner import die_with_parent, run_all, run_role

    die_with_parent()
    settings = current_settings()
    configure_logging()
    # Faust would retry refused credentials or an untrusted certificate forever.
    if (problem := run(connection_problem(settings.kafka))) is not None:
        raise problem
    if role == "all":
        raise typer.Exit(code=run_all(settings, ROLES))
    if role not in ROLES:
        raise StreamprocError(f"unknown role {role!r}; use one of {', '.join(ROLES)} or all")
    run_role(settings, role, run(read_jobs(settings)) if role == "embedder" else {})


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
    settings = current_settings()
    configure_logging()
    specs = [settings.model(name) for name in model]
    loaded = [load_model(spec, settings.embedder.device) for spec in specs]
    run_server(loaded, settings.inference)


@app.command("demo")
def demo(
    external: Annotated[
        bool, typer.Option("--external", help="Use the configured cluster; start nothing locally.")
    ] = False,
) -> None:
    """The main job end to end on the configured services (see README)."""
    import signal

    from streamproc.demo import demo_settings, local_services, run_demo

    # SIGTERM (a CI timeout, `kill`) unwinds like Ctrl-C, so the demo still stops the worker,
    # the endpoint and the services it started instead of leaving them running.
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(128 + signal.SIGTERM))
    settings, second = demo_settings(current_settings())
    # Outside the event loop: starting a service waits for it with a loop of its own.
    with local_services(settings, manage=not external):
        run(run_demo(settings, second))
