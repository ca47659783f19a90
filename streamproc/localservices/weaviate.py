"""Weaviate built from source with `go install` from the Go module proxy, run as one local node."""

from __future__ import annotations

import os
import shutil
import subprocess

import httpx

from streamproc.errors import ServiceError
from streamproc.localservices.process import ManagedProcess
from streamproc.settings import Settings

MODULE = "github.com/weaviate/weaviate/cmd/weaviate-server"


class LocalWeaviate:
    def __init__(self, settings: Settings) -> None:
        self.settings = settings
        local = settings.local
        self.home = local.cache_dir / "weaviate" / local.weaviate_version
        self.binary = self.home / "bin" / "weaviate-server"
        self.state = local.state_dir / "weaviate"
        self.proc = ManagedProcess(
            "weaviate", self.state / "weaviate.pid", self.state / "weaviate.log"
        )
        self.data_dir = self.state / "data"

    @property
    def ports(self) -> dict[str, int]:
        w, local = self.settings.weaviate, self.settings.local
        return {
            "weaviate http": w.http_port,
            "weaviate grpc": w.grpc_port,
            "weaviate gossip": local.weaviate_gossip_port,
            "weaviate data": local.weaviate_data_port,
            "weaviate raft": local.weaviate_raft_port,
            "weaviate raft rpc": local.weaviate_raft_rpc_port,
        }

    def provision(self) -> None:
        """Build the pinned server once (a few minutes on two cores); later calls reuse it."""
        if self.binary.exists():
            return
        if shutil.which("go") is None:
            raise ServiceError("Weaviate is built with `go install`; put Go >= 1.26 on PATH")
        self.binary.parent.mkdir(parents=True, exist_ok=True)
        result = subprocess.run(
            ["go", "install", f"{MODULE}@{self.settings.local.weaviate_version}"],
            env={**os.environ, "GOBIN": str(self.binary.parent), "GOFLAGS": "-mod=mod"},
            capture_output=True,
            text=True,
            check=False,
        )
        if result.returncode != 0 or not self.binary.exists():
            raise ServiceError(f"go install of Weaviate failed:\n{result.stderr[-4000:]}")

    def env(self) -> dict[str, str]:
        w, local = self.settings.weaviate, self.settings.local
        return {
            "PERSISTENCE_DATA_PATH": str(self.data_dir),
            **self._authentication(),
            "DEFAULT_VECTORIZER_MODULE": "none",
            # nearText and hybrid embed through each collection's own inferenceUrl (its model
            # version's `streamproc serve`); the module also needs a default, the active
            # model's, and must not wait at start-up for an endpoint that may start later.
            "ENABLE_MODULES": "text2vec-transformers",
            "TRANSFORMERS_INFERENCE_API": self.settings.inference.url_for(
                self.settings.active_model
            ),
            "TRANSFORMERS_WAIT_FOR_STARTUP": "false",
            # A write to a retired collection must fail, not quietly create it again.
            "AUTOSCHEMA_ENABLED": "false",
            "CLUSTER_HOSTNAME": "node1",
            "CLUSTER_IN_LOCALHOST": "true",
            "CLUSTER_ADVERTISE_ADDR": "127.0.0.1",
            "CLUSTER_GOSSIP_BIND_PORT": str(local.weaviate_gossip_port),
            "CLUSTER_DATA_BIND_PORT": str(local.weaviate_data_port),
            "RAFT_PORT": str(local.weaviate_raft_port),
            "RAFT_INTERNAL_RPC_PORT": str(local.weaviate_raft_rpc_port),
            "RAFT_BOOTSTRAP_EXPECT": "1",
            "GRPC_PORT": str(w.grpc_port),
            "DISABLE_TELEMETRY": "true",
            "GO_PROFILING_DISABLE": "true",
            "LOG_FORMAT": "json",
        }

    def _authentication(self) -> dict[str, str]:
        """With an API key in the settings, that key is the only way in (in the server's
        environment, never on disk); without one, anonymous access."""
        key = self.settings.weaviate.api_key
        if key is None:
            return {"AUTHENTICATION_ANONYMOUS_ACCESS_ENABLED": "true"}
        return {
            "AUTHENTICATION_ANONYMOUS_ACCESS_ENABLED": "false",
            "AUTHENTICATION_APIKEY_ENABLED": "true",
            "AUTHENTICATION_APIKEY_ALLOWED_KEYS": key.get_secret_value(),
            "AUTHENTICATION_APIKEY_USERS": "streamproc",
        }

    def start(self) -> None:
        self.state.mkdir(parents=True, exist_ok=True)
        w = self.settings.weaviate
        argv = [
            str(self.binary),
            "--scheme",
            "http",
            "--host",
            w.http_host,
            "--port",
            str(w.http_port),
        ]
        self.proc.start(argv, self.env(), self.state)
        self.proc.wait_ready(self.ready, self.settings.local.start_timeout_s)

    def ready(self) -> bool:
        return weaviate_ready(self.settings.weaviate.http_url)


def weaviate_ready(http_url: str) -> bool:
    try:
        return httpx.get(f"{http_url}/v1/.well-known/ready", timeout=2.0).status_code == 200
    except httpx.HTTPError:
        return False
