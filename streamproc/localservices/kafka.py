"""Apache Kafka (KRaft, one node) from its Maven Central jars, with its console tools."""

from __future__ import annotations

import asyncio
import logging
import shutil
import struct
import subprocess
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path

from aiokafka.errors import KafkaError

from streamproc.errors import ServiceError, StreamprocError
from streamproc.kafka_io import admin_client
from streamproc.localservices.process import ManagedProcess
from streamproc.settings import Settings

# Console tools our users know by their script names.
TOOLS = {
    "kafka-console-producer": "org.apache.kafka.tools.ConsoleProducer",
    "kafka-console-consumer": "org.apache.kafka.tools.consumer.ConsoleConsumer",
    "kafka-topics": "org.apache.kafka.tools.TopicCommand",
    "kafka-consumer-groups": "org.apache.kafka.tools.consumer.group.ConsumerGroupCommand",
    "kafka-configs": "kafka.admin.ConfigCommand",
    "kafka-get-offsets": "org.apache.kafka.tools.GetOffsetShell",
}

_POM = """<project xmlns="http://maven.apache.org/POM/4.0.0">
  <modelVersion>4.0.0</modelVersion>
  <groupId>streamproc.local</groupId>
  <artifactId>kafka-runtime</artifactId>
  <version>1</version>
  <packaging>pom</packaging>
  <dependencies>
    <dependency><groupId>org.apache.kafka</groupId><artifactId>kafka_2.13</artifactId><version>{kafka}</version></dependency>
    <dependency><groupId>org.apache.kafka</groupId><artifactId>kafka-tools</artifactId><version>{kafka}</version></dependency>
    <dependency><groupId>org.apache.logging.log4j</groupId><artifactId>log4j-core</artifactId><version>{log4j}</version></dependency>
    <dependency><groupId>org.apache.logging.log4j</groupId><artifactId>log4j-slf4j-impl</artifactId><version>{log4j}</version></dependency>
  </dependencies>
</project>
"""

_LOG4J2 = """status = error
appender.file.type = File
appender.file.name = file
appender.file.fileName = {logfile}
appender.file.layout.type = PatternLayout
appender.file.layout.pattern = [%d] %p %m (%c)%n
rootLogger.level = INFO
rootLogger.appenderRef.file.ref = file
logger.kafka.name = kafka
logger.kafka.level = INFO
logger.state.name = state.change.logger
logger.state.level = WARN
"""

# Console tools print to stderr; keep their own chatter quiet.
_TOOLS_LOG4J2 = """status = error
appender.err.type = Console
appender.err.name = err
appender.err.target = SYSTEM_ERR
appender.err.layout.type = PatternLayout
appender.err.layout.pattern = %p %m%n
rootLogger.level = WARN
rootLogger.appenderRef.err.ref = err
"""


# Set in the broker's config below; the readiness check asks a coordinator for each.
OFFSETS_TOPIC_PARTITIONS = 6


def split_host_port(address: str) -> tuple[str, int]:
    host, _, port = address.split(",")[0].rpartition(":")
    return host or "127.0.0.1", int(port)


@dataclass(frozen=True)
class SecureListener:
    """Serve the bootstrap address as a SASL_SSL listener (SCRAM-SHA-256/512, server-side TLS)
    instead of PLAINTEXT: how the tests run the pipeline the way a production cluster is
    reached. The broker's own traffic uses a PLAINTEXT listener on `internal_port`, which no
    client is told about."""

    # PEM: the unencrypted PKCS#8 private key followed by the certificate chain.
    keystore: Path
    internal_port: int
    # name -> password, created with Kafka's own tool when the storage is formatted.
    scram_users: Mapping[str, str] = field(default_factory=dict)


@dataclass(frozen=True)
class ProxiedListener:
    """A second PLAINTEXT listener whose advertised address is a proxy's (Toxiproxy in the
    fault tests): clients bootstrapped through the proxy keep going through it, because the
    metadata they get back names the proxy, not the broker."""

    port: int
    advertised_port: int


