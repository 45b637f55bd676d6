"""A small, bounded thread pool for the API's blocking calls to other services.

JWKS fetches from the identity provider and the broker check of ``/readyz``
wait on the network. On the event loop's default executor they would queue
ahead of the audit log's file writes, so a stuck identity provider would hold
up every audited answer; here they have their own few threads instead.
"""

from __future__ import annotations

import asyncio
import functools
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from typing import ParamSpec, TypeVar

P = ParamSpec("P")
T = TypeVar("T")


class Outbound:
    """Runs blocking network calls on at most `workers` threads."""

    def __init__(self, workers: int = 4) -> None:
        self._pool = ThreadPoolExecutor(workers, thread_name_prefix="healthsync-outbound")

    async def run(self, call: Callable[P, T], *args: P.args, **kwargs: P.kwargs) -> T:
        loop = asyncio.get_running_loop()
        return await loop.run_in_executor(self._pool, functools.partial(call, *args, **kwargs))

    def close(self) -> None:
        self._pool.shutdown(wait=False, cancel_futures=True)
