"""Kafka edge of the topology: read what the cluster has, apply a plan."""

from __future__ import annotations

from dataclasses import dataclass

from aiokafka.admin import AIOKafkaAdminClient, NewPartitions, NewTopic
from aiokafka.admin.config_resource import ConfigResource, ConfigResourceType
from tenacity import AsyncRetrying, RetryError, stop_after_delay, wait_exponential

from streamproc.errors import ConfigurationError
from streamproc.kafka_io import admin_client
from streamproc.settings import Settings
from streamproc.topology.model import Change, TopicSpec, TopicState, fit_to_cluster, plan

# DescribeConfigs config_source 1 = DYNAMIC_TOPIC_CONFIG: overrides set on the topic itself.
_TOPIC_OVERRIDE = 1


@dataclass(frozen=True)
class Report:
    changes: list[Change]
    notes: list[str]
    applied: bool

    @property
    def drift(self) -> bool:
        return bool(self.changes)


async def describe(admin: AIOKafkaAdminClient, names: list[str]) -> dict[str, TopicState]:
    existing = set(await admin.list_topics())
    wanted = [n for n in names if n in existing]
    if not wanted:
        return {}
    metadata = await admin.describe_topics(wanted)
    responses = await admin.describe_configs(
        [ConfigResource(ConfigResourceType.TOPIC, name) for name in wanted]
    )
    overrides: dict[str, dict[str, str]] = {}
    for response in responses:
        for resource in response.to_object()["resources"]:
            entries = resource["config_entries"]
            overrides[resource["resource_name"]] = {
                e["config_names"]: e["config_value"]
                for e in entries
                if e.get("config_source", _TOPIC_OVERRIDE) == _TOPIC_OVERRIDE
                and not e.get("is_default", False)
            }
    states = {}
    for topic in metadata:
        partitions = topic["partitions"]
        states[topic["topic"]] = TopicState(
            name=topic["topic"],
            partitions=len(partitions),
            replication_factor=len(partitions[0]["replicas"]) if partitions else 0,
            config=overrides.get(topic["topic"], {}),
        )
    return states


async def reconcile(settings: Settings, specs: list[TopicSpec], *, apply: bool) -> Report:
    """Compare the cluster with `specs`; with `apply`, fix what can be fixed."""
    admin = admin_client(settings)
    await admin.start()
    try:
        brokers = len((await admin.describe_cluster())["brokers"])
        fitted, capped = [], []
        for spec in specs:
            fit = fit_to_cluster(spec, brokers)
            fitted.append(fit)
            if fit.replication_factor != spec.replication_factor:
                capped.append(spec.name)
        notes = (
            [f"replication capped to {brokers} (brokers in the cluster) for: {', '.join(capped)}"]
            if capped
            else []
        )
        changes = plan(fitted, await describe(admin, [s.name for s in fitted]))
        if apply and changes:
            await _apply(admin, fitted, changes)
            await _converged(admin, fitted)
        return Report(changes, notes, applied=apply and bool(changes))
    finally:
        await admin.close()


async def _apply(admin: AIOKafkaAdminClient, specs: list[TopicSpec], changes: list[Change]) -> None:
    by_name = {s.name: s for s in specs}
    kinds: dict[str, set[str]] = {}
    for change in changes:
        kinds.setdefault(change.topic, set()).add(change.kind)
    create = [by_name[t] for t, k in kinds.items() if "create" in k]
    if create:
        response = await admin.create_topics(
            [
                NewTopic(s.name, s.partitions, s.replication_factor, topic_configs=s.config)
                for s in create
            ]
        )
        _raise_on_errors("create topics", response.to_object().get("topic_errors", []))
    grow = {
        t: NewPartitions(by_name[t].partitions) for t, k in kinds.items() if "add_partitions" in k
    }
    if grow:
        await admin.create_partitions(grow)
    # AlterConfigs replaces a topic's whole override set: the topology is the full truth.
    reconfigure = [t for t, k in kinds.items() if k & {"set_config", "remove_config"}]
    if reconfigure:
        responses = await admin.alter_configs(
            [
                ConfigResource(ConfigResourceType.TOPIC, t, configs=by_name[t].config)
                for t in reconfigure
            ]
        )
        for response in responses:
            _raise_on_errors("alter configs", response.to_object().get("resources", []))


async def _converged(admin: AIOKafkaAdminClient, specs: list[TopicSpec]) -> None:
    """Wait until the cluster's metadata shows the applied changes (it propagates async)."""
    remaining: list[Change] = []
    try:
        async for attempt in AsyncRetrying(
            stop=stop_after_delay(30), wait=wait_exponential(multiplier=0.05, max=1.0)
        ):
            with attempt:
                remaining = [
                    c
                    for c in plan(specs, await describe(admin, [s.name for s in specs]))
                    if c.fixable
                ]
                if remaining:
                    raise _NotYet
    except RetryError:
        raise ConfigurationError(
            "topology apply left drift after 30 s: " + "; ".join(str(c) for c in remaining)
        ) from None


class _NotYet(Exception):
    pass


def _raise_on_errors(what: str, results: list[dict[str, object]]) -> None:
    errors = [r for r in results if r.get("error_code")]
    if errors:
        raise ConfigurationError(f"{what} failed: {errors}")
