from __future__ import annotations

import asyncio
from collections.abc import Iterator
from pathlib import Path

import pytest

from streamproc.logs import silence_dependency_warnings
from streamproc.settings import Settings
from streamproc.topology import load_topology
from streamproc.topology.kafka_admin import reconcile
from tests import services

silence_dependency_warnings()

INTEGRATION = Path(__file__).parent / "integration"


def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    """Every test under tests/integration needs the real services: `-m "not integration"`
    runs the rest without them."""
    for item in items:
        if item.path.is_relative_to(INTEGRATION):
            item.add_marker(pytest.mark.integration)


@pytest.fixture(scope="session", autouse=True)
def no_secret_or_document_text_in_any_log(
    request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[None]:
    """After the whole run: no log the run wrote (every worker's, and the local Kafka's and
    Weaviate's) holds a string a test module lists in `NEVER_LOGGED`: its secrets and the
    marker text of its documents."""
    yield
    needles = {
        needle
        for item in request.session.items
        for needle in getattr(item.module, "NEVER_LOGGED", ())
    }
    if not needles:
        return
    roots = [tmp_path_factory.getbasetemp(), services.local_settings().local.state_dir]
    found = sorted(
        f"{path}: {needle!r}"
        for root in roots
        for path in root.rglob("*.log")
        # Kafka's segment files are named *.log too: the documents belong there.
        if "data" not in path.relative_to(root).parts
        for needle in needles
        if needle in path.read_text(errors="replace")
    )
    assert not found, "secrets or document text in logs:\n" + "\n".join(found)


@pytest.fixture(scope="session")
def service_settings() -> Iterator[Settings]:
    """Kafka and Weaviate for the whole session; fails (never skips) when none can be had."""
    mode, factory = services.choose()
    try:
        manager = factory()
        settings = manager.__enter__()
    except Exception as exc:
        pytest.fail(
            f"no Kafka/Weaviate for the tests (mode {mode}): {type(exc).__name__}: {exc}\n"
            "Run ./scripts/test, or set STREAMPROC_TEST_SERVICES=external with "
            "STREAMPROC_KAFKA__BOOTSTRAP_SERVERS and STREAMPROC_WEAVIATE__* pointing at a cluster.",
            pytrace=False,
        )
    try:
        yield settings
    finally:
        manager.__exit__(None, None, None)


@pytest.fixture(scope="session")
def inference_endpoint(
    service_settings: Settings, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[Settings]:
    """`streamproc serve` for the default model and the derived 128-d one, at the test
    settings' `inference.url_template`: what the test Weaviate embeds nearText and hybrid
    queries with. Yields settings that register both models."""
    from streamproc.derive import projected_model
    from streamproc.inference.process import serving

    second = projected_model(service_settings.local.cache_dir)
    settings = service_settings.model_copy(update={"models": [*service_settings.models, second]})
    log = tmp_path_factory.mktemp("inference") / "serve.log"
    with serving(settings, [m.name for m in settings.models], log):
        yield settings


def with_topics(settings: Settings) -> Settings:
    specs = load_topology(settings.topology_file, prefix=settings.kafka.topic_prefix)
    asyncio.run(reconcile(settings, specs, apply=True))
    return settings


@pytest.fixture
def settings(service_settings: Settings, tmp_path: Path) -> Settings:
    return service_settings.isolated(tmp_path / "worker")


@pytest.fixture
def topics(settings: Settings) -> Settings:
    """`settings` with every topology topic created under its prefix."""
    return with_topics(settings)
