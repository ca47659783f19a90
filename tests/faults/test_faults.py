"""Faults injected for real while the real workers process a load of several hundred documents;
each case ends with the exact check (tests/faults/checker.py) and a row of the suite's table.

Run: `flock /tmp/sp-services.lock .venv/bin/pytest tests/faults -m faults -p no:cacheprovider`
(STREAMPROC_FAULT_OUTAGE_S shortens the Weaviate outages while working on the suite).
"""

from __future__ import annotations

import asyncio
import signal
import time
from collections.abc import Callable
from typing import Any

import pytest

from streamproc.backfill.commands import start_job, wait_for
from streamproc.derive import projected_model
from streamproc.localservices.manager import LocalServices
from streamproc.settings import Settings
from tests.faults.conftest import CaseFactory, Proxied
from tests.faults.harness import OUTAGE_S, ROLES, WATCH, FaultRun

pytestmark = [pytest.mark.faults, pytest.mark.timeout(1200)]

# The promise for a Weaviate outage: batches flow again this soon after it ends.
WEAVIATE_RECOVERY_S = 10.0
# SIGKILLs of each role in one load.
KILLS = 5


def _load_during(run: FaultRun, seconds: float, waves: int = 3) -> None:
    """Produce `waves` waves spread over `seconds` while a fault lasts."""
    end = time.monotonic() + seconds
    for _ in range(waves):
        run.produce_wave()
        time.sleep(max(0.0, min(seconds / (waves + 1), end - time.monotonic())))
    time.sleep(max(0.0, end - time.monotonic()))


def _busy(run: FaultRun, waves: int = 2) -> None:
    """A few waves in, and the embedder writing."""
    since = run.workers.log_size("embedder")
    for _ in range(waves):
        run.produce_wave()
    run.workers.wait_busy("embedder", since)


def test_sigkill_workers(fault_case: CaseFactory) -> None:
    """The embedder and the chunker each SIGKILLed `KILLS` times at random moments while they
    process, in turn, during one load."""
    with fault_case("sigkill-workers") as run:
        for _ in range(KILLS):
            run.kill_busy("embedder", max_delay_s=4.0)
            run.kill_busy("chunker", max_delay_s=2.0)


def test_one_of_two_members_killed(fault_case: CaseFactory) -> None:
    """Two chunkers and two embedders in the same groups; one of each is SIGKILLed while it
    processes and stays down, so its partitions move to the other member."""
    with fault_case("two-members-one-killed") as run:
        for role in ROLES:
            run.workers.start(f"{role}#2")
        since = run.workers.log_size("embedder#2")
        for _ in range(3):
            run.produce_wave()
        run.workers.wait_busy("embedder#2", since)
        time.sleep(run.rng.uniform(0.2, 3.0))
        for role in ROLES:
            fault = run.fault(f"SIGKILL {role} 2 of 2", WATCH[role])
            run.workers.kill(f"{role}#2")
            fault.recovered(run)


ENDED = ("COMPLETED", "FAILED", "CANCELLED")


def _ended_or_past(items_done: int) -> Callable[[dict[str, Any]], bool]:
    return lambda job: (
        job["state"] in ENDED or (job["state"] == "RUNNING" and job["items_done"] > items_done)
    )


def test_sigkill_embedder_during_backfill_replay(
    fault_case: CaseFactory, service_settings: Settings
) -> None:
    """A rotation's replay into a second model's collection, killed while it runs; the job
    resumes and ends COMPLETED, and its collection holds exactly the live chunks too."""
    second = projected_model(service_settings.local.cache_dir)
    with fault_case("sigkill-embedder-replay", backfill_model=second) as run:
        for _ in range(4):
            run.produce_wave()
        job_id = asyncio.run(start_job(run.settings, second.name))
        done = 0
        for _ in range(3):
            job = asyncio.run(wait_for(run.settings, job_id, _ended_or_past(done), 300))
            if job["state"] in ENDED:
                break
            done = job["items_done"]
            run.produce_wave()
            time.sleep(run.rng.uniform(0.2, 3.0))
            fault = run.fault("SIGKILL embedder in replay")
            run.workers.restart("embedder")
            fault.recovered(run)
        run.produce_rest()
        job = asyncio.run(wait_for(run.settings, job_id, lambda j: j["state"] in ENDED, 600))
        assert job["state"] == "COMPLETED", job["error"]


def test_service_outages(fault_case: CaseFactory, services: LocalServices) -> None:
    """Weaviate stopped, then Weaviate hung, then the Kafka broker restarted, during one load;
    each begins once batches flow again after the one before."""
    with fault_case("service-outages") as run:
        _busy(run)
        fault = run.fault(f"Weaviate stopped {OUTAGE_S:.0f}s", max_recovery_s=WEAVIATE_RECOVERY_S)
        services.weaviate.proc.stop()
        _load_during(run, OUTAGE_S, waves=2)
        services.weaviate.start()
        fault.recovered(run)

        _busy(run, waves=1)
        fault = run.fault(f"Weaviate SIGSTOP {OUTAGE_S:.0f}s", max_recovery_s=WEAVIATE_RECOVERY_S)
        services.weaviate.proc.send_signal(signal.SIGSTOP)
        try:
            _load_during(run, OUTAGE_S, waves=2)
        finally:
            services.weaviate.proc.send_signal(signal.SIGCONT)
        fault.recovered(run)

        _busy(run, waves=1)
        fault = run.fault("Kafka broker restart")
        services.kafka.proc.stop()
        services.kafka.start()
        fault.recovered(run)


# (toxic, attributes, how long it stays): Toxiproxy's names and units (milliseconds).
NETWORK_FAULTS = {
    "latency": ("latency", {"latency": 1000, "jitter": 500}, 30.0),
    # Data stops flowing and connections stay open: a silent network partition.
    "blackhole": ("timeout", {"timeout": 0}, 20.0),
    # Every connection is reset 500 ms after it opens (or at once if already open).
    "reset-peer": ("reset_peer", {"timeout": 500}, 20.0),
}


def _network_faults(fault_case: CaseFactory, proxied: Proxied) -> None:
    """Each network fault in turn on the link from the workers to one service, during one
    load; each begins once batches flow again after the one before."""
    with fault_case(f"{proxied.service}-network", proxied=proxied) as run:
        for name, (kind, attributes, seconds) in NETWORK_FAULTS.items():
            _busy(run, waves=1)
            fault = run.fault(f"{proxied.service.title()} link {name} {seconds:.0f}s")
            toxics = proxied.add(kind, attributes)
            try:
                _load_during(run, seconds, waves=2)
            finally:
                proxied.remove(toxics)
            fault.recovered(run)


def test_network_faults_to_weaviate(fault_case: CaseFactory, proxied: Proxied) -> None:
    _network_faults(fault_case, proxied)


def test_network_faults_to_kafka(fault_case: CaseFactory, proxied_kafka: Proxied) -> None:
    _network_faults(fault_case, proxied_kafka)
