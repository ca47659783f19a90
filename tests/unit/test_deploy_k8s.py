"""deploy/k8s: every overlay renders (kustomize), every resource is what a cluster would accept
(the Kubernetes OpenAPI schemas of `kubernetes-validate`, the vendored KEDA CRDs), and the
manifests agree with the topology, the settings and the CLI."""

from __future__ import annotations

import copy
import functools
from typing import Any
from urllib.parse import urlsplit

import jsonschema
import kubernetes_validate
import pytest
import yaml

from streamproc.settings import REPO_ROOT, Settings
from streamproc.topics import topic_name
from streamproc.topology.model import load_topology, render_strimzi
from streamproc.worker.app import ROLES
from tests.deploy_support import cli_command, render, setting_path, settings_from

K8S = REPO_ROOT / "deploy" / "k8s"
BASE = K8S / "base"
OVERLAYS = {"gpu": K8S / "overlays" / "gpu", "cpu": K8S / "overlays" / "cpu"}
# The oldest Kubernetes minor we support and the newest the package knows.
K8S_VERSIONS = ("1.32.0", kubernetes_validate.utils.latest_version())
# Kinds whose schema comes from a CRD: KEDA's are vendored in deploy/k8s/crds. Strimzi's
# KafkaTopic CRD is not published in a package registry, so it is checked only against the
# topology (test_topics_manifest_is_generated_from_topology).
CRD_FILES = {
    ("keda.sh", "ScaledObject"): K8S / "crds" / "keda.sh_scaledobjects.yaml",
    ("keda.sh", "TriggerAuthentication"): K8S / "crds" / "keda.sh_triggerauthentications.yaml",
}
UNCHECKED_KINDS = {("kafka.strimzi.io", "KafkaTopic")}
# How long one embedder batch may take to encode and write before a stop (a CPU node with
# max_events=256 chunks, ~30 chunks/s, measured in the README's benchmark, rounded up).
BATCH_ALLOWANCE_S = 30
TOPICS = {t.name: t for t in load_topology(Settings().topology_file)}


@functools.cache
def rendered(name: str) -> tuple[dict[str, Any], ...]:
    return tuple(render(BASE if name == "base" else OVERLAYS[name]))


def _find(resources: tuple[dict[str, Any], ...], kind: str, name: str) -> dict[str, Any]:
    found = [r for r in resources if r["kind"] == kind and r["metadata"]["name"] == name]
    assert len(found) == 1, f"{kind}/{name}: {len(found)} found"
    return found[0]


def _strict(schema: Any) -> Any:
    """The schema with unknown fields refused where the API server refuses them (kubectl's
    default field validation is Strict): objects with properties and no open extension."""
    if isinstance(schema, dict):
        out = {k: _strict(v) for k, v in schema.items()}
        if (
            "properties" in schema
            and "additionalProperties" not in schema
            and not schema.get("x-kubernetes-preserve-unknown-fields")
        ):
            out["additionalProperties"] = False
        return out
    if isinstance(schema, list):
        return [_strict(v) for v in schema]
    return schema


@functools.cache
def _crd_schema(group: str, kind: str, version: str) -> dict[str, Any]:
    crd = next(d for d in yaml.safe_load_all(CRD_FILES[group, kind].read_text()) if d)
    assert crd["spec"]["group"] == group and crd["spec"]["names"]["kind"] == kind
    (served,) = [v for v in crd["spec"]["versions"] if v["name"] == version and v["served"]]
    schema = _strict(served["schema"]["openAPIV3Schema"])
    # metadata is the API server's ObjectMeta, not described by the CRD.
    schema["properties"]["metadata"] = {"type": "object"}
    return schema


def _env(container: dict[str, Any], config: dict[str, str]) -> dict[str, str]:
    """The container's STREAMPROC_* variables: its ConfigMap's, then its own (a Secret's value
    stands in as a placeholder)."""
    env = {k: v for k, v in config.items() if k.startswith("STREAMPROC_")}
    for var in container.get("env", []):
        env[var["name"]] = var.get("value", "from-a-secret")
    return env


