"""docker-compose.kafka.yml must run what the package's defaults expect."""

from __future__ import annotations

import yaml

from streamproc.localservices.kafka import split_host_port
from streamproc.settings import REPO_ROOT, Settings

COMPOSE = yaml.safe_load((REPO_ROOT / "docker-compose.kafka.yml").read_text())["services"]
DEFAULTS = Settings()


def _host_ports(service: str) -> set[int]:
    return {int(p.split(":")[-2]) for p in COMPOSE[service]["ports"]}


def test_kafka_matches_defaults() -> None:
    kafka = COMPOSE["kafka"]
    _, port = split_host_port(DEFAULTS.kafka.bootstrap_servers)
    assert port in _host_ports("kafka")
    assert kafka["image"].endswith(f":{DEFAULTS.local.kafka_version}")
    assert kafka["environment"]["KAFKA_ADVERTISED_LISTENERS"] == (
        f"PLAINTEXT://{DEFAULTS.kafka.bootstrap_servers}"
    )
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
    assert {"otel-collector", "tempo", "grafana"} <= set(COMPOSE)
    for service in ("otel-collector", "tempo", "grafana"):
        for volume in COMPOSE[service].get("volumes", []):
            assert (REPO_ROOT / volume.split(":")[0]).exists(), volume
