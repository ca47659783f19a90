"""Kafka edge shared by the CLI, the workers and the tests: every client is made here, with the
connection settings (TLS, SASL); producers, and reading any topic as JSON."""

from __future__ import annotations

import asyncio
import base64
import json
import ssl
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from datetime import datetime
from typing import TYPE_CHECKING, Any, TextIO

from aiokafka import AIOKafkaConsumer, AIOKafkaProducer, ConsumerRecord, TopicPartition
from aiokafka.admin import AIOKafkaAdminClient
from aiokafka.conn import create_conn
from aiokafka.errors import (
    KafkaConnectionError,
    KafkaError,
    SaslAuthenticationFailed,
    UnsupportedSaslMechanismError,
)
from aiokafka.helpers import create_ssl_context

from streamproc.avro_codec import SINGLE_OBJECT_MAGIC, Schemas, load_schemas
from streamproc.errors import ConfigurationError, SchemaError, StreamprocError
from streamproc.settings import KafkaSettings, Settings
from streamproc.topics import topics_for

if TYPE_CHECKING:
    from faust.types.auth import CredentialsT


def ssl_context(kafka: KafkaSettings) -> ssl.SSLContext:
    try:
        context = create_ssl_context(
            cafile=kafka.ssl_cafile,
            certfile=kafka.ssl_certfile,
            keyfile=kafka.ssl_keyfile,
            # A callable, so an encrypted key without a password fails instead of prompting.
            password=lambda: (
                kafka.ssl_key_password.get_secret_value() if kafka.ssl_key_password else ""
            ),
        )
    except (OSError, ssl.SSLError) as exc:
        raise ConfigurationError(
            "cannot load the Kafka TLS files (STREAMPROC_KAFKA__SSL_CAFILE, SSL_CERTFILE, "
            f"SSL_KEYFILE, SSL_KEY_PASSWORD): {type(exc).__name__}: {exc.strerror or exc}"
        ) from None
    context.check_hostname = kafka.ssl_check_hostname
    return context


def client_options(kafka: KafkaSettings) -> dict[str, Any]:
    """The keyword arguments every aiokafka client gets: where, who, TLS and SASL."""
    options: dict[str, Any] = {
        "bootstrap_servers": kafka.bootstrap_servers,
        "client_id": kafka.client_id,
        "security_protocol": kafka.security_protocol,
    }
    if kafka.security_protocol in ("SSL", "SASL_SSL"):
        options["ssl_context"] = ssl_context(kafka)
    if kafka.security_protocol in ("SASL_PLAINTEXT", "SASL_SSL") and kafka.sasl_password:
        options["sasl_mechanism"] = kafka.sasl_mechanism
        options["sasl_plain_username"] = kafka.sasl_username
        options["sasl_plain_password"] = kafka.sasl_password.get_secret_value()
    return options


def faust_credentials(kafka: KafkaSettings) -> CredentialsT | None:
    """The same connection settings as Faust's `broker_credentials`."""
    from faust import SASLCredentials, SSLCredentials

    if kafka.security_protocol == "SSL":
        return SSLCredentials(ssl_context(kafka))
    if kafka.security_protocol in ("SASL_PLAINTEXT", "SASL_SSL") and kafka.sasl_password:
        return SASLCredentials(
            username=kafka.sasl_username,
            password=kafka.sasl_password.get_secret_value(),
            # With a context Faust speaks SASL_SSL, without one SASL_PLAINTEXT.
            ssl_context=ssl_context(kafka) if kafka.security_protocol == "SASL_SSL" else None,
            mechanism=kafka.sasl_mechanism,
        )
    return None


async def connection_problem(kafka: KafkaSettings) -> ConfigurationError | None:
    """Why the first bootstrap server refuses these settings, when it is TLS or SASL: the
    client itself only says that it could not bootstrap."""
    options = client_options(kafka)
    del options["bootstrap_servers"]
    host, _, port_text = kafka.bootstrap_servers.split(",")[0].strip().rpartition(":")
    port = int(port_text)
    where = f"Kafka broker {host}:{port}"
    try:
        conn = await create_conn(host, port, request_timeout_ms=10_000, **options)
    except ssl.SSLCertVerificationError as exc:
        hint = (
            "the certificate does not name this host (fix the certificate, or set "
            "STREAMPROC_KAFKA__SSL_CHECK_HOSTNAME=false)"
            if "mismatch" in str(exc.verify_message).lower()
            else "set STREAMPROC_KAFKA__SSL_CAFILE to the CA that signed it"
        )
        return ConfigurationError(
            f"{where}: its TLS certificate is not trusted ({exc.verify_message}); {hint}"
        )
    except ssl.SSLError as exc:
        return ConfigurationError(
            f"{where}: the TLS handshake failed ({exc.reason}); check "
            "STREAMPROC_KAFKA__SECURITY_PROTOCOL against the listener, and the client certificate"
        )
    except SaslAuthenticationFailed:
        return ConfigurationError(
            f"{where} refused the SASL credentials of user {kafka.sasl_username!r} "
            f"({kafka.sasl_mechanism}): check STREAMPROC_KAFKA__SASL_USERNAME and "
            "STREAMPROC_KAFKA__SASL_PASSWORD"
        )
    except UnsupportedSaslMechanismError as exc:
        return ConfigurationError(f"{where}: {exc}; set STREAMPROC_KAFKA__SASL_MECHANISM")
    except (OSError, KafkaError, TimeoutError):
        return None
    conn.close()
    return None


