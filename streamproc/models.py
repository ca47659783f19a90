"""Model registry entries turned into loaded sentence-transformers models, checked on load, and
the pool of them a worker shares between live embedding and backfill."""

from __future__ import annotations

import asyncio
import hashlib
import importlib.resources
import logging
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from streamproc.errors import ConfigurationError
from streamproc.registry import ModelSpec

log = logging.getLogger(__name__)

PACKAGE_PREFIX = "package:"


def resolve_source(source: str) -> str:
    """A local directory for `package:NAME` and existing paths; otherwise the Hugging Face id."""
    if source.startswith(PACKAGE_PREFIX):
        package = source.removeprefix(PACKAGE_PREFIX)
        try:
            root = importlib.resources.files(package)
        except ModuleNotFoundError as exc:
            raise ConfigurationError(
                f"model source {source!r}: Python package {package!r} is not installed"
            ) from exc
        return str(Path(str(root)) / "model")
    return source


@dataclass
class EmbeddingModel:
    spec: ModelSpec
    model: Any  # sentence_transformers.SentenceTransformer
    device: str
    # The registry's pinned revision, else a digest of the files the model was loaded from:
    # what every object records, so a vector can be traced to the exact weights.
    revision: str = ""

    @property
    def dimension(self) -> int:
        return self.spec.dimension

    def count_tokens(self, texts: list[str]) -> list[int]:
        """Tokens each text takes in the model, special tokens included, without truncation."""
        encoded = self.model.tokenizer(texts, add_special_tokens=True, truncation=False)
        return [len(ids) for ids in encoded["input_ids"]]

    def encode(self, texts: list[str], batch_size: int = 64) -> np.ndarray:
        vectors = self.model.encode(
            texts,
            batch_size=batch_size,
            convert_to_numpy=True,
            normalize_embeddings=True,
            show_progress_bar=False,
        )
        return np.asarray(vectors, dtype=np.float32)


def quiet_transformers() -> None:
    """No progress bar per model load or save: noise in worker logs and the demo's output."""
    from huggingface_hub.utils import disable_progress_bars
    from transformers.utils import logging as hf_logging

    hf_logging.disable_progress_bar()
    disable_progress_bars()


def files_digest(directory: Path) -> str:
    """`sha256:` and 16 hex digits over every file's relative path and bytes, in name order."""
    digest = hashlib.sha256()
    for path in sorted(p for p in directory.rglob("*") if p.is_file()):
        digest.update(str(path.relative_to(directory)).encode())
        digest.update(b"\0")
        with path.open("rb") as handle:
            for block in iter(lambda: handle.read(1 << 20), b""):
                digest.update(block)
    return f"sha256:{digest.hexdigest()[:16]}"


def model_revision(spec: ModelSpec, source: str) -> str:
    if spec.revision:
        return spec.revision
    if Path(source).is_dir():
        return files_digest(Path(source))
    # A hub id without a pinned revision: whatever the hub served; say so rather than guess.
    return "unpinned"


def load_model(spec: ModelSpec, device: str | None = None) -> EmbeddingModel:
    """Load and check a registry entry; refuse to start when reality disagrees with it."""
    import torch
    from sentence_transformers import SentenceTransformer

    quiet_transformers()
    chosen = device or ("cuda" if torch.cuda.is_available() else "cpu")
    source = resolve_source(spec.source)
    try:
        model = SentenceTransformer(source, device=chosen, revision=spec.revision)
    except OSError as exc:
        # A missing path or an unreachable hub: the registry entry is what needs fixing.
        raise ConfigurationError(
            f"cannot load model {spec.name!r} from {spec.source}: {exc}"
        ) from exc
    if chosen.startswith("cuda"):
        # fp16 on GPU: embeddings for retrieval lose nothing measurable and double throughput.
        model.half()
    real_dim = model.get_embedding_dimension()
    if real_dim != spec.dimension:
        raise ConfigurationError(
            f"model {spec.name!r} ({spec.source}) produces {real_dim}-dimensional vectors but "
            f"the registry says {spec.dimension}: set dimension={real_dim} for it "
            f"(and a new version, so it gets its own collection)"
        )
    if model.max_seq_length < spec.max_seq_len:
        raise ConfigurationError(
            f"model {spec.name!r} accepts at most {model.max_seq_length} tokens but the registry "
            f"says max_seq_len={spec.max_seq_len}: lower it to {model.max_seq_length}"
        )
    model.max_seq_length = spec.max_seq_len
    # Lazy initialisation (allocator, kernels) is paid here, not by the first batch.
    model.encode(["warm-up"], show_progress_bar=False)
    log.info("loaded model", extra={"model": spec.name, "device": chosen, "dim": real_dim})
    revision = model_revision(spec, source)
    return EmbeddingModel(spec=spec, model=model, device=chosen, revision=revision)


class ModelPool:
    """Models by registry name, loaded once per worker and shared by live and backfill. A
    loaded model is returned without waiting; loading one never holds up another's users."""

    def __init__(
        self,
        registry: Callable[[str], ModelSpec],
        device: str | None,
        loaded: list[EmbeddingModel],
    ) -> None:
        """`registry` gives the spec of a registered name (and refuses any other)."""
        self.registry = registry
        self.device = device
        self._models = {m.spec.name: m for m in loaded}
        self._loading: dict[str, asyncio.Lock] = {}

    async def get(self, name: str) -> EmbeddingModel:
        if name in self._models:
            return self._models[name]
        async with self._loading.setdefault(name, asyncio.Lock()):
            if name not in self._models:
                spec = self.registry(name)
                self._models[name] = await asyncio.to_thread(load_model, spec, self.device)
            return self._models[name]
