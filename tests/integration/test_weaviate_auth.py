"""Weaviate with API-key authentication on (a second local server, anonymous access off): the
right key runs the pipeline; a wrong or missing key is refused at start-up, naming the setting."""

from __future__ import annotations

import secrets
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest

from streamproc.naming import chunk_key
from streamproc.otlp_receiver import OtlpReceiver
from streamproc.settings import Settings
from tests.conftest import with_topics
from tests.pipeline_support import (
    cli,
    embed_done_keys,
    event,
    exact,
    expected_chunks,
    private_weaviate,
    produce_events,
    running_workers,
)

KEY = f"wk-{secrets.token_hex(12)}"
# Checked against every log of the run (tests/conftest.py).
NEVER_LOGGED = (KEY,)
TEXT = "# Keyed\n\nWritten with an API key.\n\n## More\n\n" + "Vectors. " * 60


def _with_key(settings: Settings, key: str | None) -> Settings:
    data = settings.model_dump()
    data["weaviate"]["api_key"] = key
    return Settings(**data)


@pytest.fixture(scope="module")
def keyed(
    service_settings: Settings,
    tmp_path_factory: pytest.TempPathFactory,
    inference_endpoint: Settings,
) -> Iterator[Settings]:
    """Isolated settings whose Weaviate takes only `KEY` (Kafka: the tests' own)."""
    isolated = service_settings.isolated(tmp_path_factory.mktemp("keyed") / "worker")
    with private_weaviate(isolated, "auth", api_key=KEY) as settings:
        yield with_topics(settings)


def test_the_right_key_runs_the_pipeline(keyed: Settings, tmp_path: Path) -> None:
    # Authentication is really on: no key, no schema.
    anonymous = httpx.get(f"{keyed.weaviate.http_url}/v1/schema", timeout=10)
    assert anonymous.status_code == 401, anonymous.text
    collection = keyed.collection_for(keyed.model(keyed.active_model))
    count = len(expected_chunks(keyed, TEXT, "text/markdown"))
    keys = {chunk_key("acme", "keyed", keyed.chunking.policy_version, i) for i in range(count)}

    # Traced too: the key must reach no span either.
    traced = keyed.model_copy(
        update={"telemetry": keyed.telemetry.model_copy(update={"enabled": True})}
    )
    with OtlpReceiver() as receiver, running_workers(traced, tmp_path, roles=()) as workers:
        for role in ("chunker", "embedder"):
            workers.start(
                role,
                {
                    "OTEL_EXPORTER_OTLP_ENDPOINT": receiver.endpoint,
                    "OTEL_BSP_SCHEDULE_DELAY": "200",
                },
            )
        produce_events(keyed, [event("acme", "keyed", TEXT)])
        assert embed_done_keys(keyed, collection, keys) >= keys
        assert all(p.poll() is None for p in workers.procs.values()), "a worker died"
        logs = workers.log("chunker") + workers.log("embedder")
    spans = receiver.spans()
    assert any(s.name.endswith("embed-done") for s in spans)
    assert KEY not in repr([(s.name, s.attributes, s.events) for s in spans])

    assert exact(keyed, collection) == {"missing": [], "stale": [], "extra": []}
    searched = cli(keyed, "search", "vectors written with a key", "--tenant", "acme")
    assert searched.returncode == 0, searched.stderr
    assert "keyed#0" in searched.stdout
    assert KEY not in logs + searched.stdout + searched.stderr


def test_a_wrong_key_stops_the_worker_at_start_up_naming_the_setting(keyed: Settings) -> None:
    wrong = f"not-{KEY}"
    result = cli(_with_key(keyed, wrong), "worker", "--role", "embedder")
    output = result.stdout + result.stderr
    assert result.returncode == 1, output[-3000:]
    assert "refused the API key in STREAMPROC_WEAVIATE__API_KEY (HTTP 401)" in result.stderr
    assert "Traceback" not in output
    assert wrong not in output and KEY not in output


def test_a_missing_key_is_refused_naming_the_setting(keyed: Settings) -> None:
    result = cli(_with_key(keyed, None), "search", "anything", "--tenant", "acme")
    output = result.stdout + result.stderr
    assert result.returncode == 1, output[-3000:]
    assert "needs an API key: set STREAMPROC_WEAVIATE__API_KEY (HTTP 401)" in result.stderr
    assert "Traceback" not in output
