"""Settings: one object, built once at each entry point and passed down.

Sources, strongest first: environment variables (prefix ``HEALTHSYNC_``, one
``_`` between the section and the field: ``HEALTHSYNC_REDIS_URL``,
``HEALTHSYNC_KAFKA_BOOTSTRAP``, ``HEALTHSYNC_INGEST_PORT``), then an optional
TOML file (``--config`` or ``HEALTHSYNC_CONFIG``), then the defaults below.
"""

from __future__ import annotations

import ipaddress
import json
import os
import tomllib
from pathlib import Path
from typing import Any, Literal

from pydantic import BaseModel, Field
from pydantic_settings import (
    BaseSettings,
    PydanticBaseSettingsSource,
    SettingsConfigDict,
)

from healthsync.config_services import ApiSettings, AuthSettings, CloudWatchSettings, JobsSettings
from healthsync.domain.rules import AnomalySettings
from healthsync.names import RedisKeys


class KafkaSettings(BaseModel):
    """Where the broker is and how the topics look."""

    # None means: start the embedded broker (``healthsync up``) or fail (single stages).
    bootstrap: str | None = None
    vitals_topic: str = "healthsync.vitals"
    observations_topic: str = "healthsync.observations"
    alerts_topic: str = "healthsync.alerts"
    dlq_topic: str = "healthsync.dlq"
    partitions: int = Field(6, ge=1)
    replication_factor: int = Field(1, ge=1)
    retention_ms: int = 7 * 24 * 3600 * 1000
    # Passed through verbatim to every librdkafka client, e.g.
    # {"security.protocol": "SASL_SSL", "sasl.mechanism": "SCRAM-SHA-512", ...}.
    client: dict[str, str] = Field(default_factory=dict)
    # The embedded broker (no bootstrap set) takes TLS 1.3 only, through HAProxy,
    # and the stages get security.protocol=SSL with the local CA.
    embedded_tls: bool = True
    # The embedded broker keeps every message in memory (it ignores retention): past
    # this resident size `up` recycles its topics once every consumer has caught up, and
    # past twice it holds ingest until they have (see recycle.py). 0: never.
    embedded_max_mb: int = Field(1024, ge=0)
    # Set by `up` for each consumer stage: the consumer writes this file while it holds
    # an assignment in its group, so the broker recycle knows when it may stop it (see
    # recycle.py).
    joined_file: Path | None = None

    def recycled_topics(self) -> list[str]:
        """The topics a recycle empties; the dead-letter topic keeps its audit trail."""
        return [self.vitals_topic, self.observations_topic, self.alerts_topic]

    def topics(self) -> list[str]:
        return [self.vitals_topic, self.observations_topic, self.alerts_topic, self.dlq_topic]


_CLUSTER_SCHEME = "+cluster"


class RedisSettings(BaseModel):
    """The live cache."""

    # None means: start a private redis-server (``healthsync up``) or fail.
    # ``redis+cluster://`` or ``rediss+cluster://`` (or `cluster`) names a Redis Cluster.
    url: str | None = None
    cluster: bool = False
    # With a cluster, patients' keys are in this many hash-tagged groups (names.RedisKeys):
    # the unit a batch's transaction covers and the cluster spreads over its nodes. Fixed
    # for a deployment's data: another number puts every patient's keys elsewhere.
    cluster_groups: int = Field(16, ge=2, le=1024)
    prefix: str = "hs"
    history_retention_s: int = Field(24 * 3600, ge=60)
    events_maxlen: int = Field(10_000, ge=100)
    # A Redis that stops answering fails a call after this long, so the caller
    # retries (processor) or reports not-ready (API) instead of hanging.
    timeout_s: float = Field(5.0, gt=0)
    # For rediss:// URLs: the CA that signed the server's certificate (None: the
    # system's CAs), and a client certificate for servers that require one.
    tls_ca_file: Path | None = None
    tls_cert_file: Path | None = None
    tls_key_file: Path | None = None
    # The embedded redis-server (no URL set) takes TLS 1.3 only, on no plain port.
    embedded_tls: bool = True
    # The embedded redis-server keeps an append-only file in <run dir>/redis, synced to
    # disk as this says: "everysec" may lose the last second on a crash (the processor
    # replays it from Kafka), "always" loses nothing and is slower, "no" leaves it to the OS.
    embedded_appendfsync: Literal["always", "everysec", "no"] = "everysec"

    def client_options(self) -> dict[str, Any]:
        """Keyword arguments for redis-py's ``from_url`` (sync and asyncio)."""
        options: dict[str, Any] = {
            "socket_timeout": self.timeout_s,
            "socket_connect_timeout": self.timeout_s,
        }
        # redis-py's plain connections reject ssl_* arguments: only for rediss://.
        if self.client_url.startswith("rediss://"):
            if self.tls_ca_file is not None:
                options["ssl_ca_certs"] = str(self.tls_ca_file)
            if self.tls_cert_file is not None:
                options["ssl_certfile"] = str(self.tls_cert_file)
                options["ssl_keyfile"] = str(self.tls_key_file or self.tls_cert_file)
        return options

    @property
    def clustered(self) -> bool:
        """Whether Redis is a cluster: `cluster`, or a ``+cluster`` URL scheme."""
        return self.cluster or _CLUSTER_SCHEME in (self.url or "").partition("://")[0]

    @property
    def client_url(self) -> str:
        """The URL as redis-py takes it (without ``+cluster``)."""
        scheme, sep, rest = (self.url or "").partition("://")
        return scheme.removesuffix(_CLUSTER_SCHEME) + sep + rest

    @property
    def groups(self) -> int:
        """Patient groups of the key layout (names.RedisKeys): one on a standalone Redis."""
        return self.cluster_groups if self.clustered else 1

    @property
    def keys(self) -> RedisKeys:
        """The layout without pseudonyms: for keys that name no patient (stats, latency).

        Anything about a patient goes through ``Codec.keys`` (healthsync.security.codec).
        """
        return RedisKeys(self.prefix, groups=self.groups)


