"""Reading a document's bytes: inline, `file://` under allowed roots or `http(s)://` to allowed
addresses; never more than the limit, never past one deadline.

A refused or failed read is a `PermanentError` whose `reason` lands in the DLQ header:
`uri_not_allowed`, `not_a_file`, `unreadable_uri`, `too_large`, `uri_timeout`, `uri_unreachable`.
"""

from __future__ import annotations

import asyncio
import errno
import hashlib
import ipaddress
import os
import socket
import ssl
import stat
from collections.abc import Sequence
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from urllib.parse import SplitResult, unquote, urlsplit

import httpx
from tenacity import AsyncRetrying, retry_if_exception_type, stop_after_attempt
from tenacity import wait_exponential_jitter as backoff

from streamproc.errors import PermanentError, TransientError
from streamproc.settings import SourceSettings

IPAddress = ipaddress.IPv4Address | ipaddress.IPv6Address
IPNetwork = ipaddress.IPv4Network | ipaddress.IPv6Network

# Kernel views and device nodes are never documents, whatever root an operator configures.
SPECIAL_TREES = (Path("/proc"), Path("/sys"), Path("/dev"))
# Cloud instance metadata: refused even when private hosts are allowed.
METADATA_NETWORKS: tuple[IPNetwork, ...] = tuple(
    ipaddress.ip_network(n)
    for n in ("169.254.169.254/32", "169.254.170.2/32", "100.100.100.200/32", "fd00:ec2::254/128")
)
NAT64 = ipaddress.ip_network("64:ff9b::/96")
READ_SIZE = 1024 * 1024
# getaddrinfo cannot be cancelled: it runs on threads that asyncio.run does not wait for, so a
# hung resolver cannot hold a read past its deadline.
_resolver = ThreadPoolExecutor(2, thread_name_prefix="resolve")


def read_uri(uri: str, max_bytes: int, sources: SourceSettings) -> bytes:
    try:
        parsed = urlsplit(uri)
    except ValueError as exc:
        raise PermanentError(f"malformed URI: {exc}", reason="unreadable_uri") from exc
    scheme = parsed.scheme.lower()
    if scheme == "file":
        return _read_file(parsed, max_bytes, sources.file_roots)
    if scheme in ("http", "https"):
        return _read_http(uri, max_bytes, sources)
    raise PermanentError(
        f"URI scheme {parsed.scheme!r} is not allowed (file, http, https)",
        reason="uri_not_allowed",
    )


# --- file:// -------------------------------------------------------------------------------


def _read_file(parsed: SplitResult, max_bytes: int, roots: Sequence[Path]) -> bytes:
    if parsed.netloc not in ("", "localhost"):
        raise PermanentError(
            f"file URI names the host {parsed.netloc!r}; only local files are read",
            reason="uri_not_allowed",
        )
    text = unquote(parsed.path)
    if "\x00" in text:
        raise PermanentError("file path holds a NUL byte", reason="unreadable_uri")
    path = Path(text)
    if not path.is_absolute():
        raise PermanentError(f"file path {text!r} is not absolute", reason="unreadable_uri")
    real = Path(os.path.realpath(path))
    root = next(
        (r for r in (Path(os.path.realpath(x)) for x in roots) if real.is_relative_to(r)), None
    )
    if root is None or any(real.is_relative_to(tree) for tree in SPECIAL_TREES):
        raise PermanentError(
            f"{path} is not under an allowed file root (sources.file_roots)",
            reason="uri_not_allowed",
        )
    try:
        fd = _open_beneath(root, real.relative_to(root).parts, path)
        try:
            return _read_fd(fd, max_bytes)
        finally:
            os.close(fd)
    except OSError as exc:
        raise _file_error(path, exc) from exc


def _open_beneath(root: Path, parts: Sequence[str], shown: Path) -> int:
    """Walk from the root one component at a time without following links, so a component
    swapped for a symlink after the containment check fails the open instead of leaving
    the root; the file is stat'ed before it is opened, so a FIFO or device is never opened."""
    if not parts:
        raise PermanentError(f"{shown} is a directory", reason="not_a_file")
    directory = os.open(root, os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC)
    try:
        for part in parts[:-1]:
            inner = os.open(
                part,
                os.O_RDONLY | os.O_DIRECTORY | os.O_NOFOLLOW | os.O_CLOEXEC,
                dir_fd=directory,
            )
            os.close(directory)
            directory = inner
        before = os.stat(parts[-1], dir_fd=directory, follow_symlinks=False)
        if not stat.S_ISREG(before.st_mode):
            raise PermanentError(f"{shown} is not a regular file", reason="not_a_file")
        fd = os.open(
            parts[-1],
            os.O_RDONLY | os.O_NOFOLLOW | os.O_NONBLOCK | os.O_CLOEXEC,
            dir_fd=directory,
        )
    finally:
        os.close(directory)
    after = os.fstat(fd)
    if (after.st_dev, after.st_ino) != (before.st_dev, before.st_ino):
        os.close(fd)
        raise PermanentError(f"{shown} changed while it was opened", reason="uri_not_allowed")
    return fd