def _config(resources: tuple[dict[str, Any], ...]) -> dict[str, str]:
    return dict(_find(resources, "ConfigMap", "streamproc")["data"])


def _pods(resources: tuple[dict[str, Any], ...]) -> list[tuple[dict[str, Any], dict[str, Any]]]:
    """(workload, pod spec) of every Deployment and Job."""
    return [
        (r, r["spec"]["template"]["spec"]) for r in resources if r["kind"] in {"Deployment", "Job"}
    ]


def test_topics_manifest_is_generated_from_topology() -> None:
    expected = render_strimzi(load_topology(Settings().topology_file))
    assert (BASE / "topics.yaml").read_text() == expected, (
        "deploy/k8s/base/topics.yaml is stale: run "
        "`streamproc topology render-k8s > deploy/k8s/base/topics.yaml`"
    )


def test_kustomization_lists_every_manifest() -> None:
    kustomization = yaml.safe_load((BASE / "kustomization.yaml").read_text())
    assert sorted(kustomization["resources"]) == sorted(
        p.name for p in BASE.glob("*.yaml") if p.name != "kustomization.yaml"
    )


@pytest.mark.parametrize("name", ["base", *OVERLAYS])
def test_every_resource_validates_against_its_schema(name: str) -> None:
    for resource in rendered(name):
        group, _, version = resource["apiVersion"].rpartition("/")
        where = f"{name}: {resource['kind']}/{resource['metadata']['name']}"
        if (group, resource["kind"]) in UNCHECKED_KINDS:
            continue
        if (group, resource["kind"]) in CRD_FILES:
            schema = _crd_schema(group, resource["kind"], version)
            errors = [e.message for e in jsonschema.Draft7Validator(schema).iter_errors(resource)]
            assert not errors, f"{where}: {errors}"
            continue
        for k8s in K8S_VERSIONS:
            try:
                kubernetes_validate.validate(resource, k8s, strict=True)
            except kubernetes_validate.ValidationError as exc:
                raise AssertionError(f"{where} (Kubernetes {k8s}): {exc.message}") from None


def test_the_schema_check_refuses_a_wrong_field() -> None:
    scaled = _find(rendered("base"), "ScaledObject", "streamproc-embedder")
    broken = copy.deepcopy(scaled)
    broken["spec"]["maxReplicas"] = 6  # KEDA spells it maxReplicaCount
    assert list(
        jsonschema.Draft7Validator(_crd_schema("keda.sh", "ScaledObject", "v1alpha1")).iter_errors(
            broken
        )
    )
    deployment = copy.deepcopy(_find(rendered("base"), "Deployment", "streamproc-chunker"))
    deployment["spec"]["template"]["spec"]["containers"][0]["livenesProbe"] = {}
    with pytest.raises(kubernetes_validate.ValidationError):
        kubernetes_validate.validate(deployment, K8S_VERSIONS[0], strict=True)


@pytest.mark.parametrize("name", ["base", *OVERLAYS])
def test_containers_run_real_commands_with_real_settings(name: str) -> None:
    resources = rendered(name)
    config = _config(resources)
    secrets = {
        r["metadata"]["name"]: set(r.get("stringData", {})) | set(r.get("data", {}))
        for r in resources
        if r["kind"] == "Secret"
    }
    for key in config:
        if key.startswith("STREAMPROC_"):
            setting_path(key)
    for workload, pod in _pods(resources):
        for container in pod["containers"]:
            where = f"{name}: {workload['metadata']['name']}/{container['name']}"
            assert container.get("command") is None, f"{where}: the image's entrypoint runs"
            cli_command(container["args"])
            for var in container.get("env", []):
                if var["name"].startswith("STREAMPROC_"):
                    setting_path(var["name"])
                ref = var.get("valueFrom", {}).get("secretKeyRef")
                # An optional key (the OTLP token) may be absent; a required one must be there.
                if ref and not ref.get("optional"):
                    assert ref["key"] in secrets.get(ref["name"], set()), f"{where}: {ref}"
            settings_from(_env(container, config))


