"""The API's uvicorn server, which ends the dashboards' streams when told to stop."""

from __future__ import annotations

import asyncio
import socket
from collections.abc import Callable
from types import FrameType

import uvicorn


class StoppableServer(uvicorn.Server):
    """uvicorn's server, which on SIGTERM or Ctrl-C first ends the dashboards' streams:
    it waits for open connections to finish, and a stream never does by itself."""

    def __init__(self, config: uvicorn.Config, close_streams: Callable[[], None]) -> None:
        super().__init__(config)
        self.close_streams = close_streams
        self.loop: asyncio.AbstractEventLoop | None = None

    async def serve(self, sockets: list[socket.socket] | None = None) -> None:
        self.loop = asyncio.get_running_loop()
        await super().serve(sockets)

    def handle_exit(self, sig: int, frame: FrameType | None) -> None:
        if self.loop is not None:
            self.loop.call_soon_threadsafe(self.close_streams)
        super().handle_exit(sig, frame)
