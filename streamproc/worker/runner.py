"""Running workers: one Faust worker per role; `all` supervises one process per role."""

from __future__ import annotations

import ctypes
import logging
import os
import signal
import subprocess
import sys
import time
import uuid
from collections import deque
from collections.abc import Iterator, Mapping
from contextlib import AbstractContextManager, contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, NoReturn

import faust

from streamproc import telemetry
from streamproc.logs import logging_config
from streamproc.settings import Settings, child_env

if TYPE_CHECKING:
    from streamproc.backfill.jobs import Job

log = logging.getLogger(__name__)

# Set by streamproc's launchers for their children: the child ends when the process that
# started it does, even by SIGKILL, instead of living on as an orphan that keeps its
# partitions or its port from the next run.
PARENT_ENV = "STREAMPROC_PARENT_PID"
_PR_SET_PDEATHSIG = 1


def die_with_parent() -> None:
    """SIGTERM this process when its launcher dies (Linux; elsewhere a no-op)."""
    parent = os.environ.pop(PARENT_ENV, None)
    if parent is None or not sys.platform.startswith("linux"):
        return
    ctypes.CDLL(None, use_errno=True).prctl(_PR_SET_PDEATHSIG, signal.SIGTERM)
    if os.getppid() != int(parent):
        # The launcher died before the line above took effect.
        raise SystemExit(f"the process that started this one ({parent}) is gone")


def run_role(settings: Settings, role: str, jobs: Mapping[str, Job]) -> NoReturn:
    """Runs until the worker stops, then ends the process. Start-up checks (models, their
    collections) fail before the Faust app starts. An embedder also loads the models that
    `jobs` (the backfill jobs, read by the caller) write live traffic with."""
    from streamproc.chunking.tokenizers import token_counters
    from streamproc.models import ModelPool
    from streamproc.pipeline.embedder import Embedder
    from streamproc.weaviate_client import connect
    from streamproc.weaviate_store import WeaviateStore
    from streamproc.worker.chunker import create_chunker_app
    from streamproc.worker.embedder import (
        background_pacing,
        create_embedder_app,
        load_models,
        prepare_targets,
    )

    telemetry.setup(settings.telemetry, f"streamproc-{role}")
    if role == "chunker":
        _run(create_chunker_app(settings, token_counters(settings)))
    models = load_models(settings, jobs.values())
    configured = {spec.name for spec in settings.target_models}
    with connect(settings.weaviate) as client:
        store = WeaviateStore(client)
        embedder = Embedder(
            prepare_targets(store, settings, [m for m in models if m.spec.name in configured]),
            store,
            settings.embedder,
            background_pacing(settings),
        )
        _run(
            create_embedder_app(
                settings,
                embedder,
                store,
                ModelPool(settings.model, settings.embedder.device, models),
            )
        )


def _run(app: faust.App) -> NoReturn:
    worker = faust.Worker(
        app,
        loglevel="INFO",
        quiet=True,
        redirect_stdouts=False,
        logging_config=logging_config("INFO"),
    )
    try:
        worker.execute_from_commandline()
    except SystemExit as exc:
        code = exc.code if isinstance(exc.code, int) else 1
    # Faust has stopped: what was acked is committed and nothing more will be. A thread still
    # blocked on a hung service (a Weaviate write, a document read) holds only unacked work,
    # so the process ends now instead of waiting for it at interpreter exit.
    telemetry.shutdown()
    logging.shutdown()
    sys.stdout.flush()
    sys.stderr.flush()
    os._exit(code)


def worker_argv(role: str) -> list[str]:
    return [sys.executable, "-m", "streamproc", "worker", "--role", role]


def child_environ(settings: Settings, env: dict[str, str] | None = None) -> dict[str, str]:
    """The environment of a streamproc child: exactly these settings, `env` on top, and the
    launcher's pid so that the child dies with it."""
    return {**os.environ, **child_env(settings), PARENT_ENV: str(os.getpid()), **(env or {})}


@contextmanager
def child_process(
    argv: list[str],
    settings: Settings,
    log: Path,
    env: dict[str, str] | None = None,
    stop_timeout_s: float = 60.0,
) -> Iterator[subprocess.Popen[bytes]]:
    """A streamproc child with exactly these settings and its output in `log`; terminated on
    exit (killed after `stop_timeout_s`)."""
    log.parent.mkdir(parents=True, exist_ok=True)
    with log.open("ab") as out:
        proc = subprocess.Popen(
            argv,
            stdout=out,
            stderr=subprocess.STDOUT,
            env=child_environ(settings, env),
        )
    try:
        yield proc
    finally:
        proc.terminate()
        try:
            proc.wait(timeout=stop_timeout_s)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()


