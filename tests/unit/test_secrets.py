"""Secret settings: masked everywhere, revealed only to a worker child's environment; the Kafka
connection options every client gets, and Faust's."""

from __future__ import annotations

import json
import ssl
from pathlib import Path

import pytest
from faust.types.auth import AuthProtocol, SASLMechanism
from typer.testing import CliRunner

from streamproc.cli import app
from streamproc.errors import ConfigurationError
from streamproc.kafka_io import client_options, faust_credentials
from streamproc.settings import CHILD_SETTINGS_ENV, Settings, child_env, load_settings
from tests.tls import CertificateAuthority

SASL = "sasl-pw-3f9a"
API_KEY = "weaviate-key-77c1"
KEY_PASSWORD = "key-pw-0d2e"
OTLP_HEADERS = "authorization=Bearer otlp-token-5a10"


def _secret_settings(**kafka: object) -> Settings:
    return Settings(
        kafka={
            "security_protocol": "SASL_SSL",
            "sasl_username": "alice",
            "sasl_password": SASL,
            "ssl_key_password": KEY_PASSWORD,
            **kafka,
        },
        weaviate={"api_key": API_KEY},
        telemetry={"otlp_headers": OTLP_HEADERS},
        worker={"group_instance_id": "parent"},
    )


def test_secrets_are_masked_in_every_rendering_of_the_settings() -> None:
    settings = _secret_settings()
    for text in (repr(settings), str(settings), settings.model_dump_json()):
        for secret in (SASL, API_KEY, KEY_PASSWORD, "otlp-token-5a10"):
            assert secret not in text


def test_a_child_gets_exactly_the_parents_settings_and_its_own_variables_win(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    parent = _secret_settings()
    env = child_env(parent)
    assert set(env) == {CHILD_SETTINGS_ENV}
    for name, value in env.items():
        monkeypatch.setenv(name, value)
    monkeypatch.setenv("STREAMPROC_WORKER__GROUP_INSTANCE_ID", "child-1")
    child = Settings()
    assert child.kafka.sasl_password is not None and child.weaviate.api_key is not None
    assert child.kafka.sasl_password.get_secret_value() == SASL
    assert child.weaviate.api_key.get_secret_value() == API_KEY
    assert child.telemetry.otlp_headers is not None
    assert child.telemetry.otlp_headers.get_secret_value() == OTLP_HEADERS
    assert child.worker.group_instance_id == "child-1"
    expected = json.loads(env[CHILD_SETTINGS_ENV])
    expected["worker"]["group_instance_id"] = "child-1"
    assert json.loads(child_env(child)[CHILD_SETTINGS_ENV]) == expected


def test_invalid_settings_name_the_field_but_never_a_value(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("STREAMPROC_WEAVIATE__API_KEY", API_KEY)
    monkeypatch.setenv("STREAMPROC_KAFKA__SASL_PASSWORD", SASL)
    monkeypatch.setenv("STREAMPROC_ACTIVE_MODEL", "no-such-model")
    with pytest.raises(ConfigurationError) as refused:
        load_settings()
    assert "no-such-model" in str(refused.value)
    assert API_KEY not in str(refused.value) and SASL not in str(refused.value)


def test_sasl_needs_a_username_and_a_password() -> None:
    with pytest.raises(ConfigurationError, match="STREAMPROC_KAFKA__SASL_PASSWORD"):
        load_settings(kafka={"security_protocol": "SASL_PLAINTEXT", "sasl_username": "alice"})


def test_help_and_a_refused_setting_print_no_secret(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("STREAMPROC_WEAVIATE__API_KEY", API_KEY)
    monkeypatch.setenv("STREAMPROC_KAFKA__SASL_PASSWORD", SASL)
    runner = CliRunner()
    for args in (["--help"], ["worker", "--help"], ["produce", "--help"]):
        result = runner.invoke(app, args)
        assert result.exit_code == 0
        assert API_KEY not in result.output and SASL not in result.output
    monkeypatch.setenv("STREAMPROC_KAFKA__SECURITY_PROTOCOL", "SASL_SSL")
    result = runner.invoke(app, ["verify"])
    assert result.exit_code == 1
    assert "STREAMPROC_KAFKA__SASL_USERNAME" in result.output
    assert API_KEY not in result.output and SASL not in result.output


def test_plaintext_clients_get_no_tls_and_no_sasl() -> None:
    options = client_options(Settings().kafka)
    assert options["security_protocol"] == "PLAINTEXT"
    assert "ssl_context" not in options and "sasl_plain_password" not in options
    assert faust_credentials(Settings().kafka) is None


def test_sasl_ssl_options_for_aiokafka_and_faust(tmp_path: Path) -> None:
    ca = CertificateAuthority.create(tmp_path, "unit-ca")
    kafka = _secret_settings(ssl_cafile=ca.cert, sasl_mechanism="SCRAM-SHA-256").kafka
    options = client_options(kafka)
    assert options["security_protocol"] == "SASL_SSL"
    assert options["sasl_mechanism"] == "SCRAM-SHA-256"
    assert (options["sasl_plain_username"], options["sasl_plain_password"]) == ("alice", SASL)
    context = options["ssl_context"]
    assert isinstance(context, ssl.SSLContext)
    assert context.check_hostname and context.verify_mode == ssl.CERT_REQUIRED
    assert any("unit-ca" in str(c.get("subject")) for c in context.get_ca_certs())

    credentials = faust_credentials(kafka)
    assert credentials is not None
    assert credentials.protocol == AuthProtocol.SASL_SSL
    assert credentials.mechanism == SASLMechanism.SCRAM_SHA_256  # type: ignore[attr-defined]
    assert SASL not in repr(credentials)

    unchecked = client_options(kafka.model_copy(update={"ssl_check_hostname": False}))
    assert not unchecked["ssl_context"].check_hostname


def test_tls_files_that_cannot_be_loaded_name_the_settings(tmp_path: Path) -> None:
    kafka = Settings(
        kafka={"security_protocol": "SSL", "ssl_cafile": tmp_path / "absent.pem"}
    ).kafka
    with pytest.raises(ConfigurationError, match="STREAMPROC_KAFKA__SSL_CAFILE"):
        client_options(kafka)


def test_otlp_headers_are_parsed_like_the_otel_variable_and_unset_leave_it_in_charge() -> None:
    # That the exporters send them is checked end to end in tests/integration/test_telemetry.py.
    from streamproc.telemetry import _otlp_headers

    assert _otlp_headers(_secret_settings().telemetry) == {
        "authorization": "Bearer otlp-token-5a10"
    }
    assert _otlp_headers(Settings().telemetry) is None
