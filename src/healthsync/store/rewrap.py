"""Re-sealing what Redis holds under the keyring's active key, and counting what each key sealed.

Rotation re-encrypts nothing; `healthsync keys rewrap` does, so that an old key
can be retired without making long-lived data (a patient's alarm bands, the
engine's state, the audit stream) unreadable, and `keys retire` refuses while
anything in Redis still names the key.

Every sealed value's associated data is its place (see security/codec.py),
which the Redis type tells: a string's key; a hash field's key and field; a
sorted-set member's key; a stream field's stream and field (the latest
values' fields from one reading share a value, bound to the key and the field
``*``). Each key is rewritten in a WATCH/MULTI transaction, so a value a stage
writes meanwhile is never overwritten with an older one (the key is read again
and retried).
Stream entries cannot be changed in place: the stream is copied entry by entry
with the same ids into a new key, which then replaces it.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from typing import Any, cast

from redis import Redis
from redis.exceptions import WatchError

from healthsync.errors import HealthSyncError
from healthsync.security.codec import Codec
from healthsync.security.crypto import is_current, key_id_of
from healthsync.store.records import SHARED_FIELD

_RETRIES = 20


class RewrapError(HealthSyncError):
    """Re-sealing could not be finished; the message says where."""


@dataclass
class RewrapReport:
    resealed: int = 0  # values sealed again under the active key
    keys: int = 0  # Redis keys rewritten
    unreadable: list[str] = field(default_factory=list)  # places no key here opens


def key_usage(client: Redis, codec: Codec) -> Counter[str]:
    """How many values in Redis each key id sealed (under the codec's prefix)."""
    usage: Counter[str] = Counter()
    for key in _scan(client, codec):
        for value in _values(client, key):
            key_id = key_id_of(value)
            if key_id is not None:
                usage[key_id] += 1
    return usage


def rewrap(client: Redis, codec: Codec) -> RewrapReport:
    """Seal every value not under the active key (or in an older format) again, under it."""
    cipher = codec.cipher
    if cipher is None:
        raise RewrapError("encryption at rest is off (crypto.enabled); there is nothing to rewrap")
    report = RewrapReport()
    active = cipher.keyring.active
    for key in _scan(client, codec):
        for _attempt in range(_RETRIES):
            try:
                changed = _rewrap_key(client, codec, key, active, report)
                break
            except WatchError:
                continue  # a stage wrote the key meanwhile: read it again
        else:
            raise RewrapError(f"{key} kept changing; run `healthsync keys rewrap` again")
        if changed:
            report.keys += 1
    return report


def _scan(client: Redis, codec: Codec) -> Iterator[str]:
    for raw in client.scan_iter(f"{codec.keys.prefix}:*", count=500):
        yield raw.decode() if isinstance(raw, bytes) else str(raw)


def _values(client: Redis, key: str) -> Iterator[bytes]:
    kind = client.type(key)
    if kind == b"string":
        value = client.get(key)
        if value is not None:
            yield cast("bytes", value)
    elif kind == b"hash":
        yield from cast("dict[bytes, bytes]", client.hgetall(key)).values()
    elif kind == b"zset":
        yield from cast("list[bytes]", client.zrange(key, 0, -1))
    elif kind == b"stream":
        for _id, fields in cast("list[tuple[bytes, dict[bytes, bytes]]]", client.xrange(key)):
            yield from fields.values()


def _rewrap_key(client: Redis, codec: Codec, key: str, active: str, report: RewrapReport) -> bool:
    """Rewrite one key if it holds values under another key than `active`; True if it did."""
    with client.pipeline(transaction=True) as pipe:
        pipe.watch(key)  # type: ignore[no-untyped-call]
        kind = pipe.type(key)

        def reseal(value: bytes, place: str, *others: str) -> bytes | None:
            """`value` sealed under the active key at the first of its places it opens at."""
            if key_id_of(value) is None or is_current(value, active):
                return None
            for where in (place, *others):
                try:
                    fresh = codec.seal(codec.open(value, where), where)
                except HealthSyncError:
                    continue
                report.resealed += 1
                return fresh
            report.unreadable.append(place)
            return None

        writes = _WRITERS.get(cast("bytes", kind))
        if writes is None:
            return False
        ops = writes(pipe, codec, key, reseal)
        if not ops:
            return False
        pipe.multi()
        for op in ops:
            op(pipe)
        pipe.execute()
        return True


Op = Callable[[Any], object]
# A value and the places it may be bound to, most likely first.
Reseal = Callable[..., "bytes | None"]


def _string(pipe: Any, _codec: Codec, key: str, reseal: Reseal) -> list[Op]:
    value = pipe.get(key)
    fresh = reseal(value, key) if value is not None else None
    if fresh is None:
        return []
    return [lambda p: p.set(key, fresh, keepttl=True, xx=True)]


def _hash(pipe: Any, codec: Codec, key: str, reseal: Reseal) -> list[Op]:
    changed: dict[bytes, bytes] = {}
    for name, value in cast("dict[bytes, bytes]", pipe.hgetall(key)).items():
        # A field's own place, or the one the fields of a reading share (latest values).
        own, shared = codec.field(key, name.decode()), codec.field(key, SHARED_FIELD)
        fresh = reseal(value, own, shared)
        if fresh is not None:
            changed[name] = fresh
    return [lambda p: p.hset(key, mapping=changed)] if changed else []


def _zset(pipe: Any, _codec: Codec, key: str, reseal: Reseal) -> list[Op]:
    old: list[bytes] = []
    new: dict[bytes, float] = {}
    for member, score in cast(
        "list[tuple[bytes, float]]", pipe.zrange(key, 0, -1, withscores=True)
    ):
        fresh = reseal(member, key)
        if fresh is not None:
            old.append(member)
            new[fresh] = score
    if not new:
        return []
    return [lambda p: p.zrem(key, *old), lambda p: p.zadd(key, new)]


def _stream(pipe: Any, codec: Codec, key: str, reseal: Reseal) -> list[Op]:
    entries = cast("list[tuple[bytes, dict[bytes, bytes]]]", pipe.xrange(key))
    copied: list[tuple[bytes, dict[bytes, bytes]]] = []
    changed = False
    for entry_id, fields in entries:
        out: dict[bytes, bytes] = {}
        for name, value in fields.items():
            fresh = reseal(value, codec.field(key, name.decode()))
            changed = changed or fresh is not None
            out[name] = fresh if fresh is not None else value
        copied.append((entry_id, out))
    if not changed:
        return []
    staging = f"{key}:rewrap"

    def copy(p: Any) -> None:
        p.delete(staging)
        for entry_id, out in copied:
            p.xadd(staging, cast("Any", out), id=entry_id)
        p.rename(staging, key)

    return [copy]


_WRITERS: dict[bytes, Callable[[Any, Codec, str, Reseal], list[Op]]] = {
    b"string": _string,
    b"hash": _hash,
    b"zset": _zset,
    b"stream": _stream,
}
