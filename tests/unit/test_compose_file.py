"""docker-compose.kafka.yml must run what the package's defaults expect, and its streamproc
containers only real commands with real settings that point at the services of the file."""

from __future__ import annotations

import copy
import json
from typing import Any
from urllib.parse import urlsplit

import jsonschema
import pytest
import yaml

from streamproc.localservices.kafka import split_host_port
from streamproc.settings import REPO_ROOT, Settings
from tests.deploy_support import cli_command, settings_from

FILE = yaml.safe_load((REPO_ROOT / "docker-compose.kafka.yml").read_text())
COMPOSE = FILE["services"]
# The Compose Specification's schema, vendored from the Go module
# github.com/compose-spec/compose-go/v2@v2.16.2 (schema/compose-spec.json): what
# `docker compose` itself validates a file against.
COMPOSE_SPEC = json.loads((REPO_ROOT / "tests/schemas/compose-spec.json").read_text())
DEFAULTS = Settings()
DASHBOARD = REPO_ROOT / "deploy/observability/dashboards/streamproc.json"


def _host_ports(service: str) -> set[int]:
    return {int(p.split(":")[-2]) for p in COMPOSE[service]["ports"]}


def test_the_file_follows_the_compose_specification() -> None:
    validator = jsonschema.Draft202012Validator(COMPOSE_SPEC)
    errors = [f"{list(e.path)}: {e.message}" for e in validator.iter_errors(FILE)]
    assert not errors, errors
    broken = copy.deepcopy(FILE)
    broken["services"]["chunker"]["restartt"] = "no"
    assert list(validator.iter_errors(broken))


def test_kafka_matches_defaults() -> None:
    kafka = COMPOSE["kafka"]
    _, port = split_host_port(DEFAULTS.kafka.bootstrap_servers)
    assert port in _host_ports("kafka")
    assert kafka["image"].endswith(f":{DEFAULTS.local.kafka_version}")
    advertised = kafka["environment"]["KAFKA_ADVERTISED_LISTENERS"].split(",")
    assert f"PLAINTEXT://{DEFAULTS.kafka.bootstrap_servers}" in advertised
    assert kafka["environment"]["KAFKA_PROCESS_ROLES"] == "broker,controller"


def test_weaviate_matches_defaults() -> None:
    weaviate = COMPOSE["weaviate"]
    assert {DEFAULTS.weaviate.http_port, DEFAULTS.weaviate.grpc_port} <= _host_ports("weaviate")
    assert weaviate["image"].endswith(":" + DEFAULTS.local.weaviate_version.lstrip("v"))
    env = weaviate["environment"]
    assert env["GRPC_PORT"] == str(DEFAULTS.weaviate.grpc_port)
    assert env["AUTHENTICATION_ANONYMOUS_ACCESS_ENABLED"] == "true"
    assert env["DEFAULT_VECTORIZER_MODULE"] == "none"


def test_observability_services_are_present() -> None:
    services = ("otel-collector", "tempo", "prometheus", "grafana")
    assert set(services) <= set(COMPOSE)
    for service in services:
        for volume in COMPOSE[service].get("volumes", []):
            assert (REPO_ROOT / volume.split(":")[0]).exists(), volume


def test_grafana_is_provisioned_with_the_dashboard_and_its_data_sources() -> None:
    mounts = {v.split(":")[0]: v.split(":")[1] for v in COMPOSE["grafana"]["volumes"]}
    provider = yaml.safe_load(
        (REPO_ROOT / "deploy/observability/grafana-dashboards.yaml").read_text()
    )
    assert (
        mounts["./deploy/observability/dashboards"] == provider["providers"][0]["options"]["path"]
    )
    sources = yaml.safe_load(
        (REPO_ROOT / "deploy/observability/grafana-datasources.yaml").read_text()
    )
    uids = {s["uid"]: s["type"] for s in sources["datasources"]}
    assert uids == {"tempo": "tempo", "prometheus": "prometheus"}
    dashboard = json.loads(DASHBOARD.read_text())
    for panel in dashboard["panels"]:
        assert uids[panel["datasource"]["uid"]] == panel["datasource"]["type"]
        assert all(t["expr"] for t in panel["targets"])


