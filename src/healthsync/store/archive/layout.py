"""Object keys of the archive, relative to the archive URL's prefix.

Identified objects are partitioned Hive-style by the hour of measurement, so a
query for a period lists only the hours it covers:

    identified/<dataset>/date=YYYY-MM-DD/hour=HH/p<partition>-<first>-<last>.parquet

``first`` and ``last`` are the Kafka offsets of the batch (one roll of one
partition) the object came from; a batch whose readings span several hours
gives one object per hour, all with the batch's range. The de-identified set
may not show real dates (Safe Harbor keeps the year only), so its objects are
partitioned by year, one per batch:

    deidentified/<dataset>/year=YYYY/p<partition>-<first>-<last>.parquet

Both are functions of the offsets and the data alone: a batch replayed after a
crash gets the same keys and overwrites the same objects.

Offsets alone do not name a batch for good: a topic deleted and created again
(or held by a broker that keeps it in memory and restarted) starts again at
offset 0, often in the same hour. The archive records the id of each topic's
first incarnation (:mod:`.topics`); its batches, and those of a broker that
reports no topic ids, keep the names above. A later incarnation's names carry
its topic id (32 hex digits), so they never overwrite the first's objects:

    p<partition>-<first>-<last>-t<topic id>.parquet

In a :class:`Span` that is ``incarnation``: the id, or ``""`` for a plain name.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

READINGS = "readings"
ALERTS = "alerts"
IDENTIFIED = "identified"
DEIDENTIFIED = "deidentified"
HOUR_S = 3600

# What an object name starts with: p<partition>-<first>-<last>, then -t<topic id> for a
# later incarnation of the topic.
STEM = r"p(\d+)-(\d+)-(\d+)(?:-t([0-9a-f]{32}))?"
_NAME = re.compile(STEM + r"\.parquet$")


@dataclass(frozen=True, slots=True)
class Span:
    """The Kafka offsets one batch covers: a partition, its first and last offset, and
    the incarnation of the topic they belong to (its topic id in hex for a later
    incarnation; "" for the first one the archive recorded, or none known)."""

    partition: int
    first: int
    last: int
    incarnation: str = ""

    @property
    def stem(self) -> str:
        """The object name without its suffix."""
        marker = f"-t{self.incarnation}" if self.incarnation else ""
        return f"p{self.partition}-{self.first}-{self.last}{marker}"

    @property
    def name(self) -> str:
        return f"{self.stem}.parquet"

    @classmethod
    def parse(cls, key: str) -> Span | None:
        """The span an object key names, or None for a key that is not an archive object."""
        match = _NAME.search(key)
        if match is None:
            return None
        return cls.from_groups(match.groups())

    @classmethod
    def from_groups(cls, groups: tuple[str | Any, ...]) -> Span:
        """The span of a match of :data:`STEM` (its first four groups)."""
        partition, first, last, incarnation = groups[:4]
        return cls(int(partition), int(first), int(last), incarnation or "")


def hour_prefix(dataset: str, hour: int) -> str:
    """The directory of one hour (``hour`` counted in hours since the epoch)."""
    start = datetime.fromtimestamp(hour * HOUR_S, tz=UTC)
    return f"{IDENTIFIED}/{dataset}/date={start:%Y-%m-%d}/hour={start:%H}/"


def day_prefix(dataset: str, hour: int) -> str:
    """The directory of the day an hour falls in: one listing covers 24 hours."""
    start = datetime.fromtimestamp(hour * HOUR_S, tz=UTC)
    return f"{IDENTIFIED}/{dataset}/date={start:%Y-%m-%d}/"


def identified_key(dataset: str, hour: int, span: Span) -> str:
    return hour_prefix(dataset, hour) + span.name


def deidentified_key(dataset: str, year: int, span: Span) -> str:
    return f"{DEIDENTIFIED}/{dataset}/year={year:04d}/{span.name}"


def hours_between(since: float, until: float) -> range:
    """The hours (since the epoch) a period touches, both ends included."""
    return range(int(since // HOUR_S), int(until // HOUR_S) + 1)
