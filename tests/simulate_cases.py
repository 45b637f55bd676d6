"""Shared by the simulator tests: the first sequence number, and a stand-in
ingest server to run simulations against."""

from __future__ import annotations

import asyncio
import contextlib
import ssl
import time
from collections.abc import Callable, Coroutine
from dataclasses import dataclass, field
from types import TracebackType
from typing import Any

from healthsync.domain.readings import Reading
from healthsync.wire import WireError, ok_reply, parse_line

SEQ_START = 5_000


@dataclass
class IngestStub:
    """Answers like the ingest server: each line parsed, answered in order.

    ``reject`` turns a valid reading into an ERR; ``drop_after`` makes one
    connection close after answering that many lines (the lines it read but did
    not answer count as stored, as when a reply is lost after Kafka took it);
    ``silent`` never answers.
    """

    reject: Callable[[Reading], WireError | None] | None = None
    drop_after: int | None = None
    silent: bool = False
    tls: ssl.SSLContext | None = None
    readings: list[Reading] = field(default_factory=list)
    rejected: list[WireError] = field(default_factory=list)
    connections: int = 0
    dropped: bool = False
    port: int = 0
    _server: asyncio.Server | None = None
    _handlers: set[asyncio.Task[Any]] = field(default_factory=set)

    async def __aenter__(self) -> IngestStub:
        self._server = await asyncio.start_server(self._handle, "127.0.0.1", 0, ssl=self.tls)
        self.port = self._server.sockets[0].getsockname()[1]
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        assert self._server is not None
        self._server.close()
        await self._server.wait_closed()
        for task in self._handlers:
            task.cancel()
        await asyncio.gather(*self._handlers, return_exceptions=True)

    async def _handle(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        task = asyncio.current_task()
        assert task is not None
        self._handlers.add(task)
        self.connections += 1
        answered = 0
        try:
            while line := await reader.readline():
                try:
                    reading = parse_line(line, time.time())
                    refusal = self.reject(reading) if self.reject else None
                    if refusal is not None:
                        raise refusal
                    self.readings.append(reading)
                    reply = ok_reply(reading.reading_id)
                except WireError as exc:
                    self.rejected.append(exc)
                    reply = exc.reply()
                if not self.dropped and self.drop_after is not None and answered >= self.drop_after:
                    self.dropped = True
                    return
                if not self.silent:
                    writer.write(reply)
                    answered += 1
                    if writer.transport.get_write_buffer_size() > 1 << 16:
                        await writer.drain()
        except ConnectionError:
            pass
        finally:
            writer.close()
            with contextlib.suppress(ConnectionError):
                await writer.wait_closed()

    @property
    def ids(self) -> list[str]:
        return [r.reading_id for r in self.readings]


def run(scenario: Coroutine[Any, Any, None]) -> None:
    asyncio.run(scenario)
