"""Reading documents: real files, a real FIFO and socket, a real HTTP server on loopback."""

from __future__ import annotations

import asyncio
import os
import socket
import threading
import time
from collections import Counter
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import ClassVar

import httpx
import pytest

from streamproc import content
from streamproc.content import checked_address, read_uri
from streamproc.errors import PermanentError
from streamproc.settings import SourceSettings

LIMIT = 100_000
BODY = b"# Title\n\nHello from the test server.\n"


def _reason(uri: str, sources: SourceSettings, max_bytes: int = LIMIT) -> str:
    with pytest.raises(PermanentError) as caught:
        read_uri(uri, max_bytes, sources)
    return caught.value.reason


# --- file:// -------------------------------------------------------------------------------


@pytest.fixture
def root(tmp_path: Path) -> Path:
    folder = tmp_path / "root"
    (folder / "sub").mkdir(parents=True)
    (folder / "sub" / "doc.md").write_bytes(BODY)
    (tmp_path / "secret.md").write_bytes(b"SECRET outside the root")
    return folder


def _sources(*roots: Path) -> SourceSettings:
    return SourceSettings(file_roots=list(roots))


def test_a_regular_file_under_a_root_is_read(root: Path) -> None:
    assert read_uri((root / "sub" / "doc.md").as_uri(), LIMIT, _sources(root)) == BODY


def test_a_symlink_that_stays_inside_the_root_is_followed(root: Path) -> None:
    (root / "alias.md").symlink_to(root / "sub" / "doc.md")
    assert read_uri((root / "alias.md").as_uri(), LIMIT, _sources(root)) == BODY


def test_no_file_is_read_without_a_configured_root(root: Path) -> None:
    assert _reason((root / "sub" / "doc.md").as_uri(), SourceSettings()) == "uri_not_allowed"


def test_a_file_outside_every_root_is_refused(root: Path, tmp_path: Path) -> None:
    assert _reason((tmp_path / "secret.md").as_uri(), _sources(root)) == "uri_not_allowed"
    assert _reason("file:///etc/passwd", _sources(root)) == "uri_not_allowed"
    # `..` is resolved before the check.
    assert _reason(f"file://{root}/../secret.md", _sources(root)) == "uri_not_allowed"


def test_symlinks_that_leave_the_root_are_refused(root: Path, tmp_path: Path) -> None:
    (root / "escape.md").symlink_to(tmp_path / "secret.md")
    (root / "etc").symlink_to("/etc")
    assert _reason((root / "escape.md").as_uri(), _sources(root)) == "uri_not_allowed"
    assert _reason((root / "etc" / "passwd").as_uri(), _sources(root)) == "uri_not_allowed"


