"""Search through Weaviate on the serving alias: `streamproc search` and `search_alias`.

The query text goes to Weaviate, which embeds it with the inference endpoint of the collection
the alias serves (its model version's `inferenceUrl`): nothing here loads a model, and after a
flip or a rollback the next query is embedded by the model of the collection now served.

Modes: `vector` (nearText on the named vectors in `targets`, fused by `fusion`), `hybrid` (BM25
on the text and heading path, fused with the same vector search) and `keyword` (BM25 alone).
The default is `hybrid` on `content` and `heading` averaged, from `bench/retrieval.py` on
2,986 chunks of the PostgreSQL manual (1,000 title and first-sentence queries): recall@10 0.871
and MRR 0.804, against 0.835 / 0.728 for the two vectors without BM25, 0.788 / 0.806 for the
content vector alone and 0.845 / 0.895 for BM25 alone. It has the best recall of every mode and
gives up MRR only to BM25, which finds verbatim text but not paraphrases.

It speaks GraphQL and REST over the standard library (`weaviate_http`), not through
weaviate-client, whose import alone took 1.7 s of a 2.7 s `streamproc search`.
"""

from __future__ import annotations

import json
import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from enum import StrEnum
from typing import Any

from streamproc.errors import ConfigurationError, StreamprocError
from streamproc.naming import CONTENT_VECTOR, HEADING_VECTOR, weaviate_tenant
from streamproc.settings import Settings
from streamproc.weaviate_http import GraphQLError, connect_http

SNIPPET_CHARS = 160
RETURNED = [
    "chunk_key",
    "doc_id",
    "chunk_index",
    "heading_path",
    "text",
    "model_name",
    "model_version",
    "model_revision",
]
KEYWORD_PROPERTIES = ["text", "heading_path"]
VECTORIZER = "text2vec-transformers"


class Mode(StrEnum):
    VECTOR = "vector"
    HYBRID = "hybrid"
    KEYWORD = "keyword"


class Fusion(StrEnum):
    AVERAGE = "average"
    RELATIVE_SCORE = "relative-score"
    WEIGHTS = "weights"


# Weaviate's GraphQL enum `targetCombinationEnum` (adapters/handlers/graphql/.../targets.go).
_COMBINATION = {
    Fusion.AVERAGE: "average",
    Fusion.RELATIVE_SCORE: "relativeScore",
    Fusion.WEIGHTS: "manualWeights",
}

DEFAULT_MODE = Mode.HYBRID
TARGETS = (CONTENT_VECTOR, HEADING_VECTOR)
DEFAULT_TARGETS = TARGETS
DEFAULT_FUSION = Fusion.AVERAGE


@dataclass(frozen=True)
class Hit:
    # 1 - distance for `vector`, Weaviate's fused or BM25 score for `hybrid` and `keyword`.
    score: float
    doc_id: str
    chunk_index: int
    heading_path: list[str]
    chunk_key: str
    # A short start of the chunk's text; empty in PII mode (the text is not even stored).
    snippet: str
    model_name: str
    model_version: str
    model_revision: str


@dataclass(frozen=True)
class SearchResult:
    alias: str
    collection: str
    model: str
    mode: Mode
    targets: tuple[str, ...]
    fusion: Fusion
    hits: list[Hit]


def target_vectors(
    targets: Sequence[str], fusion: Fusion, weights: Mapping[str, float] | None = None
) -> str:
    """The GraphQL argument for Weaviate's multi-target vector search: `targets` joined by
    `fusion`, or the plain `targetVectors` of a single target."""
    unknown = [t for t in targets if t not in TARGETS]
    if unknown or not targets:
        raise StreamprocError(f"targets must be among {', '.join(TARGETS)}; got {list(targets)}")
    names = _literal(list(targets))
    if len(targets) == 1:
        return f"targetVectors: {names}"
    joined = f"targetVectors: {names}, combinationMethod: {_COMBINATION[fusion]}"
    if fusion is Fusion.AVERAGE:
        return f"targets: {{{joined}}}"
    chosen = {t: (weights or {}).get(t, 1.0 / len(targets)) for t in targets}
    if not all(math.isfinite(w) for w in chosen.values()):
        raise StreamprocError(f"weights must be finite numbers; got {chosen}")
    given = ", ".join(f"{t}: {w!r}" for t, w in chosen.items())
    return f"targets: {{{joined}, weights: {{{given}}}}}"


def graphql_query(alias: str, tenant: str, text: str, limit: int, mode: Mode, targets: str) -> str:
    """`Get` on the alias in `tenant`: nearText, hybrid or bm25 on `text`."""
    if mode is Mode.VECTOR:
        search = f"nearText: {{concepts: {_literal([text])}, {targets}}}"
        metadata = "distance"
    elif mode is Mode.HYBRID:
        search = (
            f"hybrid: {{query: {_literal(text)}, properties: {_literal(KEYWORD_PROPERTIES)}, "
            f"{targets}}}"
        )
        metadata = "score"
    else:
        search = f"bm25: {{query: {_literal(text)}, properties: {_literal(KEYWORD_PROPERTIES)}}}"
        metadata = "score"
    fields = " ".join(RETURNED)
    return (
        f"{{ Get {{ {alias}(tenant: {_literal(tenant)}, limit: {int(limit)}, {search}) "
        f"{{ {fields} _additional {{ {metadata} }} }} }} }}"
    )


