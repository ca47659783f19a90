"""Kafka over SASL_SSL: a second local broker whose client listener speaks only SASL_SSL (SCRAM
users made with Kafka's own tool, a certificate made now), the whole pipeline through it, and a
wrong password and an untrusted CA each refused with an error that names the setting."""

from __future__ import annotations

import secrets
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from streamproc.localservices.kafka import LocalKafka, SecureListener
from streamproc.naming import chunk_key
from streamproc.settings import Settings
from tests.pipeline_support import (
    cli,
    embed_done_keys,
    event,
    exact,
    expected_chunks,
    free_ports,
    on_empty_data,
    produce_events,
    running_workers,
)
from tests.tls import CertificateAuthority

USER = "alice"
PASSWORD = f"pw-{secrets.token_hex(12)}"
# Checked against every log of the run (tests/conftest.py).
NEVER_LOGGED = (PASSWORD,)
TEXT = "# Secured\n\nThis document went through TLS and SCRAM.\n\n## More\n\n" + "Brokers. " * 80


def _with_kafka(settings: Settings, **kafka: Any) -> Settings:
    data = settings.model_dump()
    data["kafka"].update(kafka)
    return Settings(**data)


@pytest.fixture(scope="module")
def tls(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    folder = tmp_path_factory.mktemp("tls")
    ca = CertificateAuthority.create(folder, "streamproc-test-ca")
    chain, key = ca.issue(folder, "broker", ["127.0.0.1", "localhost"])
    keystore = folder / "broker-keystore.pem"
    keystore.write_text(key.read_text() + chain.read_text())
    other = CertificateAuthority.create(folder / "other", "someone-else-ca")
    return {"ca": ca.cert, "keystore": keystore, "other_ca": other.cert}


@pytest.fixture(scope="module")
def secure(
    service_settings: Settings, tls: dict[str, Path], tmp_path_factory: pytest.TempPathFactory
) -> Iterator[Settings]:
    """Isolated settings whose Kafka is the SASL_SSL broker (Weaviate: the tests' own)."""
    port, controller, internal = free_ports(3)
    base = service_settings.isolated(tmp_path_factory.mktemp("secure") / "worker")
    data = base.model_dump()
    data["local"].update(profile=f"test-sasl-{port}", kafka_controller_port=controller)
    settings = _with_kafka(
        Settings(**data),
        bootstrap_servers=f"127.0.0.1:{port}",
        security_protocol="SASL_SSL",
        sasl_mechanism="SCRAM-SHA-512",
        sasl_username=USER,
        sasl_password=PASSWORD,
        ssl_cafile=tls["ca"],
    )
    kafka = LocalKafka(settings, SecureListener(tls["keystore"], internal, {USER: PASSWORD}))
    with on_empty_data(kafka, settings):
        yield settings


def test_the_pipeline_runs_end_to_end_over_sasl_ssl(secure: Settings, tmp_path: Path) -> None:
    applied = cli(secure, "topology", "apply")
    assert applied.returncode == 0, applied.stderr
    collection = secure.collection_for(secure.model(secure.active_model))
    count = len(expected_chunks(secure, TEXT, "text/markdown"))
    keys = {chunk_key("acme", "secured", secure.chunking.policy_version, i) for i in range(count)}

    with running_workers(secure, tmp_path) as workers:
        produce_events(secure, [event("acme", "secured", TEXT)])
        assert embed_done_keys(secure, collection, keys) >= keys
        assert all(p.poll() is None for p in workers.procs.values()), "a worker died"
        logs = workers.log("chunker") + workers.log("embedder")

    assert exact(secure, collection) == {"missing": [], "stale": [], "extra": []}
    assert PASSWORD not in logs


@pytest.mark.parametrize(
    "command",
    [("topology", "apply"), ("produce", "{doc}"), ("worker", "--role", "chunker"), ("worker",)],
)
def test_a_wrong_password_is_refused_with_a_clear_error(
    secure: Settings, tmp_path: Path, command: tuple[str, ...]
) -> None:
    doc = tmp_path / "doc.md"
    doc.write_text(TEXT)
    wrong = f"not-{PASSWORD}"
    result = cli(_with_kafka(secure, sasl_password=wrong), *(a.format(doc=doc) for a in command))
    output = result.stdout + result.stderr
    assert result.returncode == 1, output
    assert f"refused the SASL credentials of user '{USER}' (SCRAM-SHA-512)" in result.stderr
    assert "STREAMPROC_KAFKA__SASL_PASSWORD" in result.stderr
    assert "Traceback" not in output
    assert wrong not in output and PASSWORD not in output


def test_an_untrusted_ca_is_refused_with_a_clear_error(
    secure: Settings, tls: dict[str, Path]
) -> None:
    result = cli(_with_kafka(secure, ssl_cafile=tls["other_ca"]), "topology", "apply")
    output = result.stdout + result.stderr
    assert result.returncode == 1, output
    assert "its TLS certificate is not trusted" in result.stderr
    assert "STREAMPROC_KAFKA__SSL_CAFILE" in result.stderr
    assert "Traceback" not in output
    assert PASSWORD not in output
