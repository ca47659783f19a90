"""docker-compose.kafka.yml must run what the package's defaults expect."""

from __future__ import annotations

import json

import yaml

from streamproc.localservices.kafka import split_host_port
from streamproc.settings import REPO_ROOT, Settings

COMPOSE = yaml.safe_load((REPO_ROOT / "docker-compose.kafka.yml").read_text())["services"]
DEFAULTS = Settings()
DASHBOARD = REPO_ROOT / "deploy/observability/dashboards/streamproc.json"


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