class IngestSettings(BaseModel):
    """The device-facing TCP server."""

    # The plaintext listener: loopback only (demos, local bash devices) unless
    # plain_allow_remote says otherwise, since everything on it travels in clear,
    # unauthenticated. Unset, `healthsync up` (the demo) opens it and `healthsync
    # ingest` on its own (a production deployment) does not; true or false decides.
    host: str = "127.0.0.1"
    port: int = Field(7000, ge=0, le=65535)
    plain_enabled: bool | None = None
    plain_allow_remote: bool = False
    # The TLS listener, with the certificates from `tls.dir`. Devices elsewhere
    # on the network connect here: set tls_host to 0.0.0.0 (or an interface).
    tls_enabled: bool = True
    tls_host: str = "127.0.0.1"
    tls_port: int = Field(7443, ge=0, le=65535)
    # Mutual TLS: a device needs a certificate from the CA, and may only send
    # readings for the device id in it.
    require_client_cert: bool = True
    # Devices bound to patients: a device listed here (or assigned through the API,
    # which overrides this) may send readings only for these patients.
    device_patients: dict[str, list[str]] = Field(default_factory=dict)
    max_line_bytes: int = Field(4096, ge=64)
    idle_timeout_s: float = Field(300.0, gt=0)
    max_connections: int = Field(2000, ge=1)
    # Readings accepted but not yet acknowledged by Kafka. When a connection or
    # the server hits its bound it stops reading from sockets (TCP backpressure)
    # instead of buffering without limit.
    max_inflight_per_connection: int = Field(1000, ge=1)
    max_inflight_total: int = Field(50_000, ge=1)
    # A device gets ERR 503 at most this long after sending when Kafka does not answer.
    ack_timeout_s: float = Field(5.0, gt=0)
    # Behind a load balancer: both listeners require a PROXY protocol v2 header and take
    # the device's address from it. Only for private loopback ports HAProxy alone reaches.
    proxy_protocol: bool = False
    # A loopback HTTP port answering GET /readyz (200 while Kafka answers); None: off.
    check_port: int | None = Field(None, ge=0, le=65535)
    # Labels this instance's gauges (connections_open|instance=...) when several run.
    instance: str | None = None
    # `healthsync up` sets it: on SIGUSR1 ingest holds the vitals topic (new readings wait),
    # writes this file once nothing is in flight, and on SIGUSR2 removes it and answers
    # what waited (see ingest/hold.py and recycle.py).
    hold_file: Path | None = None
    # How long a reading sent while ingest is held waits for the release; after it,
    # ERR 503 (send again later). 0: ERR 503 at once.
    hold_wait_s: float = Field(15.0, ge=0)
    # `healthsync up` only: ingest processes behind HAProxy on the public ports, and
    # HAProxy's stats page and Prometheus endpoint on loopback (0: a free port).
    replicas: int = Field(2, ge=1, le=16)
    front_stats_port: int = Field(0, ge=0, le=65535)
    # How far ingest gives way to the processor when the CPU is short (see priority.py).
    nice: int = Field(5, ge=0, le=19)

    def plain_refusal(self) -> str | None:
        """Why the plaintext port may not listen on `host` (beyond this machine without
        `plain_allow_remote`), or None. Ingest and `up`'s HAProxy front both ask."""
        if self.plain_allow_remote or _is_loopback(self.host):
            return None
        return (
            f"the plaintext ingest port would listen on {self.host}, beyond this machine; "
            "use the TLS port, or set HEALTHSYNC_INGEST_PLAIN_ALLOW_REMOTE=true"
        )


