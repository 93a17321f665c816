"""Admission: how much file work runs at once, how much may wait, how often one client may
ask, and how many sockets may wait for their config. Beyond that a request gets a coded
refusal (with `Retry-After` for HTTP) instead of queueing without bound, so a burst of
uploads cannot take the memory or the decode slots that open streams need, and sockets that
never speak cannot take the session slots.
"""

from __future__ import annotations

import asyncio
import hashlib
import itertools
import math
import time
from collections import Counter, OrderedDict
from collections.abc import AsyncIterator, Awaitable, Callable
from contextlib import asynccontextmanager

from starlette.requests import HTTPConnection
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from .auth import presented_key
from .errors import ApiError, ProtocolError, error_response

# A full queue clears about as fast as one file decodes; clients retry after this long.
BUSY_RETRY_AFTER_S = 10
# Room in an upload's body for the multipart envelope and the form's other fields.
UPLOAD_ENVELOPE_BYTES = 64 * 1024


class FileAdmission:
    """At most `running` file transcriptions at once, and `queued` more waiting for a turn.

    Each running one holds at most one chunk of decoded audio (`file_chunk_s`) besides its
    upload, so the memory that file work can take is bounded by `running`, not by how many
    clients post at once."""

    def __init__(self, running: int, queued: int,
                 on_change: Callable[[int, int], None] | None = None,
                 on_reject: Callable[[], None] | None = None) -> None:
        self.running, self.queued = running, queued
        self._slots = asyncio.Semaphore(running)
        self._inside = 0  # running and waiting
        self._on_change, self._on_reject = on_change, on_reject

    @property
    def waiting(self) -> int:
        return max(0, self._inside - self.running)

    @asynccontextmanager
    async def turn(self) -> AsyncIterator[None]:
        """Wait for a turn, or refuse at once (503 `server_busy`) when the queue is full."""
        if self._inside >= self.running + self.queued:
            if self._on_reject:
                self._on_reject()
            raise ApiError(503, "server_busy", f"server busy: {self.running} file "
                           f"transcriptions running and {self.queued} waiting; retry later",
                           headers={"Retry-After": str(BUSY_RETRY_AFTER_S)})
        self._inside += 1
        self._changed()
        try:
            async with self._slots:
                yield
        finally:
            self._inside -= 1
            self._changed()

    def _changed(self) -> None:
        if self._on_change:
            self._on_change(self._inside - self.waiting, self.waiting)


class PendingSockets:
    """WebSockets accepted and not yet configured, kept apart from the sessions.

    A socket becomes a session only once its config is accepted, so sockets that never speak
    cannot hold the session slots. Waiting ones are bounded three ways: each has
    `config_timeout_s` (the handler's deadline); one client may have `per_client` waiting (more
    are refused); and all of them together `limit`, past which the oldest waiting socket is
    closed to make room. Evicting rather than refusing means a flood of silent sockets from
    many addresses cannot keep a real client out: its socket needs one round trip to send
    its config, and the flood would have to push `limit` sockets through in that time."""

    def __init__(self, limit: int, per_client: int,
                 on_reject: Callable[[str], None] | None = None) -> None:
        self.limit, self.per_client = limit, per_client
        self._on_reject = on_reject or (lambda reason: None)
        # oldest first: how to close each waiting socket to make room
        self._waiting: OrderedDict[int, Callable[[], Awaitable[None]]] = OrderedDict()
        self._clients: Counter[str] = Counter()
        self._ids = itertools.count()

    def __len__(self) -> int:
        return len(self._waiting)

    @asynccontextmanager
    async def waiting(self, client: str,
                      evict: Callable[[], Awaitable[None]]) -> AsyncIterator[None]:
        """Hold a waiting place while the block reads the config. Past the cap, the oldest
        waiting socket is closed first, by its own `evict` (its protocol's coded error and
        close), on this task: no task of its own. Raises ProtocolError `too_many_pending`
        (1013)."""
        if self.per_client and self._clients[client] >= self.per_client:
            self._on_reject("pending_limit")
            raise ProtocolError("too_many_pending", f"too many sockets waiting for their "
                                f"config from this client (limit {self.per_client}); send the "
                                "config right after opening", 1013)
        while len(self._waiting) >= self.limit:
            _, oldest = self._waiting.popitem(last=False)
            self._on_reject("pending_evicted")
            await oldest()
        key = next(self._ids)
        self._waiting[key] = evict
        self._clients[client] += 1
        try:
            yield
        finally:
            self._waiting.pop(key, None)
            self._clients[client] -= 1
            if not self._clients[client]:
                del self._clients[client]


