"""One typed settings object, built once from `STREAMPROC_*` variables and an optional YAML file.

Nested fields use `__`: `STREAMPROC_KAFKA__BOOTSTRAP_SERVERS=broker:9092`.
The file is named by `STREAMPROC_CONFIG`; environment variables win over it. A worker child gets
its parent's settings in `STREAMPROC_SETTINGS_JSON` (see `child_env`), between the two.
"""

from __future__ import annotations

import json
import os
import uuid
from importlib import resources
from pathlib import Path
from typing import Any, Literal

from pydantic import BaseModel, Field, SecretStr, ValidationError, model_validator
from pydantic_core import to_jsonable_python
from pydantic_settings import (
    BaseSettings,
    InitSettingsSource,
    PydanticBaseSettingsSource,
    SettingsConfigDict,
    YamlConfigSettingsSource,
)

from streamproc.errors import ConfigurationError, UnknownModelError
from streamproc.naming import collection_name
from streamproc.registry import ModelSpec, default_models

# The checkout's root: only the demo, the tests and the benchmarks use it (for the corpus and
# the deploy files); an installed package finds its own data through `package_data`.
REPO_ROOT = Path(__file__).resolve().parent.parent
# The demo's and the tests' documents (Go's documentation), in a checkout.
CORPUS = REPO_ROOT / "corpus" / "docs"
# A worker child's settings, secrets included: a process's environment is never on disk, and
# only its own user (and root) can read it.
CHILD_SETTINGS_ENV = "STREAMPROC_SETTINGS_JSON"


def package_data(*parts: str) -> Path:
    """A file or folder shipped inside the installed package (schemas, topology)."""
    resource = resources.files("streamproc").joinpath(*parts)
    # pip and uv install wheels unpacked, so the resource is a real path; a zipped import
    # (zipapp, zipimport) would not be, and the loaders read folders, so refuse it clearly.
    if not isinstance(resource, Path):
        raise ConfigurationError(
            f"streamproc's package data {'/'.join(parts)} is not on the filesystem ({resource}); "
            "install the package unpacked or set STREAMPROC_SCHEMAS_DIR / STREAMPROC_TOPOLOGY_FILE"
        )
    return resource


def _default_cache_dir() -> Path:
    base = os.environ.get("XDG_CACHE_HOME") or str(Path.home() / ".cache")
    return Path(base) / "streamproc"


class KafkaSettings(BaseModel):
    bootstrap_servers: str = "127.0.0.1:9092"
    # Prepended to every topic name, so several environments can share one cluster.
    topic_prefix: str = ""
    client_id: str = "streamproc"
    # Every client (workers, CLI, benchmarks, backfill readers) connects with these.
    security_protocol: Literal["PLAINTEXT", "SSL", "SASL_PLAINTEXT", "SASL_SSL"] = "PLAINTEXT"
    sasl_mechanism: Literal["PLAIN", "SCRAM-SHA-256", "SCRAM-SHA-512"] = "SCRAM-SHA-512"
    sasl_username: str | None = None
    sasl_password: SecretStr | None = None
    # PEM files. Without a CA file the system's trusted CAs verify the brokers.
    ssl_cafile: Path | None = None
    ssl_certfile: Path | None = None
    ssl_keyfile: Path | None = None
    ssl_key_password: SecretStr | None = None
    ssl_check_hostname: bool = True

    @model_validator(mode="after")
    def _sasl_has_credentials(self) -> KafkaSettings:
        if self.security_protocol.startswith("SASL_") and not (
            self.sasl_username and self.sasl_password
        ):
            raise ValueError(
                f"security_protocol {self.security_protocol} needs STREAMPROC_KAFKA__SASL_USERNAME "
                "and STREAMPROC_KAFKA__SASL_PASSWORD"
            )
        return self


class WeaviateSettings(BaseModel):
    http_host: str = "127.0.0.1"
    http_port: int = 8080
    http_secure: bool = False
    grpc_host: str = "127.0.0.1"
    grpc_port: int = 50051
    grpc_secure: bool = False
    api_key: SecretStr | None = None
    # Serving alias; each model version gets the collection `{prefix}_{model_slug}_{version}`.
    collection_prefix: str = "Chunk"

    @property
    def http_url(self) -> str:
        scheme = "https" if self.http_secure else "http"
        return f"{scheme}://{self.http_host}:{self.http_port}"