@pytest.mark.parametrize("name", ["base", *OVERLAYS])
def test_workers_are_probed_sized_protected_and_given_time_to_finish(name: str) -> None:
    resources = rendered(name)
    for role in ROLES:
        deployment = _find(resources, "Deployment", f"streamproc-{role}")
        pod = deployment["spec"]["template"]["spec"]
        (container,) = pod["containers"]
        assert container["args"] == ["worker", "--role", role]
        settings = settings_from(_env(container, _config(resources)))
        ports = {p["name"]: p["containerPort"] for p in container["ports"]}
        assert ports["health"] == settings.worker.health_port
        assert ports["metrics"] == settings.telemetry.prometheus_port
        assert container["livenessProbe"]["httpGet"] == {"path": "/healthz", "port": "health"}
        assert container["readinessProbe"]["httpGet"] == {"path": "/readyz", "port": "health"}
        assert {"cpu", "memory"} <= set(container["resources"]["requests"])
        assert "memory" in container["resources"]["limits"]
        assert pod["terminationGracePeriodSeconds"] > (
            settings.worker.rebalance_grace_s + BATCH_ALLOWANCE_S
        )
        assert pod["securityContext"]["runAsNonRoot"] is True
        assert container["securityContext"]["readOnlyRootFilesystem"] is True
        mounts = {m["mountPath"] for m in container["volumeMounts"]}
        assert str(settings.worker.data_dir) in mounts and "/tmp" in mounts
        (budget,) = [
            r
            for r in resources
            if r["kind"] == "PodDisruptionBudget"
            and r["spec"]["selector"]["matchLabels"]
            == deployment["spec"]["selector"]["matchLabels"]
        ]
        assert budget["spec"]["maxUnavailable"] == 1


def _gpu_parts(resources: tuple[dict[str, Any], ...]) -> dict[str, Any]:
    pod = _find(resources, "Deployment", "streamproc-embedder")["spec"]["template"]["spec"]
    (container,) = pod["containers"]
    return {
        "limit": container["resources"]["limits"].get("nvidia.com/gpu"),
        "node_selector": pod.get("nodeSelector"),
        "tolerations": pod.get("tolerations"),
        "image": container["image"],
        "device": {v["name"]: v.get("value") for v in container["env"]}.get(
            "STREAMPROC_EMBEDDER__DEVICE"
        ),
    }


def test_the_gpu_overlay_puts_the_embedder_on_the_gpu_pool_and_the_cpu_overlay_does_not() -> None:
    gpu = _gpu_parts(rendered("gpu"))
    assert gpu["limit"] == "1" and gpu["device"] == "cuda"
    assert gpu["node_selector"] == {"nvidia.com/gpu.present": "true"}
    assert {"key": "nvidia.com/gpu", "operator": "Exists", "effect": "NoSchedule"} in gpu[
        "tolerations"
    ]
    assert gpu["image"].startswith("streamproc-cuda:")
    cpu = _gpu_parts(rendered("cpu"))
    assert cpu == {**cpu, "limit": None, "node_selector": None, "tolerations": None}
    assert cpu["device"] == "cpu" and cpu["image"].startswith("streamproc:")
    # The chunker never needs a GPU.
    chunker = _find(rendered("gpu"), "Deployment", "streamproc-chunker")
    assert "nvidia.com/gpu" not in str(chunker)


