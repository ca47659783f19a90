"""What every command shares: the root command, the one error exit, the one event loop, the
settings."""

from __future__ import annotations

import asyncio
from collections.abc import Coroutine
from typing import Any, TypeVar

import click
import typer
from typer.core import TyperGroup

from streamproc.errors import StreamprocError
from streamproc.settings import Settings, load_settings

T = TypeVar("T")


def fail(exc: Exception) -> typer.Exit:
    typer.secho(f"error: {exc}", fg=typer.colors.RED, err=True)
    return typer.Exit(code=1)


class _Commands(TyperGroup):
    """The one error handler: streamproc's own errors (bad settings, a refused key, a service
    down, an unknown job) end any command with one line and exit status 1; anything else is a
    bug, and shows its traceback."""

    def invoke(self, ctx: click.Context) -> Any:
        try:
            return super().invoke(ctx)
        except StreamprocError as exc:
            raise fail(exc) from exc


app = typer.Typer(
    cls=_Commands,
    no_args_is_help=True,
    add_completion=False,
    help="The `streamproc` command: a thin layer over the library.",
)


def run(work: Coroutine[Any, Any, T]) -> T:
    """The one event loop of a command: the library's operations are coroutines, and each
    command awaits all of its own in this loop."""
    return asyncio.run(work)


def current_settings() -> Settings:
    return load_settings()


def print_verification(lines: list[str]) -> None:
    for line in lines:
        typer.echo(f"  {line}")