class LocalServicesSettings(BaseModel):
    """Where `streamproc dev up` provisions and runs Kafka and Weaviate without Docker."""

    cache_dir: Path = Field(default_factory=_default_cache_dir)
    # One profile = one set of ports and one data directory, so tests never touch dev data.
    profile: str = "dev"
    kafka_version: str = "4.1.1"
    log4j_version: str = "2.24.3"
    kafka_controller_port: int = 9093
    kafka_heap: str = "768m"
    weaviate_version: str = "v1.38.11"
    weaviate_gossip_port: int = 7946
    weaviate_data_port: int = 7947
    weaviate_raft_port: int = 8300
    weaviate_raft_rpc_port: int = 8301
    start_timeout_s: float = 120.0

    @property
    def state_dir(self) -> Path:
        return self.cache_dir / "state" / self.profile


class ChunkingSettings(BaseModel):
    policy_version: str = "p1"
    max_tokens: int = 200
    overlap_tokens: int = 32
    max_document_bytes: int = 8 * 1024 * 1024
    max_chunks_per_document: int = 2000
    # HTML pages keep only their main content (no navigation, sidebars, footers); false keeps
    # whole pages, for sites whose markup the boilerplate rules misread.
    html_main_content: bool = True


class SourceSettings(BaseModel):
    """Where the chunker may read a document named by `content_uri`."""

    # `file://` reads only regular files under these folders; none are allowed by default.
    file_roots: list[Path] = Field(default_factory=list)
    # `http(s)://` refuses loopback, private, link-local, multicast and reserved addresses
    # unless this is true; cloud metadata addresses stay refused even then.
    allow_private_hosts: bool = False
    # Host names, addresses or networks (`10.1.0.0/16`) allowed whatever they resolve to.
    allowed_hosts: list[str] = Field(default_factory=list)
    # One deadline for the whole read: resolution, redirects, retries and the body.
    http_timeout_s: float = Field(default=30.0, gt=0)
    max_redirects: int = Field(default=5, ge=0)
    # Attempts on a transient failure (connection error, timeout, HTTP 5xx or 429).
    http_attempts: int = Field(default=3, ge=1)


class EmbedderSettings(BaseModel):
    # Events taken from Kafka at once; their offsets commit together after every write.
    max_events: int = 256
    max_wait_s: float = 0.05
    # One encode call: at most this many texts, and at most this many padded tokens.
    max_batch: int = 64
    max_batch_tokens: int = 16384
    device: str | None = None
    # Models whose collections every live chunk is written to; empty means the active model.
    target_models: list[str] = Field(default_factory=list)
    # When true the chunk text is not stored in Weaviate; only its hash is.
    pii_mode: bool = False


class TelemetrySettings(BaseModel):
    # Off, only OpenTelemetry's no-op API runs. The exporters themselves are configured with
    # the standard OTEL_* variables (endpoint, protocol headers, sampler, service name).
    enabled: bool = False
    # Headers for both OTLP exporters (`key=value,...`, the format of
    # OTEL_EXPORTER_OTLP_HEADERS): usually a collector's token, so kept as a secret here.
    # Set, they replace the OTEL_* headers.
    otlp_headers: SecretStr | None = None
    # A Prometheus scrape endpoint per worker process; `worker --role all` gives each role
    # its own port, counting up from this one.
    prometheus_port: int | None = None
    prometheus_host: str = "127.0.0.1"


