"""Admission: how much file work runs at once, how much may wait, and how often one client may
ask. Beyond that a request gets a coded refusal with `Retry-After` instead of queueing
without bound, so a burst of uploads cannot take the memory or the decode slots that open
streams need.
"""

from __future__ import annotations

import asyncio
import hashlib
import math
import time
from collections import OrderedDict
from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager

from starlette.requests import HTTPConnection
from starlette.types import ASGIApp, Receive, Scope, Send

from .auth import presented_key
from .errors import ApiError, error_response

# A full queue clears about as fast as one file decodes; clients retry after this long.
BUSY_RETRY_AFTER_S = 10


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
