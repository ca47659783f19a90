"""Every schema must stay fully compatible (both directions) with each committed version of it."""

from __future__ import annotations

import json
import subprocess

import pytest
from avro.compatibility import ReaderWriterCompatibilityChecker, SchemaCompatibilityType
from avro.schema import parse
from fastavro import parse_schema

from streamproc.avro_codec import SCHEMA_FILES, Schemas
from streamproc.settings import REPO_ROOT, Settings

SCHEMAS = Schemas(Settings().schemas_dir)


def _git(*args: str) -> str:
    return subprocess.run(
        ["git", "-C", str(REPO_ROOT), *args], capture_output=True, text=True, check=True
    ).stdout


# Where the schemas have lived, newest first: they moved into the package to ship in the wheel.
SCHEMA_FOLDERS = ("streamproc/schemas/avro", "schemas/avro")


def _committed_versions(filename: str) -> list[tuple[str, str]]:
    """(commit, text) of each distinct committed version of <filename> in any SCHEMA_FOLDERS."""
    paths = [f"{folder}/{filename}" for folder in SCHEMA_FOLDERS]
    versions: list[tuple[str, str]] = []
    seen: set[str] = set()
    for commit in _git("log", "--format=%H", "--", *paths).split():
        for path in paths:
            try:
                text = _git("show", f"{commit}:{path}")
            except subprocess.CalledProcessError:
                continue  # not at this path in that commit (moved, renamed or deleted)
            if text not in seen:
                seen.add(text)
                versions.append((commit[:10], text))
    return versions


def test_history_holds_versions_from_before_the_move() -> None:
    """The move into the package must not hide the versions committed at the old path."""
    assert _git("log", "--format=%H", "--", f"{SCHEMA_FOLDERS[1]}/{SCHEMA_FILES['ChunkRequested']}")


def _expanded_at(filename: str, text: str) -> dict[str, object]:
    """Expand an old version using the current definitions of the names it refers to."""
    named: dict[str, object] = {}
    for name, other in SCHEMA_FILES.items():
        if other == filename:
            break
        parse_schema(SCHEMAS.expanded(name), named_schemas=named)
    return parse_schema(json.loads(text), named_schemas=named, expand=True)


@pytest.mark.parametrize("name", list(SCHEMA_FILES))
def test_full_compatibility_with_every_committed_version(name: str) -> None:
    filename = SCHEMA_FILES[name]
    current = parse(json.dumps(SCHEMAS.expanded(name)))
    checker = ReaderWriterCompatibilityChecker()
    for commit, text in _committed_versions(filename):
        previous = parse(json.dumps(_expanded_at(filename, text)))
        for reader, writer, direction in (
            (current, previous, "new reads old (backward)"),
            (previous, current, "old reads new (forward)"),
        ):
            result = checker.get_compatibility(reader, writer)
            assert result.compatibility is SchemaCompatibilityType.compatible, (
                f"{filename} is not {direction}-compatible with its version at {commit}: "
                f"{result.messages} at {result.locations}"
            )


def test_the_check_catches_a_breaking_change() -> None:
    current = SCHEMAS.expanded("ChunkRequested")
    broken = json.loads(json.dumps(current))
    broken["fields"].append({"name": "priority", "type": "int"})  # no default: breaks backward
    result = ReaderWriterCompatibilityChecker().get_compatibility(
        parse(json.dumps(broken)), parse(json.dumps(current))
    )
    assert result.compatibility is SchemaCompatibilityType.incompatible
