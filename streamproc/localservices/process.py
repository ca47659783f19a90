"""Start and stop exactly the processes we started: a pidfile records pid and start time."""

from __future__ import annotations

import contextlib
import json
import os
import signal
import socket
import subprocess
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path

import psutil

from streamproc.errors import ServiceError


@dataclass(frozen=True)
class PortInUse:
    port: int
    owner: str

    def __str__(self) -> str:
        return f"port {self.port} is already in use by {self.owner}"


def port_owner(port: int) -> str | None:
    """Who listens on 127.0.0.1:`port`, as 'pid N (command line)', or None if it is free."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            sock.bind(("127.0.0.1", port))
            return None
        except OSError:
            pass
    for conn in psutil.net_connections(kind="tcp"):
        if conn.status == psutil.CONN_LISTEN and conn.laddr and conn.laddr.port == port:
            if conn.pid is None:
                return "a process this user cannot see"
            try:
                proc = psutil.Process(conn.pid)
                cmd = " ".join(proc.cmdline())[:160]
            except psutil.Error:
                cmd = "?"
            return f"pid {conn.pid} ({cmd})"
    return "an unknown process"


def check_ports_free(ports: Mapping[str, int]) -> None:
    busy = [
        f"{what}: {PortInUse(port, owner)}"
        for what, port in ports.items()
        if (owner := port_owner(port)) is not None
    ]
    if busy:
        raise ServiceError("cannot start, " + "; ".join(busy))


@dataclass
class ManagedProcess:
    """A background process owned through its pidfile."""

    name: str
    pidfile: Path
    logfile: Path

    def _record(self) -> dict[str, float] | None:
        try:
            return json.loads(self.pidfile.read_text())
        except (OSError, ValueError):
            return None

    def process(self) -> psutil.Process | None:
        """The live process we started, or None; a reused pid does not count."""
        record = self._record()
        if record is None:
            return None
        try:
            proc = psutil.Process(int(record["pid"]))
            if abs(proc.create_time() - float(record["create_time"])) > 1.0:
                return None
            if proc.status() == psutil.STATUS_ZOMBIE:
                return None
            return proc
        except psutil.Error:
            return None

    def start(self, argv: Sequence[str], env: Mapping[str, str], cwd: Path) -> psutil.Process:
        self.logfile.parent.mkdir(parents=True, exist_ok=True)
        with self.logfile.open("ab") as log:
            popen = subprocess.Popen(
                list(argv),
                env={**os.environ, **env},
                cwd=cwd,
                stdout=log,
                stderr=subprocess.STDOUT,
                stdin=subprocess.DEVNULL,
                # Own session: the service outlives this CLI call and `down` signals its group.
                start_new_session=True,
            )
        proc = psutil.Process(popen.pid)
        self.pidfile.write_text(json.dumps({"pid": popen.pid, "create_time": proc.create_time()}))
        return proc

    def wait_ready(self, probe: Callable[[], bool], timeout_s: float) -> None:
        """Poll `probe` until it answers; fail at once if the process dies meanwhile."""
        deadline = time.monotonic() + timeout_s
        delay = 0.1
        while True:
            if self.process() is None:
                raise ServiceError(
                    f"{self.name} exited during start-up; last log lines:\n{self.log_tail()}"
                )
            if probe():
                return
            if time.monotonic() > deadline:
                raise ServiceError(
                    f"{self.name} not ready after {timeout_s:.0f}s; last log lines:\n{self.log_tail()}"
                )
            time.sleep(delay)
            delay = min(delay * 1.5, 1.0)

    def stop(self, timeout_s: float = 30.0) -> bool:
        """SIGTERM the process group, SIGKILL what is left after `timeout_s`. True if it ran."""
        proc = self.process()
        if proc is None:
            self.pidfile.unlink(missing_ok=True)
            return False
        members = [proc, *proc.children(recursive=True)]
        with contextlib.suppress(ProcessLookupError):
            os.killpg(proc.pid, signal.SIGTERM)
        _, alive = psutil.wait_procs(members, timeout=timeout_s)
        for leftover in alive:
            with contextlib.suppress(psutil.NoSuchProcess):
                leftover.kill()
        psutil.wait_procs(alive, timeout=5)
        self.pidfile.unlink(missing_ok=True)
        return True

    def send_signal(self, sig: signal.Signals) -> bool:
        """Signal the process group (SIGSTOP/SIGCONT hang and resume a service). True if it ran."""
        proc = self.process()
        if proc is None:
            return False
        with contextlib.suppress(ProcessLookupError):
            os.killpg(proc.pid, sig)
        return True

    def log_tail(self, lines: int = 15) -> str:
        try:
            return "\n".join(self.logfile.read_text(errors="replace").splitlines()[-lines:])
        except OSError:
            return "(no log)"
