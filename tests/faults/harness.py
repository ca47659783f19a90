"""One fault case: real worker processes under a supervisor, the load produced in waves while
faults are injected, then the exact check and the figures for the suite's table."""

from __future__ import annotations

import json
import os
import random
import signal
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from streamproc.localservices.manager import LocalServices
from streamproc.settings import Settings
from tests.faults.checker import CheckReport, check, record_times
from tests.faults.load import Load
from tests.pipeline_support import Workers, drained, produce_events

# How long Weaviate stays down or hung. The issue asks for 60 s; a shorter one speeds up work
# on the suite itself (STREAMPROC_FAULT_OUTAGE_S=15).
OUTAGE_S = float(os.environ.get("STREAMPROC_FAULT_OUTAGE_S", "60"))
# After the last wave: how long the pipeline may take to commit everything before the case
# counts as stuck.
DRAIN_S = 300.0
ROLES = ("chunker", "embedder")
# A line each role logs per unit of work: proof that a (restarted) worker is processing.
BUSY_MARKERS = {"chunker": '"msg": "chunked"', "embedder": '"msg": "embedded batch"'}
# The topic whose next record after a fault of the role is "the next batch".
WATCH = {"chunker": "chunks", "embedder": "embed-done"}


class SupervisedWorkers(Workers):
    """The worker processes plus what Kubernetes would do for them: a worker that exits by
    itself (crash-only) is restarted after a short backoff, and the exit is recorded."""

    def __init__(self, settings: Settings, log_dir: Path, t0: float) -> None:
        super().__init__(settings, log_dir)
        self.t0 = t0
        self.exits: list[str] = []
        self.started: dict[str, float] = {}
        # Where each role's log stood when its current process started (logs are appended).
        self.log_starts: dict[str, int] = {}
        self._lock = threading.RLock()
        self._closing = threading.Event()
        self._watcher = threading.Thread(target=self._watch, name="worker-supervisor", daemon=True)
        self._watcher.start()

    def _watch(self) -> None:
        backoff: dict[str, float] = {}
        while not self._closing.wait(1.0):
            with self._lock:
                for role, proc in list(self.procs.items()):
                    code = proc.poll()
                    if code is None:
                        continue
                    now = time.time()
                    why = last_words(self.log_dir / f"{role}.log", self.log_starts[role])
                    self.exits.append(f"{role} exited with {code} at {now - self.t0:.0f}s{why}")
                    # Like a pod's crash-loop backoff, but short and reset after a good run, so
                    # the supervisor's own delay never dominates a recovery time.
                    ran = now - self.started[role]
                    delay = 1.0 if ran > 30 else backoff.get(role, 1.0)
                    backoff[role] = min(delay * 2, 8.0)
                    time.sleep(delay)
                    self.start(role)

    def start(self, role: str, env: dict[str, str] | None = None) -> Any:
        with self._lock:
            self.started[role] = time.time()
            self.log_starts[role] = self.log_size(role)
            return super().start(role, env)

    def kill(self, role: str) -> None:
        """SIGKILL the role's process; it stays down (the other member of its group, if any,
        takes its partitions)."""
        with self._lock:
            super().kill(role)

    def restart(self, role: str) -> None:
        """SIGKILL the role's process and start a new one at once."""
        with self._lock:
            self.kill(role)
            self.start(role)

    def stop(self) -> None:
        self._closing.set()
        self._watcher.join()
        super().stop()

    def log_size(self, role: str) -> int:
        path = self.log_dir / f"{role}.log"
        return path.stat().st_size if path.exists() else 0

    def wait_busy(self, role: str, since: int, timeout: float = 120.0) -> bool:
        """True once `role` logs a unit of work after byte `since` of its log."""
        path = self.log_dir / f"{role}.log"
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            with path.open("rb") as log:
                log.seek(since)
                if BUSY_MARKERS[role.partition("#")[0]].encode() in log.read():
                    return True
            time.sleep(0.2)
        return False


def last_words(log: Path, since: int) -> str:
    """What a worker's process logged at ERROR or above before it exited (the crash record's
    error type, where it was raised and its innermost frames): CI keeps the suite's output, not
    its logs. Never fails: the supervisor thread that calls it must go on restarting workers."""
    words = []
    try:
        with log.open("rb") as lines:
            lines.seek(since)
            for line in lines:
                try:
                    record = json.loads(line)
                except ValueError:
                    continue
                if not isinstance(record, dict) or record.get("level") not in ("ERROR", "CRITICAL"):
                    continue
                said = {k: record[k] for k in ("msg", "where", "exc_type", "error") if k in record}
                if isinstance(record.get("stack"), list):
                    said["stack"] = record["stack"][-3:]
                words.append(json.dumps(said))
    except OSError as exc:
        return f" (its log unreadable: {exc})"
    return "".join(f"\n    {w}" for w in words[-3:])


@dataclass
class Fault:
    fault: str
    at_s: float  # since the case started
    after_wave: int
    # The topic whose next record is "the next batch" after recovery.
    watch: str = "embed-done"
    # The promise for this fault: batches flow again this soon after it ends (None: none).
    max_recovery_s: float | None = None
    recovered_s: float | None = None
    recovery_to_batch_s: float | None = None

    @property
    def slow(self) -> bool:
        return self.max_recovery_s is not None and (
            self.recovery_to_batch_s is None or self.recovery_to_batch_s > self.max_recovery_s
        )

    def recovered(self, run: FaultRun) -> None:
        self.recovered_s = run.elapsed()


