"""What the deploy tests share: does a variable name a real setting, does a command line name a
real CLI command, and kustomize (built once with `go install`, cached) to render deploy/k8s."""

from __future__ import annotations

import fcntl
import os
import shutil
import subprocess
import tempfile
from collections.abc import Iterator, Mapping
from contextlib import contextmanager
from pathlib import Path
from typing import Any
from unittest import mock

import click
import typer
import yaml
from pydantic import BaseModel

from streamproc.cli import app
from streamproc.settings import CHILD_SETTINGS_ENV, Settings, load_settings

PREFIX = "STREAMPROC_"
# Commands that deploy files run but that are being written on another branch: each is
# allowed to be missing from the CLI until it lands; once it exists it is checked like any.
EXPECTED_COMMANDS: frozenset[tuple[str, ...]] = frozenset({("serve",)})
# v5.8 needs Go 1.27; the README asks for Go >= 1.26.
KUSTOMIZE_MODULE = "sigs.k8s.io/kustomize/kustomize/v5"
KUSTOMIZE_VERSION = "v5.7.1"


def setting_path(variable: str) -> list[str]:
    """The field names a `STREAMPROC_*` variable sets; AssertionError if it sets nothing."""
    assert variable.startswith(PREFIX), variable
    model: type[BaseModel] = Settings
    parts = variable.removeprefix(PREFIX).lower().split("__")
    for depth, part in enumerate(parts):
        field = model.model_fields.get(part)
        assert field is not None, f"{variable}: {model.__name__} has no setting {part!r}"
        annotation = field.annotation
        if depth < len(parts) - 1:
            assert isinstance(annotation, type) and issubclass(annotation, BaseModel), (
                f"{variable}: {part!r} has no nested settings"
            )
            model = annotation
    return parts


def settings_from(env: Mapping[str, str]) -> Settings:
    """The settings a process gets from exactly these `STREAMPROC_*` variables (no others,
    no settings file), parsed the way the CLI parses them."""
    for name in env:
        setting_path(name)
    clean = {
        k: v
        for k, v in os.environ.items()
        if not k.startswith(PREFIX) and k not in {CHILD_SETTINGS_ENV, "STREAMPROC_CONFIG"}
    }
    with mock.patch.dict(os.environ, {**clean, **env}, clear=True):
        return load_settings()


def cli_command(argv: list[str]) -> click.Command | None:
    """The CLI command `streamproc ARGV` runs, its options parsed as the CLI would (a wrong
    option fails); None for a command of EXPECTED_COMMANDS that does not exist yet."""
    command: click.Command = typer.main.get_command(app)
    path: list[str] = []
    rest = list(argv)
    while isinstance(command, click.Group) and rest and not rest[0].startswith("-"):
        name = rest.pop(0)
        path.append(name)
        sub = command.get_command(click.Context(command), name)
        if sub is None:
            assert tuple(path) in EXPECTED_COMMANDS, f"`streamproc {' '.join(argv)}`: no {name!r}"
            return None
        command = sub
    assert not isinstance(command, click.Group), f"`streamproc {' '.join(argv)}` is a group"
    command.make_context(" ".join(["streamproc", *path]), rest)
    return command


def kustomize() -> Path:
    """The kustomize binary, built with `go install` into the cache on first use."""
    binary = Settings().local.cache_dir / "tools" / f"kustomize-{KUSTOMIZE_VERSION}" / "kustomize"
    if binary.exists():
        return binary
    assert shutil.which("go"), (
        "rendering deploy/k8s builds kustomize with Go >= 1.26: put go on PATH"
    )
    binary.parent.mkdir(parents=True, exist_ok=True)
    with _locked(binary.parent / ".lock"):
        if not binary.exists():
            with tempfile.TemporaryDirectory(dir=binary.parent) as gobin:
                result = subprocess.run(
                    ["go", "install", f"{KUSTOMIZE_MODULE}@{KUSTOMIZE_VERSION}"],
                    env={**os.environ, "GOBIN": gobin},
                    capture_output=True,
                    text=True,
                    check=False,
                    timeout=600,
                )
                assert result.returncode == 0, f"go install kustomize:\n{result.stderr[-3000:]}"
                (Path(gobin) / "kustomize").rename(binary)
    return binary


@contextmanager
def _locked(path: Path) -> Iterator[None]:
    with path.open("w") as handle:
        fcntl.flock(handle, fcntl.LOCK_EX)
        yield


def render(kustomization: Path) -> list[dict[str, Any]]:
    """`kustomize build` of a folder, as the resources it gives `kubectl apply -k`."""
    result = subprocess.run(
        [str(kustomize()), "build", str(kustomization)],
        capture_output=True,
        text=True,
        check=False,
        timeout=120,
    )
    assert result.returncode == 0, f"kustomize build {kustomization}:\n{result.stderr}"
    return [doc for doc in yaml.safe_load_all(result.stdout) if doc]