class LocalKafka:
    def __init__(
        self,
        settings: Settings,
        secure: SecureListener | None = None,
        proxied: ProxiedListener | None = None,
    ) -> None:
        self.settings = settings
        self.secure = secure
        self.proxied = proxied
        local = settings.local
        self.home = local.cache_dir / "kafka" / local.kafka_version
        self.libs = self.home / "libs"
        self.state = local.state_dir / "kafka"
        self.host, self.port = split_host_port(settings.kafka.bootstrap_servers)
        self.controller_port = local.kafka_controller_port
        self.proc = ManagedProcess("kafka", self.state / "kafka.pid", self.state / "stdout.log")
        self.data_dir = self.state / "data"

    @property
    def ports(self) -> dict[str, int]:
        ports = {"kafka": self.port, "kafka controller": self.controller_port}
        if self.secure is not None:
            ports["kafka internal"] = self.secure.internal_port
        if self.proxied is not None:
            ports["kafka proxied"] = self.proxied.port
        return ports

    def _listeners(self) -> list[str]:
        controller = f"CONTROLLER://{self.host}:{self.controller_port}"
        if self.secure is None:
            listeners = [f"PLAINTEXT://{self.host}:{self.port}"]
            advertised = list(listeners)
            if self.proxied is not None:
                listeners.append(f"PROXIED://{self.host}:{self.proxied.port}")
                advertised.append(f"PROXIED://{self.host}:{self.proxied.advertised_port}")
            return [
                f"listeners={','.join(listeners)},{controller}",
                f"advertised.listeners={','.join(advertised)}",
                "listener.security.protocol.map="
                "PLAINTEXT:PLAINTEXT,PROXIED:PLAINTEXT,CONTROLLER:PLAINTEXT",
                "inter.broker.listener.name=PLAINTEXT",
            ]
        internal = f"INTERNAL://{self.host}:{self.secure.internal_port}"
        scram = "org.apache.kafka.common.security.scram.ScramLoginModule required;"
        return [
            f"listeners=SASL_SSL://{self.host}:{self.port},{internal},{controller}",
            f"advertised.listeners=SASL_SSL://{self.host}:{self.port},{internal}",
            "listener.security.protocol.map=SASL_SSL:SASL_SSL,INTERNAL:PLAINTEXT,CONTROLLER:PLAINTEXT",
            "inter.broker.listener.name=INTERNAL",
            "sasl.enabled.mechanisms=SCRAM-SHA-256,SCRAM-SHA-512",
            f"listener.name.sasl_ssl.scram-sha-256.sasl.jaas.config={scram}",
            f"listener.name.sasl_ssl.scram-sha-512.sasl.jaas.config={scram}",
            "ssl.keystore.type=PEM",
            f"ssl.keystore.location={self.secure.keystore}",
            "ssl.client.auth=none",
        ]

    def _scram_arguments(self) -> list[str]:
        users = self.secure.scram_users if self.secure is not None else {}
        return [
            argument
            for name, password in users.items()
            for mechanism in ("SCRAM-SHA-256", "SCRAM-SHA-512")
            for argument in ("--add-scram", f"{mechanism}=[name={name},password={password}]")
        ]

    def provision(self) -> None:
        """Resolve the broker and tools jars with Maven once; later calls reuse the cache."""
        marker = self.home / ".complete"
        if marker.exists():
            self._write_tool_scripts()
            return
        if shutil.which("java") is None or shutil.which("mvn") is None:
            raise ServiceError("Kafka needs `java` (17+) and `mvn` on PATH to provision its jars")
        self.home.mkdir(parents=True, exist_ok=True)
        pom = self.home / "pom.xml"
        pom.write_text(
            _POM.format(
                kafka=self.settings.local.kafka_version, log4j=self.settings.local.log4j_version
            )
        )
        tmp = self.home / "libs.partial"
        shutil.rmtree(tmp, ignore_errors=True)
        result = subprocess.run(
            [
                "mvn",
                "-q",
                "-B",
                "-f",
                str(pom),
                "dependency:copy-dependencies",
                f"-DoutputDirectory={tmp}",
                "-DincludeScope=runtime",
            ],
            capture_output=True,
            text=True,
            check=False,
        )
        if result.returncode != 0:
            raise ServiceError(
                f"resolving Kafka jars with Maven failed:\n{result.stdout[-3000:]}{result.stderr[-3000:]}"
            )
        shutil.rmtree(self.libs, ignore_errors=True)
        tmp.rename(self.libs)
        self._write_tool_scripts()
        marker.touch()

    def _write_tool_scripts(self) -> None:
        (self.home / "log4j2-tools.properties").write_text(_TOOLS_LOG4J2)
        bindir = self.home / "bin"
        bindir.mkdir(exist_ok=True)
        for script, main_class in TOOLS.items():
            path = bindir / script
            path.write_text(
                "#!/bin/sh\n"
                f'exec java -Dlog4j2.configurationFile="{self.home}/log4j2-tools.properties" '
                f'-cp "{self.libs}/*" {main_class} "$@"\n'
            )
            path.chmod(0o755)

    def tool_argv(self, tool: str, args: list[str]) -> list[str]:
        if tool not in TOOLS:
            raise ServiceError(f"unknown Kafka tool {tool!r}; known: {', '.join(TOOLS)}")
        return [str(self.home / "bin" / tool), *args]

    def _java(self, main_class: str, *args: str, log4j: Path) -> list[str]:
        return [
            "java",
            f"-Xmx{self.settings.local.kafka_heap}",
            f"-Dlog4j2.configurationFile={log4j}",
            "-cp",
            f"{self.libs}/*",
            main_class,
            *args,
        ]

    def _write_config(self) -> Path:
        self.state.mkdir(parents=True, exist_ok=True)
        data = self.data_dir
        props = self.state / "server.properties"
        props.write_text(
            "\n".join(
                [
                    "process.roles=broker,controller",
                    "node.id=1",
                    f"controller.quorum.bootstrap.servers={self.host}:{self.controller_port}",
                    *self._listeners(),
                    "controller.listener.names=CONTROLLER",
                    f"log.dirs={data}",
                    "num.partitions=1",
                    "offsets.topic.replication.factor=1",
                    f"offsets.topic.num.partitions={OFFSETS_TOPIC_PARTITIONS}",
                    "transaction.state.log.replication.factor=1",
                    "transaction.state.log.min.isr=1",
                    "group.initial.rebalance.delay.ms=0",
                    # Compaction must run in local tests within seconds, not the 15 s default tick.
                    "log.cleaner.backoff.ms=1000",
                    "",
                ]
            )
        )
        (self.state / "log4j2.properties").write_text(
            _LOG4J2.format(logfile=self.state / "server.log")
        )
        return props

    def start(self) -> None:
        props = self._write_config()
        log4j = self.state / "log4j2.properties"
        if not (self.data_dir / "meta.properties").exists():
            cluster_id = (
                subprocess.run(
                    self._java("kafka.tools.StorageTool", "random-uuid", log4j=log4j),
                    capture_output=True,
                    text=True,
                    check=True,
                )
                .stdout.strip()
                .splitlines()[-1]
            )
            fmt = subprocess.run(
                self._java(
                    "kafka.tools.StorageTool",
                    "format",
                    "--standalone",
                    "-t",
                    cluster_id,
                    "-c",
                    str(props),
                    *self._scram_arguments(),
                    log4j=log4j,
                ),
                capture_output=True,
                text=True,
                check=False,
            )
            if fmt.returncode != 0:
                raise ServiceError(f"formatting Kafka storage failed:\n{fmt.stdout}{fmt.stderr}")
        self.proc.start(self._java("kafka.Kafka", str(props), log4j=log4j), {}, self.state)
        self.proc.wait_ready(self.ready, self.settings.local.start_timeout_s)

    def ready(self) -> bool:
        return asyncio.run(kafka_ready(self.settings, OFFSETS_TOPIC_PARTITIONS))