class _Explained:
    """A client whose start names a TLS or SASL refusal instead of 'Unable to bootstrap'."""

    def __init__(self, kafka: KafkaSettings, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self._kafka = kafka

    async def start(self) -> None:
        try:
            await super().start()  # type: ignore[misc]
        except KafkaConnectionError:
            problem = await connection_problem(self._kafka)
            if problem is None:
                raise
            raise problem from None


class _Consumer(_Explained, AIOKafkaConsumer):
    pass


class _Producer(_Explained, AIOKafkaProducer):
    pass


class _Admin(_Explained, AIOKafkaAdminClient):
    pass


def consumer_client(settings: Settings, *topics: str, **kwargs: Any) -> AIOKafkaConsumer:
    return _Consumer(settings.kafka, *topics, **client_options(settings.kafka), **kwargs)


def admin_client(settings: Settings, **kwargs: Any) -> AIOKafkaAdminClient:
    return _Admin(settings.kafka, **client_options(settings.kafka), **kwargs)


def producer_client(settings: Settings, **kwargs: Any) -> AIOKafkaProducer:
    return _Producer(settings.kafka, **client_options(settings.kafka), **kwargs)


@asynccontextmanager
async def producer(settings: Settings) -> AsyncIterator[AIOKafkaProducer]:
    # acks=all and idempotence: an acknowledged event is on every in-sync replica, once.
    prod = producer_client(
        settings,
        acks="all",
        enable_idempotence=True,
        linger_ms=5,
    )
    await prod.start()
    try:
        yield prod
    finally:
        await prod.stop()


def decode_value(schemas: Schemas, value: bytes | None) -> Any:
    """Best effort for humans: Avro by fingerprint, else JSON, else base64."""
    if value is None:
        return None
    if value[:2] == SINGLE_OBJECT_MAGIC:
        codec = schemas.by_fingerprint(value[2:10])
        if codec is not None:
            try:
                return codec.decode(value)
            except SchemaError as exc:
                return {"_undecodable": str(exc)}
    try:
        return json.loads(value)
    except (UnicodeDecodeError, json.JSONDecodeError):
        return {"_base64": base64.b64encode(value).decode()}


def record_as_json(schemas: Schemas, record: ConsumerRecord[bytes, bytes]) -> dict[str, Any]:
    return {
        "topic": record.topic,
        "partition": record.partition,
        "offset": record.offset,
        "timestamp": record.timestamp,
        "key": record.key.decode("utf-8", errors="replace") if record.key is not None else None,
        "headers": {k: v.decode("utf-8", errors="replace") for k, v in record.headers},
        "value": decode_value(schemas, record.value),
    }


def _json_default(obj: Any) -> Any:
    if isinstance(obj, datetime):
        return obj.isoformat()
    if isinstance(obj, bytes):
        return base64.b64encode(obj).decode()
    raise TypeError(f"not JSON serialisable: {type(obj).__name__}")


def dumps(obj: Any) -> str:
    return json.dumps(obj, default=_json_default, ensure_ascii=False)


async def tail_topic(
    settings: Settings,
    topic: str,
    from_beginning: bool,
    max_messages: int,
    idle_timeout: float,
    out: TextIO,
) -> int:
    schemas = load_schemas(settings.schemas_dir)
    consumer = consumer_client(
        settings,
        topic,
        group_id=None,
        enable_auto_commit=False,
        auto_offset_reset="earliest" if from_beginning else "latest",
    )
    await consumer.start()
    seen = 0
    try:
        while max_messages == 0 or seen < max_messages:
            batch = await consumer.getmany(
                timeout_ms=int(idle_timeout * 1000) if idle_timeout else 1000
            )
            if not batch:
                if idle_timeout:
                    break
                continue
            for records in batch.values():
                for record in records:
                    if max_messages and seen >= max_messages:
                        break
                    out.write(dumps(record_as_json(schemas, record)) + "\n")
                    seen += 1
            out.flush()
    finally:
        await consumer.stop()
    return seen


async def read_to_end(
    settings: Settings, topic: str
) -> AsyncIterator[ConsumerRecord[bytes, bytes]]:
    """Every record of `topic` from offset 0 up to the high watermarks taken at the start."""
    consumer = consumer_client(
        settings,
        enable_auto_commit=False,
        isolation_level="read_committed",
        # An assignment's first position is resolved in the background; with the default
        # ("latest") that can race the explicit seeks below and skip the whole topic.
        auto_offset_reset="earliest",
    )
    await consumer.start()
    try:
        tps = [TopicPartition(topic, p) for p in sorted(await partitions_of(consumer, topic))]
        consumer.assign(tps)
        ends = await consumer.end_offsets(tps)
        for tp, offset in (await consumer.beginning_offsets(tps)).items():
            consumer.seek(tp, offset)
        remaining = {tp for tp in tps if ends[tp] > 0}
        while remaining:
            batch = await consumer.getmany(*remaining, timeout_ms=1000)
            for tp, records in batch.items():
                for record in records:
                    if record.offset < ends[tp]:
                        yield record
                if await consumer.position(tp) >= ends[tp]:
                    remaining.discard(tp)
            for tp in list(remaining):
                if await consumer.position(tp) >= ends[tp]:
                    remaining.discard(tp)
    finally:
        await consumer.stop()


async def records_between(
    settings: Settings, group: str, ranges: dict[TopicPartition, tuple[int | None, int]]
) -> dict[TopicPartition, list[int]]:
    """Per partition, the offsets of its records from `start` (None: `group`'s committed
    offset, or the log's start without one) up to `end`, as a consumer of the group is handed
    them: records the group's consumer stepped over if it jumped from `start` to `end`."""
    consumer = consumer_client(
        settings, group_id=group, enable_auto_commit=False, auto_offset_reset="earliest"
    )
    await consumer.start()
    try:
        consumer.assign(list(ranges))
        found: dict[TopicPartition, list[int]] = {tp: [] for tp in ranges}
        ends: dict[TopicPartition, int] = {}
        for tp, (start, end) in ranges.items():
            if start is None:
                start = await consumer.committed(tp)
            if start is None:
                start = (await consumer.beginning_offsets([tp]))[tp]
            if start < end:
                consumer.seek(tp, start)
                ends[tp] = end
        async with asyncio.timeout(30):
            while remaining := [tp for tp in ends if await consumer.position(tp) < ends[tp]]:
                batch = await consumer.getmany(*remaining, timeout_ms=1000)
                for tp, records in batch.items():
                    found[tp] += [r.offset for r in records if r.offset < ends[tp]]
        return found
    finally:
        await consumer.stop()


async def end_offsets(settings: Settings, topic: str) -> dict[TopicPartition, int]:
    """The high watermark of every partition of `topic`."""
    consumer = consumer_client(settings, enable_auto_commit=False)
    await consumer.start()
    try:
        tps = [TopicPartition(topic, p) for p in sorted(await partitions_of(consumer, topic))]
        return await consumer.end_offsets(tps)
    finally:
        await consumer.stop()


async def follow(
    settings: Settings, start: dict[TopicPartition, int]
) -> AsyncIterator[list[ConsumerRecord[bytes, bytes]]]:
    """Records from the `start` offsets on, one list per poll (empty when a second passed with
    nothing), so callers can check their own deadlines between polls."""
    consumer = consumer_client(settings, enable_auto_commit=False)
    await consumer.start()
    try:
        consumer.assign(list(start))
        for tp, offset in start.items():
            consumer.seek(tp, offset)
        while True:
            batch = await consumer.getmany(timeout_ms=1000)
            yield [record for records in batch.values() for record in records]
    finally:
        await consumer.stop()


async def partitions_of(consumer: AIOKafkaConsumer, topic: str) -> set[int]:
    await consumer._client.force_metadata_update()
    partitions = consumer.partitions_for_topic(topic)
    if not partitions:
        raise StreamprocError(f"topic {topic!r} does not exist")
    return partitions


async def live_chunks(settings: Settings) -> dict[str, bytes]:
    """The chunk topic's current state: the latest non-tombstone value of every chunk key."""
    live: dict[str, bytes] = {}
    async for record in read_to_end(settings, topics_for(settings).chunks.name):
        key = record.key.decode() if record.key is not None else ""
        if record.value is None:
            live.pop(key, None)
        else:
            live[key] = record.value
    return live
