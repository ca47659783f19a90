"""Failpoints: named places where a test makes a real worker process fail, as etcd's gofail
and TiKV's fail-rs do. Off unless `STREAMPROC_FAILPOINTS` names them, so production code pays
one dictionary look-up.

`STREAMPROC_FAILPOINTS="embedder.finish=2@RuntimeError,kafka.send=3*KafkaTimeoutError"`
raises RuntimeError on the 2nd pass through `embedder.finish` and KafkaTimeoutError on each
of the first 3 passes through `kafka.send`; `chunker.process=1@hang` blocks the thread that
reaches it for good (a stall).
"""

from __future__ import annotations

import os
import threading
from dataclasses import dataclass

from aiokafka.errors import KafkaTimeoutError

from streamproc.errors import TransientError

ERRORS: dict[str, type[BaseException]] = {
    "RuntimeError": RuntimeError,
    "KafkaTimeoutError": KafkaTimeoutError,
    "TransientError": TransientError,
}


@dataclass
class _Point:
    # "at": fail only on pass number `n`; "first": fail on each of the first `n` passes.
    mode: str
    n: int
    # None: hang instead of raising.
    error: type[BaseException] | None
    passes: int = 0


def _parse(spec: str) -> dict[str, _Point]:
    """`name=N@Error` fails on pass N only; `name=N*Error` on each of the first N passes."""
    points = {}
    for item in filter(None, (part.strip() for part in spec.split(","))):
        name, _, rule = item.partition("=")
        mode = "at" if "@" in rule else "first"
        count, _, error = rule.partition("@" if mode == "at" else "*")
        points[name] = _Point(mode, int(count), None if error == "hang" else ERRORS[error])
    return points


_POINTS = _parse(os.environ.get("STREAMPROC_FAILPOINTS", ""))


def fail_point(name: str) -> None:
    point = _POINTS.get(name)
    if point is None:
        return
    point.passes += 1
    if (point.mode == "at" and point.passes == point.n) or (
        point.mode == "first" and point.passes <= point.n
    ):
        if point.error is None:
            threading.Event().wait()
        raise point.error(f"failpoint {name} (pass {point.passes})")
