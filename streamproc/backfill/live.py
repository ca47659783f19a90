"""Live batches into backfill targets: each target gets only its job's tenant, and a target
dropped while the batch ran (a retired collection) is skipped instead of retried."""

from __future__ import annotations

import logging
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

from streamproc.backfill.jobs import scoped
from streamproc.errors import CollectionMissingError
from streamproc.pipeline.embedder import BatchResult, Embedder
from streamproc.pipeline.lanes import Lane
from streamproc.pipeline.objects import Target

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class ScopedTarget:
    target: Target
    tenant: str | None  # the job's tenant; None: every tenant


async def write_targets(
    embedder: Embedder, requests: Sequence[dict[str, Any]], targets: Sequence[ScopedTarget]
) -> list[BatchResult]:
    """One result per target written; failures are keyed by the index in `requests`."""
    results = []
    for scope in targets:
        indices, subset = scoped(requests, scope.tenant)
        if not subset:
            continue
        try:
            result = await embedder.handle(subset, [scope.target], lane=Lane.LIVE_BACKFILL)
        except CollectionMissingError:
            # Dropped by a retire this worker acknowledged after resolving its targets is
            # impossible (the acknowledgement waits for this task), so this is a collection
            # deleted behind the jobs' back: `collections list` shows it stale.
            log.warning(
                "backfill target missing, skipped", extra={"collection": scope.target.collection}
            )
            continue
        results.append(
            BatchResult(
                result.done,
                {indices[i]: reason for i, reason in result.failed.items()},
                result.encode_seconds,
                result.write_seconds,
            )
        )
    return results
