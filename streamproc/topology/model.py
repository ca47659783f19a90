"""The topic topology as values, and the pure arithmetic of drift between desired and actual."""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

from streamproc.errors import ConfigurationError


@dataclass(frozen=True)
class TopicSpec:
    name: str
    partitions: int
    replication_factor: int
    config: dict[str, str] = field(default_factory=dict)
    doc: str = ""


@dataclass(frozen=True)
class TopicState:
    """What the cluster has for one topic: partitions, replication and per-topic overrides."""

    name: str
    partitions: int
    replication_factor: int
    config: dict[str, str]


@dataclass(frozen=True)
class Change:
    topic: str
    kind: str  # create | add_partitions | set_config | remove_config | replication | partitions
    detail: str
    fixable: bool = True

    def __str__(self) -> str:
        mark = "" if self.fixable else " (cannot be fixed by apply)"
        return f"{self.topic}: {self.kind} {self.detail}{mark}"


def load_topology(path: Path, *, prefix: str = "") -> list[TopicSpec]:
    try:
        raw = yaml.safe_load(path.read_text())
    except (OSError, yaml.YAMLError) as exc:
        raise ConfigurationError(f"cannot read topology {path}: {exc}") from exc
    defaults: dict[str, Any] = raw.get("defaults", {})
    specs = []
    for name, body in (raw.get("topics") or {}).items():
        body = body or {}
        config = {**defaults.get("config", {}), **body.get("config", {})}
        specs.append(
            TopicSpec(
                name=f"{prefix}{name}",
                partitions=int(body.get("partitions", defaults.get("partitions", 1))),
                replication_factor=int(
                    body.get("replication_factor", defaults.get("replication_factor", 1))
                ),
                config={k: str(v) for k, v in config.items()},
                doc=body.get("doc", ""),
            )
        )
    return specs


def fit_to_cluster(spec: TopicSpec, brokers: int) -> TopicSpec:
    """Cap replication (and min ISR with it) to the brokers there are."""
    if spec.replication_factor <= brokers:
        return spec
    config = dict(spec.config)
    if "min.insync.replicas" in config:
        config["min.insync.replicas"] = str(min(int(config["min.insync.replicas"]), brokers))
    return TopicSpec(spec.name, spec.partitions, brokers, config, spec.doc)


def plan(desired: list[TopicSpec], actual: dict[str, TopicState]) -> list[Change]:
    """Changes that bring `actual` to `desired`. Empty means no drift."""
    changes: list[Change] = []
    for spec in desired:
        state = actual.get(spec.name)
        if state is None:
            changes.append(
                Change(
                    spec.name,
                    "create",
                    f"partitions={spec.partitions} rf={spec.replication_factor}",
                )
            )
            continue
        if state.partitions < spec.partitions:
            changes.append(
                Change(spec.name, "add_partitions", f"{state.partitions} -> {spec.partitions}")
            )
        elif state.partitions > spec.partitions:
            changes.append(
                Change(
                    spec.name,
                    "partitions",
                    f"has {state.partitions}, topology says {spec.partitions}; "
                    "Kafka cannot remove partitions",
                    fixable=False,
                )
            )
        if state.replication_factor != spec.replication_factor:
            changes.append(
                Change(
                    spec.name,
                    "replication",
                    f"has {state.replication_factor}, topology says {spec.replication_factor}; "
                    "reassign partitions to change it",
                    fixable=False,
                )
            )
        for key, value in sorted(spec.config.items()):
            if state.config.get(key) != value:
                changes.append(
                    Change(
                        spec.name, "set_config", f"{key}: {state.config.get(key)!r} -> {value!r}"
                    )
                )
        for key in sorted(set(state.config) - set(spec.config)):
            changes.append(
                Change(
                    spec.name, "remove_config", f"{key}={state.config[key]!r} is not in topology"
                )
            )
    return changes


def render_strimzi(specs: list[TopicSpec], cluster: str = "streamproc") -> str:
    """Strimzi `KafkaTopic` manifests for deploy/k8s, generated so they never drift by hand."""
    docs = []
    for spec in specs:
        docs.append(
            {
                "apiVersion": "kafka.strimzi.io/v1beta2",
                "kind": "KafkaTopic",
                "metadata": {
                    # Kubernetes names allow no dots or underscores; the topic name keeps them.
                    "name": spec.name.replace(".", "-").replace("_", "-"),
                    "labels": {"strimzi.io/cluster": cluster},
                    "annotations": {"streamproc.io/doc": spec.doc},
                },
                "spec": {
                    "topicName": spec.name,
                    "partitions": spec.partitions,
                    "replicas": spec.replication_factor,
                    "config": dict(sorted(spec.config.items())),
                },
            }
        )
    header = "# Generated by `streamproc topology render-k8s` from streamproc/topology/topics.yaml; do not edit.\n"
    return header + yaml.safe_dump_all(docs, sort_keys=False)