def test_a_folder_swapped_for_a_symlink_after_the_check_is_not_followed(
    root: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    (tmp_path / "doc.md").write_bytes(b"SECRET outside the root")
    resolve = os.path.realpath

    def resolve_then_swap(path: str | os.PathLike[str]) -> str:
        real = resolve(path)
        if real.endswith("doc.md"):
            (root / "sub").rename(root / "moved")
            (root / "sub").symlink_to(tmp_path)
        return real

    monkeypatch.setattr(content.os.path, "realpath", resolve_then_swap)
    with pytest.raises(PermanentError):
        read_uri((root / "sub" / "doc.md").as_uri(), LIMIT, _sources(root))


def test_proc_is_refused_even_under_a_root_of_slash() -> None:
    assert _reason("file:///proc/self/environ", _sources(Path("/"))) == "uri_not_allowed"
    assert _reason("file:///proc/self/environ", SourceSettings()) == "uri_not_allowed"
    assert _reason("file:///dev/zero", _sources(Path("/"))) == "uri_not_allowed"


def test_a_missing_file_under_a_root_is_unreadable(root: Path) -> None:
    assert _reason((root / "missing.md").as_uri(), _sources(root)) == "unreadable_uri"


def test_directories_are_not_files(root: Path) -> None:
    assert _reason((root / "sub").as_uri(), _sources(root)) == "not_a_file"
    assert _reason(root.as_uri(), _sources(root)) == "not_a_file"


@pytest.mark.timeout(10)
def test_a_fifo_is_refused_without_blocking(root: Path) -> None:
    fifo = root / "pipe.md"
    os.mkfifo(fifo)
    reasons: list[str] = []
    reader = threading.Thread(target=lambda: reasons.append(_reason(fifo.as_uri(), _sources(root))))
    reader.start()
    reader.join(timeout=5)
    assert not reader.is_alive(), "reading a FIFO blocked"
    assert reasons == ["not_a_file"]


def test_a_socket_is_refused(root: Path) -> None:
    path = root / "s.sock"
    with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as server:
        server.bind(str(path))
        assert _reason(path.as_uri(), _sources(root)) == "not_a_file"


def test_a_nul_byte_in_the_path_is_refused(root: Path) -> None:
    uri = (root / "sub" / "doc.md").as_uri()
    assert _reason(uri.replace("doc.md", "doc%00.md"), _sources(root)) == "unreadable_uri"
    assert _reason(uri.replace("doc.md", "doc\x00.md"), _sources(root)) == "unreadable_uri"


def test_a_file_over_the_limit_is_too_large(root: Path) -> None:
    (root / "big.md").write_bytes(b"x" * (LIMIT + 1))
    (root / "exact.md").write_bytes(b"x" * LIMIT)
    assert _reason((root / "big.md").as_uri(), _sources(root)) == "too_large"
    assert len(read_uri((root / "exact.md").as_uri(), LIMIT, _sources(root))) == LIMIT


def test_other_hosts_and_schemes_are_refused(root: Path) -> None:
    assert _reason(f"file://example.com{root}/sub/doc.md", _sources(root)) == "uri_not_allowed"
    assert _reason("ftp://example.com/doc.md", _sources(root)) == "uri_not_allowed"
    assert _reason("gopher://127.0.0.1/", _sources(root)) == "uri_not_allowed"


# --- address checks (literal addresses need no network) -------------------------------------


def _check(host: str, sources: SourceSettings) -> str:
    try:
        return str(asyncio.run(checked_address(httpx.URL(f"http://{host}/x"), sources)))
    except PermanentError as exc:
        return exc.reason


REFUSED = [
    "127.0.0.1",
    "10.1.2.3",
    "192.168.0.10",
    "172.16.5.4",
    "100.64.0.1",
    "169.254.169.254",
    "0.0.0.0",
    "224.0.0.1",
    "240.0.0.1",
    "[::1]",
    "[::]",
    "[fe80::1]",
    "[fd00:ec2::254]",
    "[::ffff:127.0.0.1]",
    "[::ffff:169.254.169.254]",
    "[64:ff9b::a9fe:a9fe]",
]


@pytest.mark.parametrize("host", REFUSED)
def test_non_public_addresses_are_refused_by_default(host: str) -> None:
    assert _check(host, SourceSettings()) == "uri_not_allowed"


def test_public_addresses_are_allowed() -> None:
    assert _check("93.184.216.34", SourceSettings()) == "93.184.216.34"
    assert _check("[2606:2800:220:1::1]", SourceSettings()) == "2606:2800:220:1::1"


def test_allow_private_hosts_opens_private_but_never_metadata_or_link_local() -> None:
    sources = SourceSettings(allow_private_hosts=True)
    for host in ("127.0.0.1", "10.1.2.3", "100.64.0.1"):
        assert _check(host, sources) == host
    assert _check("[::1]", sources) == "::1"
    for host in ("169.254.169.254", "100.100.100.200", "[fd00:ec2::254]", "[fe80::1]", "0.0.0.0"):
        assert _check(host, sources) == "uri_not_allowed"


def test_allowed_hosts_name_hosts_and_networks() -> None:
    sources = SourceSettings(allowed_hosts=["10.0.0.0/8", "localhost"])
    assert _check("10.1.2.3", sources) == "10.1.2.3"
    assert _check("192.168.0.10", sources) == "uri_not_allowed"
    # Resolved from /etc/hosts; refused unless the name itself is allowed.
    assert _check("localhost", sources) in ("127.0.0.1", "::1")
    assert _check("localhost", SourceSettings()) == "uri_not_allowed"


# --- http:// against a real server ----------------------------------------------------------


class _Handler(BaseHTTPRequestHandler):
    # Shared by the handler threads: what the server saw, per test.
    hits: ClassVar[Counter[str]] = Counter()
    hosts: ClassVar[list[str]] = []

    def log_message(self, *args: object) -> None:
        pass

    def _send(self, status: int, body: bytes = b"", **headers: str) -> None:
        self.send_response(status)
        for name, value in headers.items():
            self.send_header(name.replace("_", "-"), value)
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def do_GET(self) -> None:
        self.hits[self.path] += 1
        self.hosts.append(self.headers["Host"])
        port = self.server.server_address[1]
        if self.path == "/ok":
            self._send(200, BODY)
        elif self.path.startswith("/chain/"):
            left = int(self.path.rsplit("/", 1)[1])
            self._send(302, Location=f"/chain/{left - 1}" if left else "/ok")
        elif self.path == "/loop":
            self._send(302, Location="/loop")
        elif self.path == "/to-metadata":
            self._send(302, Location="http://169.254.169.254/latest/meta-data/")
        elif self.path == "/to-ipv6-loopback":
            self._send(302, Location=f"http://[::1]:{port}/ok")
        elif self.path == "/to-file":
            self._send(302, Location="file:///etc/passwd")
        elif self.path == "/missing":
            self._send(404)
        elif self.path == "/unavailable":
            self._send(503)
        elif self.path == "/busy-once":
            self._send(429 if self.hits[self.path] == 1 else 200, BODY)
        elif self.path == "/trickle":
            self._stream(b"x", pause_s=0.2, declared=10_000)
        elif self.path == "/endless":
            self._stream(b"y" * 65536, pause_s=0.0, declared=None)
        else:
            self._send(500)

    def _stream(self, piece: bytes, pause_s: float, declared: int | None) -> None:
        self.send_response(200)
        if declared is not None:
            self.send_header("Content-Length", str(declared))
        self.end_headers()
        try:
            for _ in range(2000):
                self.wfile.write(piece)
                self.wfile.flush()
                time.sleep(pause_s)
        except (BrokenPipeError, ConnectionResetError):
            pass


@pytest.fixture
def server() -> Iterator[str]:
    _Handler.hits.clear()
    _Handler.hosts.clear()
    httpd = ThreadingHTTPServer(("127.0.0.1", 0), _Handler)
    httpd.daemon_threads = True
    thread = threading.Thread(target=httpd.serve_forever, daemon=True)
    thread.start()
    try:
        yield f"http://127.0.0.1:{httpd.server_address[1]}"
    finally:
        httpd.shutdown()
        httpd.server_close()


LOOPBACK = SourceSettings(allow_private_hosts=True, http_timeout_s=5, max_redirects=3)


def test_a_document_is_fetched(server: str) -> None:
    assert read_uri(f"{server}/ok", LIMIT, LOOPBACK) == BODY


def test_loopback_is_refused_unless_allowed(server: str) -> None:
    assert _reason(f"{server}/ok", SourceSettings()) == "uri_not_allowed"
    assert _Handler.hits["/ok"] == 0
    allowed = SourceSettings(allowed_hosts=["127.0.0.1"])
    assert read_uri(f"{server}/ok", LIMIT, allowed) == BODY


def test_a_name_is_resolved_once_and_the_checked_address_is_used(
    server: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    # A rebinding resolver: the first answer passes the check, any later one is metadata.
    lookups: list[str] = []

    def rebinding(host: str, port: int, **_: object) -> list[tuple[object, ...]]:
        lookups.append(host)
        address = "127.0.0.1" if len(lookups) == 1 else "169.254.169.254"
        return [(socket.AF_INET, socket.SOCK_STREAM, 6, "", (address, port))]

    monkeypatch.setattr(content.socket, "getaddrinfo", rebinding)
    port = server.rsplit(":", 1)[1]
    assert read_uri(f"http://docs.example.test:{port}/ok", LIMIT, LOOPBACK) == BODY
    assert lookups == ["docs.example.test"]
    assert _Handler.hosts == [f"docs.example.test:{port}"]


def test_redirects_within_the_limit_are_followed(server: str) -> None:
    assert read_uri(f"{server}/chain/2", LIMIT, LOOPBACK) == BODY


def test_too_many_redirects_are_refused(server: str) -> None:
    assert _reason(f"{server}/chain/3", LOOPBACK) == "unreadable_uri"
    assert _reason(f"{server}/loop", LOOPBACK) == "unreadable_uri"
    assert _Handler.hits["/loop"] == LOOPBACK.max_redirects + 1


def test_every_redirect_is_checked_again(server: str) -> None:
    assert _reason(f"{server}/to-metadata", LOOPBACK) == "uri_not_allowed"
    assert _reason(f"{server}/to-file", LOOPBACK) == "uri_not_allowed"
    only_this_address = SourceSettings(allowed_hosts=["127.0.0.1"])
    assert _reason(f"{server}/to-ipv6-loopback", only_this_address) == "uri_not_allowed"


def test_client_errors_are_permanent_at_once(server: str) -> None:
    assert _reason(f"{server}/missing", LOOPBACK) == "unreadable_uri"
    assert _Handler.hits["/missing"] == 1


def test_server_errors_are_retried_then_dead_lettered(server: str) -> None:
    sources = LOOPBACK.model_copy(update={"http_attempts": 3})
    assert _reason(f"{server}/unavailable", sources) == "uri_unreachable"
    assert _Handler.hits["/unavailable"] == 3


def test_a_transient_refusal_recovers_on_retry(server: str) -> None:
    assert read_uri(f"{server}/busy-once", LIMIT, LOOPBACK) == BODY
    assert _Handler.hits["/busy-once"] == 2


def test_an_unreachable_host_ends_as_unreachable() -> None:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    sources = LOOPBACK.model_copy(update={"http_attempts": 2})
    assert _reason(f"http://127.0.0.1:{port}/ok", sources) == "uri_unreachable"


def test_a_trickling_server_hits_the_total_deadline(server: str) -> None:
    sources = LOOPBACK.model_copy(update={"http_timeout_s": 2.0})
    started = time.monotonic()
    assert _reason(f"{server}/trickle", sources) == "uri_timeout"
    assert time.monotonic() - started < 3.0


def test_the_byte_limit_holds_while_streaming(server: str) -> None:
    started = time.monotonic()
    assert _reason(f"{server}/endless", LOOPBACK) == "too_large"
    assert time.monotonic() - started < 3.0


def test_malformed_urls_are_permanent() -> None:
    assert _reason("http://[::1/x", LOOPBACK) == "unreadable_uri"
    assert _reason("http:///no-host", LOOPBACK) == "unreadable_uri"