class ProcessorSettings(BaseModel):
    """The stream processor."""

    group_id: str = "healthsync-processor"
    # `healthsync up` only: processor processes in the one consumer group, each reading
    # its share of the vitals topic's partitions (so no more than there are partitions;
    # left unset, no more than the partitions either). Two where there are two cores or
    # more: on 2 cores shared with everything else, two stored 9,400-10,100 readings/s
    # while ingest ran flat out against one's 6,700-7,300, and held 5,000/s with a
    # send-to-visible p99 of 249-307 ms against 380-474 ms (docs/SCALE.md, 2026-12-05).
    processes: int = Field(default_factory=lambda: min(2, os.cpu_count() or 1), ge=1, le=64)
    batch_size: int = Field(2000, ge=1)
    # How long a consume waits to gather a batch when no reading is waiting. Readings
    # fetched while the last batch was processed are taken at once (Processor._next_batch):
    # at 1,000 readings/s on a quiet machine that took send-to-visible p50 from 96-114 to
    # 72-76 ms and p99 from 200-212 to 139-158 ms, for about 10% more of a core (bench/
    # README.md, alternating runs, fetch wait 50 ms). Behind, batches fill at once.
    batch_wait_s: float = Field(0.02, gt=0)
    # Of every consumer stage's group membership. `up` with the embedded broker makes it
    # 2000 unless set (supervisor.EMBEDDED_SESSION_TIMEOUT_MS: that broker's joins take half of it).
    session_timeout_ms: int = Field(6000, ge=1000)
    # How long the broker may hold a fetch open waiting for data. The embedded broker
    # (Tansu) gives up a fetch that takes longer to assemble: with 10 or 20 ms a processor
    # behind 40,000 single-reading batches never caught up; 30 drained them in 3.1 s, 50
    # in 0.6 s, 100 in 0.4 s. On a quiet partition a waiting fetch is answered in 2-3 ms
    # whatever the wait, but under a steady flow over several partitions a longer wait
    # answers later: produce to consume at 1,000 messages/s, p50/p99 40/68 ms at 50 and
    # 53/91 ms at 100 (bench/fetch_wait.py --flow-work 0). So 50, the shortest wait that
    # still drains a backlog at once.
    fetch_wait_ms: int = Field(50, ge=1, le=5000)
    # A NEWS2 parameter older than this (relative to the patient's newest reading) no longer counts.
    news2_freshness_s: float = Field(900.0, gt=0)


class FhirSettings(BaseModel):
    """FHIR resources: identifier systems, and the optional push to an EHR's FHIR server."""

    # The identifier system of the medical record numbers devices send (`mrn=`).
    mrn_system: str = "urn:oid:2.16.840.1.113883.19.5"
    # Optional EHR push: transaction Bundles to this FHIR base URL; None = off.
    ehr_base_url: str | None = None
    ehr_batch_size: int = Field(200, ge=1, le=5000)
    ehr_timeout_s: float = Field(10.0, gt=0)
    ehr_max_attempts: int = Field(5, ge=1)
    # Extra HTTP headers for the EHR, e.g. {"Authorization": "Bearer ..."}.
    ehr_headers: dict[str, str] = Field(default_factory=dict)


class TlsSettings(BaseModel):
    """Where the certificates live and which TLS versions servers accept."""

    # ca.crt, crl.pem, {service}.crt/.key, devices/ (see healthsync.security.certs).
    # `healthsync up` uses <run dir>/certs unless this is set.
    dir: Path = Path("run/certs")
    # "1.3" allows TLS 1.3 only; "1.2" also TLS 1.2, with ECDHE AES-256-GCM suites only.
    min_version: Literal["1.3", "1.2"] = "1.3"


class CryptoSettings(BaseModel):
    """Encryption at rest of what HealthSync writes to Redis and Kafka (AES-256-GCM)."""

    enabled: bool = True
    # JSON keyring, readable by its owner only; `healthsync keys init` creates it
    # and `healthsync up` does so when it is missing.
    keyring_file: Path = Path("run/keyring.json")
    # With a KMS key the keyring holds only KMS-encrypted data keys (needs the aws extra).
    kms_key_id: str | None = None
    kms_endpoint_url: str | None = None
    aws_region: str | None = None
    # Seals per key, counted across the processes sharing the keyring file, after
    # which a new active key is made (half of AES-GCM's 2^32 messages); 0: never.
    rotate_after_seals: int = Field(2**31, ge=0)