class RateLimiter:
    """A token bucket per client: `per_minute` requests on average, bursts of `burst`.

    A client is its API key when it sends one (so clients behind one proxy or NAT do not
    share a bucket), else its address. Keys are kept only as hashes, and idle buckets are
    forgotten past `max_clients`, so the table stays bounded whoever calls."""

    def __init__(self, per_minute: float, burst: int, max_clients: int = 10_000,
                 clock: Callable[[], float] = time.monotonic) -> None:
        self.rate, self.burst = per_minute / 60.0, burst
        self.max_clients, self._clock = max_clients, clock
        self._buckets: OrderedDict[str, tuple[float, float]] = OrderedDict()

    @property
    def enabled(self) -> bool:
        return self.rate > 0

    def check(self, connection: HTTPConnection) -> None:
        """Take one token for this client, or refuse (429 `rate_limited`, `Retry-After`)."""
        wait = self.wait(connection)
        if wait:
            raise ApiError(429, "rate_limited", self.explain(wait),
                           headers={"Retry-After": str(wait)})

    def wait(self, connection: HTTPConnection) -> int:
        """Take one token for this client: 0, or the whole seconds until it has one."""
        return math.ceil(self.take(client_id(connection))) if self.enabled else 0

    def explain(self, wait: int) -> str:
        return (f"rate limit: {self.rate * 60:g} requests per minute (bursts of {self.burst}); "
                f"retry in {wait} s")

    def take(self, client: str) -> float:
        """0 if the client had a token (now spent), else the seconds until it has one."""
        now = self._clock()
        tokens, then = self._buckets.pop(client, (float(self.burst), now))
        tokens = min(float(self.burst), tokens + (now - then) * self.rate)
        wait = 0.0 if tokens >= 1 else (1 - tokens) / self.rate
        self._buckets[client] = (tokens - 1 if wait == 0 else tokens, now)
        while len(self._buckets) > self.max_clients:
            self._buckets.popitem(last=False)  # the longest idle
        return wait


def client_id(connection: HTTPConnection) -> str:
    """Who is asking: a hash of the key they present, or their address."""
    key = presented_key(connection.headers, connection.query_params)
    if key:
        return "key:" + hashlib.sha256(key.encode()).hexdigest()[:16]
    return "ip:" + (connection.client.host if connection.client else "unknown")


class UploadGuard:
    """Bounds an upload's body on the way in, for requests under `prefixes`: at most
    `max_bytes` (the form's envelope included), within `timeout_s` of its first byte being
    awaited. A body that arrives a few bytes a second holds its connection only until then:
    the form is read before the route runs, so it never holds a file-job slot or a decode
    worker. Past either bound the client gets 413 `file_too_large` or 408 `upload_timeout`,
    without the rest of the body being read."""

    def __init__(self, app: ASGIApp, prefixes: tuple[str, ...], max_bytes: int,
                 timeout_s: float, on_reject: Callable[[str], None] | None = None) -> None:
        self.app, self.prefixes = app, prefixes
        self.max_bytes, self.timeout_s = max_bytes, timeout_s
        self.on_reject = on_reject or (lambda reason: None)

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http" or not scope["path"].startswith(self.prefixes):
            return await self.app(scope, receive, send)
        deadline: float | None = None
        received = 0
        refusal: _Refused | None = None

        async def guarded_receive() -> Message:
            nonlocal deadline, received, refusal
            if refusal is not None:
                raise refusal
            deadline = deadline or time.monotonic() + self.timeout_s
            try:
                message = await asyncio.wait_for(receive(), max(0.0, deadline - time.monotonic()))
            except TimeoutError:
                refusal = _Refused(408, "upload_timeout", "upload_timeout", f"upload body took "
                                   f"longer than {self.timeout_s:g} s to arrive")
                raise refusal from None
            if message["type"] == "http.request":
                received += len(message.get("body", b""))
                if received > self.max_bytes:
                    refusal = _Refused(413, "file_too_large", "upload_too_large",
                                       f"upload exceeds {self.max_bytes} bytes")
                    raise refusal
            return message

        async def guarded_send(message: Message) -> None:
            if refusal is None:  # else the route's answer to a body it could not read
                await send(message)

        try:
            await self.app(scope, guarded_receive, guarded_send)
        except Exception:
            if refusal is None:
                raise
        if refusal is not None:  # the framework may have turned it into a 400 of its own
            self.on_reject(refusal.reason)
            await error_response(refusal.status, refusal.code, refusal.message,
                                 {"Connection": "close"})(scope, receive, send)


class _Refused(Exception):
    def __init__(self, status: int, code: str, reason: str, message: str) -> None:
        super().__init__(message)
        self.status, self.code, self.reason, self.message = status, code, reason, message


class RateLimitMiddleware:
    """Applies the rate limit to HTTP requests under `prefixes` before their bodies are read,
    so a refused upload costs nothing. (Streams check it when they open.)"""

    def __init__(self, app: ASGIApp, limiter: RateLimiter, prefixes: tuple[str, ...],
                 on_reject: Callable[[], None] | None = None) -> None:
        self.app, self.limiter, self.prefixes, self.on_reject = app, limiter, prefixes, on_reject

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] == "http" and scope["path"].startswith(self.prefixes):
            try:
                self.limiter.check(HTTPConnection(scope))
            except ApiError as exc:
                if self.on_reject:
                    self.on_reject()
                response = error_response(exc.status, exc.code, exc.message, exc.headers)
                await response(scope, receive, send)
                return
        await self.app(scope, receive, send)
