from __future__ import annotations

from streamproc.settings import Settings
from streamproc.topology import TopicSpec, TopicState, fit_to_cluster, load_topology, plan

SPEC = TopicSpec("chunks", 6, 1, {"cleanup.policy": "compact", "retention.ms": "-1"})


def test_topology_file_describes_every_design_topic() -> None:
    specs = {s.name: s for s in load_topology(Settings().topology_file, prefix="x.")}
    assert set(specs) == {
        "x.chunk-requested",
        "x.chunks",
        "x.embed-requested",
        "x.embed-done",
        "x.chunk-requested.dlq",
        "x.embed-requested.dlq",
        "x.backfill-commands",
        "x.backfill-commands.dlq",
        "x.alias-changes",
    }
    # One partition: one embedder owns every backfill job.
    assert specs["x.backfill-commands"].partitions == 1
    assert specs["x.chunks"].config["cleanup.policy"] == "compact"
    assert specs["x.embed-done"].config["min.insync.replicas"] == "2"


def test_missing_topic_is_created() -> None:
    assert [c.kind for c in plan([SPEC], {})] == ["create"]


def test_matching_topic_has_no_drift() -> None:
    assert plan([SPEC], {"chunks": TopicState("chunks", 6, 1, dict(SPEC.config))}) == []


def test_config_drift_both_ways() -> None:
    state = TopicState(
        "chunks", 6, 1, {"cleanup.policy": "delete", "retention.ms": "-1", "segment.bytes": "1"}
    )
    kinds = sorted(
        (c.kind, c.detail.split(":")[0].split("=")[0])
        for c in plan([SPEC], state and {"chunks": state})
    )
    assert kinds == [("remove_config", "segment.bytes"), ("set_config", "cleanup.policy")]


def test_partitions_grow_but_never_shrink() -> None:
    grow = plan([SPEC], {"chunks": TopicState("chunks", 3, 1, dict(SPEC.config))})
    assert [(c.kind, c.fixable) for c in grow] == [("add_partitions", True)]
    shrink = plan([SPEC], {"chunks": TopicState("chunks", 12, 1, dict(SPEC.config))})
    assert [(c.kind, c.fixable) for c in shrink] == [("partitions", False)]


def test_replication_is_capped_to_the_cluster() -> None:
    wide = TopicSpec("t", 6, 3, {"min.insync.replicas": "2"})
    fitted = fit_to_cluster(wide, brokers=1)
    assert (fitted.replication_factor, fitted.config["min.insync.replicas"]) == (1, "1")
    assert fit_to_cluster(wide, brokers=5) is wide
