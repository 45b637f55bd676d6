"""`healthsync keys rewrap` and the check behind `keys retire`: the keyring against Redis."""

from __future__ import annotations

from redis import Redis
from redis.exceptions import RedisError

from healthsync.config import CryptoSettings, Settings
from healthsync.errors import ConfigError
from healthsync.redis_client import connect
from healthsync.security.codec import Codec
from healthsync.security.keyring import KeyringError
from healthsync.store.rewrap import key_usage, rewrap


def _connect(settings: Settings, crypto: CryptoSettings) -> tuple[Redis, Codec]:
    if not settings.redis.url:
        raise ConfigError(
            "the keyring's data is in Redis: set HEALTHSYNC_REDIS_URL (and its TLS settings)"
        )
    codec = Codec.from_settings(settings.model_copy(update={"crypto": crypto}))
    return connect(settings.redis), codec


def rewrap_redis(settings: Settings, crypto: CryptoSettings) -> int:
    """Re-seal Redis under the active key; exit status 1 if some values could not be read."""
    client, codec = _connect(settings, crypto)
    try:
        report = rewrap(client, codec)
    except RedisError as exc:
        raise ConfigError(f"Redis at {settings.redis.url} cannot be used: {exc}") from None
    finally:
        client.close()
    active = codec.cipher.keyring.active if codec.cipher else "-"
    print(f"resealed {report.resealed} values in {report.keys} keys under {active}")
    if report.unreadable:
        print(f"{len(report.unreadable)} values no key in this keyring opens; left as they are")
        return 1
    return 0


def refuse_if_in_use(settings: Settings, crypto: CryptoSettings, key_id: str) -> None:
    """KeyringError if Redis still holds a value `key_id` sealed."""
    client, codec = _connect(settings, crypto)
    try:
        used = key_usage(client, codec)[key_id]
    except RedisError as exc:
        raise ConfigError(
            f"cannot check Redis at {settings.redis.url} for data under {key_id}: {exc}"
        ) from None
    finally:
        client.close()
    if used:
        raise KeyringError(
            f"key {key_id!r} still seals {used} values in Redis; "
            "run `healthsync keys rewrap` first, then retire it"
        )