def java_string_hash(text: str) -> int:
    """Java's `String.hashCode`, which Kafka uses to place a group on an offsets partition."""
    data = text.encode("utf-16-be")
    h = 0
    for (unit,) in struct.iter_unpack(">H", data):
        h = (31 * h + unit) & 0xFFFFFFFF
    return h - (1 << 32) if h >= 1 << 31 else h


def offsets_partition(group: str, partitions: int) -> int:
    # Kafka's Utils.abs masks the sign bit rather than negating.
    return (java_string_hash(group) & 0x7FFFFFFF) % partitions


def probe_groups(partitions: int) -> list[str]:
    """One group id per `__consumer_offsets` partition: asking each one's coordinator covers
    every partition a real group can land on."""
    found: dict[int, str] = {}
    n = 0
    while len(found) < partitions:
        group = f"streamproc-ready-{n}"
        found.setdefault(offsets_partition(group, partitions), group)
        n += 1
    return [found[p] for p in range(partitions)]


async def kafka_ready(settings: Settings, offsets_partitions: int, timeout_ms: int = 2000) -> bool:
    """True when the cluster lists a broker and a group coordinator answers for every partition
    of `__consumer_offsets`. Metadata alone is not enough: on a freshly formatted broker the
    first consumer group fails with GroupCoordinatorNotAvailable for seconds after that."""
    admin = admin_client(settings, request_timeout_ms=timeout_ms)
    # A refused connection is the expected answer while the broker starts; keep it off stderr.
    logging.getLogger("aiokafka").setLevel(logging.CRITICAL)
    try:
        await asyncio.wait_for(admin.start(), timeout=timeout_ms / 1000)
        cluster = await admin.describe_cluster()
        if not cluster.get("brokers"):
            return False
        for group in probe_groups(offsets_partitions):
            # Answered by the coordinator itself, after it has loaded the partition.
            await admin.list_consumer_group_offsets(group)
        return True
    except (KafkaError, OSError, TimeoutError, StreamprocError):
        return False
    finally:
        await admin.close()
