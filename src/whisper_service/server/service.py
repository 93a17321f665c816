"""What every route shares: settings, the ModelManager, metrics and the open sessions."""

from __future__ import annotations

import asyncio
import time
import uuid
from collections import Counter
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field

from starlette.requests import HTTPConnection

from ..config import Settings
from ..engine.manager import ModelManager
from ..metrics import Metrics
from ..registry import BUNDLED, ModelNotFoundError
from .admission import FileAdmission, PendingSockets, RateLimiter
from .auth import ApiKey
from .errors import ProtocolError

# Clients written for OpenAI send these names: they get the default model.
OPENAI_ALIASES = ("whisper-1", "gpt-4o-transcribe", "gpt-4o-mini-transcribe",
                  "gpt-4o-mini-transcribe-2025-12-15", "gpt-transcribe", "gpt-live-transcribe",
                  "gpt-realtime-whisper")


class Sessions:
    """The open streaming sessions, each with a "finish now" signal for a graceful drain, and
    how late the server is with each (`StreamingSession.lateness`: for /metrics and for
    admission)."""

    def __init__(self, limit: int, max_lag_s: float, metrics: Metrics,
                 drain_timeout_s: float = 10.0, per_client: int = 0) -> None:
        self.limit, self.max_lag_s, self.metrics = limit, max_lag_s, metrics
        self.per_client = per_client  # sessions one client may have open (0: no limit)
        self._clients: Counter[str] = Counter()
        self.drain_timeout_s = drain_timeout_s
        self.draining = False  # set once on SIGTERM: /ready turns 503, new streams go elsewhere
        self._drain_deadline: float | None = None
        self._finish: dict[str, asyncio.Event] = {}
        self._lateness: dict[str, Callable[[], float]] = {}

    def __len__(self) -> int:
        return len(self._finish)

    def resume(self) -> None:
        """Take sessions again (an app started anew after a shutdown, as tests do)."""
        self.draining, self._drain_deadline = False, None

    @property
    def mean_lag_s(self) -> float:
        """How late the server is, on average over the open sessions, read now."""
        late = [lateness() for lateness in list(self._lateness.values())]
        return sum(late) / len(late) if late else 0.0

    def watch(self, session_id: str, lateness: Callable[[], float]) -> None:
        """Count this session's lateness from now on (once its stream has started)."""
        self._lateness[session_id] = lateness
        self.report_lag(session_id)

    def forget(self, session_id: str) -> None:
        """Stop counting a session (its client left): it makes nobody wait from now on."""
        if self._lateness.pop(session_id, None) is not None:
            self.metrics.session_lag.remove(session_id)

    def report_lag(self, session_id: str) -> None:
        """Bring the session's series in /metrics up to date."""
        lateness = self._lateness.get(session_id)
        if lateness is not None:
            self.metrics.session_lag.labels(session_id).set(lateness())

    @contextmanager
    def open(self, client: str = "",
             session_id: str | None = None) -> Iterator[tuple[str, asyncio.Event]]:
        """Register a session for as long as the block runs. Refuse one past the count limit,
        or while the server is late with the open ones, on average, by more than `max_lag_s`:
        the decode capacity is spent, whatever the count (the capacity measured in
        bench/capacity.py depends on the model, the machine and how much the clients speak).
        Late means audio that was due and is still unheard (pacing.py): a client that sends
        ahead of real time does not make the server late, nor does one that left. Refuse one
        past `per_client` sessions of the same client (`admission.client_id`). Refuse any
        while draining."""
        if self.draining:
            self.metrics.rejected.labels("draining").inc()
            raise ProtocolError("shutting_down", "server shutting down; reconnect", 1001)
        if len(self._finish) >= self.limit:
            self.metrics.rejected.labels("busy").inc()
            raise ProtocolError("server_busy", f"server busy: {self.limit} streaming sessions "
                                "open; retry later", 1013)
        if client and self.per_client and self._clients[client] >= self.per_client:
            self.metrics.rejected.labels("client_streams").inc()
            raise ProtocolError("too_many_streams", f"too many streams open from this client "
                                f"(limit {self.per_client}); close one or retry later", 1013)
        if self.mean_lag_s > self.max_lag_s:
            self.metrics.rejected.labels("lagging").inc()
            raise ProtocolError("server_busy", f"server busy: open streams are "
                                f"{self.mean_lag_s:.1f} s behind their live audio; retry later",
                                1013)
        session_id, finish = session_id or uuid.uuid4().hex[:12], asyncio.Event()
        self._finish[session_id] = finish
        self._clients[client] += 1
        self.metrics.active_sessions.inc()
        self.metrics.sessions.inc()
        try:
            yield session_id, finish
        finally:
            del self._finish[session_id]
            self._clients[client] -= 1
            if not self._clients[client]:
                del self._clients[client]
            self.forget(session_id)
            self.metrics.active_sessions.dec()

    async def drain(self, timeout: float | None = None) -> None:
        """Stop taking sessions, ask every open one to finalize and send its last finals,
        then wait for them (at most `drain_timeout_s` from the first call: the signal handler
        and the app's shutdown both drain, and the second must not wait as long again)."""
        self.draining = True
        if self._drain_deadline is None:
            wait = self.drain_timeout_s if timeout is None else timeout
            self._drain_deadline = time.monotonic() + wait
        for finish in list(self._finish.values()):
            finish.set()
        while self._finish and time.monotonic() < self._drain_deadline:
            await asyncio.sleep(0.05)


