"""`streamproc dev up|down|status`: local Kafka and Weaviate, provisioned into a cache."""

from __future__ import annotations

import shutil
from dataclasses import dataclass

from streamproc.localservices.kafka import LocalKafka
from streamproc.localservices.process import check_ports_free
from streamproc.localservices.weaviate import LocalWeaviate
from streamproc.settings import Settings


@dataclass(frozen=True)
class ServiceStatus:
    name: str
    pid: int | None
    ready: bool
    address: str
    log: str

    def __str__(self) -> str:
        state = f"running (pid {self.pid})" if self.pid else "stopped"
        if self.pid and not self.ready:
            state += ", not ready"
        return f"{self.name:9} {state:28} {self.address:22} log: {self.log}"


class LocalServices:
    def __init__(self, settings: Settings) -> None:
        self.settings = settings
        self.kafka = LocalKafka(settings)
        self.weaviate = LocalWeaviate(settings)

    def provision(self) -> None:
        self.kafka.provision()
        self.weaviate.provision()

    def up(self, *, fresh: bool = False) -> list[str]:
        """Start what is not running; returns what it did, one line per service. `fresh` first
        stops both and empties their data directories, so nothing from an earlier run (topics,
        committed offsets, collections) can make a cold-start bug pass."""
        self.provision()
        if fresh:
            self.down()
            for service in (self.kafka, self.weaviate):
                shutil.rmtree(service.data_dir, ignore_errors=True)
        done = []
        for service in (self.kafka, self.weaviate):
            if service.proc.process() is not None and service.ready():
                done.append(f"{service.proc.name}: already running")
                continue
            # A process of ours that is not ready (stuck or half dead) is replaced.
            service.proc.stop()
            check_ports_free(service.ports)
            service.start()
            done.append(f"{service.proc.name}: started")
        return done

    def down(self) -> list[str]:
        lines = []
        for service in (self.weaviate, self.kafka):
            stopped = service.proc.stop()
            lines.append(f"{service.proc.name}: {'stopped' if stopped else 'was not running'}")
        return lines

    def status(self) -> list[ServiceStatus]:
        out = []
        for service, address in (
            (self.kafka, self.settings.kafka.bootstrap_servers),
            (self.weaviate, self.settings.weaviate.http_url),
        ):
            proc = service.proc.process()
            out.append(
                ServiceStatus(
                    name=service.proc.name,
                    pid=proc.pid if proc else None,
                    ready=bool(proc) and service.ready(),
                    address=address,
                    log=str(service.proc.logfile),
                )
            )
        return out
