"""Which archive objects a reader takes: compacted objects cover the inputs they merged.

Compaction (:mod:`.compact`) merges the objects of one directory (an hour of
the identified set, a year of the research set) and one Kafka partition into
one object named after the offsets it covers::

    p<partition>-<first>-<last>.compacted.parquet

It holds every row of that partition's objects in the directory whose
offsets lie between `first` and `last`. So in each directory an object is
*covered*, and a reader skips it, when a compacted object of the same
partition spans its offsets. That holds at every step of a compaction (the
merged object is written before any input is deleted) and after an archiver
replay rewrites an input that compaction already merged and deleted: the
rewrite is covered too, and never counted twice.
"""

from __future__ import annotations

import bisect
import itertools
import re
from collections import defaultdict
from collections.abc import Iterable
from dataclasses import dataclass

from healthsync.store.archive.layout import Span

COMPACTED_SUFFIX = ".compacted.parquet"
_PLAIN = re.compile(r"p(\d+)-(\d+)-(\d+)\.parquet")
_COMPACTED = re.compile(r"p(\d+)-(\d+)-(\d+)\.compacted\.parquet")


@dataclass(frozen=True, slots=True)
class Piece:
    """One archive object: its key, the offsets it covers, whether compaction wrote it."""

    key: str
    span: Span
    compacted: bool

    @property
    def directory(self) -> str:
        return self.key.rpartition("/")[0]


def compacted_name(span: Span) -> str:
    return f"p{span.partition}-{span.first}-{span.last}{COMPACTED_SUFFIX}"


def parse(key: str) -> Piece | None:
    """The piece an object key names, or None for a key that is not an archive object."""
    name = key.rpartition("/")[2]
    for pattern, compacted in ((_PLAIN, False), (_COMPACTED, True)):
        match = pattern.fullmatch(name)
        if match is not None:
            partition, first, last = (int(g) for g in match.groups())
            return Piece(key, Span(partition, first, last), compacted)
    return None


def split(pieces: Iterable[Piece]) -> tuple[list[Piece], list[Piece]]:
    """(visible, covered): what a reader takes, and what a compacted object already holds."""
    groups: dict[tuple[str, int], list[Piece]] = defaultdict(list)
    for piece in pieces:
        groups[piece.directory, piece.span.partition].append(piece)
    visible: list[Piece] = []
    covered: list[Piece] = []
    for group in groups.values():
        covers = _Covers(group)
        for piece in group:
            (covered if covers(piece) else visible).append(piece)
    visible.sort(key=lambda p: p.key)
    covered.sort(key=lambda p: p.key)
    return visible, covered


def visible_keys(keys: Iterable[str]) -> list[str]:
    """Of these keys, the archive objects a reader takes (see the module doc)."""
    pieces = [piece for key in keys if (piece := parse(key)) is not None]
    return [piece.key for piece in split(pieces)[0]]


class _Covers:
    """Whether a compacted object of the group spans a piece (other than the piece itself)."""

    def __init__(self, group: list[Piece]) -> None:
        # Compacted objects by first offset, widest first; the widest reach so far decides.
        self.compacted = sorted(
            (p for p in group if p.compacted), key=lambda p: (p.span.first, -p.span.last)
        )
        self.firsts = [p.span.first for p in self.compacted]
        self.position = {p.key: i for i, p in enumerate(self.compacted)}
        self.reach: list[int] = []
        for piece in self.compacted:
            self.reach.append(max(piece.span.last, self.reach[-1] if self.reach else -1))

    def __call__(self, piece: Piece) -> bool:
        if piece.compacted:
            # Only those before it in that order can span it (an equal span is itself).
            before = self.position[piece.key]
        else:
            before = bisect.bisect_right(self.firsts, piece.span.first)
        return before > 0 and self.reach[before - 1] >= piece.span.last


def overlaps(pieces: list[Piece]) -> list[tuple[Piece, Piece]]:
    """Pairs of one partition's visible pieces whose offsets overlap: a replay cut elsewhere.

    Their rows cannot be told apart by offset, so compaction leaves such a
    directory alone rather than merge a reading twice.
    """
    found: list[tuple[Piece, Piece]] = []
    ordered = sorted(pieces, key=lambda p: (p.span.partition, p.span.first))
    for left, right in itertools.pairwise(ordered):
        if left.span.partition == right.span.partition and right.span.first <= left.span.last:
            found.append((left, right))
    return found