def test_the_collector_exports_traces_to_tempo_and_metrics_to_prometheus() -> None:
    collector = yaml.safe_load((REPO_ROOT / "deploy/observability/otel-collector.yaml").read_text())
    pipelines = collector["service"]["pipelines"]
    assert pipelines["traces"]["exporters"] == ["otlp/tempo"]
    assert pipelines["metrics"]["exporters"] == ["prometheus"]
    scrape = yaml.safe_load((REPO_ROOT / "deploy/observability/prometheus.yaml").read_text())
    targets = [
        t for job in scrape["scrape_configs"] for c in job["static_configs"] for t in c["targets"]
    ]
    assert "otel-collector:8889" in targets


STREAMPROC = {
    name: s for name, s in COMPOSE.items() if s.get("image", "").startswith("streamproc:")
}


def _settings(service: dict[str, Any]) -> Settings:
    env = service.get("environment", {})
    return settings_from({k: str(v) for k, v in env.items() if k.startswith("STREAMPROC_")})


def _port(url: str, default: int) -> int:
    return urlsplit(url).port or default


def test_the_whole_system_is_in_the_file() -> None:
    assert set(COMPOSE) == {
        "kafka",
        "weaviate",
        "topology",
        "chunker",
        "embedder",
        "inference",
        "otel-collector",
        "tempo",
        "prometheus",
        "grafana",
    }
    commands = {name: tuple(s["command"]) for name, s in STREAMPROC.items()}
    assert commands == {
        "topology": ("topology", "apply"),
        "chunker": ("worker", "--role", "chunker"),
        "embedder": ("worker", "--role", "embedder"),
        "inference": ("serve", "--model", DEFAULTS.active_model),
    }


@pytest.mark.parametrize("name", sorted(STREAMPROC))
def test_streamproc_services_run_real_commands_with_real_settings(name: str) -> None:
    service = STREAMPROC[name]
    cli_command(service["command"])
    settings = _settings(service)  # every STREAMPROC_* variable names a setting and parses
    kafka = COMPOSE["kafka"]["environment"]
    host, port = split_host_port(settings.kafka.bootstrap_servers)
    assert f"INTERNAL://{host}:{port}" in kafka["KAFKA_ADVERTISED_LISTENERS"].split(",")
    assert f"INTERNAL://:{port}" in kafka["KAFKA_LISTENERS"].split(",")
    assert host in COMPOSE
    weaviate = COMPOSE["weaviate"]
    assert settings.weaviate.http_host == settings.weaviate.grpc_host == "weaviate"
    assert (
        str(settings.weaviate.http_port)
        == weaviate["command"][weaviate["command"].index("--port") + 1]
    )
    assert str(settings.weaviate.grpc_port) == weaviate["environment"]["GRPC_PORT"]
    otlp = urlsplit(service["environment"]["OTEL_EXPORTER_OTLP_ENDPOINT"])
    assert otlp.hostname == "otel-collector" and otlp.port == 4318


def test_weaviate_embeds_queries_through_the_inference_service() -> None:
    inference = _settings(COMPOSE["inference"])
    assert inference.inference.host == "0.0.0.0"
    assert _host_ports("inference") == {DEFAULTS.inference.port}
    assert {p.split(":")[-1] for p in COMPOSE["inference"]["ports"]} == {
        str(inference.inference.port)
    }
    weaviate = COMPOSE["weaviate"]["environment"]
    assert "text2vec-transformers" in weaviate["ENABLE_MODULES"].split(",")
    for name in ("chunker", "embedder", "inference"):
        template = _settings(STREAMPROC[name]).inference.url_template
        url = template.format(model=DEFAULTS.active_model)
        assert urlsplit(url).hostname == "inference"
        assert _port(url, 80) == inference.inference.port
        assert urlsplit(url).path == f"/models/{DEFAULTS.active_model}"
        assert weaviate["TRANSFORMERS_INFERENCE_API"] == url


def test_prometheus_scrapes_the_workers_of_the_file() -> None:
    scrape = yaml.safe_load((REPO_ROOT / "deploy/observability/prometheus.yaml").read_text())
    targets = {
        t for job in scrape["scrape_configs"] for c in job["static_configs"] for t in c["targets"]
    }
    for name in ("chunker", "embedder"):
        assert f"{name}:{_settings(STREAMPROC[name]).telemetry.prometheus_port}" in targets
