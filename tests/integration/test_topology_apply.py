from __future__ import annotations

import asyncio
import time

from aiokafka.admin.config_resource import ConfigResource, ConfigResourceType

from streamproc.kafka_io import admin_client
from streamproc.settings import Settings
from streamproc.topics import topic_name
from streamproc.topology import load_topology
from streamproc.topology.kafka_admin import describe, reconcile


def test_apply_creates_then_is_a_no_op_and_reports_drift(settings: Settings) -> None:
    specs = load_topology(settings.topology_file, prefix=settings.kafka.topic_prefix)

    first = asyncio.run(reconcile(settings, specs, apply=True))
    assert first.applied and {c.kind for c in first.changes} == {"create"}
    assert len(first.changes) == len(specs)

    second = asyncio.run(reconcile(settings, specs, apply=True))
    assert second.changes == [] and not second.applied

    chunks = topic_name(settings, "chunks")

    async def tamper_and_read() -> None:
        admin = admin_client(settings)
        await admin.start()
        try:
            await admin.alter_configs(
                [
                    ConfigResource(
                        ConfigResourceType.TOPIC,
                        chunks,
                        configs={"cleanup.policy": "delete", "retention.ms": "-1"},
                    )
                ]
            )
            # Config changes reach the metadata asynchronously: poll until the broker shows it.
            deadline = time.monotonic() + 30
            while (await describe(admin, [chunks]))[chunks].config["cleanup.policy"] != "delete":
                assert time.monotonic() < deadline, "altered config never became visible"
                await asyncio.sleep(0.2)
        finally:
            await admin.close()

    asyncio.run(tamper_and_read())
    drift = asyncio.run(reconcile(settings, specs, apply=False))
    details = {str(c) for c in drift.changes}
    assert any("cleanup.policy: 'delete' -> 'compact'" in d for d in details), details
    assert any("min.compaction.lag.ms" in d for d in details), details

    fixed = asyncio.run(reconcile(settings, specs, apply=True))
    assert fixed.applied
    assert asyncio.run(reconcile(settings, specs, apply=False)).changes == []