class BackfillSettings(BaseModel):
    """Model rotation: replay jobs, their throttle, and the checks before an alias flip."""

    # Jobs that replay at the same time in one worker; the rest wait in PENDING by priority.
    max_concurrent_jobs: int = Field(default=1, ge=1)
    # Chunk-topic records per replay batch (one progress save each).
    batch_size: int = Field(default=256, ge=1)
    # An encode call for a backfill target (replay, or a live batch's write to it) is sized
    # from measured speed to take about this long while live traffic flows (a live batch waits
    # that long at most: a few texts on a CPU, a big batch on a GPU), and about
    # `idle_encode_slice_s` when no live batch ran in the last 5 s (larger calls encode faster;
    # the first live batch after a quiet spell waits for one).
    encode_slice_s: float = Field(default=0.1, gt=0)
    idle_encode_slice_s: float = Field(default=0.25, gt=0)
    # Live traffic first: the replay pauses while the embedder group is more than this many
    # embed-requested messages behind, or while live ingest-to-embed-done latency exceeds this.
    throttle_live_lag: int = Field(default=100, ge=0)
    throttle_live_latency_s: float = Field(default=2.0, gt=0)
    # After the replay reaches its watermarks, catch-up passes over what arrived meanwhile,
    # until one pass has nothing to write (or this many passes ran).
    max_catch_up_passes: int = Field(default=10, ge=1)
    # Verification before a flip: chunks sampled, and the share that must find themselves first.
    verify_sample_size: int = Field(default=50, ge=1)
    min_self_retrieval: float = Field(default=0.95, ge=0, le=1)
    # The quality gate: recall@10 of the candidate and of the serving collection on the same
    # queries derived from the candidate's chunks (section titles, first sentences; see
    # backfill/quality.py), drawn with a fixed seed so a refusal repeats. A flip that loses more
    # than `max_recall_drop` is refused unless forced. Per-query recall spreads about 0.3, so
    # over 200 queries a mean moves about 0.02 with the sample; both collections answer the
    # same queries, which makes their difference steadier than that.
    quality_sample_size: int = Field(default=200, ge=1)
    quality_sample_seed: int = 0
    max_recall_drop: float = Field(default=0.02, ge=0, le=1)


class WorkerSettings(BaseModel):
    # Consumer groups are `{app_id}-chunker` and `{app_id}-embedder`.
    app_id: str = "streamproc"
    data_dir: Path = Field(default_factory=lambda: _default_cache_dir() / "worker")
    # Replication of the worker's own changelog topics (3 in production).
    internal_replication_factor: int = 1
    commit_interval_s: float = 1.0
    # Kafka static membership (group.instance.id): a restarted process with the same id gets
    # its partitions back without waiting for the session timeout. Must be unique per live
    # process; `worker --role all` sets one per child.
    group_instance_id: str | None = None
    # On a rebalance, work already taken gets this long to finish (its writes confirmed, its
    # offsets acked) before the process exits rather than let another member take the
    # partitions while it may still write. The group waits for a member's rejoin up to the
    # rebalance timeout (Faust's 60 s), so this stays well below it; a slow CPU batch fits.
    rebalance_grace_s: float = Field(default=20.0, gt=0, le=45)
    # `worker --role all` restarts a child that dies, with backoff, and gives up (exiting) when
    # one role died this often within the window.
    max_crashes: int = Field(default=5, ge=1)
    crash_window_s: float = Field(default=300.0, gt=0)
    # `/healthz` (liveness: unhealthy once work older than `stall_threshold_s` is neither
    # finished nor being retried) and `/readyz`; off when no port is set. `worker --role all`
    # gives the second role the next port.
    health_port: int | None = None
    health_host: str = "0.0.0.0"
    stall_threshold_s: float = Field(default=120.0, gt=0)


class InferenceSettings(BaseModel):
    """`streamproc serve`: Weaviate's text2vec-transformers protocol for registered models."""

    host: str = "127.0.0.1"
    port: int = 8090
    # Each new collection's `inferenceUrl`: where Weaviate embeds nearText and hybrid queries
    # for that model version. `{model}` is the registry name.
    url_template: str = "http://127.0.0.1:8090/models/{model}"
    # Concurrent requests are encoded together: a batch closes at this many texts, or this
    # long after its first text arrived, whichever comes first.
    max_batch: int = Field(default=32, ge=1)
    max_wait_ms: float = Field(default=5.0, ge=0)
    # A request body over this is refused before it is read (a query is a few hundred bytes).
    max_request_bytes: int = Field(default=1024 * 1024, ge=1024)

    def url_for(self, model: str) -> str:
        return self.url_template.format(model=model)


