"""Faults injected for real while the real workers process a load of several hundred documents;
each case ends with the exact check (tests/faults/checker.py) and a row of the suite's table.

Run: `flock /tmp/sp-services.lock .venv/bin/pytest tests/faults -m faults -p no:cacheprovider`
(STREAMPROC_FAULT_OUTAGE_S shortens the Weaviate outages while working on the suite).
"""

from __future__ import annotations

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
from tests.faults.harness import OUTAGE_S, ROLES, FaultRun

pytestmark = [pytest.mark.faults, pytest.mark.timeout(1200)]

# The promise for a Weaviate outage: batches flow again this soon after it ends.
WEAVIATE_RECOVERY_S = 10.0
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


def test_no_fault(fault_case: CaseFactory) -> None:
    """The control: the same load and check with nothing injected."""
    with fault_case("none"):
        pass


def test_sigkill_embedder(fault_case: CaseFactory) -> None:
    with fault_case("sigkill-embedder") as run:
        run.kill_busy("embedder", KILLS)


def test_sigkill_chunker(fault_case: CaseFactory) -> None:
    with fault_case("sigkill-chunker") as run:
        run.kill_busy("chunker", KILLS, max_delay_s=2.0)


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
            fault = run.fault(
                f"SIGKILL {role} 2 of 2", "chunks" if role == "chunker" else "embed-done"
            )
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
        job_id = start_job(run.settings, second.name)
        done = 0
        for _ in range(3):
            job = wait_for(run.settings, job_id, _ended_or_past(done), 300)
            if job["state"] in ENDED:
                break
            done = job["items_done"]
            run.produce_wave()
            time.sleep(run.rng.uniform(0.2, 3.0))
            fault = run.fault("SIGKILL embedder in replay")
            run.workers.restart("embedder")
            fault.recovered(run)
        run.produce_rest()
        job = wait_for(run.settings, job_id, lambda j: j["state"] in ENDED, 600)
        assert job["state"] == "COMPLETED", job["error"]


def test_weaviate_stopped(fault_case: CaseFactory, services: LocalServices) -> None:
    with fault_case("weaviate-stopped", max_recovery_s=WEAVIATE_RECOVERY_S) as run:
        _busy(run)
        fault = run.fault(f"Weaviate stopped {OUTAGE_S:.0f}s")
        services.weaviate.proc.stop()
        _load_during(run, OUTAGE_S)
        services.weaviate.start()
        fault.recovered(run)


def test_weaviate_hung(fault_case: CaseFactory, services: LocalServices) -> None:
    with fault_case("weaviate-hung", max_recovery_s=WEAVIATE_RECOVERY_S) as run:
        _busy(run)
        fault = run.fault(f"Weaviate SIGSTOP {OUTAGE_S:.0f}s")
        services.weaviate.proc.send_signal(signal.SIGSTOP)
        try:
            _load_during(run, OUTAGE_S)
        finally:
            services.weaviate.proc.send_signal(signal.SIGCONT)
        fault.recovered(run)


def test_kafka_broker_restart(fault_case: CaseFactory, services: LocalServices) -> None:
    with fault_case("kafka-restart") as run:
        _busy(run, waves=3)
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


def _network_fault(fault_case: CaseFactory, proxied: Proxied, name: str) -> None:
    kind, attributes, seconds = NETWORK_FAULTS[name]
    with fault_case(f"{proxied.service}-net-{name}", proxied=proxied) as run:
        _busy(run)
        fault = run.fault(f"{proxied.service.title()} link {name} {seconds:.0f}s")
        toxics = proxied.add(kind, attributes)
        try:
            _load_during(run, seconds)
        finally:
            proxied.remove(toxics)
        fault.recovered(run)


@pytest.mark.parametrize("name", list(NETWORK_FAULTS))
def test_network_fault_to_weaviate(fault_case: CaseFactory, proxied: Proxied, name: str) -> None:
    _network_fault(fault_case, proxied, name)


@pytest.mark.parametrize("name", list(NETWORK_FAULTS))
def test_network_fault_to_kafka(fault_case: CaseFactory, proxied_kafka: Proxied, name: str) -> None:
    _network_fault(fault_case, proxied_kafka, name)
