"""Logging set-up shared by every entry point."""

from __future__ import annotations

import json
import logging
import sys
import warnings


def silence_dependency_warnings() -> None:
    """Hide import-time warnings of dependencies that a user can do nothing about."""
    # authlib (via weaviate-client) forces its deprecation warnings to "always" when imported,
    # so our filter only holds if it is added after that import.
    import authlib.deprecate  # noqa: F401

    warnings.filterwarnings("ignore", message="The httpx module is deprecated")


class _JsonFormatter(logging.Formatter):
    """One JSON object per line with the record's structured `extra` fields."""

    _STANDARD = set(logging.LogRecord("", 0, "", 0, "", None, None).__dict__) | {"message"}

    def format(self, record: logging.LogRecord) -> str:
        entry = {
            "time": self.formatTime(record),
            "level": record.levelname,
            "logger": record.name,
            "msg": record.getMessage(),
            **{k: v for k, v in record.__dict__.items() if k not in self._STANDARD},
        }
        if record.exc_info:
            entry["exc_type"] = record.exc_info[0].__name__ if record.exc_info[0] else None
        return json.dumps(entry, default=str)


def configure_logging(level: int = logging.INFO) -> None:
    """JSON lines when not on a terminal (what log shippers want), plain text on one."""
    handler = logging.StreamHandler(sys.stderr)
    if not sys.stderr.isatty():
        handler.setFormatter(_JsonFormatter())
    logging.basicConfig(level=level, handlers=[handler], force=True)
    # One line per HTTP request to Weaviate is noise at INFO.
    logging.getLogger("httpx").setLevel(logging.WARNING)
