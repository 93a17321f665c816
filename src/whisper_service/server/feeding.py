"""How both WebSocket protocols feed a session: audio off the event loop, a stop as soon as the
client leaves, and backpressure on a client that runs far ahead.

A client may send faster than real time (a reconnect replaying its buffer, a file pushed
through the stream). The session then hears it at the pace of the capacity that is spare
(pacing.py), and its socket is read only while the audio it has sent and the session has not
heard stays within `max_ahead_s`: past that, TCP's own flow control holds the client back.
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable

import numpy as np
from starlette.concurrency import run_in_threadpool
from starlette.websockets import WebSocketDisconnect

from ..streaming import SessionCancelled, StreamEvent, StreamingSession

AHEAD_POLL_S = 0.05


async def push(session: StreamingSession, samples: np.ndarray, reader: asyncio.Task,
               on_gone: Callable[[], None]) -> list[StreamEvent]:
    """`session.push(samples)` in a worker thread. If the client leaves meanwhile (the reader
    ends with a disconnect), the session is cancelled at once: it stops at its next block and
    its queued decodes are withdrawn, and `on_gone` is told (the session stops counting for
    admission). The push then gives no events; the handler's loop meets the disconnect when
    it next reads the queue, after what the client sent before it.

    The push is awaited directly, so a handler that is itself cancelled still waits for the
    worker thread to finish: no thread outlives its event loop."""

    def left(task: asyncio.Task) -> None:
        if not task.cancelled() and isinstance(task.exception(), WebSocketDisconnect):
            session.cancel()
            on_gone()

    reader.add_done_callback(left)
    try:
        return await run_in_threadpool(session.push, samples)
    except SessionCancelled:
        return []
    finally:
        reader.remove_done_callback(left)


async def wait_for_room(ahead_s: Callable[[], float], limit_s: float) -> None:
    """Return once the audio a client has sent ahead of what its session heard is within
    `limit_s` (the reader calls this before it reads the next message)."""
    while ahead_s() > limit_s:
        await asyncio.sleep(AHEAD_POLL_S)
