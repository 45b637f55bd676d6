"""What the archiver buffers per partition between batches, and when it may write it."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from healthsync.store.archive.layout import Span


@dataclass
class Roll:
    """What one partition of one topic buffered since its last batch."""

    dataset: str
    partition: int
    first: int
    opened_at: float
    last: int = -1
    size: int = 0
    # Readings, or (event type, alert) pairs; and the time of the first one.
    rows: list[Any] = field(default_factory=list)
    first_ts: float = 0.0
    # Where a crashed run cut the batch that starts at `first`: None when not looked up
    # yet, -1 when there was none.
    cut: int | None = None
    # The topic's id when the roll opened, as names carry it: "" for the first
    # incarnation the archive recorded (and from a broker that reports no ids).
    incarnation: str = ""

    @property
    def span(self) -> Span:
        return Span(self.partition, self.first, self.last, self.incarnation)

    @property
    def writable(self) -> bool:
        """Whether the roll may be written and committed now: not a replay short of the
        crashed run's cut, which must end there. One at a committed offset that read
        nothing archivable (cut unknown) has nothing to write: it is committed as is."""
        if self.cut is None:
            return not self.rows
        return self.last >= self.cut
