"""Logging set-up shared by every entry point."""

from __future__ import annotations

import warnings


def silence_dependency_warnings() -> None:
    """Hide import-time warnings of dependencies that a user can do nothing about."""
    # authlib (via weaviate-client) forces its deprecation warnings to "always" when imported,
    # so our filter only holds if it is added after that import.
    import authlib.deprecate  # noqa: F401

    warnings.filterwarnings("ignore", message="The httpx module is deprecated")