@dataclass
class CaseResult:
    case: str
    faults: list[Fault]
    live_chunks: int
    lost: int
    duplicated: int
    dead_lettered: int
    missing_embed_done: int
    stuck: str | None
    worker_exits: list[str]
    wall_s: float
    examples: dict[str, list[str]] = field(default_factory=dict)

    @property
    def slow_recoveries(self) -> list[Fault]:
        return [f for f in self.faults if f.slow]

    @property
    def passed(self) -> bool:
        return (
            not (self.lost or self.duplicated or self.dead_lettered or self.missing_embed_done)
            and self.stuck is None
            and not self.slow_recoveries
        )

    def as_json(self) -> dict[str, Any]:
        return {**asdict(self), "passed": self.passed}

    def describe(self) -> str:
        lines = [
            f"{self.case}: lost {self.lost}, duplicated {self.duplicated}, wrongly dead-lettered "
            f"{self.dead_lettered}, without embed-done {self.missing_embed_done} "
            f"(of {self.live_chunks} live chunks)"
        ]
        if self.stuck:
            lines.append(f"stuck: {self.stuck}")
        lines += [
            f"recovery to next batch {f.recovery_to_batch_s}s after {f.fault}, over the "
            f"{f.max_recovery_s}s allowed"
            for f in self.slow_recoveries
        ]
        lines += [f"worker exit: {e}" for e in self.worker_exits]
        lines += [f"{kind}: {e}" for kind, found in self.examples.items() for e in found]
        return "\n".join(lines)


def next_batch_after(times_ms: list[int], at_epoch_s: float) -> float | None:
    """Seconds from `at_epoch_s` to the first record timestamp at or after it."""
    at_ms = at_epoch_s * 1000
    later = [t for t in times_ms if t >= at_ms]
    return round((later[0] - at_ms) / 1000, 1) if later else None


class FaultRun:
    def __init__(
        self, case: str, settings: Settings, workers: SupervisedWorkers, load: Load, t0: float
    ) -> None:
        self.case = case
        self.settings = settings
        self.workers = workers
        self.load = load
        self.t0 = t0
        self.rng = random.Random(f"{case}-{load.seed}")
        self.waves_sent = 0
        self.faults: list[Fault] = []

    def elapsed(self) -> float:
        return round(time.time() - self.t0, 1)

    def produce_wave(self) -> bool:
        if self.waves_sent >= len(self.load.waves):
            return False
        produce_events(self.settings, self.load.waves[self.waves_sent])
        self.waves_sent += 1
        return True

    def produce_rest(self, interval_s: float = 2.0) -> None:
        while self.produce_wave():
            time.sleep(interval_s)

    def fault(
        self, name: str, watch: str = "embed-done", max_recovery_s: float | None = None
    ) -> Fault:
        record = Fault(name, self.elapsed(), self.waves_sent, watch, max_recovery_s)
        self.faults.append(record)
        return record

    def kill_busy(self, role: str, max_delay_s: float) -> None:
        """A wave, then once `role` is processing, SIGKILL it at a random moment and start it
        again."""
        since = self.workers.log_size(role)
        self.produce_wave()
        self.workers.wait_busy(role, since)
        time.sleep(self.rng.uniform(0.2, max_delay_s))
        fault = self.fault(f"SIGKILL {role}", WATCH[role])
        self.workers.restart(role)
        fault.recovered(self)

    def finish(self, check_settings: Settings, also: tuple[str, ...] = ()) -> CaseResult:
        self.produce_rest()
        stuck = None
        try:
            drained(self.settings, timeout=DRAIN_S)
        except AssertionError as exc:
            stuck = str(exc)
        report = check(check_settings, also=also, documents=self.load.final_documents())
        times = {t: record_times(check_settings, t) for t in {f.watch for f in self.faults}}
        for f in self.faults:
            if f.recovered_s is not None:
                f.recovery_to_batch_s = next_batch_after(times[f.watch], self.t0 + f.recovered_s)
        return self._result(report, stuck)

    def _result(self, report: CheckReport, stuck: str | None) -> CaseResult:
        return CaseResult(
            case=self.case,
            faults=self.faults,
            live_chunks=report.live_chunks,
            lost=len(report.lost),
            duplicated=len(report.duplicated),
            dead_lettered=len(report.dead_lettered),
            missing_embed_done=len(report.missing_done),
            stuck=stuck,
            worker_exits=list(self.workers.exits),
            wall_s=self.elapsed(),
            examples={
                name: [str(f) for f in getattr(report, name)[:10]]
                for name in ("lost", "duplicated", "dead_lettered", "missing_done")
                if getattr(report, name)
            },
        )


@contextmanager
def supervised(settings: Settings, log_dir: Path) -> Iterator[SupervisedWorkers]:
    workers = SupervisedWorkers(settings, log_dir, time.time())
    try:
        for role in ROLES:
            workers.start(role)
        yield workers
    finally:
        workers.stop()


def restore(services: LocalServices) -> None:
    """Kafka and Weaviate running and ready again, whatever a case left them in."""
    for service in (services.kafka, services.weaviate):
        service.proc.send_signal(signal.SIGCONT)
        if service.proc.process() is None:
            service.start()
        else:
            service.proc.wait_ready(service.ready, service.settings.local.start_timeout_s)
