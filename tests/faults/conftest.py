"""Fixtures of the fault-injection suite and its table (printed at the end, and written to
bench/results/faults.json). `settings`, `service_settings` and the rest come from
tests/conftest.py."""

from __future__ import annotations

import json
import time
from collections.abc import Callable, Iterator
from contextlib import AbstractContextManager, contextmanager
from pathlib import Path

import pytest
from pydantic import BaseModel

from streamproc.localservices.kafka import ProxiedListener
from streamproc.localservices.manager import LocalServices
from streamproc.localservices.toxiproxy import LocalToxiproxy, ToxiproxyApi
from streamproc.registry import ModelSpec
from streamproc.settings import REPO_ROOT, Settings
from tests.conftest import with_topics
from tests.faults.harness import CaseResult, Fault, FaultRun, restore, supervised
from tests.faults.load import build_load

RESULTS_FILE = REPO_ROOT / "bench" / "results" / "faults.json"
_RESULTS = pytest.StashKey[list[CaseResult]]()

# Where the workers reach Weaviate or Kafka when a case puts Toxiproxy in between.
PROXY_PORTS = {"weaviate_http": 18480, "weaviate_grpc": 15451, "kafka": 18492}
# The broker's second listener, behind the Kafka proxy: the bootstrap port + this.
KAFKA_PROXIED_OFFSET = 2

CaseFactory = Callable[..., AbstractContextManager[FaultRun]]


@pytest.fixture(scope="session")
def fault_results(request: pytest.FixtureRequest) -> list[CaseResult]:
    return request.config.stash.setdefault(_RESULTS, [])


@pytest.fixture
def fault_case(
    service_settings: Settings, tmp_path: Path, fault_results: list[CaseResult]
) -> CaseFactory:
    """`with fault_case(name) as run:` starts the workers on fresh topics and collections; the
    body produces the load (`run.produce_wave()`) and injects faults; the end of the block
    produces the rest of the load, waits for the pipeline, checks, records and asserts."""

    @contextmanager
    def case(
        name: str,
        proxied: Proxied | None = None,
        backfill_model: ModelSpec | None = None,
    ) -> Iterator[FaultRun]:
        """`backfill_model` is registered besides the active one; the case may start a backfill
        into its collection, which is then checked too."""
        extra = {"models": [*service_settings.models, backfill_model]} if backfill_model else {}
        settings = with_topics(service_settings.isolated(tmp_path / "worker", **extra))
        also = (settings.collection_for(backfill_model),) if backfill_model else ()
        # The load and the check reach Kafka and Weaviate directly; only the workers may go
        # through a proxy.
        worker_settings = proxied.worker_settings(settings) if proxied else settings
        load = build_load()
        with supervised(worker_settings, tmp_path) as workers:
            run = FaultRun(name, settings, workers, load, time.time())
            yield run
            result = run.finish(settings, also)
        fault_results.append(result)
        assert result.passed, f"{result.describe()}\nworker logs: {tmp_path}"

    return case


@pytest.fixture(scope="session")
def local_services(service_settings: Settings) -> LocalServices:
    services = LocalServices(service_settings)
    if services.kafka.proc.process() is None or services.weaviate.proc.process() is None:
        pytest.fail(
            "the fault cases stop and hang Kafka and Weaviate, so they need the local services "
            "(STREAMPROC_TEST_SERVICES=local, or auto without a Docker engine)",
            pytrace=False,
        )
    return services


@pytest.fixture
def services(local_services: LocalServices) -> Iterator[LocalServices]:
    """The local services; whatever a case did to them, they are up and ready after it."""
    try:
        yield local_services
    finally:
        restore(local_services)


class Proxied:
    """Toxiproxy between the workers and one service (Weaviate's HTTP and gRPC, or Kafka), with
    no toxic yet."""

    def __init__(self, api: ToxiproxyApi, service: str) -> None:
        self.api = api
        self.service = service
        self.proxies = [p for p in PROXY_PORTS if p.startswith(service)]

    def worker_settings(self, settings: Settings) -> Settings:
        """`settings` with the service reached through its proxies."""
        if self.service == "kafka":
            section: BaseModel = settings.kafka.model_copy(
                update={"bootstrap_servers": f"127.0.0.1:{PROXY_PORTS['kafka']}"}
            )
        else:
            section = settings.weaviate.model_copy(
                update={
                    "http_host": "127.0.0.1",
                    "http_port": PROXY_PORTS["weaviate_http"],
                    "grpc_host": "127.0.0.1",
                    "grpc_port": PROXY_PORTS["weaviate_grpc"],
                }
            )
        return settings.model_copy(update={self.service: section})

    def add(self, kind: str, attributes: dict[str, int], stream: str = "downstream") -> list[str]:
        """The toxic on each of the service's proxies; returns (proxy, toxic) names to remove."""
        return [
            f"{proxy}/{self.api.add_toxic(proxy, kind, attributes, stream=stream)}"
            for proxy in self.proxies
        ]

    def remove(self, toxics: list[str]) -> None:
        for item in toxics:
            proxy, toxic = item.split("/", 1)
            self.api.remove_toxic(proxy, toxic)


