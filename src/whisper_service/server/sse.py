"""`stream=true` uploads: the transcript as Server-Sent Events, in OpenAI's shapes.

A worker thread transcribes the file (`batched.decode_file`) and hands each segment, as soon as
faster-whisper has decoded its window, to the response through a small memory stream; the
response sends it as a `transcript.text.delta` event, then the whole text as
`transcript.text.done`. A client that leaves stops the worker at its next window. Errors
after the first byte can no longer change the status: they go as an `error` event, which
OpenAI's SDK raises as `APIError` (openai/_streaming.py: any event whose data has `error`).
"""

from __future__ import annotations

import json
import threading
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import Any

import anyio
from anyio import CancelScope
from anyio.streams.memory import MemoryObjectReceiveStream, MemoryObjectSendStream
from starlette.responses import Response
from starlette.types import Receive, Scope, Send

from ..transcript import Segment, Transcript
from .errors import ApiError

# Segments the decoder may run ahead of a slow client; then it waits, outside the model's
# decode slots (holding only its file-job turn), until the client reads on.
AHEAD = 16
# Whisper's encoder writes 1500 positions per 30 s window: the `audio_tokens` of `usage`.
AUDIO_TOKENS_PER_SECOND = 50
STREAMED_FORMATS = ("json", "text")  # what OpenAI streams; subtitles and verbose_json don't

Work = Callable[[Callable[[Segment], None], Callable[[float], None]], Transcript]
"""The blocking transcription: (on_segment, on_progress) -> the whole transcript."""


class ClientGone(Exception):
    """The client of a file transcription disconnected: stop spending decodes on it."""


class TextDeltas:
    """Append-only pieces of `Transcript.text`, one per segment: their concatenation is that
    text exactly. Segments start with a space (" Hello."), and the text is stripped at both
    ends, so leading whitespace is dropped and trailing whitespace held back until more text
    follows it. (Only the held-back tail is kept: a 3 h transcript is not copied per delta.)"""

    def __init__(self) -> None:
        self._started = False
        self._held = ""

    def add(self, text: str) -> str:
        pending = self._held + text if self._started else (self._held + text).lstrip()
        delta = pending.rstrip()
        self._held = pending[len(delta):]
        self._started = self._started or bool(delta)
        return delta


def event(payload: dict[str, Any]) -> bytes:
    """One SSE event: a `data:` line of compact JSON (newlines in text are escaped)."""
    data = json.dumps(payload, ensure_ascii=False, separators=(",", ":"))
    return f"data: {data}\n\n".encode()


def done_event(transcript: Transcript, text_tokens: int) -> dict[str, Any]:
    """`transcript.text.done`. Its `usage` type (openai 3.57) has only the token variant, not
    `{"type": "duration"}`: input is the audio as encoder positions plus the prompt and
    hotwords, output the tokens the model wrote (timestamps included)."""
    audio = round(transcript.duration * AUDIO_TOKENS_PER_SECOND)
    written = sum(len(s.tokens) for s in transcript.segments)
    return {"type": "transcript.text.done", "text": transcript.text, "usage": {
        "type": "tokens", "input_tokens": audio + text_tokens, "output_tokens": written,
        "total_tokens": audio + text_tokens + written,
        "input_token_details": {"audio_tokens": audio, "text_tokens": text_tokens}}}


def error_event(error: ApiError) -> dict[str, Any]:
    """OpenAI's error body, as an event: the code the response would have carried, had the
    error come before the first byte (the status is 200 by then)."""
    kind = "server_error" if error.status >= 500 else "invalid_request_error"
    return {"type": "error", "error": {"message": error.message, "type": kind,
                                       "code": error.code}}


@dataclass
class _State:
    finished: bool = False  # the last event went out: a disconnect now is no client leaving
    left: bool = False


class TranscriptStream(Response):
    """The events of one upload. Everything it holds (the model reference, the file-job turn)
    is given back by `on_close` once the worker has stopped, however the stream ends."""

    media_type = "text/event-stream"

    def __init__(self, work: Work, refusal: Callable[[Exception], ApiError], text_tokens: int,
                 on_gone: Callable[[], None], on_close: Callable[[], Awaitable[Any]]) -> None:
        self.status_code, self.background = 200, None
        # No caching, and no buffering by a proxy in front (nginx honours this header).
        self.init_headers({"Cache-Control": "no-cache", "X-Accel-Buffering": "no"})
        self._work, self._refusal, self._text_tokens = work, refusal, text_tokens
        self._on_gone, self._on_close = on_gone, on_close

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        stop = threading.Event()  # the worker checks it after every window
        to_client, from_worker = anyio.create_memory_object_stream[tuple[str, Any]](AHEAD)
        state = _State()
        try:
            async with anyio.create_task_group() as tasks:
                tasks.start_soon(self._produce, to_client, stop)
                tasks.start_soon(self._watch, receive, stop, tasks.cancel_scope, state)
                try:
                    await self._send_events(send, from_worker, state)
                except OSError:  # how servers of ASGI 2.4 tell of a client that left
                    state.left = not state.finished
                finally:
                    stop.set()  # before the task group waits for the worker to stop
                    tasks.cancel_scope.cancel()
        finally:
            if state.left:
                self._on_gone()
            await self._on_close()

    async def _send_events(self, send: Send, from_worker: MemoryObjectReceiveStream,
                           state: _State) -> None:
        await send({"type": "http.response.start", "status": self.status_code,
                    "headers": self.raw_headers})
        deltas = TextDeltas()
        async with from_worker:  # closed on the way out: a worker blocked on it gives up
            async for kind, value in from_worker:
                if kind == "segment":
                    delta = deltas.add(value.text)
                    if not delta:
                        continue
                    payload = {"type": "transcript.text.delta", "delta": delta}
                elif kind == "done":
                    payload = done_event(value, self._text_tokens)
                else:
                    payload = error_event(self._refusal(value))
                if kind != "segment":
                    state.finished = True
                await send({"type": "http.response.body", "body": event(payload),
                            "more_body": True})
                if state.finished:
                    break
        state.finished = True
        await send({"type": "http.response.body", "body": b"", "more_body": False})

    async def _produce(self, to_client: MemoryObjectSendStream, stop: threading.Event) -> None:
        """Run the work in a worker thread; its segments, then its transcript or its error,
        go to the client in order. The thread blocks while AHEAD segments wait unread."""

        def put(item: tuple[str, Any]) -> None:
            anyio.from_thread.run(to_client.send, item)

        def check(_: float) -> None:
            if stop.is_set():
                raise ClientGone()

        def run() -> None:
            try:
                put(("done", self._work(lambda seg: put(("segment", seg)), check)))
            except (ClientGone, anyio.BrokenResourceError, anyio.ClosedResourceError):
                pass  # nobody reads any more
            except Exception as exc:
                try:
                    put(("error", exc))
                except (anyio.BrokenResourceError, anyio.ClosedResourceError):
                    pass

        async with to_client:
            await anyio.to_thread.run_sync(run)  # not abandoned when cancelled: it stops

    @staticmethod
    async def _watch(receive: Receive, stop: threading.Event, scope: CancelScope,
                     state: _State) -> None:
        """The client leaving: stop the worker and the events (no polling: the server says)."""
        while (await receive())["type"] != "http.disconnect":
            pass
        if not state.finished:
            state.left = True
            stop.set()
            scope.cancel()