def _literal(value: str | list[str]) -> str:
    # A JSON string is a GraphQL string (same escapes); raw UTF-8 is valid in both.
    return json.dumps(value, ensure_ascii=False)


def endpoint_in_schema(schema: Mapping[str, Any], vector: str = CONTENT_VECTOR) -> str | None:
    """The endpoint a collection's named vector embeds queries with, from its REST schema."""
    config = (schema.get("vectorConfig") or {}).get(vector) or {}
    module = (config.get("vectorizer") or {}).get(VECTORIZER)
    return module.get("inferenceUrl") if isinstance(module, dict) else None


def parse_weights(text: str | None) -> dict[str, float] | None:
    """`content=0.3,heading=0.7` -> {"content": 0.3, "heading": 0.7}."""
    if not text:
        return None
    weights = {}
    for part in text.split(","):
        name, _, value = part.partition("=")
        try:
            weights[name.strip()] = float(value)
        except ValueError:
            raise StreamprocError(f"weights: {part!r} is not NAME=NUMBER") from None
    return weights


def snippet(text: str, pii_mode: bool) -> str:
    if pii_mode or not text:
        return ""
    flat = " ".join(text.split())
    return flat if len(flat) <= SNIPPET_CHARS else flat[: SNIPPET_CHARS - 1].rstrip() + "…"


def search_alias(
    settings: Settings,
    text: str,
    tenant: str,
    limit: int,
    *,
    mode: Mode = DEFAULT_MODE,
    targets: Sequence[str] = DEFAULT_TARGETS,
    fusion: Fusion = DEFAULT_FUSION,
    weights: Mapping[str, float] | None = None,
) -> SearchResult:
    """One query through the alias, embedded (for `vector` and `hybrid`) by Weaviate with the
    endpoint of the collection the alias serves. Tenant-scoped like every read."""
    alias = settings.weaviate.collection_prefix
    joined = target_vectors(targets, fusion, weights)
    try:
        name = weaviate_tenant(tenant)
    except ValueError as exc:
        raise StreamprocError(str(exc)) from None
    query = graphql_query(alias, name, text, limit, mode, joined)
    with connect_http(settings.weaviate) as weaviate:
        found = weaviate.get(f"/aliases/{alias}")
        if found is None:
            raise StreamprocError(f"alias {alias} does not exist yet: run a worker first")
        collection = str(found["class"])
        if mode is not Mode.KEYWORD:
            schema = weaviate.get(f"/schema/{collection}") or {}
            if endpoint_in_schema(schema) is None:
                raise StreamprocError(
                    f"{collection} was created before collections named their model's endpoint, "
                    "so Weaviate cannot embed a query for it: use --mode keyword, or move it over "
                    "by a rotation (backfill into a new collection, then alias promote)"
                )
        try:
            data = weaviate.graphql(query)
        except GraphQLError as exc:
            raise _search_error(exc, alias, collection, name) from None
    objects = (data.get("Get") or {}).get(alias) or []
    hits = [_hit(obj, mode, settings.embedder.pii_mode) for obj in objects]
    model = _model_label(settings, collection, hits)
    return SearchResult(alias, collection, model, mode, tuple(targets), fusion, hits)


def _search_error(exc: GraphQLError, alias: str, collection: str, tenant: str) -> StreamprocError:
    if any("tenant not found" in m for m in exc.messages):
        return StreamprocError(f"tenant {tenant} has nothing in {collection} (alias {alias})")
    return StreamprocError(f"Weaviate refused the search on {alias} -> {collection}: {exc}")


def _hit(obj: Mapping[str, Any], mode: Mode, pii_mode: bool) -> Hit:
    extra = obj.get("_additional") or {}
    if mode is Mode.VECTOR:
        score = 1.0 - float(extra.get("distance") or 0.0)
    else:
        # GraphQL gives the score as a string.
        score = float(extra.get("score") or 0.0)
    return Hit(
        score=score,
        doc_id=str(obj["doc_id"]),
        chunk_index=int(obj["chunk_index"] or 0),
        heading_path=list(obj.get("heading_path") or []),
        chunk_key=str(obj["chunk_key"]),
        snippet=snippet(str(obj.get("text") or ""), pii_mode),
        model_name=str(obj.get("model_name") or ""),
        model_version=str(obj.get("model_version") or ""),
        model_revision=str(obj.get("model_revision") or ""),
    )


def _model_label(settings: Settings, collection: str, hits: list[Hit]) -> str:
    try:
        spec = settings.model_for_collection(collection)
        return f"{spec.name} {spec.version}"
    except ConfigurationError:
        pass
    # Not in this process's registry: what the objects themselves say.
    for hit in hits:
        if hit.model_name:
            return f"{hit.model_name} {hit.model_version}"
    return "unknown model"