@pytest.mark.parametrize("name", ["base", *OVERLAYS])
def test_autoscaling_follows_each_roles_lag_up_to_its_partitions(name: str) -> None:
    resources = rendered(name)
    chunker = _find(resources, "Deployment", "streamproc-chunker")["spec"]["template"]["spec"]
    settings = settings_from(_env(chunker["containers"][0], _config(resources)))
    host, _, port = settings.kafka.bootstrap_servers.partition(":")
    consumed = {"chunker": "chunk-requested", "embedder": "embed-requested"}
    for role in ROLES:
        scaled = _find(resources, "ScaledObject", f"streamproc-{role}")["spec"]
        target = _find(resources, "Deployment", scaled["scaleTargetRef"]["name"])
        assert "replicas" not in target["spec"], "an apply would reset what KEDA scaled"
        (trigger,) = scaled["triggers"]
        assert trigger["type"] == "kafka"
        meta = trigger["metadata"]
        assert meta["consumerGroup"] == f"{settings.worker.app_id}-{role}"
        assert meta["topic"] == topic_name(settings, consumed[role])
        assert meta["bootstrapServers"].startswith(f"{host}.") and meta[
            "bootstrapServers"
        ].endswith(f":{port}")
        assert 1 <= scaled["minReplicaCount"] <= scaled["maxReplicaCount"]
        assert scaled["maxReplicaCount"] <= TOPICS[consumed[role]].partitions
        auth = _find(resources, "TriggerAuthentication", trigger["authenticationRef"]["name"])
        parameters = {ref["parameter"] for ref in auth["spec"]["secretTargetRef"]}
        assert {"sasl", "username", "password", "tls"} <= parameters


def test_every_registered_model_has_an_inference_endpoint_weaviate_can_reach() -> None:
    resources = rendered("base")
    config = _config(resources)
    embedder = _find(resources, "Deployment", "streamproc-embedder")["spec"]["template"]["spec"]
    for spec in settings_from(_env(embedder["containers"][0], config)).models:
        deployment = _find(resources, "Deployment", f"inference-{spec.name}")
        (container,) = deployment["spec"]["template"]["spec"]["containers"]
        assert container["args"] == ["serve", "--model", spec.name]
        settings = settings_from(_env(container, config))
        assert settings.inference.host == "0.0.0.0"
        http = next(p for p in container["ports"] if p["name"] == "http")
        assert http["containerPort"] == settings.inference.port
        assert container["readinessProbe"]["httpGet"]["path"] == "/.well-known/ready"
        assert container["livenessProbe"]["httpGet"]["path"] == "/.well-known/live"
        url = urlsplit(settings.inference.url_template.format(model=spec.name))
        assert url.path == f"/models/{spec.name}"
        service = _find(resources, "Service", url.hostname.split(".")[0])
        assert (
            url.hostname == f"{service['metadata']['name']}.{service['metadata']['namespace']}.svc"
        )
        assert (
            service["spec"]["selector"].items()
            <= deployment["spec"]["template"]["metadata"]["labels"].items()
        )
        assert [p["port"] for p in service["spec"]["ports"]] == [url.port]


def test_the_topology_job_applies_the_packaged_topology() -> None:
    job = _find(rendered("base"), "Job", "streamproc-topology-apply")
    (container,) = job["spec"]["template"]["spec"]["containers"]
    assert container["args"] == ["topology", "apply"]
    assert job["spec"]["template"]["spec"]["restartPolicy"] == "OnFailure"


def test_secrets_feed_the_kafka_weaviate_and_otlp_credentials() -> None:
    resources = rendered("base")
    pod = _find(resources, "Deployment", "streamproc-embedder")["spec"]["template"]["spec"]
    from_secrets = {
        v["name"]: v["valueFrom"]["secretKeyRef"]["name"]
        for v in pod["containers"][0]["env"]
        if "valueFrom" in v
    }
    assert from_secrets == {
        "STREAMPROC_KAFKA__SASL_USERNAME": "streamproc-kafka",
        "STREAMPROC_KAFKA__SASL_PASSWORD": "streamproc-kafka",
        "STREAMPROC_WEAVIATE__API_KEY": "streamproc-weaviate",
        "STREAMPROC_TELEMETRY__OTLP_HEADERS": "streamproc-otlp",
    }
    assert not any("PASSWORD" in k or "API_KEY" in k or "HEADERS" in k for k in _config(resources))
