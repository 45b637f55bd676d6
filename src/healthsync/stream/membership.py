"""A consumer's place in its group, shown to `healthsync up` as a file.

A consumer stopped while it is still joining its group leaves the group waiting
for it (Tansu holds its LeaveGroup behind the pending JoinGroup), and its
successor waits out the rebalance timeout. So the broker recycle stops a
consumer only once it has joined: the consumer writes ``kafka.joined_file``
when its group assigns it partitions, and removes it when they are revoked and
when it closes. Without the setting (a stage run on its own) nothing is written.
"""

from __future__ import annotations

from pathlib import Path


class Membership:
    """Writes or removes the joined file; does nothing without one."""

    def __init__(self, path: Path | None) -> None:
        self.path = path

    def joined(self) -> None:
        if self.path is not None:
            self.path.touch()

    def left(self) -> None:
        if self.path is not None:
            self.path.unlink(missing_ok=True)
