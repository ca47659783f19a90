"""Running workers: one Faust worker per role; `all` supervises one process per role."""

from __future__ import annotations

import contextlib
import os
import signal
import subprocess
import sys
import tempfile
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import faust
import yaml

from streamproc import telemetry
from streamproc.logs import logging_config
from streamproc.settings import Settings


def run_role(settings: Settings, role: str) -> None:
    """Blocks until the worker stops. Start-up checks fail before Kafka is touched."""
    from streamproc.backfill.replayer import ModelPool
    from streamproc.pipeline.embedder import Embedder
    from streamproc.weaviate_store import WeaviateStore, connect
    from streamproc.workers import (
        background_pacing,
        create_chunker_app,
        create_embedder_app,
        load_models,
        prepare_targets,
        token_counters,
    )

    telemetry.setup(settings.telemetry, f"streamproc-{role}")
    if role == "chunker":
        _run(create_chunker_app(settings, token_counters(settings)))
        return
    models = load_models(settings)
    with connect(settings.weaviate) as client:
        store = WeaviateStore(client)
        embedder = Embedder(
            prepare_targets(store, settings, models),
            store,
            settings.embedder,
            background_pacing(settings),
        )
        try:
            _run(create_embedder_app(settings, embedder, store, ModelPool(settings, models)))
        finally:
            embedder.close()


def _run(app: faust.App) -> None:
    worker = faust.Worker(
        app,
        loglevel="INFO",
        quiet=True,
        redirect_stdouts=False,
        logging_config=logging_config("INFO"),
    )
    worker.execute_from_commandline()


def settings_file(settings: Settings) -> Path:
    """The settings as a YAML file, so child processes see exactly these (STREAMPROC_CONFIG)."""
    with tempfile.NamedTemporaryFile(
        "w", prefix="streamproc-", suffix=".yaml", delete=False
    ) as handle:
        yaml.safe_dump(settings.model_dump(mode="json"), handle)
    return Path(handle.name)


def worker_argv(role: str) -> list[str]:
    return [sys.executable, "-m", "streamproc", "worker", "--role", role]


@contextmanager
def worker_subprocess(
    settings: Settings, role: str, log: Path, env: dict[str, str] | None = None
) -> Iterator[subprocess.Popen[bytes]]:
    """`streamproc worker --role ROLE` with exactly these settings, stopped on exit."""
    log.parent.mkdir(parents=True, exist_ok=True)
    config = settings_file(settings)
    with log.open("ab") as out:
        proc = subprocess.Popen(
            worker_argv(role),
            stdout=out,
            stderr=subprocess.STDOUT,
            env={**os.environ, **(env or {}), "STREAMPROC_CONFIG": str(config)},
        )
    try:
        yield proc
    finally:
        proc.terminate()
        try:
            proc.wait(timeout=60)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()
        config.unlink(missing_ok=True)


def run_all(settings: Settings, roles: tuple[str, ...]) -> int:
    """One child per role; SIGINT/SIGTERM are passed on; the first child to fail stops the rest."""
    config = settings_file(settings)
    env = {"STREAMPROC_CONFIG": str(config)}
    port = settings.telemetry.prometheus_port
    children = [
        subprocess.Popen(
            worker_argv(role),
            env={
                **os.environ,
                **env,
                # One scrape endpoint per process: the roles share this host.
                **({"STREAMPROC_TELEMETRY__PROMETHEUS_PORT": str(port + i)} if port else {}),
            },
        )
        for i, role in enumerate(roles)
    ]

    def forward(signum: int, _frame: object) -> None:
        for child in children:
            if child.poll() is None:
                child.send_signal(signum)

    signal.signal(signal.SIGTERM, forward)
    signal.signal(signal.SIGINT, forward)
    try:
        while True:
            for child in children:
                code = child.poll()
                if code is not None:
                    forward(signal.SIGTERM, None)
                    for other in children:
                        other.wait()
                    return code
            with contextlib.suppress(subprocess.TimeoutExpired):
                children[0].wait(timeout=0.5)
    finally:
        config.unlink(missing_ok=True)
