"""`streamproc search`'s pure parts: multi-target joins, weights, snippets."""

from __future__ import annotations

import pytest
from weaviate.collections.classes.grpc import _MultiTargetVectorJoin

from streamproc.errors import StreamprocError
from streamproc.search import Fusion, parse_weights, snippet, target_vector


def test_one_target_is_searched_alone_and_several_are_joined() -> None:
    assert target_vector(["heading"], Fusion.AVERAGE) == "heading"
    joined = target_vector(["content", "heading"], Fusion.AVERAGE)
    assert isinstance(joined, _MultiTargetVectorJoin)
    assert joined.target_vectors == ["content", "heading"]
    assert joined.combination.name == "AVERAGE"


def test_weighted_joins_default_to_equal_weights() -> None:
    relative = target_vector(["content", "heading"], Fusion.RELATIVE_SCORE)
    assert isinstance(relative, _MultiTargetVectorJoin)
    assert relative.weights == {"content": 0.5, "heading": 0.5}
    manual = target_vector(["content", "heading"], Fusion.WEIGHTS, {"content": 0.2, "heading": 0.8})
    assert isinstance(manual, _MultiTargetVectorJoin)
    assert manual.weights == {"content": 0.2, "heading": 0.8}


def test_unknown_or_no_targets_are_refused() -> None:
    with pytest.raises(StreamprocError, match="content, heading"):
        target_vector(["title"], Fusion.AVERAGE)
    with pytest.raises(StreamprocError):
        target_vector([], Fusion.AVERAGE)


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
