"""Where the tests find Kafka and Weaviate: an external cluster, Docker, or the local binaries.

`STREAMPROC_TEST_SERVICES` picks: `external` (use the STREAMPROC_* settings as they are),
`docker` (testcontainers), `local` (`streamproc dev up` with the `test` profile), or `auto`
(default: docker when an engine answers, else local). Nothing here ever skips a test: when no
service can be had, the session fails and says what is missing.
"""

from __future__ import annotations

import os
from collections.abc import Callable, Iterator
from contextlib import AbstractContextManager, contextmanager

from streamproc.settings import (
    InferenceSettings,
    LocalServicesSettings,
    Settings,
    WeaviateSettings,
)

# The test profile's ports differ from the dev defaults, so a running `dev up` is left alone.
TEST_PORTS = {
    "kafka": 19092,
    "kafka_controller": 19093,
    "weaviate_http": 18080,
    "weaviate_grpc": 15051,
    "gossip": 17946,
    "data": 17947,
    "raft": 18300,
    "raft_rpc": 18301,
    "inference": 18090,
}


def local_settings(profile: str = "test", ports: dict[str, int] | None = None) -> Settings:
    if ports is None:
        # Two sessions at once (two checkouts on one machine) each set their own offset.
        offset = int(os.environ.get("STREAMPROC_TEST_PORT_OFFSET", "0"))
        ports = {name: port + offset for name, port in TEST_PORTS.items()}
        profile = f"{profile}{offset}" if offset else profile
    p = ports
    return Settings(
        kafka={"bootstrap_servers": f"127.0.0.1:{p['kafka']}"},
        weaviate=WeaviateSettings(http_port=p["weaviate_http"], grpc_port=p["weaviate_grpc"]),
        inference=InferenceSettings(
            port=p["inference"],
            url_template=f"http://127.0.0.1:{p['inference']}/models/{{model}}",
        ),
        local=LocalServicesSettings(
            profile=profile,
            kafka_controller_port=p["kafka_controller"],
            weaviate_gossip_port=p["gossip"],
            weaviate_data_port=p["data"],
            weaviate_raft_port=p["raft"],
            weaviate_raft_rpc_port=p["raft_rpc"],
        ),
    )


@contextmanager
def _local() -> Iterator[Settings]:
    from streamproc.localservices.manager import LocalServices

    settings = local_settings()
    services = LocalServices(settings)
    # Every session starts cold: empty data directories, as on a fresh machine and in CI.
    services.up(fresh=True)
    try:
        yield settings
    finally:
        services.down()


@contextmanager
def _docker() -> Iterator[Settings]:
    from testcontainers.community.kafka import KafkaContainer
    from testcontainers.community.weaviate import WeaviateContainer

    kafka = KafkaContainer(image="confluentinc/cp-kafka:8.0.0").with_kraft()
    weaviate = WeaviateContainer(
        image="cr.weaviate.io/semitechnologies/weaviate:1.38.11",
        # The module collections name; queries reach the host's endpoint only where the
        # engine maps host.docker.internal (set STREAMPROC_INFERENCE__URL_TEMPLATE to match).
        env_vars={
            "DISABLE_TELEMETRY": "true",
            "ENABLE_MODULES": "text2vec-transformers",
            "TRANSFORMERS_INFERENCE_API": "http://host.docker.internal:8090",
            "TRANSFORMERS_WAIT_FOR_STARTUP": "false",
        },
    )
    with kafka, weaviate:
        yield Settings(
            kafka={"bootstrap_servers": kafka.get_bootstrap_server()},
            weaviate=WeaviateSettings(
                http_host=weaviate.get_http_host(),
                http_port=weaviate.get_http_port(),
                grpc_host=weaviate.get_grpc_host(),
                grpc_port=weaviate.get_grpc_port(),
            ),
        )


def _docker_available() -> bool:
    try:
        import docker
        from docker.errors import DockerException
    except ImportError:
        return False
    try:
        docker.from_env().ping()
        return True
    except DockerException:
        return False


def choose() -> tuple[str, Callable[[], AbstractContextManager[Settings]]]:
    mode = os.environ.get("STREAMPROC_TEST_SERVICES", "auto")
    if mode == "external":
        return "external", _external
    if mode == "docker" or (mode == "auto" and _docker_available()):
        return "docker", _docker
    if mode in ("local", "auto"):
        return "local", _local
    raise ValueError(f"STREAMPROC_TEST_SERVICES={mode!r}: use external, docker, local or auto")


@contextmanager
def _external() -> Iterator[Settings]:
    yield Settings()
