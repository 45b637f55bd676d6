"""Which incarnation of each topic the archive's plain object names belong to.

Object names are ``p<partition>-<first>-<last>.parquet`` (:mod:`.layout`). A
topic deleted and created again, or held in memory by a broker that
restarted, starts its offsets over at 0: its batches would get the names of
batches archived before and replace them. So the archive records, per topic,
the id of the topic its plain names belong to, its *first incarnation*::

    identified/_topics/<topic>.json    {"topic": "<topic>", "topic_id": "<32 hex digits>"}

written once, when the archiver first archives the topic, and never changed.
Batches of the recorded incarnation keep the plain names; those of any later
one carry its id, ``p<partition>-<first>-<last>-t<topic id>.parquet``. A
broker that reports no topic ids records nothing, and its batches get plain
names. The record holds no patient data, is no Parquet object, and lies
outside ``identified/readings/`` and ``identified/alerts/``: readers,
compaction and re-encryption (``*.parquet`` only) never take it for data.
"""

from __future__ import annotations

import orjson

from healthsync.store.archive import layout
from healthsync.store.archive.errors import ObjectStoreError
from healthsync.store.archive.objects import ObjectStore

TOPICS_PREFIX = f"{layout.IDENTIFIED}/_topics/"
_MAX_RECORD_BYTES = 4096


def record_key(topic: str) -> str:
    return f"{TOPICS_PREFIX}{topic}.json"


class FirstIncarnations:
    """The recorded first incarnation of each topic, read (or recorded) once and kept."""

    def __init__(self, store: ObjectStore) -> None:
        self.store = store
        self._known: dict[str, str] = {}

    def marker(self, topic: str, topic_id: str) -> str:
        """The incarnation that names a batch of `topic`, whose id is now `topic_id`.

        As :attr:`.layout.Span.incarnation` holds it: "" (the plain name) for the
        first incarnation and for a broker without topic ids; the topic id for
        any later incarnation.
        """
        if not topic_id:
            return ""
        return "" if topic_id == self.first(topic, topic_id) else topic_id

    def first(self, topic: str, topic_id: str) -> str:
        """The recorded id of `topic`'s first incarnation; `topic_id` is recorded if none is."""
        known = self._known.get(topic)
        if known is None:
            key = record_key(topic)
            record = orjson.dumps({"topic": topic, "topic_id": topic_id})
            # Another archiver may have recorded the topic first: its record stands.
            known = topic_id if self.store.create(key, record) else self._read(key)
            self._known[topic] = known
        return known

    def _read(self, key: str) -> str:
        with self.store.open(key) as file:
            data = file.read(_MAX_RECORD_BYTES)
        try:
            topic_id = orjson.loads(data)["topic_id"]
        except (orjson.JSONDecodeError, KeyError, TypeError) as exc:
            raise ObjectStoreError(f"{self.store.location(key)} is no topic record") from exc
        if not isinstance(topic_id, str) or not topic_id:
            raise ObjectStoreError(f"{self.store.location(key)} holds no topic id")
        return topic_id
