"""Reading a document's bytes: inline, `file://` or `http(s)://`, never more than the limit."""

from __future__ import annotations

import hashlib
from pathlib import Path
from urllib.parse import unquote, urlparse

import httpx
from tenacity import retry, retry_if_exception_type, stop_after_attempt, wait_exponential_jitter

from streamproc.errors import PermanentError, TransientError


def read_uri(uri: str, max_bytes: int, timeout_s: float = 30.0) -> bytes:
    parsed = urlparse(uri)
    if parsed.scheme == "file":
        return _read_file(Path(unquote(parsed.path)), max_bytes)
    if parsed.scheme in ("http", "https"):
        try:
            return _read_http(uri, max_bytes, timeout_s)
        except TransientError as exc:
            raise PermanentError(f"{uri}: {exc} (after retries)", reason="unreadable_uri") from exc
    raise PermanentError(
        f"URI scheme {parsed.scheme!r} is not supported (file, http, https)",
        reason="unreadable_uri",
    )


def _read_file(path: Path, max_bytes: int) -> bytes:
    try:
        with path.open("rb") as handle:
            data = handle.read(max_bytes + 1)
    except OSError as exc:
        raise PermanentError(
            f"cannot read {path}: {exc.strerror}", reason="unreadable_uri"
        ) from exc
    _check_size(len(data), max_bytes)
    return data


@retry(
    retry=retry_if_exception_type(TransientError),
    stop=stop_after_attempt(3),
    wait=wait_exponential_jitter(multiplier=0.5, max=5),
    reraise=True,
)
def _read_http(uri: str, max_bytes: int, timeout_s: float) -> bytes:
    try:
        with httpx.stream("GET", uri, timeout=timeout_s, follow_redirects=True) as response:
            if response.status_code >= 500:
                raise TransientError(f"HTTP {response.status_code}")
            if response.status_code >= 400:
                raise PermanentError(f"{uri}: HTTP {response.status_code}", reason="unreadable_uri")
            data = bytearray()
            for part in response.iter_bytes():
                data += part
                _check_size(len(data), max_bytes)
            return bytes(data)
    except httpx.TransportError as exc:
        raise TransientError(f"{type(exc).__name__}: {exc}") from exc


def _check_size(size: int, max_bytes: int) -> None:
    if size > max_bytes:
        raise PermanentError(
            f"document is larger than the {max_bytes}-byte limit", reason="too_large"
        )


def check_sha256(data: bytes, expected: str | None) -> str:
    actual = hashlib.sha256(data).hexdigest()
    if expected is not None and expected.lower() != actual:
        raise PermanentError(
            f"content sha256 is {actual}, the event says {expected}", reason="sha256_mismatch"
        )
    return actual


def decode_text(data: bytes) -> str:
    try:
        return data.decode("utf-8")
    except UnicodeDecodeError as exc:
        raise PermanentError(
            f"content is not UTF-8 (byte {exc.start}: {exc.reason})", reason="not_utf8"
        ) from exc