def worker_subprocess(
    settings: Settings, role: str, log: Path, env: dict[str, str] | None = None
) -> AbstractContextManager[subprocess.Popen[bytes]]:
    """`streamproc worker --role ROLE` with exactly these settings, stopped on exit."""
    return child_process(worker_argv(role), settings, log, env)


@dataclass
class _Child:
    role: str
    env: dict[str, str]
    proc: subprocess.Popen[bytes] | None = None
    # Exit times of recent crashes, for the give-up rule and the backoff.
    crashes: deque[float] = field(default_factory=deque)
    restart_at: float | None = None


def run_all(settings: Settings, roles: tuple[str, ...]) -> int:
    """One child per role, supervised: a child that dies is logged with its exit status and
    restarted alone after a backoff; the parent gives up (stopping the others) only when a
    role crashed `policy.max_crashes` times within `policy.window_s`. SIGINT/SIGTERM are passed
    on and end the supervision."""
    policy = RestartPolicy(settings.worker.max_crashes, settings.worker.crash_window_s)
    inherited = child_env(settings)
    port = settings.telemetry.prometheus_port
    # Static group membership: a restarted child rejoins under the same instance id and gets
    # its partitions back at once instead of after the dead member's session timeout. Unique
    # per supervisor, so two supervisors on one host never fence each other.
    instance = uuid.uuid4().hex[:12]
    children = [
        _Child(
            role,
            {
                **os.environ,
                **inherited,
                "STREAMPROC_WORKER__GROUP_INSTANCE_ID": f"{instance}-{role}",
                PARENT_ENV: str(os.getpid()),
                # One scrape endpoint and one health endpoint per process: the roles share
                # this host.
                **({"STREAMPROC_TELEMETRY__PROMETHEUS_PORT": str(port + i)} if port else {}),
                **(
                    {"STREAMPROC_WORKER__HEALTH_PORT": str(health + i)}
                    if (health := settings.worker.health_port)
                    else {}
                ),
            },
        )
        for i, role in enumerate(roles)
    ]
    stopping: list[int] = []

    def forward(signum: int, _frame: object) -> None:
        stopping.append(signum)
        for child in children:
            if child.proc is not None and child.proc.poll() is None:
                child.proc.send_signal(signum)

    signal.signal(signal.SIGTERM, forward)
    signal.signal(signal.SIGINT, forward)
    for child in children:
        child.proc = subprocess.Popen(worker_argv(child.role), env=child.env)
    while not stopping:
        for child in children:
            code = _supervise(child, policy)
            if code is not None:
                forward(signal.SIGTERM, None)
                _wait_all(children)
                return code
        time.sleep(0.2)
    _wait_all(children)
    return 0


@dataclass(frozen=True)
class RestartPolicy:
    max_crashes: int = 5
    window_s: float = 300.0
    first_backoff_s: float = 0.5
    max_backoff_s: float = 30.0

    def backoff(self, recent_crashes: int) -> float:
        return min(self.max_backoff_s, self.first_backoff_s * 2 ** max(0, recent_crashes - 1))


def _supervise(child: _Child, policy: RestartPolicy) -> int | None:
    """Restart `child` when it is due; returns an exit status when the parent must give up."""
    now = time.monotonic()
    if child.proc is None:
        if child.restart_at is not None and now >= child.restart_at:
            child.restart_at = None
            child.proc = subprocess.Popen(worker_argv(child.role), env=child.env)
            log.info("worker restarted", extra={"role": child.role, "pid": child.proc.pid})
        return None
    code = child.proc.poll()
    if code is None:
        return None
    child.proc = None
    while child.crashes and now - child.crashes[0] > policy.window_s:
        child.crashes.popleft()
    child.crashes.append(now)
    why = f"killed by {signal.Signals(-code).name}" if code < 0 else f"exit status {code}"
    if len(child.crashes) >= policy.max_crashes:
        log.error(
            "worker died too often, stopping",
            extra={"role": child.role, "why": why, "crashes": len(child.crashes)},
        )
        return code if code > 0 else 128 - code
    delay = policy.backoff(len(child.crashes))
    log.error(
        "worker died, restarting it",
        extra={"role": child.role, "why": why, "restart_in_s": delay},
    )
    child.restart_at = now + delay
    return None


def _wait_all(children: list[_Child]) -> None:
    for child in children:
        if child.proc is not None:
            child.proc.wait()
