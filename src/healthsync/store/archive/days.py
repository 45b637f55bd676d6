"""Day compaction: a settled day's objects of a Kafka partition merged into one.

Hour objects keep a week's history at 168 objects per partition, and a query
pays Arrow's fixed work for each. Once a day is over, its objects of each
partition and topic incarnation (the archiver's, and those hour compaction
merged) are merged into one *day object* in the day's directory, above its
hours::

    identified/<dataset>/date=YYYY-MM-DD/p<partition>-<first>-<last>.compacted.parquet

sorted by patient then time, with row groups of whole patients' runs (up to
``archive.day_row_group_rows``, 8192: a patient's day at one reading every 5 s
is 17,280 rows, and fewer, larger groups cost a query less work per column
chunk and the archive fewer bytes), statistics and the footer's list of
patients, encrypted like its inputs. It
covers the objects of its partition and incarnation in the day's hours whose
offsets it spans (:mod:`.coverage`), so the steps are those of hour compaction
(:mod:`.compact`): write the day object whole, read it back and compare it with
its inputs, and only then delete them; a reader takes the day object instead
of whatever inputs are still there, at every step.

A batch that spans hours is written as one object per hour, one after the
other. A crashed archiver may have written some of them only, and replays the
rest when it restarts; had the day object covered the batch's offsets, the
replayed objects would be hidden and their readings lost. So a day object
takes a partition's objects only up to a batch known to be whole: one that a
later batch of the partition follows, in this day or a later one (the
archiver writes a batch's objects before it commits its offsets and starts
the next batch). The partition's last batch waits, as hour objects, for the
next compaction after a later batch is archived (a topic's last incarnation
keeps its last batch in hours for good).
"""

from __future__ import annotations

import functools

from healthsync.store.archive import layout
from healthsync.store.archive.compact import Compactor, Directory
from healthsync.store.archive.coverage import Piece, split

DAY_S = 86_400
HOURS_PER_DAY = 24
# Stream: (partition, topic incarnation), as coverage.Piece.stream.
Stream = tuple[int, str]


def day_directory(dataset: str, day: int) -> str:
    """The directory of one day (``day`` counted in days since the epoch), where its day
    objects lie."""
    return layout.day_prefix(dataset, day * HOURS_PER_DAY).rstrip("/")


def day_of(ts: float) -> int:
    return int(ts // DAY_S)


def settled_days(hours: range, now: float, settle_s: float) -> list[int]:
    """The days these hours (since the epoch) fall in that ended at least `settle_s`
    before `now`."""
    days = sorted({hour // HOURS_PER_DAY for hour in hours})
    return [day for day in days if (day + 1) * DAY_S + settle_s <= now]


class DayCompactor:
    """Merges a day's objects per partition and incarnation, with a :class:`Compactor`'s
    steps (and its checkpoint)."""

    def __init__(self, compactor: Compactor, today: int, row_group_rows: int = 8192) -> None:
        self.compactor = compactor
        # Later days are looked at for evidence of whole batches up to this one.
        self.today = today
        self.row_group_rows = row_group_rows

    def day(self, dataset: str, day: int) -> Directory:
        """Compact one day (days since the epoch) of the identified set."""
        directory = day_directory(dataset, day)
        pieces = self.compactor.pieces(f"{directory}/")
        visible, covered = split(pieces)
        result = Directory()
        for piece in pieces:
            result.reach[piece.stream] = max(piece.span.last, result.reach.get(piece.stream, -1))
        horizons = self._horizons(dataset, day, pieces)
        for stream in sorted(result.reach):
            mine = [p for p in visible if p.stream == stream]
            chosen = _whole(mine, horizons[stream])
            if not chosen:
                continue
            low = min(p.span.first for p in chosen)
            high = max(p.span.last for p in chosen)
            # What the day object will span is hidden by it: deleted once it is verified.
            gone = [
                p
                for p in covered
                if p.stream == stream and low <= p.span.first and p.span.last <= high
            ]
            merge = functools.partial(
                self.compactor.merge,
                chosen,
                gone,
                encrypted=True,
                directory=directory,
                row_group_rows=self.row_group_rows,
            )
            result.add(merge)
        return result

    def _horizons(self, dataset: str, day: int, pieces: list[Piece]) -> dict[Stream, int]:
        """Per stream, the highest first offset of its objects in this day and the days
        after it (up to today), looking no further than the first later batch: every
        batch that ends before it is whole."""
        top: dict[Stream, int] = {}
        horizon: dict[Stream, int] = {}
        for piece in pieces:
            top[piece.stream] = max(piece.span.last, top.get(piece.stream, -1))
            horizon[piece.stream] = max(piece.span.first, horizon.get(piece.stream, -1))
        later = day + 1
        while later <= self.today and any(horizon[s] <= top[s] for s in top):
            for piece in self.compactor.pieces(f"{day_directory(dataset, later)}/"):
                if piece.stream in horizon:
                    horizon[piece.stream] = max(piece.span.first, horizon[piece.stream])
            later += 1
        return horizon


def _whole(visible: list[Piece], horizon: int) -> list[Piece]:
    """Of a stream's visible objects in a day, those a day object may take: all that end
    before `horizon` (a later batch starts there), up to the first that does not.

    An object that reaches the horizon may hold a batch not yet whole; the cut
    falls before it, so the day object's offsets stay below every object it
    leaves out, and never hide one.
    """
    cut = min([horizon, *(p.span.first for p in visible if p.span.last >= horizon)])
    return [p for p in visible if p.span.last < cut]
