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
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from datetime import UTC, datetime

READINGS = "readings"
ALERTS = "alerts"
IDENTIFIED = "identified"
DEIDENTIFIED = "deidentified"
HOUR_S = 3600

_NAME = re.compile(r"p(\d+)-(\d+)-(\d+)\.parquet$")


@dataclass(frozen=True, slots=True)
class Span:
    """The Kafka offsets one batch covers: a partition, its first and last offset."""

    partition: int
    first: int
    last: int

    @property
    def name(self) -> str:
        return f"p{self.partition}-{self.first}-{self.last}.parquet"

    @property
    def name_prefix(self) -> str:
        """What every object name of a batch starting at `first` begins with."""
        return f"p{self.partition}-{self.first}-"

    @classmethod
    def parse(cls, key: str) -> Span | None:
        """The span an object key names, or None for a key that is not an archive object."""
        match = _NAME.search(key)
        if match is None:
            return None
        partition, first, last = (int(g) for g in match.groups())
        return cls(partition, first, last)


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