def _read_fd(fd: int, max_bytes: int) -> bytes:
    _check_size(os.fstat(fd).st_size, max_bytes)
    data = bytearray()
    while part := os.read(fd, min(READ_SIZE, max_bytes + 1 - len(data))):
        data += part
        _check_size(len(data), max_bytes)
    return bytes(data)


def _file_error(path: Path, exc: OSError) -> Exception:
    if exc.errno in (errno.EMFILE, errno.ENFILE, errno.ENOMEM):
        # The process is out of resources, not the document: not a dead letter.
        return exc
    if exc.errno == errno.ELOOP:
        return PermanentError(f"{path}: a symlink appeared on the way", reason="uri_not_allowed")
    if exc.errno in (errno.ENXIO, errno.ENODEV, errno.EISDIR):
        return PermanentError(f"{path} is not a regular file", reason="not_a_file")
    return PermanentError(f"cannot read {path}: {exc.strerror}", reason="unreadable_uri")


# --- http(s):// -----------------------------------------------------------------------------


def _read_http(uri: str, max_bytes: int, sources: SourceSettings) -> bytes:
    shown = _shown(uri)
    try:
        return asyncio.run(_fetch(uri, max_bytes, sources))
    except TimeoutError as exc:
        raise PermanentError(
            f"{shown}: no complete answer within {sources.http_timeout_s:g} s", reason="uri_timeout"
        ) from exc
    except TransientError as exc:
        raise PermanentError(
            f"{shown}: {exc} (after {sources.http_attempts} attempts)", reason="uri_unreachable"
        ) from exc
    except httpx.InvalidURL as exc:
        raise PermanentError(f"{shown}: invalid URL: {exc}", reason="unreadable_uri") from exc


async def _fetch(uri: str, max_bytes: int, sources: SourceSettings) -> bytes:
    """The whole read, retries and redirects included, under one deadline."""
    retrying = AsyncRetrying(
        retry=retry_if_exception_type(TransientError),
        stop=stop_after_attempt(sources.http_attempts),
        wait=backoff(multiplier=0.5, max=5, jitter=0.5),
        reraise=True,
    )
    url = httpx.URL(uri)
    async with asyncio.timeout(sources.http_timeout_s):
        return await retrying(_fetch_once, url, max_bytes, sources)


async def _fetch_once(url: httpx.URL, max_bytes: int, sources: SourceSettings) -> bytes:
    # No proxies from the environment: the connection goes to the address that was checked.
    async with httpx.AsyncClient(trust_env=False, timeout=None) as client:
        for _ in range(sources.max_redirects + 1):
            response = await _send(client, url, sources)
            try:
                if not response.is_redirect:
                    return await _body(url, response, max_bytes)
                url = url.join(response.headers["location"])
                if url.scheme not in ("http", "https"):
                    raise PermanentError(
                        f"redirect to a {url.scheme!r} URI is not allowed",
                        reason="uri_not_allowed",
                    )
            finally:
                await response.aclose()
    raise PermanentError(
        f"more than {sources.max_redirects} redirects (sources.max_redirects)",
        reason="unreadable_uri",
    )


async def _send(
    client: httpx.AsyncClient, url: httpx.URL, sources: SourceSettings
) -> httpx.Response:
    address = await checked_address(url, sources)
    host = url.raw_host.decode("ascii")
    request = client.build_request(
        "GET",
        url.copy_with(host=str(address)),
        # The byte limit counts what arrives, not what a compressed body would expand to.
        headers={"Host": url.netloc.decode("ascii"), "Accept-Encoding": "identity"},
        # The certificate is checked against the name, though the socket goes to the address.
        extensions={"sni_hostname": host} if url.scheme == "https" else {},
    )
    try:
        return await client.send(request, stream=True)
    except httpx.ConnectError as exc:
        if _caused_by(exc, ssl.SSLCertVerificationError):
            raise PermanentError(
                f"{_shown(str(url))}: TLS certificate not trusted", reason="uri_unreachable"
            ) from exc
        raise TransientError(f"connect: {exc}") from exc
    except (httpx.NetworkError, httpx.RemoteProtocolError) as exc:
        raise TransientError(f"{type(exc).__name__}: {exc}") from exc
    except httpx.HTTPError as exc:
        raise PermanentError(
            f"{_shown(str(url))}: {type(exc).__name__}: {exc}", reason="unreadable_uri"
        ) from exc


