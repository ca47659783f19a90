"""`dev up` / `dev down` on their own profile and ports: real processes, nothing left behind."""

from __future__ import annotations

import socket

import psutil
import pytest

from streamproc.errors import ServiceError
from streamproc.localservices.manager import LocalServices
from tests.services import local_settings

PORTS = {
    "kafka": 29092,
    "kafka_controller": 29093,
    "weaviate_http": 28080,
    "weaviate_grpc": 25051,
    "gossip": 27946,
    "data": 27947,
    "raft": 28300,
    "raft_rpc": 28301,
    "inference": 28090,
}


def _descendants_alive(pids: list[int]) -> list[int]:
    return [
        pid
        for pid in pids
        if psutil.pid_exists(pid) and psutil.Process(pid).status() != psutil.STATUS_ZOMBIE
    ]


def test_up_status_down_leaves_no_process() -> None:
    services = LocalServices(local_settings("lifecycle", PORTS))
    try:
        assert services.up() == ["kafka: started", "weaviate: started"]
        statuses = services.status()
        assert all(s.pid and s.ready for s in statuses), statuses
        pids = []
        for s in statuses:
            proc = psutil.Process(s.pid)
            pids += [proc.pid, *(c.pid for c in proc.children(recursive=True))]
        assert services.up() == ["kafka: already running", "weaviate: already running"]
    finally:
        lines = services.down()
    assert lines == ["weaviate: stopped", "kafka: stopped"]
    assert _descendants_alive(pids) == []
    assert all(s.pid is None for s in services.status())
    assert services.down() == ["weaviate: was not running", "kafka: was not running"]


def test_taken_port_is_named_with_its_process() -> None:
    services = LocalServices(local_settings("taken", PORTS))
    with socket.socket() as squatter:
        squatter.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        squatter.bind(("127.0.0.1", PORTS["kafka"]))
        squatter.listen()
        with pytest.raises(ServiceError) as info:
            services.up()
    message = str(info.value)
    assert f"port {PORTS['kafka']} is already in use by pid {psutil.Process().pid}" in message
    assert "pytest" in message or "python" in message
    assert all(s.pid is None for s in services.status())
