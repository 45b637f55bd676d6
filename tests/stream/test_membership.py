"""Each consumer stage shows `up` when it has joined its group, so that the broker recycle
stops it only then (see recycle.py), and not only once it has run for SETTLE_S.

Real processes: the supervisor's processor and archiver against the test broker.
"""

from __future__ import annotations

import time
from pathlib import Path

from healthsync.config import Settings
from healthsync.recycle import SETTLE_S, BrokerRecycler
from healthsync.supervisor import Pipeline
from tests.conftest import wait_for


def test_consumers_say_when_they_joined_and_the_recycle_need_not_wait_longer(
    settings: Settings, tmp_path: Path
) -> None:
    pipeline = Pipeline(settings, tmp_path / "run")
    pipeline.start(stages=("process", "archive"))
    try:
        recycler = BrokerRecycler(pipeline, lambda _text: None)
        children = [pipeline.children["process"], pipeline.children["archive"]]
        for child in children:
            assert child.joined_file is not None
            wait_for(child.joined_file.exists, timeout=SETTLE_S - 5, what=f"{child.name} to join")
        assert recycler.settled(), "both joined, yet the recycle would still wait"
        assert time.monotonic() - max(c.started_at for c in children) < SETTLE_S

        # A consumer started again is not joined until its new process says so.
        processor = pipeline.children["process"]
        assert processor.joined_file is not None
        processor.stop()
        assert not processor.joined_file.exists(), "a stopped consumer still says it is joined"
        processor.start(pipeline.env)
        assert not recycler.settled()
        wait_for(processor.joined_file.exists, timeout=SETTLE_S - 5, what="the processor to join")
        assert recycler.settled()
    finally:
        pipeline.stop()
    for child in children:
        assert child.joined_file is not None
        assert not child.joined_file.exists(), f"{child.name} stopped but says it is joined"