async def _body(url: httpx.URL, response: httpx.Response, max_bytes: int) -> bytes:
    status = response.status_code
    if status == 429 or status >= 500:
        raise TransientError(f"HTTP {status}")
    if status >= 300:
        raise PermanentError(f"{_shown(str(url))}: HTTP {status}", reason="unreadable_uri")
    declared = response.headers.get("content-length", "")
    if declared.isdigit():
        _check_size(int(declared), max_bytes)
    data = bytearray()
    try:
        async for part in response.aiter_bytes():
            data += part
            _check_size(len(data), max_bytes)
    except (httpx.NetworkError, httpx.RemoteProtocolError) as exc:
        raise TransientError(f"body cut short: {type(exc).__name__}") from exc
    except httpx.DecodingError as exc:
        raise PermanentError(
            f"{_shown(str(url))}: body cannot be decoded: {exc}", reason="unreadable_uri"
        ) from exc
    return bytes(data)


async def checked_address(url: httpx.URL, sources: SourceSettings) -> IPAddress:
    """Resolve once; every address the name has must be allowed, and the first is used."""
    host = url.raw_host.decode("ascii").lower().rstrip(".")
    if not host:
        raise PermanentError("URI names no host", reason="unreadable_uri")
    try:
        addresses = [ipaddress.ip_address(host)]
    except ValueError:
        addresses = await _resolve(host, url.port or (443 if url.scheme == "https" else 80))
    for address in addresses:
        if not address_allowed(host, address, sources):
            raise PermanentError(
                f"{host} resolves to {address}, which is not allowed "
                "(sources.allow_private_hosts, sources.allowed_hosts)",
                reason="uri_not_allowed",
            )
    return addresses[0]


async def _resolve(host: str, port: int) -> list[IPAddress]:
    loop = asyncio.get_running_loop()
    try:
        infos = await loop.run_in_executor(
            _resolver, lambda: socket.getaddrinfo(host, port, type=socket.SOCK_STREAM)
        )
    except socket.gaierror as exc:
        if exc.errno == socket.EAI_AGAIN:
            raise TransientError(f"cannot resolve {host}: {exc.strerror}") from exc
        raise PermanentError(
            f"cannot resolve {host}: {exc.strerror}", reason="uri_unreachable"
        ) from exc
    # The scope of a link-local IPv6 address ("%eth0") is not part of the address.
    return [ipaddress.ip_address(str(info[4][0]).split("%")[0]) for info in infos]


def address_allowed(host: str, address: IPAddress, sources: SourceSettings) -> bool:
    names, networks = _allowed(sources.allowed_hosts)
    if host in names or any(address in n for n in networks if n.version == address.version):
        return True
    embedded = _embedded_ipv4(address)
    if embedded is not None:
        return address_allowed(host, embedded, sources)
    if address.is_global and not address.is_multicast:
        return True
    never = (
        address.is_link_local
        or address.is_multicast
        or address.is_unspecified
        # ::1 sits in IPv6's reserved ::/8 but is plain loopback.
        or (address.is_reserved and not address.is_loopback)
        or any(address in n for n in METADATA_NETWORKS if n.version == address.version)
    )
    return sources.allow_private_hosts and not never


def _embedded_ipv4(address: IPAddress) -> ipaddress.IPv4Address | None:
    """The IPv4 address an IPv4-mapped or NAT64 IPv6 address really reaches."""
    if isinstance(address, ipaddress.IPv4Address):
        return None
    if address.ipv4_mapped is not None:
        return address.ipv4_mapped
    if address in NAT64:
        return ipaddress.IPv4Address(int(address) & 0xFFFFFFFF)
    return None


def _allowed(entries: Sequence[str]) -> tuple[set[str], list[IPNetwork]]:
    names: set[str] = set()
    networks: list[IPNetwork] = []
    for entry in entries:
        try:
            networks.append(ipaddress.ip_network(entry, strict=False))
        except ValueError:
            names.add(entry.lower().rstrip("."))
    return names, networks


def _caused_by(exc: BaseException, kind: type[BaseException]) -> bool:
    seen: BaseException | None = exc
    while seen is not None:
        if isinstance(seen, kind):
            return True
        seen = seen.__cause__ or seen.__context__
    return False


def _shown(uri: str) -> str:
    """The URI without credentials or query string, which may hold tokens."""
    try:
        parts = urlsplit(uri)
        port = f":{parts.port}" if parts.port else ""
        return f"{parts.scheme}://{parts.hostname or ''}{port}{parts.path}"
    except ValueError:
        return "<malformed URI>"


# --- shared ---------------------------------------------------------------------------------


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
