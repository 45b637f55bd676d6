"""Where a resource sits in a FHIR search's order, and the walk over several indexes.

A search orders resources by (time, id), the time being the score its
indexes give it. Vital-sign Observations are indexed by their reading, one
entry per reading in the index of readings that make as many Observations
(:mod:`healthsync.store.fhir_store`); a search walks those indexes and the
resource type's own together, merged by (time, member). A reading's
Observation ids are its id and a suffix, and reading ids are all as long,
so that merge is the order of (time, id) of what the members stand for.
"""

from __future__ import annotations

import math
from collections import deque
from dataclasses import dataclass, field

from healthsync.fhir.ids import MAX_OBSERVATIONS
from healthsync.names import RedisKeys

# Scores are float seconds; a resource shows its time rounded to the microsecond
# (e.g. effectiveDateTime), so bounds move by half a microsecond to agree with it.
_HALF_MICROSECOND = 0.5e-6


@dataclass(frozen=True, slots=True)
class Window:
    """The resource times (epoch seconds) a search accepts: ``start <= time < end``."""

    start: float = -math.inf
    end: float = math.inf

    def narrow(self, start: float = -math.inf, end: float = math.inf) -> Window:
        return Window(max(self.start, start), min(self.end, end))

    @property
    def empty(self) -> bool:
        return self.start >= self.end


@dataclass(frozen=True, slots=True, order=True)
class Position:
    """A place in an index: a resource's score and id, in the index's own order."""

    time: float
    resource_id: str


@dataclass(frozen=True, slots=True)
class Index:
    """A sorted set a search walks: of resource ids, or (`readings`) of reading ids
    that each stand for `per_member` vital-sign Observations, rebuilt on read."""

    key: str
    per_member: int = 1
    readings: bool = False


def indexes_of(keys: RedisKeys, resource_type: str, patient: str | None) -> list[Index]:
    """Every index that holds `resource_type` (of `patient`, or of everyone): its own,
    and for Observations the readings' indexes."""
    indexes = [Index(keys.fhir_index(resource_type, patient))]
    if resource_type == "Observation":
        indexes += [
            Index(keys.fhir_reading_index(n, patient), n, readings=True)
            for n in range(1, MAX_OBSERVATIONS + 1)
        ]
    return indexes


@dataclass(slots=True)
class Cursor:
    """Where a walk is in one index: what it fetched and has not taken yet."""

    index: Index
    offset: int = 0
    rows: deque[tuple[float, str]] = field(default_factory=deque)
    exhausted: bool = False


def score_bounds(
    window: Window, after: Position | None = None, newest_first: bool = True
) -> tuple[str, str]:
    """ZRANGEBYSCORE bounds for ``start <= time < end``, from `after`'s score if given."""
    start = window.start - _HALF_MICROSECOND
    end = window.end - _HALF_MICROSECOND
    low = "-inf" if start == -math.inf else repr(start)
    high = "+inf" if end == math.inf else f"({end!r}"
    if after is not None:
        # Inclusive: resources tied with `after` on time may come after it by id.
        if newest_first and after.time < end:
            high = repr(after.time)
        elif not newest_first and after.time >= start:
            low = repr(after.time)
    return low, high


def beyond(position: Position, after: Position, newest_first: bool) -> bool:
    """Whether `position` comes after `after` in the search's order."""
    return position < after if newest_first else position > after


def may_pass(taken: tuple[float, str, Index], after: Position, newest_first: bool) -> bool:
    """Whether a member, or one of the Observations a reading's member stands for (its
    id and a suffix), comes after `after` in the search's order."""
    score, member, index = taken
    if not index.readings:
        return beyond(Position(score, member), after, newest_first)
    if newest_first:  # the reading's id comes before all of its Observations' ids
        return Position(score, member) < after
    return Position(score, member + "\x7f") > after


def merge(cursors: list[Cursor], limit: int, newest_first: bool) -> list[tuple[float, str, Index]]:
    """Members from the cursors' heads in the walk's order, until they stand for `limit`
    resources or an index that may hold more has nothing fetched (its next could come
    first)."""
    taken: list[tuple[float, str, Index]] = []
    pick = max if newest_first else min
    resources = 0
    while resources < limit:
        if any(not c.rows and not c.exhausted for c in cursors):
            break
        ready = [c for c in cursors if c.rows]
        if not ready:
            break
        cursor = pick(ready, key=lambda c: c.rows[0])
        score, member = cursor.rows.popleft()
        taken.append((score, member, cursor.index))
        resources += cursor.index.per_member
    return taken


def members_for(index: Index, resources: int) -> int:
    """How many of `index`'s members to fetch for about `resources` resources."""
    return max(1, -(-resources // index.per_member))
