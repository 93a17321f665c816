"""What every route shares: settings, the ModelManager, metrics and the open sessions."""

from __future__ import annotations

import asyncio
import time
import uuid
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field

from starlette.requests import HTTPConnection

from ..config import Settings
from ..metrics import Metrics
from ..models import ModelManager
from .auth import ApiKey
from .errors import ProtocolError

OPENAI_ALIASES = ("whisper-1",)  # clients written for OpenAI send this name


class Sessions:
    """The open streaming sessions, each with a "finish now" signal for a graceful drain."""

    def __init__(self, limit: int, metrics: Metrics) -> None:
        self.limit, self.metrics = limit, metrics
        self._finish: dict[str, asyncio.Event] = {}

    def __len__(self) -> int:
        return len(self._finish)

    @contextmanager
    def open(self) -> Iterator[tuple[str, asyncio.Event]]:
        """Register a session for as long as the block runs; refuse one past the limit."""
        if len(self._finish) >= self.limit:
            self.metrics.rejected.labels("busy").inc()
            raise ProtocolError("server_busy", f"server busy: {self.limit} streaming sessions "
                                "open; retry later", 1013)
        session_id, finish = uuid.uuid4().hex[:12], asyncio.Event()
        self._finish[session_id] = finish
        self.metrics.active_sessions.inc()
        self.metrics.sessions.inc()
        try:
            yield session_id, finish
        finally:
            del self._finish[session_id]
            self.metrics.active_sessions.dec()

    async def drain(self, timeout: float = 10.0) -> None:
        """Ask every open session to finalize and send its last finals, then wait for them."""
        for finish in list(self._finish.values()):
            finish.set()
        deadline = time.monotonic() + timeout
        while self._finish and time.monotonic() < deadline:
            await asyncio.sleep(0.05)


@dataclass
class Service:
    settings: Settings
    manager: ModelManager
    metrics: Metrics = field(init=False)
    sessions: Sessions = field(init=False)
    api_key: ApiKey = field(init=False)

    def __post_init__(self) -> None:
        self.api_key = ApiKey(self.settings.api_key)
        self.metrics = Metrics(self.manager)
        self.sessions = Sessions(self.settings.max_sessions, self.metrics)

    def model_name(self, requested: str | None) -> str:
        """The model a request means: its own, or the default for none or OpenAI's alias."""
        if not requested or requested in OPENAI_ALIASES:
            return self.settings.default_model
        return requested


def get_service(connection: HTTPConnection) -> Service:
    """The app's service, for an HTTP request or a WebSocket alike."""
    return connection.app.state.service
