"""The loop both WebSocket protocols run once a client holds a session slot.

A reader task turns the socket's messages into items on a queue, and stops reading while the
client is too far ahead of what its session heard (feeding.wait_for_room). The loop takes
everything that queued up during the last decode, at least one item, and hands it to the
protocol at once; it watches a drain (SIGTERM), the session's time limit, the reader's end,
and, where the protocol has one running, a second decode finishing. `/v1/stream` and
`/v1/realtime` are adapters over it: each says how a message becomes items, what its items
do, how it sends an error and how it finishes.
"""

from __future__ import annotations

import asyncio
import time
from abc import ABC, abstractmethod
from collections.abc import Awaitable, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
from fastapi import WebSocket
from starlette.websockets import WebSocketDisconnect

from ..audio import SAMPLE_RATE
from ..streaming import StreamEvent, StreamingSession
from .errors import ProtocolError
from .feeding import push, wait_for_room
from .service import Service


@dataclass(frozen=True)
class Audio:
    """Audio off the socket, as 16 kHz mono float32, and when it arrived."""

    samples: np.ndarray
    arrived_at: float  # time.monotonic()


@dataclass(frozen=True)
class Idle:
    """Nothing arrived for `idle_timeout_s`: reported, then the session is finished."""

    error: ProtocolError


class LastItem:
    """An item after which the reader stops reading (`/v1/stream`'s `end`)."""


class SessionLoop(ABC):
    """One connection's loop; a protocol subclasses it and fills in the abstract steps."""

    def __init__(self, ws: WebSocket, service: Service) -> None:
        self.ws, self.service, self.settings = ws, service, service.settings

    # -- what a protocol says -----------------------------------------------------------------

    @abstractmethod
    async def items(self, message: dict[str, Any]) -> list[Any]:
        """One socket message as queue items (raise ProtocolError for a fatal one)."""

    @abstractmethod
    async def handle(self, items: list[Any], reader: asyncio.Task) -> str | None:
        """Act on what queued up, in order; the reason to finish, if any."""

    @abstractmethod
    async def drain(self, queued: list[Any]) -> None:
        """Finish on a drain; `queued` is what the client had sent and was not yet handled."""

    @abstractmethod
    async def finish(self, reason: str, code: int) -> None:
        """Last words, the protocol's last message, and the close."""

    @abstractmethod
    async def send_error(self, error: ProtocolError) -> None:
        """An error in the protocol's own shape; the session goes on."""

    def ahead_s(self) -> float:
        """Audio received that the session has not heard yet (for backpressure)."""
        return 0.0

    async def push_audio(self, session: StreamingSession, key: str, audio: list[Audio],
                         reader: asyncio.Task) -> list[StreamEvent]:
        """The audio that queued up, pushed to the session as one chunk, with when each
        piece arrived (pacing); `key` is the session's in `Sessions`."""
        for item in audio:
            session.pacing.arrived(len(item.samples), item.arrived_at)
        samples = np.concatenate([item.samples for item in audio])
        self.service.sessions.report_lag(key)
        self.service.metrics.audio_seconds.labels("stream").inc(len(samples) / SAMPLE_RATE)
        return await push(session, samples, reader, lambda: self.service.sessions.forget(key))

    def second_decode(self) -> Awaitable[Any] | None:
        """A decode to wake up for when it finishes (none by default)."""
        return None

    async def on_second_decode(self) -> None:
        """What to send once `second_decode` finished."""

    # -- the loop -----------------------------------------------------------------------------

    async def loop(self, finish: asyncio.Event, first: Sequence[Any] = ()) -> None:
        """Move the client's messages to the protocol until the session ends; `first`: items
        of a message read before the loop (Realtime's first event)."""
        queue: asyncio.Queue[Any] = asyncio.Queue()
        for item in first:
            queue.put_nowait(item)
        started = time.monotonic()
        reader = asyncio.create_task(self._read(queue))
        finisher = asyncio.create_task(finish.wait())
        try:
            while True:
                items = await self._next_items(queue, reader, finisher)
                if items is None:  # drain: what already arrived is heard, then the end
                    reader.cancel()  # first, so nothing it reads meanwhile is left behind
                    await asyncio.gather(reader, return_exceptions=True)
                    return await self.drain(_take_all(queue))
                idle = next((item for item in items if isinstance(item, Idle)), None)
                reason = await self.handle([i for i in items if not isinstance(i, Idle)],
                                           reader)
                if reason:
                    return await self.finish(reason, 1000)
                if idle is not None:
                    await self.send_error(idle.error)
                    return await self.finish("idle timeout", 1000)
                if time.monotonic() - started > self.settings.max_session_s:
                    limit = self.settings.max_session_s
                    await self.send_error(ProtocolError(
                        "session_too_long", f"session exceeded {limit:.0f} s"))
                    return await self.finish("maximum session duration", 1000)
        finally:
            for task in (reader, finisher):
                task.cancel()
            await asyncio.gather(reader, finisher, return_exceptions=True)

    async def _next_items(self, queue: asyncio.Queue[Any], reader: asyncio.Task,
                          finisher: asyncio.Task) -> list[Any] | None:
        """Everything queued since the last decode (at least one item), or None on drain.
        Re-raises the reader's disconnect or fatal protocol error once its queue is empty.
        A drain comes first: a client whose audio always waits would otherwise never see it."""
        while True:
            if finisher.done():
                return None
            getter = asyncio.create_task(queue.get())
            waiting = {getter, finisher, reader}
            decode = self.second_decode()
            if decode is not None:
                waiting.add(decode)
            try:
                done, _ = await asyncio.wait(waiting, return_when=asyncio.FIRST_COMPLETED)
            finally:  # cancelled with the handler, too: no task left pending on the queue
                if not getter.done():
                    getter.cancel()
            if getter in done:  # first: an item taken off the queue is never dropped
                return [getter.result(), *_take_all(queue)]
            if finisher in done:
                return None
            if reader in done and queue.empty():
                reader.result()
            if decode is not None and decode in done:
                await self.on_second_decode()

    async def _read(self, queue: asyncio.Queue[Any]) -> None:
        """The reader task: socket messages to queue items, until a LastItem or idle."""
        timeout = self.settings.idle_timeout_s
        while True:
            await wait_for_room(self.ahead_s, self.settings.max_ahead_s)
            try:
                message = await asyncio.wait_for(self.ws.receive(), timeout)
            except TimeoutError:
                return await queue.put(Idle(ProtocolError(
                    "idle_timeout", f"no message for {timeout:.0f} s")))
            if message["type"] == "websocket.disconnect":
                raise WebSocketDisconnect(message.get("code", 1000))
            for item in await self.items(message):
                await queue.put(item)
                if isinstance(item, LastItem):
                    return


def _take_all(queue: asyncio.Queue[Any]) -> list[Any]:
    items = []
    while not queue.empty():
        items.append(queue.get_nowait())
    return items
