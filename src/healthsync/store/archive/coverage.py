"""Which archive objects a reader takes: compacted objects cover the inputs they merged.

Compaction (:mod:`.compact`) merges the objects of one directory (an hour of
the identified set, a year of the research set) and one Kafka partition into
one object named after the offsets it covers::

    p<partition>-<first>-<last>.compacted.parquet
    p<partition>-<first>-<last>-t<topic id>.compacted.parquet   (a later incarnation's)

and day compaction (:mod:`.days`) merges a whole day's objects of a partition
into one such object in the day's directory (``date=YYYY-MM-DD/``, above its
``hour=HH/`` directories).

A compacted object holds every row of that partition's objects in its
directory, or below it, whose offsets lie between `first` and `last` and that
belong to the same incarnation of the topic (:mod:`.layout`). So an object is
*covered*, and a reader skips it, when a compacted object of the same
partition and incarnation, in its own directory or one above it, spans its
offsets: the offsets of a topic created again say nothing about those of the
topic before it, and a compacted object of one never hides the objects of
another. That holds at every step of a compaction (the merged object is
written before any input is deleted) and after an archiver replay rewrites an
input that compaction already merged and deleted: the rewrite is covered too,
and never counted twice.
"""

from __future__ import annotations

import bisect
import itertools
import re
from collections import defaultdict
from collections.abc import Iterable, Iterator
from dataclasses import dataclass

from healthsync.store.archive.layout import STEM, Span

COMPACTED_SUFFIX = ".compacted.parquet"
_NAME = re.compile(STEM + r"(\.compacted)?\.parquet")


@dataclass(frozen=True, slots=True)
class Piece:
    """One archive object: its key, the offsets it covers, whether compaction wrote it."""

    key: str
    span: Span
    compacted: bool

    @property
    def directory(self) -> str:
        return self.key.rpartition("/")[0]

    @property
    def stream(self) -> tuple[int, str]:
        """The partition and topic incarnation: offsets compare only within one stream."""
        return self.span.partition, self.span.incarnation


def compacted_name(span: Span) -> str:
    return f"{span.stem}{COMPACTED_SUFFIX}"


def parse(key: str) -> Piece | None:
    """The piece an object key names, or None for a key that is not an archive object."""
    match = _NAME.fullmatch(key.rpartition("/")[2])
    if match is None:
        return None
    return Piece(key, Span.from_groups(match.groups()), match.group(5) is not None)


def split(pieces: Iterable[Piece]) -> tuple[list[Piece], list[Piece]]:
    """(visible, covered): what a reader takes, and what a compacted object already holds."""
    pieces = list(pieces)
    groups: dict[tuple[str, int, str], list[Piece]] = defaultdict(list)
    for piece in pieces:
        groups[(piece.directory, *piece.stream)].append(piece)
    covers = {
        scope: _Covers(group) for scope, group in groups.items() if any(p.compacted for p in group)
    }
    visible: list[Piece] = []
    covered: list[Piece] = []
    for piece in pieces:
        hidden = any(
            check(piece, own=directory == piece.directory)
            for directory in _ancestry(piece.directory)
            if (check := covers.get((directory, *piece.stream))) is not None
        )
        (covered if hidden else visible).append(piece)
    visible.sort(key=lambda p: p.key)
    covered.sort(key=lambda p: p.key)
    return visible, covered


def _ancestry(directory: str) -> Iterator[str]:
    """The directory, then each directory above it."""
    while directory:
        yield directory
        directory = directory.rpartition("/")[0]


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

    def __call__(self, piece: Piece, own: bool = True) -> bool:
        """Whether this group's compacted objects span `piece`; `own`: the piece is in
        the group's directory (and may be one of them), not below it."""
        if piece.compacted and own:
            # Only those before it in that order can span it (an equal span is itself).
            before = self.position[piece.key]
        else:
            before = bisect.bisect_right(self.firsts, piece.span.first)
        return before > 0 and self.reach[before - 1] >= piece.span.last


def overlaps(pieces: list[Piece]) -> list[tuple[Piece, Piece]]:
    """Pairs of one partition's visible pieces whose offsets overlap: a replay cut elsewhere.

    Their rows cannot be told apart by offset, so compaction leaves such a
    directory alone rather than merge a reading twice. Pieces of different
    incarnations of the topic never overlap: their offsets are unrelated. In
    different directories (the hours of one day) objects may share offsets:
    a batch that spans hours has one object in each, all of its name, and
    merged hours share the batches that span them; only two batches' objects
    with different offsets that overlap are a clash there.
    """
    found: list[tuple[Piece, Piece]] = []
    alike: dict[tuple[str, int, str], list[Piece]] = defaultdict(list)
    batches: dict[tuple[int, str], dict[Span, Piece]] = defaultdict(dict)
    for piece in pieces:
        alike[(piece.directory, *piece.stream)].append(piece)
        if not piece.compacted:
            batches[piece.stream].setdefault(piece.span, piece)
    groups = [*alike.values(), *(list(spans.values()) for spans in batches.values())]
    for group in groups:
        ordered = sorted(group, key=lambda p: p.span.first)
        for left, right in itertools.pairwise(ordered):
            if right.span.first <= left.span.last and (left, right) not in found:
                found.append((left, right))
    return found