class Settings(BaseSettings):
    model_config = SettingsConfigDict(
        env_prefix="STREAMPROC_",
        env_nested_delimiter="__",
        extra="forbid",
    )

    kafka: KafkaSettings = Field(default_factory=KafkaSettings)
    weaviate: WeaviateSettings = Field(default_factory=WeaviateSettings)
    local: LocalServicesSettings = Field(default_factory=LocalServicesSettings)
    chunking: ChunkingSettings = Field(default_factory=ChunkingSettings)
    sources: SourceSettings = Field(default_factory=SourceSettings)
    embedder: EmbedderSettings = Field(default_factory=EmbedderSettings)
    worker: WorkerSettings = Field(default_factory=WorkerSettings)
    telemetry: TelemetrySettings = Field(default_factory=TelemetrySettings)
    backfill: BackfillSettings = Field(default_factory=BackfillSettings)
    inference: InferenceSettings = Field(default_factory=InferenceSettings)
    models: list[ModelSpec] = Field(default_factory=default_models)
    # The model whose collection the alias serves and that live traffic embeds with.
    active_model: str = "all-minilm-l6-v2"
    # Shipped inside the package; set these to use another copy.
    schemas_dir: Path = Field(default_factory=lambda: package_data("schemas", "avro"))
    topology_file: Path = Field(default_factory=lambda: package_data("topology", "topics.yaml"))

    @model_validator(mode="after")
    def _active_model_is_registered(self) -> Settings:
        names = [m.name for m in self.models]
        if len(set(names)) != len(names):
            raise ValueError(f"model names must be unique, got {names}")
        for name in [self.active_model, *self.embedder.target_models]:
            if name not in names:
                raise ValueError(
                    f"model {name!r} is not in the model registry {names}; register it in "
                    "STREAMPROC_MODELS or pick one of those"
                )
        return self

    @property
    def target_models(self) -> list[ModelSpec]:
        names = self.embedder.target_models or [self.active_model]
        return [self.model(n) for n in names]

    def collection_for(self, spec: ModelSpec) -> str:
        return collection_name(self.weaviate.collection_prefix, spec.name, spec.version)

    def model(self, name: str) -> ModelSpec:
        for spec in self.models:
            if spec.name == name:
                return spec
        raise UnknownModelError(
            f"model {name!r} is not registered; known: {[m.name for m in self.models]}"
        )

    def model_for_collection(self, collection: str) -> ModelSpec:
        for spec in self.models:
            if self.collection_for(spec) == collection:
                return spec
        raise ConfigurationError(
            f"no registered model version writes {collection}; register it in the model registry"
        )

    def isolated(self, data_dir: Path, **updates: Any) -> Settings:
        """Own topic prefix, collection prefix, consumer groups and worker state on the same
        services: what tests and benchmarks use so runs never see each other's data."""
        tag = uuid.uuid4().hex[:8]
        data = self.model_dump()
        data["kafka"]["topic_prefix"] = f"t{tag}."
        data["weaviate"]["collection_prefix"] = f"T{tag}"
        data["worker"]["app_id"] = f"sp{tag}"
        data["worker"]["data_dir"] = data_dir
        data.update(updates)
        return Settings(**data)

    @classmethod
    def settings_customise_sources(
        cls,
        settings_cls: type[BaseSettings],
        init_settings: PydanticBaseSettingsSource,
        env_settings: PydanticBaseSettingsSource,
        dotenv_settings: PydanticBaseSettingsSource,
        file_secret_settings: PydanticBaseSettingsSource,
    ) -> tuple[PydanticBaseSettingsSource, ...]:
        sources: list[PydanticBaseSettingsSource] = [init_settings, env_settings]
        inherited = os.environ.get(CHILD_SETTINGS_ENV)
        if inherited:
            sources.append(InitSettingsSource(settings_cls, init_kwargs=json.loads(inherited)))
        config_file = os.environ.get("STREAMPROC_CONFIG")
        if config_file:
            sources.append(YamlConfigSettingsSource(settings_cls, yaml_file=config_file))
        return tuple(sources)


def load_settings(**overrides: Any) -> Settings:
    """The settings, or a ConfigurationError naming each bad field; never the values given,
    which may be secrets."""
    try:
        return Settings(**overrides)
    except ValidationError as exc:
        problems = "; ".join(
            f"{'.'.join(str(part) for part in error['loc']) or 'settings'}: {error['msg']}"
            for error in exc.errors(include_input=False, include_url=False)
        )
        raise ConfigurationError(f"invalid settings: {problems}") from None


def _revealed(value: Any) -> Any:
    if isinstance(value, SecretStr):
        return value.get_secret_value()
    if isinstance(value, dict):
        return {k: _revealed(v) for k, v in value.items()}
    if isinstance(value, list):
        return [_revealed(v) for v in value]
    return value


def child_env(settings: Settings) -> dict[str, str]:
    """The environment entry that gives a child process exactly these settings, secrets
    revealed (a JSON dump masks them); the child's own `STREAMPROC_*` variables win over it."""
    return {CHILD_SETTINGS_ENV: json.dumps(to_jsonable_python(_revealed(settings.model_dump())))}