class ArchiveSettings(BaseModel):
    """The long-term archive: encrypted Parquet in a local directory or on S3."""

    # file://<dir> (the same key layout a bucket would have) or s3://bucket/prefix.
    # `healthsync up` uses file://<run dir>/archive unless this is set.
    url: str = "file://run/archive"
    # An archiver writes what it buffered at least this often, or sooner at the size limit.
    roll_s: float = Field(60.0, gt=0)
    roll_bytes: int = Field(64 * 1024 * 1024, ge=1024)
    # Most rows in a Parquet row group. Groups hold whole patients' runs up to this
    # size, so a one-patient query reads few rows; larger groups compress better.
    row_group_rows: int = Field(1024, ge=64)
    # The compact job merges a day's objects into one per partition once the day has
    # been over this long (readings sent late after that stay in hour objects).
    day_settle_s: float = Field(3600.0, ge=0)
    # Most rows in a row group of those day objects: a patient's day is thousands of
    # readings, and fewer, larger groups make queries and the archive cheaper.
    day_row_group_rows: int = Field(8192, ge=64)
    group_id: str = "healthsync-archiver"
    # How far the archiver gives way to the live path when the CPU is short (priority.py).
    nice: int = Field(10, ge=0, le=19)
    # S3 only: server-side encryption asked for on every PutObject, on top of the
    # Parquet encryption; "aws:kms" uses sse_kms_key_id (or the bucket's default key).
    sse: Literal["AES256", "aws:kms"] = "AES256"
    sse_kms_key_id: str | None = None
    # An S3-compatible endpoint; without it boto3's own AWS_ENDPOINT_URL variables apply.
    s3_endpoint: str | None = None
    aws_region: str | None = None


class Settings(BaseSettings):
    """All of HealthSync's settings."""

    model_config = SettingsConfigDict(
        env_prefix="HEALTHSYNC_",
        env_nested_delimiter="_",
        env_nested_max_split=1,
        extra="forbid",
    )

    kafka: KafkaSettings = KafkaSettings()
    redis: RedisSettings = RedisSettings()
    ingest: IngestSettings = IngestSettings()
    processor: ProcessorSettings = ProcessorSettings()
    fhir: FhirSettings = FhirSettings()
    api: ApiSettings = ApiSettings()
    anomaly: AnomalySettings = AnomalySettings()
    tls: TlsSettings = TlsSettings()
    auth: AuthSettings = AuthSettings()
    crypto: CryptoSettings = CryptoSettings()
    jobs: JobsSettings = JobsSettings()
    cloudwatch: CloudWatchSettings = CloudWatchSettings()
    archive: ArchiveSettings = ArchiveSettings()
    log_level: str = "INFO"

    @classmethod
    def settings_customise_sources(
        cls,
        settings_cls: type[BaseSettings],
        init_settings: PydanticBaseSettingsSource,
        env_settings: PydanticBaseSettingsSource,
        dotenv_settings: PydanticBaseSettingsSource,
        file_secret_settings: PydanticBaseSettingsSource,
    ) -> tuple[PydanticBaseSettingsSource, ...]:
        # The TOML file arrives as init values; the environment overrides it.
        return (env_settings, init_settings)

    @classmethod
    def load(cls, config_file: Path | None = None) -> Settings:
        """Build the settings from the environment and an optional TOML file."""
        path = config_file or _env_path("HEALTHSYNC_CONFIG")
        values: dict[str, Any] = {}
        if path is not None:
            with path.open("rb") as f:
                values = tomllib.load(f)
        return cls(**values)

    def to_env(self) -> dict[str, str]:
        """These settings as HEALTHSYNC_* variables, for starting child processes."""
        env: dict[str, str] = {"HEALTHSYNC_LOG_LEVEL": self.log_level}
        for section in type(self).model_fields:
            model = getattr(self, section)
            if not isinstance(model, BaseModel):
                continue  # log_level, above
            for name, value in model.model_dump(mode="json").items():
                if value is None:
                    continue
                key = f"HEALTHSYNC_{section}_{name}".upper()
                env[key] = (
                    json.dumps(value) if isinstance(value, dict | list | tuple) else str(value)
                )
        return env


def _env_path(name: str) -> Path | None:
    value = os.environ.get(name)
    return Path(value) if value else None


def _is_loopback(host: str) -> bool:
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False
