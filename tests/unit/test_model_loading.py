"""Model loading at start-up: a bad registry entry is a configuration error, and a backfill
job's model the worker lacks stops it from starting instead of being skipped in silence."""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Any

import pytest

from streamproc.errors import ConfigurationError
from streamproc.models import load_model
from streamproc.registry import ModelSpec
from streamproc.settings import Settings
from streamproc.worker.embedder import load_models


def test_a_model_that_cannot_be_loaded_is_a_configuration_error(tmp_path: Any) -> None:
    spec = ModelSpec(name="gone", source=str(tmp_path / "no-model"), dimension=8, max_seq_len=8)
    with pytest.raises(ConfigurationError, match="cannot load model 'gone'"):
        load_model(spec, "cpu")


def _job(model: str, collection: str, state: str = "RUNNING") -> dict[str, Any]:
    return {
        "job_id": "j1",
        "model_name": model,
        "target_collection": collection,
        "state": state,
        "retired": False,
        "tenant": None,
        "created_at": datetime.now(UTC),
    }


def test_a_job_whose_model_is_not_registered_stops_the_worker_before_any_load() -> None:
    settings = Settings()
    with pytest.raises(ConfigurationError) as refused:
        load_models(settings, [_job("unregistered", "Chunk_unregistered_v1")])
    assert "Chunk_unregistered_v1" in str(refused.value)
    assert "STREAMPROC_MODELS" in str(refused.value)


def test_jobs_that_no_longer_write_need_no_model() -> None:
    settings = Settings()
    models = load_models(
        settings,
        [_job("unregistered", "Chunk_unregistered_v1", state="CANCELLED")],
    )
    assert [m.spec.name for m in models] == [settings.active_model]
