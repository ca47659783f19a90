"""Ingest-complete events for files, folders and globs: what `streamproc produce` sends."""

from __future__ import annotations

import asyncio
import glob
import hashlib
import os
import uuid
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from opentelemetry.trace import SpanKind
from tqdm import tqdm

from streamproc import telemetry
from streamproc.errors import StreamprocError
from streamproc.kafka_io import producer
from streamproc.naming import document_key
from streamproc.settings import Settings
from streamproc.topics import topics_for

CONTENT_TYPES = {
    ".md": "text/markdown",
    ".markdown": "text/markdown",
    ".html": "text/html",
    ".htm": "text/html",
    ".txt": "text/plain",
}
# Kafka refuses messages over 1 MiB by default: bigger documents travel as file:// URIs.
INLINE_LIMIT = 512 * 1024


@dataclass(frozen=True)
class Document:
    path: Path
    doc_id: str


def expand(patterns: list[str]) -> list[Document]:
    """Files as given (doc id: the file name), folders recursively (the path below the folder),
    globs expanded (the path below the glob's fixed folder, so `docs/**/index.html` gives
    `guide/index.html`). Two files that would share a doc id are refused before anything is
    sent: one would silently replace the other."""
    found: dict[Path, Document] = {}
    owners: dict[str, Path] = {}
    for pattern in patterns:
        magic = glob.has_magic(pattern)
        matches = sorted(glob.glob(pattern, recursive=True)) if magic else [pattern]
        if not matches:
            raise StreamprocError(f"{pattern!r} matches no file")
        for match in matches:
            path = Path(match)
            if path.is_dir():
                base = _fixed_folder(pattern) if magic else match
                files = sorted(p for p in path.rglob("*") if p.is_file())
            elif path.is_file():
                base = _fixed_folder(pattern) if magic else str(path.parent)
                files = [path]
            else:
                raise StreamprocError(f"{match!r} is not a file or folder")
            for file in files:
                doc = Document(file, Path(os.path.relpath(file, base)).as_posix())
                real = file.resolve()
                if real in found:
                    continue
                if doc.doc_id in owners:
                    raise StreamprocError(
                        f"doc id {doc.doc_id!r} would name both {owners[doc.doc_id]} and {file}; "
                        "name the folder that holds them (or a glob over it) so each keeps "
                        "the path below it"
                    )
                found[real] = doc
                owners[doc.doc_id] = file
    return list(found.values())


def _fixed_folder(pattern: str) -> str:
    """The leading folders of a glob that hold no wildcard."""
    head = pattern
    while glob.has_magic(head):
        head = os.path.dirname(head)
    return head or "."


def content_type(path: Path) -> str:
    return CONTENT_TYPES.get(path.suffix.lower(), "text/plain")


def event_for(
    doc: Document, tenant: str, op: str = "UPSERT", *, force: bool = False
) -> dict[str, Any]:
    data = doc.path.read_bytes()
    inline = len(data) <= INLINE_LIMIT
    text = data.decode("utf-8", errors="strict") if inline and _is_utf8(data) else None
    return {
        "event_id": str(uuid.uuid4()),
        "tenant": tenant,
        "doc_id": doc.doc_id,
        "op": op,
        "content": text,
        "content_uri": None if text is not None else doc.path.resolve().as_uri(),
        "content_type": content_type(doc.path),
        "content_sha256": hashlib.sha256(data).hexdigest(),
        "metadata": {"path": str(doc.path)},
        "ingested_at": None,
        "force": force,
    }


def _is_utf8(data: bytes) -> bool:
    try:
        data.decode("utf-8")
        return True
    except UnicodeDecodeError:
        return False


async def produce_documents(
    settings: Settings, docs: list[Document], tenant: str, op: str, *, force: bool = False
) -> int:
    """Send one event per document (key tenant/doc_id) and wait until Kafka has them all."""
    topic = topics_for(settings).chunk_requested
    async with producer(settings) as prod:
        futures = []
        for doc in tqdm(docs, desc="producing", unit="doc", disable=len(docs) < 2):
            event = event_for(doc, tenant, op, force=force)
            key = document_key(tenant, doc.doc_id).encode()
            # The root of the document's trace: every agent continues it from these headers.
            with telemetry.tracer.start_as_current_span(
                f"send {topic.name}",
                kind=SpanKind.PRODUCER,
                attributes=telemetry.publish_attributes(
                    topic.name, **{"streamproc.tenant": tenant, "streamproc.doc_id": doc.doc_id}
                ),
            ):
                futures.append(
                    await prod.send(
                        topic.name, topic.encode(event), key=key, headers=telemetry.kafka_headers()
                    )
                )
        await asyncio.gather(*futures)
    return len(futures)
