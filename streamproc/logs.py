"""Logging set-up shared by every entry point."""

from __future__ import annotations

import json
import logging
import logging.config
import sys
import traceback
import warnings
from types import TracebackType
from typing import Any

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
    redact_weaviate_client_logs()


# weaviate-client's own logger (weaviate/logger.py).
WEAVIATE_CLIENT_LOGGER = "weaviate-client"


class WeaviateObjectsFilter(logging.Filter):
    """weaviate-client logs a partly failed `insert_many` at ERROR as a dict whose "errors" hold
    the failed objects: text, headings, vectors. Only the dict's summary line is kept."""

    def filter(self, record: logging.LogRecord) -> bool:
        if not isinstance(record.msg, str):
            summary = record.msg.get("message") if isinstance(record.msg, dict) else None
            record.msg = (
                summary if isinstance(summary, str) else "(weaviate-client record withheld)"
            )
            record.args = None
        return True


def redact_weaviate_client_logs() -> None:
    """For processes that log without `logging_config` (its dictConfig installs the same)."""
    logger = logging.getLogger(WEAVIATE_CLIENT_LOGGER)
    if not any(isinstance(f, WeaviateObjectsFilter) for f in logger.filters):
        logger.addFilter(WeaviateObjectsFilter())


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
            entry["stack"] = _where(record.exc_info[2])
        return json.dumps(entry, default=str)


def _where(tb: TracebackType | None) -> list[str]:
    # Where it failed (files, lines, functions), without the message: an exception's message
    # may quote the data it choked on.
    return [f"{f.filename}:{f.lineno} in {f.name}" for f in traceback.extract_tb(tb)]


class _PlainFormatter(logging.Formatter):
    def formatException(self, ei: Any) -> str:
        return "\n".join([f"{ei[0].__name__ if ei[0] else 'error'} at:", *_where(ei[2])])


class RedactExceptionArguments(logging.Filter):
    """Dependencies log exceptions as message arguments (mode: `Crashed reason=%r`), and an
    exception's text may quote the input it failed on: such an argument becomes its type's
    name. Tracebacks are already reduced to type and frames by the formatter."""

    def filter(self, record: logging.LogRecord) -> bool:
        if isinstance(record.args, tuple) and any(
            isinstance(a, BaseException) for a in record.args
        ):
            record.args = tuple(
                f"<{type(a).__name__}>" if isinstance(a, BaseException) else a for a in record.args
            )
        return True


def logging_config(level: int | str = logging.INFO) -> dict[str, object]:
    """JSON lines when not on a terminal (what log shippers want), plain text on one.

    A dictConfig, so the Faust worker (which otherwise installs its own colour handler) gets
    exactly the same set-up.
    """
    formatter: dict[str, object] = (
        {"()": _PlainFormatter, "format": "%(asctime)s %(levelname)s %(name)s: %(message)s"}
        if sys.stderr.isatty()
        else {"()": _JsonFormatter}
    )
    return {
        "version": 1,
        "disable_existing_loggers": False,
        "formatters": {"default": formatter},
        "filters": {
            "redact": {"()": RedactExceptionArguments},
            "weaviate_objects": {"()": WeaviateObjectsFilter},
        },
        "handlers": {
            "default": {
                "class": "logging.StreamHandler",
                "formatter": "default",
                "filters": ["redact"],
                "stream": "ext://sys.stderr",
            }
        },
        "root": {"level": level, "handlers": ["default"]},
        # One line per HTTP request to Weaviate is noise at INFO.
        "loggers": {
            "httpx": {"level": "WARNING"},
            WEAVIATE_CLIENT_LOGGER: {"filters": ["weaviate_objects"]},
        },
    }


def configure_logging(level: int = logging.INFO) -> None:
    logging.config.dictConfig(logging_config(level))
