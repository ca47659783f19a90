"""streamproc's topics as objects: each knows its name under the settings' prefix, its Avro
codec and its partitions (from the one topology, `topology/topics.yaml`); and the names Kafka
sees besides topics: consumer groups and the job table's changelog. Nothing else spells a
topic's name or looks a codec up."""

from __future__ import annotations

from dataclasses import dataclass, field
from functools import cache
from pathlib import Path
from typing import Any

from streamproc.avro_codec import AvroCodec, load_schemas
from streamproc.settings import Settings
from streamproc.topology import load_topology

DLQ_SUFFIX = ".dlq"
# Faust names a table's changelog `{app id}-{table}-changelog`.
JOBS_TABLE = "backfill_jobs"


@dataclass(frozen=True)
class Topic:
    name: str
    codec: AvroCodec = field(repr=False)
    partitions: int = 1

    def encode(self, record: dict[str, Any]) -> bytes:
        return self.codec.encode(record)

    def decode(self, data: bytes) -> dict[str, Any]:
        return self.codec.decode(data)

    @property
    def dlq(self) -> str:
        """Where what this topic's consumer cannot process goes, original bytes unchanged."""
        return dead_letter_topic(self.name)


@dataclass(frozen=True)
class Topics:
    chunk_requested: Topic
    chunks: Topic
    embed_requested: Topic
    embed_done: Topic
    backfill_commands: Topic
    alias_changes: Topic

    def named(self, short: str) -> Topic:
        """The topic the topology calls `short` (`embed-requested`), as operators type it."""
        topic = getattr(self, short.replace("-", "_"), None)
        if not isinstance(topic, Topic):
            known = ", ".join(sorted(n.replace("_", "-") for n in self.__dataclass_fields__))
            raise KeyError(f"no topic {short!r}; known: {known}")
        return topic


# Topology name -> the Avro record its values are.
_RECORDS = {
    "chunk-requested": "ChunkRequested",
    "chunks": "ChunkRecord",
    "embed-requested": "EmbedRequested",
    "embed-done": "EmbedDone",
    "backfill-commands": "BackfillCommand",
    "alias-changes": "AliasChange",
}


def topics_for(settings: Settings) -> Topics:
    return _topics(settings.kafka.topic_prefix, settings.topology_file, settings.schemas_dir)


@cache
def _topics(prefix: str, topology_file: Path, schemas_dir: Path) -> Topics:
    partitions = {spec.name: spec.partitions for spec in load_topology(topology_file)}
    schemas = load_schemas(schemas_dir)
    return Topics(
        **{
            short.replace("-", "_"): Topic(
                f"{prefix}{short}", schemas.codec(record), partitions[short]
            )
            for short, record in _RECORDS.items()
        }
    )


def topic_name(settings: Settings, short: str) -> str:
    """Any topic's name under the settings' prefix, a dead-letter topic's too: for names an
    operator types (`consume embed-requested.dlq`)."""
    return f"{settings.kafka.topic_prefix}{short}"


def dead_letter_topic(topic: str) -> str:
    return topic + DLQ_SUFFIX


def group_id(settings: Settings, role: str) -> str:
    """The consumer group (and Faust app id) of a worker role, or of a tool (`dlq-replay`)."""
    return f"{settings.worker.app_id}-{role}"


def jobs_changelog(settings: Settings) -> str:
    """The backfill job table's changelog: Faust's name for the table `backfill_jobs` of the
    embedder app. Its values are `BackfillJob` records."""
    return f"{group_id(settings, 'embedder')}-{JOBS_TABLE}-changelog"


def job_codec(settings: Settings) -> AvroCodec:
    return load_schemas(settings.schemas_dir).codec("BackfillJob")
