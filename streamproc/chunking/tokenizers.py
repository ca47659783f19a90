"""Hugging Face fast tokenizers as the splitter's TokenCounter, and the splitter over the
tokenizers of every model in use."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from tokenizers import Tokenizer

from streamproc.chunking.split import Splitter
from streamproc.errors import ConfigurationError
from streamproc.models import resolve_source
from streamproc.settings import Settings


class HFTokenCounter:
    def __init__(self, name: str, hf_tokenizer: Any, max_seq_len: int) -> None:
        self.name = name
        # A private copy of the Rust tokenizer: the model's own one gets truncation switched on
        # while it encodes, and counting must never truncate.
        self._tok = Tokenizer.from_str(hf_tokenizer.backend_tokenizer.to_str())
        self._tok.no_truncation()
        self._tok.no_padding()
        self.limit = max_seq_len - hf_tokenizer.num_special_tokens_to_add(pair=False)

    def count(self, texts: Sequence[str]) -> list[int]:
        if not texts:
            return []
        return [len(e.ids) for e in self._tok.encode_batch(list(texts), add_special_tokens=False)]

    def windows(self, text: str, size: int) -> list[str]:
        offsets = self._tok.encode(text, add_special_tokens=False).offsets
        pieces = []
        for start in range(0, len(offsets), size):
            window = offsets[start : start + size]
            end = offsets[start + size][0] if start + size < len(offsets) else len(text)
            pieces.append(text[window[0][0] : end].strip())
        return pieces


def token_counters(settings: Settings) -> list[HFTokenCounter]:
    """The tokenizer of every model in use, without loading the models' weights."""
    from transformers import AutoTokenizer

    counters = []
    for spec in settings.target_models:
        try:
            tokenizer = AutoTokenizer.from_pretrained(
                resolve_source(spec.source), revision=spec.revision
            )
        except OSError as exc:
            raise ConfigurationError(f"cannot load the tokenizer of {spec.name!r}: {exc}") from exc
        counters.append(HFTokenCounter(spec.name, tokenizer, spec.max_seq_len))
    return counters


def splitter_for(settings: Settings, counters: list[HFTokenCounter] | None = None) -> Splitter:
    """The chunking settings' splitter over the tokenizers of every model in use."""
    return Splitter(
        counters if counters is not None else token_counters(settings),
        settings.chunking.max_tokens,
        settings.chunking.overlap_tokens,
    )
