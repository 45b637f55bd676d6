"""Values sealed with a key the API does not have, for the tests of unreadable entries."""

from __future__ import annotations

from pathlib import Path

from redis import Redis

from healthsync.config import CryptoSettings, Settings
from healthsync.security.codec import Codec
from healthsync.security.keyring import Keyring
from tests.api.auth_client import ALERT_ID


def seal_with_a_foreign_key(settings: Settings, client: Redis, directory: Path) -> None:
    """Overwrite P-AUTH-2's latest vitals and NEWS2 score, and the open alert seeded by
    :func:`tests.api.auth_client.seed`, with values sealed under another keyring."""
    foreign = directory / "foreign.json"
    Keyring.generate().save(foreign)
    stranger = Codec.from_settings(
        settings.model_copy(update={"crypto": CryptoSettings(keyring_file=foreign)})
    )
    keys = Codec.from_settings(settings).keys
    latest = keys.latest("P-AUTH-2")
    client.hset(latest, "heart_rate", stranger.seal(b"{}", Codec.field(latest, "heart_rate")))
    tag = keys.patient("P-AUTH-2")
    news2 = keys.news2(keys.group_of_member(tag))
    client.hset(news2, tag, stranger.seal(b"{}", Codec.field(news2, tag)))
    alert = keys.alert(ALERT_ID)
    client.set(alert, stranger.seal(b"{}", alert))
