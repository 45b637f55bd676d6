"""Retry an action with capped exponential backoff until it succeeds or the caller stops."""

from __future__ import annotations

import logging
import time
from collections.abc import Callable
from typing import TypeVar

T = TypeVar("T")
log = logging.getLogger(__name__)

MAX_BACKOFF_S = 5.0


def retry_until_stopped(
    what: str,
    action: Callable[[], T],
    stopping: Callable[[], bool],
    on_error: Callable[[Exception], None] | None = None,
) -> T | None:
    """Run `action` until it returns; None if `stopping()` became true first.

    Used where giving up would lose data: a sink that fails is tried again, and
    the partition waits instead of moving past what was not stored.
    """
    backoff = 0.1
    while True:
        try:
            return action()
        except Exception as exc:  # noqa: BLE001 - any failure is retried, not fatal
            if on_error is not None:
                on_error(exc)
            log.warning(f"{what} failed; retrying", extra={"error": str(exc), "backoff_s": backoff})
        if stopping():
            return None
        time.sleep(backoff)
        backoff = min(backoff * 2, MAX_BACKOFF_S)
