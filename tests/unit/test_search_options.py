"""`streamproc search`'s pure parts: multi-target joins, weights, the GraphQL query, snippets."""

from __future__ import annotations

import pytest

from streamproc.errors import StreamprocError
from streamproc.search import (
    Fusion,
    Mode,
    endpoint_in_schema,
    graphql_query,
    parse_weights,
    snippet,
    target_vectors,
)


def test_one_target_is_searched_alone_and_several_are_joined() -> None:
    assert target_vectors(["heading"], Fusion.AVERAGE) == 'targetVectors: ["heading"]'
    assert target_vectors(["content", "heading"], Fusion.AVERAGE) == (
        'targets: {targetVectors: ["content", "heading"], combinationMethod: average}'
    )


def test_weighted_joins_default_to_equal_weights() -> None:
    assert target_vectors(["content", "heading"], Fusion.RELATIVE_SCORE) == (
        'targets: {targetVectors: ["content", "heading"], combinationMethod: relativeScore, '
        "weights: {content: 0.5, heading: 0.5}}"
    )
    manual = target_vectors(["content", "heading"], Fusion.WEIGHTS, {"content": 0.2, "heading": 8})
    assert manual.endswith("combinationMethod: manualWeights, weights: {content: 0.2, heading: 8}}")


def test_unknown_or_no_targets_and_infinite_weights_are_refused() -> None:
    with pytest.raises(StreamprocError, match="content, heading"):
        target_vectors(["title"], Fusion.AVERAGE)
    with pytest.raises(StreamprocError):
        target_vectors([], Fusion.AVERAGE)
    with pytest.raises(StreamprocError, match="finite"):
        target_vectors(["content", "heading"], Fusion.WEIGHTS, {"content": float("inf")})


def test_queries_quote_the_text_and_tenant_as_graphql_strings() -> None:
    text = 'say "hi"\\ über\nline'
    near = graphql_query("Chunk", "acme", text, 3, Mode.VECTOR, 'targetVectors: ["content"]')
    assert near.startswith('{ Get { Chunk(tenant: "acme", limit: 3, nearText: {concepts: ')
    assert '["say \\"hi\\"\\\\ über\\nline"], targetVectors: ["content"]})' in near
    assert near.endswith("model_revision _additional { distance } } } }")
    hybrid = graphql_query("Chunk", "acme", "q", 5, Mode.HYBRID, 'targetVectors: ["heading"]')
    assert 'hybrid: {query: "q", properties: ["text", "heading_path"], targetVectors: ' in hybrid
    assert "_additional { score }" in hybrid
    keyword = graphql_query("Chunk", "acme", "q", 5, Mode.KEYWORD, "ignored")
    assert 'bm25: {query: "q", properties: ["text", "heading_path"]})' in keyword


def test_the_query_endpoint_comes_from_the_rest_schema() -> None:
    made_now = {
        "vectorConfig": {
            "content": {"vectorizer": {"text2vec-transformers": {"inferenceUrl": "http://m/a"}}}
        }
    }
    made_before = {"vectorConfig": {"content": {"vectorizer": {"none": {}}}}}
    assert endpoint_in_schema(made_now) == "http://m/a"
    assert endpoint_in_schema(made_before) is None
    assert endpoint_in_schema({}) is None


def test_weights_parse_and_refuse_garbage() -> None:
    assert parse_weights("content=0.3, heading=0.7") == {"content": 0.3, "heading": 0.7}
    assert parse_weights(None) is None
    with pytest.raises(StreamprocError, match="NAME=NUMBER"):
        parse_weights("content")


def test_snippets_are_short_and_absent_in_pii_mode() -> None:
    text = "Keys  rotate\nevery 90 days. " * 40
    short = snippet(text, pii_mode=False)
    assert len(short) <= 160 and short.startswith("Keys rotate every 90 days.")
    assert short.endswith("…")
    assert snippet("A short one.", pii_mode=False) == "A short one."
    assert snippet(text, pii_mode=True) == ""
