"""The `streamproc` command: a thin layer over the library. Each module adds its commands to
the one root command (`common.app`)."""

from __future__ import annotations

import sys

from streamproc.cli import data, dev, processes, serving  # noqa: F401  (they register commands)
from streamproc.cli.common import app
from streamproc.logs import silence_dependency_warnings

__all__ = ["app", "main"]

# Commands that never import weaviate-client: they skip the warning set-up, which imports it
# (1.7 s), so `streamproc search` answers in under a second.
_WITHOUT_WEAVIATE_CLIENT = {"search"}


def main() -> None:
    if not _WITHOUT_WEAVIATE_CLIENT.intersection(sys.argv[1:2]):
        silence_dependency_warnings()
    app()