@dataclass
class Service:
    settings: Settings
    manager: ModelManager
    metrics: Metrics = field(init=False)
    sessions: Sessions = field(init=False)
    api_key: ApiKey = field(init=False)
    files: FileAdmission = field(init=False)
    rate_limit: RateLimiter = field(init=False)
    pending: PendingSockets = field(init=False)

    def __post_init__(self) -> None:
        self.api_key = ApiKey.from_settings(self.settings)
        self.metrics = Metrics(self.manager)
        self.sessions = Sessions(self.settings.max_sessions, self.settings.max_lag_s,
                                 self.metrics, self.settings.drain_timeout_s,
                                 self.settings.max_streams_per_client)
        self.pending = PendingSockets(self.settings.max_pending_sockets,
                                      self.settings.max_pending_per_client,
                                      lambda reason: self.metrics.rejected.labels(reason).inc())
        self.files = FileAdmission(self.settings.max_file_jobs, self.settings.max_file_queue,
                                   on_change=self._file_jobs,
                                   on_reject=self.metrics.rejected.labels("files_busy").inc)
        self.rate_limit = RateLimiter(self.settings.rate_limit_per_minute,
                                      self.settings.rate_limit_burst)

    def _file_jobs(self, running: int, waiting: int) -> None:
        self.metrics.file_jobs.labels("running").set(running)
        self.metrics.file_jobs.labels("waiting").set(waiting)

    @property
    def allowed_models(self) -> tuple[str, ...]:
        """What clients may name: the operator's list (`WHISPER_SERVICE_MODELS`), or the
        bundled models, and always the default one."""
        listed = [name.strip() for name in self.settings.models.split(",") if name.strip()]
        return tuple(dict.fromkeys([self.settings.default_model, *(listed or BUNDLED)]))

    def model_name(self, requested: str | None) -> str:
        """The model a request means: its own, or the default for none or OpenAI's alias.

        A name off the allow-list is refused before anything resolves it, with the same
        answer whether or not such a path or hub model exists: clients can neither probe the
        server's files nor make it download and load models the operator did not choose."""
        if not requested or requested in OPENAI_ALIASES:
            return self.settings.default_model
        if requested not in self.allowed_models:
            raise ModelNotFoundError(f"model {requested!r} is not available on this server; "
                                     f"available: {', '.join(self.allowed_models)}")
        return requested


def get_service(connection: HTTPConnection) -> Service:
    """The app's service, for an HTTP request or a WebSocket alike."""
    return connection.app.state.service
