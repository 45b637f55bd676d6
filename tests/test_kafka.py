"""Client settings: a user's passthrough settings win over tuning, never over safety."""

from __future__ import annotations

import pytest

from healthsync.config import KafkaSettings
from healthsync.errors import ConfigError
from healthsync.kafka import client_config


def test_user_settings_override_tuning_but_not_what_guarantees_rest_on() -> None:
    settings = KafkaSettings(
        bootstrap="b:9092",
        client={"linger.ms": "50", "acks": "0", "security.protocol": "SSL"},
    )
    config = client_config(settings, defaults={"linger.ms": 2}, required={"acks": "all"})
    assert config["bootstrap.servers"] == "b:9092"
    assert config["linger.ms"] == "50"
    assert config["security.protocol"] == "SSL"
    assert config["acks"] == "all"


def test_no_bootstrap_is_a_clear_error() -> None:
    with pytest.raises(ConfigError, match="HEALTHSYNC_KAFKA_BOOTSTRAP"):
        client_config(KafkaSettings())
