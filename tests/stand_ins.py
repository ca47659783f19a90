"""Stand-ins the unit tests share: an ingest event as the chunker receives it, and a Weaviate
store that never connects."""

from __future__ import annotations

from typing import Any

import weaviate
from weaviate.connect import ConnectionParams

from streamproc.weaviate_store import WeaviateStore


def ingest_event(content: str | None, op: str = "UPSERT", **fields: Any) -> dict[str, Any]:
    """A decoded `ChunkRequested` of tenant `t`, document `d`."""
    return {
        "event_id": "e",
        "tenant": "t",
        "doc_id": "d",
        "op": op,
        "content": content,
        "content_uri": None,
        "content_type": "text/markdown",
        "content_sha256": None,
        "metadata": {},
        "ingested_at": None,
        "force": False,
        **fields,
    }


def unconnected_store() -> WeaviateStore:
    """A store whose client never connected: any call that reaches Weaviate fails."""
    client = weaviate.WeaviateClient(
        connection_params=ConnectionParams.from_params(
            http_host="127.0.0.1",
            http_port=1,
            http_secure=False,
            grpc_host="127.0.0.1",
            grpc_port=2,
            grpc_secure=False,
        ),
        skip_init_checks=True,
    )
    return WeaviateStore(client)
