"""No log line carries an exception's text, whoever logs it and whatever the output format."""

from __future__ import annotations

import io
import logging
import logging.config
from collections.abc import Iterator

import pytest

from streamproc.logs import RedactExceptionArguments, _JsonFormatter, _PlainFormatter

SECRET = "document text zebra-quartz"


@pytest.fixture(params=[_JsonFormatter, _PlainFormatter])
def output(request: pytest.FixtureRequest) -> Iterator[tuple[logging.Logger, io.StringIO]]:
    stream = io.StringIO()
    handler = logging.StreamHandler(stream)
    handler.setFormatter(request.param("%(message)s"))
    handler.addFilter(RedactExceptionArguments())
    logger = logging.getLogger(f"test-logs-{request.param.__name__}")
    logger.addHandler(handler)
    logger.propagate = False
    yield logger, stream
    logger.removeHandler(handler)


def test_an_exception_passed_as_an_argument_is_logged_by_type(
    output: tuple[logging.Logger, io.StringIO],
) -> None:
    logger, stream = output
    # As mode's Service.crash does.
    logger.error("Crashed reason=%r", UnicodeEncodeError("utf-8", SECRET, 0, 1, "surrogates"))
    assert "UnicodeEncodeError" in stream.getvalue()
    assert SECRET not in stream.getvalue()


def test_a_traceback_is_logged_without_the_message(
    output: tuple[logging.Logger, io.StringIO],
) -> None:
    logger, stream = output
    try:
        raise ValueError(SECRET)
    except ValueError:
        logger.exception("failed")
    assert "ValueError" in stream.getvalue()
    assert "test_logs.py" in stream.getvalue()
    assert SECRET not in stream.getvalue()