@pytest.fixture(scope="session")
def toxiproxy_server(
    service_settings: Settings, local_services: LocalServices
) -> Iterator[ToxiproxyApi]:
    """Toxiproxy with a proxy to Weaviate's HTTP and gRPC ports and one to a second Kafka
    listener that advertises the proxy (the broker restarts once to open it)."""
    kafka = local_services.kafka
    kafka.proxied = ProxiedListener(kafka.port + KAFKA_PROXIED_OFFSET, PROXY_PORTS["kafka"])
    kafka.proc.stop()
    kafka.start()
    server = LocalToxiproxy(service_settings)
    server.start()
    w = service_settings.weaviate
    upstreams = {
        "weaviate_http": f"{w.http_host}:{w.http_port}",
        "weaviate_grpc": f"{w.grpc_host}:{w.grpc_port}",
        "kafka": f"{kafka.host}:{kafka.proxied.port}",
    }
    for proxy, port in PROXY_PORTS.items():
        server.api.create_proxy(proxy, f"127.0.0.1:{port}", upstreams[proxy])
    try:
        yield server.api
    finally:
        server.stop()


def _proxied(api: ToxiproxyApi, service: str) -> Iterator[Proxied]:
    api.reset()
    try:
        yield Proxied(api, service)
    finally:
        api.reset()


@pytest.fixture
def proxied(toxiproxy_server: ToxiproxyApi) -> Iterator[Proxied]:
    """The workers reach Weaviate through Toxiproxy."""
    yield from _proxied(toxiproxy_server, "weaviate")


@pytest.fixture
def proxied_kafka(toxiproxy_server: ToxiproxyApi) -> Iterator[Proxied]:
    """The workers reach Kafka through Toxiproxy."""
    yield from _proxied(toxiproxy_server, "kafka")


def _cell(value: object) -> str:
    return "-" if value is None else str(value)


def table(results: list[CaseResult]) -> list[str]:
    """A row per kind of fault in each case; lost, duplicated and dead-lettered are the
    case's, whose one load every fault of it struck."""
    header = ("case", "fault", "injected at", "lost", "dup", "dlq", "no done", "to next batch")
    rows = []
    for r in results:
        kinds: dict[str, list[Fault]] = {}
        for f in r.faults:
            kinds.setdefault(f.fault, []).append(f)
        for name, faults in kinds.items() or [("none", [])]:
            recoveries = [
                f.recovery_to_batch_s for f in faults if f.recovery_to_batch_s is not None
            ]
            rows.append(
                (
                    f"{r.case} {'ok' if r.passed else 'FAIL'}",
                    name + (f" x{len(faults)}" if len(faults) > 1 else ""),
                    ", ".join(f"{f.at_s:.0f}s" for f in faults) or "-",
                    str(r.lost),
                    str(r.duplicated),
                    str(r.dead_lettered),
                    str(r.missing_embed_done) + (" STUCK" if r.stuck else ""),
                    f"max {max(recoveries):.1f}s" if recoveries else _cell(None),
                )
            )
    widths = [max(len(str(x)) for x in col) for col in zip(header, *rows, strict=True)]
    return [
        "  ".join(str(cell).ljust(width) for cell, width in zip(row, widths, strict=True))
        for row in (header, *rows)
    ]


def pytest_terminal_summary(terminalreporter: pytest.TerminalReporter) -> None:
    results = terminalreporter.config.stash.get(_RESULTS, [])
    if not results:
        return
    terminalreporter.section("fault-injection suite")
    for line in table(results):
        terminalreporter.write_line(line)
    RESULTS_FILE.parent.mkdir(parents=True, exist_ok=True)
    RESULTS_FILE.write_text(json.dumps([r.as_json() for r in results], indent=2) + "\n")
    terminalreporter.write_line(f"written to {RESULTS_FILE}")
