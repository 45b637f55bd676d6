"""Settings: environment variables, a TOML file, and handing settings to child processes."""

from __future__ import annotations

from pathlib import Path

import pytest
from pydantic import ValidationError

from healthsync.config import Settings


def test_documented_environment_shortcuts(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("HEALTHSYNC_REDIS_URL", "redis://example:6380/1")
    monkeypatch.setenv("HEALTHSYNC_KAFKA_BOOTSTRAP", "kafka-1:9092,kafka-2:9092")
    monkeypatch.setenv("HEALTHSYNC_KAFKA_CLIENT", '{"security.protocol": "SSL"}')
    monkeypatch.setenv("HEALTHSYNC_INGEST_MAX_LINE_BYTES", "2048")
    settings = Settings.load()
    assert settings.redis.url == "redis://example:6380/1"
    assert settings.kafka.bootstrap == "kafka-1:9092,kafka-2:9092"
    assert settings.kafka.client == {"security.protocol": "SSL"}
    assert settings.ingest.max_line_bytes == 2048


def test_toml_file_with_environment_overriding_it(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    config = tmp_path / "healthsync.toml"
    config.write_text('[ingest]\nport = 7100\nhost = "0.0.0.0"\n[kafka]\npartitions = 12\n')
    monkeypatch.setenv("HEALTHSYNC_INGEST_PORT", "7200")
    settings = Settings.load(config)
    assert (settings.ingest.host, settings.ingest.port) == ("0.0.0.0", 7200)
    assert settings.kafka.partitions == 12


def test_invalid_values_are_refused(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("HEALTHSYNC_KAFKA_PARTITIONS", "0")
    with pytest.raises(ValidationError, match="partitions"):
        Settings.load()


def test_to_env_round_trips(monkeypatch: pytest.MonkeyPatch) -> None:
    original = Settings(
        kafka={"bootstrap": "b:1", "client": {"sasl.mechanism": "PLAIN"}},
        redis={"url": "redis://r:2/0", "prefix": "x"},
        ingest={"port": 7001},
        auth={
            "jwt_issuer": "https://idp",
            "jwt_audience": "hs",
            "jwks_file": "/etc/hs/jwks.json",
            "jwt_algorithms": ["ES256"],
            "audit_redis": False,
            "audit_log_file": "/var/log/hs/audit.jsonl",
        },
    )
    for key, value in original.to_env().items():
        monkeypatch.setenv(key, value)
    assert Settings.load() == original


def test_redis_tls_files_reach_the_client_only_for_rediss(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("HEALTHSYNC_REDIS_URL", "rediss://cache:6380/0")
    monkeypatch.setenv("HEALTHSYNC_REDIS_TLS_CA_FILE", "/etc/healthsync/ca.crt")
    monkeypatch.setenv("HEALTHSYNC_REDIS_TLS_CERT_FILE", "/etc/healthsync/app.crt")
    monkeypatch.setenv("HEALTHSYNC_REDIS_TLS_KEY_FILE", "/etc/healthsync/app.key")
    redis = Settings.load().redis
    assert redis.client_options() == {
        "socket_timeout": 5.0,
        "socket_connect_timeout": 5.0,
        "ssl_ca_certs": "/etc/healthsync/ca.crt",
        "ssl_certfile": "/etc/healthsync/app.crt",
        "ssl_keyfile": "/etc/healthsync/app.key",
    }
    # redis-py's plain connection class refuses ssl_* arguments.
    redis.url = "redis://cache:6379/0"
    assert "ssl_ca_certs" not in redis.client_options()


def test_tls_switches_default_on_and_turn_off_by_environment(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    defaults = Settings.load()
    assert (defaults.kafka.embedded_tls, defaults.redis.embedded_tls) == (True, True)
    assert defaults.api.tls_enabled
    monkeypatch.setenv("HEALTHSYNC_KAFKA_EMBEDDED_TLS", "false")
    monkeypatch.setenv("HEALTHSYNC_REDIS_EMBEDDED_TLS", "false")
    monkeypatch.setenv("HEALTHSYNC_API_TLS_ENABLED", "false")
    settings = Settings.load()
    assert not (settings.kafka.embedded_tls or settings.redis.embedded_tls)
    assert not settings.api.tls_enabled


def test_archive_settings_from_the_documented_variables(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("HEALTHSYNC_ARCHIVE_URL", "s3://hospital-archive/ward-7")
    monkeypatch.setenv("HEALTHSYNC_ARCHIVE_ROLL_S", "15")
    monkeypatch.setenv("HEALTHSYNC_ARCHIVE_S3_ENDPOINT", "http://127.0.0.1:9000")
    monkeypatch.setenv("HEALTHSYNC_ARCHIVE_SSE", "aws:kms")
    archive = Settings.load().archive
    assert (archive.url, archive.roll_s, archive.s3_endpoint, archive.sse) == (
        "s3://hospital-archive/ward-7",
        15.0,
        "http://127.0.0.1:9000",
        "aws:kms",
    )
    monkeypatch.setenv("HEALTHSYNC_ARCHIVE_SSE", "none")
    with pytest.raises(ValidationError, match="sse"):
        Settings.load()
