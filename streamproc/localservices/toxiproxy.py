"""Toxiproxy built with `go install` from the Go module proxy, for network faults in tests.

Provisioned and cached like Weaviate (`LocalWeaviate`): one binary per version under the
cache dir, run as a managed process of the profile, driven through its HTTP API.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import tempfile
from pathlib import Path
from typing import Any

import httpx

from streamproc.errors import ServiceError
from streamproc.localservices.process import ManagedProcess, check_ports_free
from streamproc.settings import Settings

MODULE = "github.com/Shopify/toxiproxy/v2/cmd/server"
VERSION = "v2.12.0"
API_PORT = 18474


class LocalToxiproxy:
    def __init__(
        self, settings: Settings, api_port: int = API_PORT, version: str = VERSION
    ) -> None:
        local = settings.local
        self.version = version
        self.api_port = api_port
        self.home = local.cache_dir / "toxiproxy" / version
        self.binary = self.home / "bin" / "toxiproxy-server"
        self.state = local.state_dir / "toxiproxy"
        self.proc = ManagedProcess(
            "toxiproxy", self.state / "toxiproxy.pid", self.state / "toxiproxy.log"
        )
        self.api = ToxiproxyApi(f"http://127.0.0.1:{api_port}")

    def provision(self) -> None:
        """Build the pinned server once; later calls reuse it."""
        if self.binary.exists():
            return
        if shutil.which("go") is None:
            raise ServiceError("Toxiproxy is built with `go install`; put Go on PATH")
        self.binary.parent.mkdir(parents=True, exist_ok=True)
        # The package is `cmd/server`, so `go install` names the binary `server`: build into a
        # scratch GOBIN and move it, so a half-built binary never sits at the cached path.
        with tempfile.TemporaryDirectory(dir=self.home) as gobin:
            result = subprocess.run(
                ["go", "install", f"{MODULE}@{self.version}"],
                env={**os.environ, "GOBIN": gobin, "GOFLAGS": "-mod=mod"},
                capture_output=True,
                text=True,
                check=False,
            )
            built = Path(gobin) / "server"
            if result.returncode != 0 or not built.exists():
                raise ServiceError(f"go install of Toxiproxy failed:\n{result.stderr[-4000:]}")
            built.rename(self.binary)

    def start(self, timeout_s: float = 30.0) -> None:
        """Start it unless ours already answers; every proxy and toxic starts from nothing."""
        self.provision()
        if self.proc.process() is not None and self.ready():
            self.api.clear()
            return
        self.proc.stop()
        check_ports_free({"toxiproxy api": self.api_port})
        self.state.mkdir(parents=True, exist_ok=True)
        argv = [str(self.binary), "-host", "127.0.0.1", "-port", str(self.api_port)]
        self.proc.start(argv, {}, self.state)
        self.proc.wait_ready(self.ready, timeout_s)

    def stop(self) -> bool:
        return self.proc.stop()

    def ready(self) -> bool:
        try:
            return httpx.get(f"{self.api.url}/version", timeout=2.0).status_code == 200
        except httpx.HTTPError:
            return False


class ToxiproxyApi:
    """The subset of Toxiproxy's HTTP API the fault tests use."""

    def __init__(self, url: str) -> None:
        self.url = url

    def _call(self, method: str, path: str, body: dict[str, Any] | None = None) -> Any:
        response = httpx.request(method, f"{self.url}{path}", json=body, timeout=10.0)
        if response.status_code >= 400:
            raise ServiceError(
                f"toxiproxy {method} {path}: HTTP {response.status_code} {response.text[:500]}"
            )
        return response.json() if response.content else None

    def create_proxy(self, name: str, listen: str, upstream: str) -> None:
        self._call(
            "POST",
            "/proxies",
            {"name": name, "listen": listen, "upstream": upstream, "enabled": True},
        )

    def proxies(self) -> dict[str, Any]:
        result: dict[str, Any] = self._call("GET", "/proxies")
        return result

    def delete_proxy(self, name: str) -> None:
        self._call("DELETE", f"/proxies/{name}")

    def clear(self) -> None:
        for name in self.proxies():
            self.delete_proxy(name)

    def reset(self) -> None:
        """Every proxy enabled again, every toxic removed."""
        self._call("POST", "/reset")

    def add_toxic(
        self,
        proxy: str,
        kind: str,
        attributes: dict[str, int],
        *,
        stream: str = "downstream",
        toxicity: float = 1.0,
        name: str | None = None,
    ) -> str:
        toxic = name or f"{kind}_{stream}"
        self._call(
            "POST",
            f"/proxies/{proxy}/toxics",
            {
                "name": toxic,
                "type": kind,
                "stream": stream,
                "toxicity": toxicity,
                "attributes": attributes,
            },
        )
        return toxic

    def remove_toxic(self, proxy: str, toxic: str) -> None:
        self._call("DELETE", f"/proxies/{proxy}/toxics/{toxic}")
