"""deploy/k8s must agree with topology/ and with the settings the workers read."""

from __future__ import annotations

import yaml

from streamproc.settings import REPO_ROOT, Settings
from streamproc.topology.model import load_topology, render_strimzi

K8S = REPO_ROOT / "deploy" / "k8s"


def test_topics_manifest_is_generated_from_topology() -> None:
    expected = render_strimzi(load_topology(Settings().topology_file))
    assert (K8S / "topics.yaml").read_text() == expected, (
        "deploy/k8s/topics.yaml is stale: run `streamproc topology render-k8s > deploy/k8s/topics.yaml`"
    )


def test_config_map_keys_are_real_settings() -> None:
    config = yaml.safe_load((K8S / "config.yaml").read_text())["data"]
    for key, value in config.items():
        if key.startswith("STREAMPROC_"):
            section, _, field = key.removeprefix("STREAMPROC_").lower().partition("__")
            model = getattr(Settings(), section)
            assert field in type(model).model_fields, key
            # The value must parse as that setting's type.
            type(model).model_validate({field: value})


def test_kustomization_lists_every_manifest() -> None:
    kustomization = yaml.safe_load((K8S / "kustomization.yaml").read_text())
    assert sorted(kustomization["resources"]) == sorted(
        p.name for p in K8S.glob("*.yaml") if p.name != "kustomization.yaml"
    )
