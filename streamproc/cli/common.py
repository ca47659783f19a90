"""What every command shares: the root command, the one error exit, the one event loop, the
settings."""

from __future__ import annotations

import asyncio
from collections.abc import Coroutine
from typing import Any, TypeVar

import typer

from streamproc.errors import StreamprocError
from streamproc.settings import Settings, load_settings

T = TypeVar("T")

app = typer.Typer(
    no_args_is_help=True,
    add_completion=False,
    help="The `streamproc` command: a thin layer over the library.",
)


def fail(exc: Exception) -> typer.Exit:
    typer.secho(f"error: {exc}", fg=typer.colors.RED, err=True)
    return typer.Exit(code=1)


def run(work: Coroutine[Any, Any, T]) -> T:
    """The one event loop of a command: the library's operations are coroutines, and each
    command awaits all of its own in this loop."""
    return asyncio.run(work)


def current_settings() -> Settings:
    try:
        return load_settings()
    except StreamprocError as exc:
        raise fail(exc) from exc


def print_verification(lines: list[str]) -> None:
    for line in lines:
        typer.echo(f"  {line}")
