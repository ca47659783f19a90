"""Logging set-up shared by every entry point."""

from __future__ import annotations

import json
import logging
import logging.config
import sys
import traceback
import warnings

from opentelemetry import trace


def silence_dependency_warnings() -> None:
    """Hide import-time warnings of dependencies that a user can do nothing about."""
    # authlib forces its deprecation warnings to "always" when imported, and weaviate-client
    # imports authlib (which warns) and then resets every filter to "default"; so the filters
    # go in after authlib's import, and again after weaviate's.
    import authlib.deprecate  # noqa: F401

    _add_filters()
    import weaviate  # noqa: F401

    _add_filters()


def _add_filters() -> None:
    warnings.filterwarnings("ignore", message="The httpx module is deprecated")
    # Local services outlive the CLI call that starts them; their Popen objects are dropped
    # on purpose.
    warnings.filterwarnings(
        "ignore", category=ResourceWarning, message=r"subprocess \d+ is still running"
    )


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
        span = trace.get_current_span().get_span_context()
        if span.is_valid:
            entry["trace_id"] = format(span.trace_id, "032x")
            entry["span_id"] = format(span.span_id, "016x")
        if record.exc_info:
            entry["exc_type"] = record.exc_info[0].__name__ if record.exc_info[0] else None
            # Where it failed (files, lines, functions), without the message: an exception's
            # message may quote the data it choked on.
            entry["stack"] = [
                f"{f.filename}:{f.lineno} in {f.name}"
                for f in traceback.extract_tb(record.exc_info[2])
            ]
        return json.dumps(entry, default=str)


def logging_config(level: int | str = logging.INFO) -> dict[str, object]:
    """JSON lines when not on a terminal (what log shippers want), plain text on one.

    A dictConfig, so the Faust worker (which otherwise installs its own colour handler) gets
    exactly the same set-up.
    """
    formatter: dict[str, object] = (
        {"format": "%(asctime)s %(levelname)s %(name)s: %(message)s"}
        if sys.stderr.isatty()
        else {"()": _JsonFormatter}
    )
    return {
        "version": 1,
        "disable_existing_loggers": False,
        "formatters": {"default": formatter},
        "handlers": {
            "default": {
                "class": "logging.StreamHandler",
                "formatter": "default",
                "stream": "ext://sys.stderr",
            }
        },
        "root": {"level": level, "handlers": ["default"]},
        # One line per HTTP request to Weaviate is noise at INFO.
        "loggers": {"httpx": {"level": "WARNING"}},
    }


def configure_logging(level: int = logging.INFO) -> None:
    logging.config.dictConfig(logging_config(level))
