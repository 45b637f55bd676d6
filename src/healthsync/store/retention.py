"""How the live cache keeps readings for ``redis.history_retention_s``, and no longer.

The keys that hold a patient's readings (history, seen set, FHIR indexes) are
trimmed by score when a batch writes them, at most once per ``TRIM_INTERVAL_S``
per key. Scores are measurement times, but the seen set's are receive times, so
a reading is known as stored for a retention after it arrived, however old it
is. A patient who stops sending (discharged, or the monitor moved to another
bed) is never written again, so each trim also sets the key to expire with the
retention: the key outlives its newest entry's retention and goes soon after.

The expiry counts from the trim, so it adds to the retention:
``TRIM_INTERVAL_S``, because the newest entry may have been written that long
after the key's last trim; and ``DATED_AHEAD_S``, because a reading may be dated
that far ahead of its arrival (the wire's limit), and its entry stays for the
retention after that date. No entry leaves before its own retention ends.
"""

from __future__ import annotations

import math
from typing import Any, cast

from redis import Redis

from healthsync.domain.readings import MAX_FUTURE_S
from healthsync.names import RedisKeys

# Trim a key at most this often, not on every batch.
TRIM_INTERVAL_S = 60.0
DATED_AHEAD_S = MAX_FUTURE_S
# Acknowledgements looked at per trim (once a minute) for alerts that have expired.
ACKS_PAGE = 1000


def expiry_s(retention_s: float) -> int:
    """What a key's expiry is set to when it is trimmed, in whole seconds."""
    return math.ceil(retention_s + TRIM_INTERVAL_S + DATED_AHEAD_S)


def trim(pipe: Any, key: str, now: float, retention_s: float) -> None:
    """Queue on `pipe` the trim of sorted set `key` (scored by time) to the retention at
    `now`, and its expiry."""
    pipe.zremrangebyscore(key, "-inf", now - retention_s)
    pipe.expire(key, expiry_s(retention_s))


class TrimClock:
    """Which keys are due a trim: each at most once per ``TRIM_INTERVAL_S``.

    Remembers only the keys trimmed within the interval (a key trimmed longer
    ago is due either way), so patients who come and go do not make it grow.
    """

    def __init__(self) -> None:
        self._at: dict[str, float] = {}
        self._swept_at = 0.0

    def __len__(self) -> int:
        """How many keys it remembers."""
        return len(self._at)

    def due(self, key: str, now: float) -> bool:
        """Whether `key` is due a trim at `now`; if so, it counts as trimmed at `now`."""
        interval = TRIM_INTERVAL_S
        if now - self._at.get(key, -math.inf) <= interval:
            return False
        if now - self._swept_at > interval:
            self._swept_at = now
            self._at = {k: at for k, at in self._at.items() if now - at <= interval}
        self._at[key] = now
        return True


def expired_recent_alerts(client: Redis, keys: RedisKeys, cutoff: float) -> list[str]:
    """The recent alerts opened before `cutoff` whose alert has expired.

    An alert opened before the retention may still be held: open (open alerts do
    not expire) or resolved less than a retention ago. Its index entry stays, so
    the listings reach it while Redis holds it. Past the first trim, what is read
    here is a trim interval's alerts and those still held.
    """
    ids = [
        member.decode()
        for member in cast("list[bytes]", client.zrangebyscore(keys.recent_alerts, "-inf", cutoff))
    ]
    return _expired(client, keys, ids)


def acks_of_expired_alerts(client: Redis, keys: RedisKeys, cursor: int) -> tuple[int, list[str]]:
    """The next page of acknowledgements (the API's) whose alert has expired, and the
    cursor of the page after.

    One page a minute, going round the hash, so each trim costs about the same however
    many alerts were ever acknowledged.
    """
    cursor, page = client.hscan(keys.acknowledged, cursor, count=ACKS_PAGE)
    ids = [field.decode() for field in cast("dict[bytes, bytes]", page)]
    return cursor, _expired(client, keys, ids)


def _expired(client: Redis, keys: RedisKeys, ids: list[str]) -> list[str]:
    """Those of the alert ids whose alert Redis no longer holds."""
    if not ids:
        return []
    check = client.pipeline(transaction=False)
    for alert_id in ids:
        check.exists(keys.alert(alert_id))
    return [i for i, there in zip(ids, check.execute(), strict=True) if not there]
