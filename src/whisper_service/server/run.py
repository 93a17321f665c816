"""Running the app under uvicorn, with a graceful drain on SIGINT and SIGTERM."""

from __future__ import annotations

import asyncio
from collections.abc import Iterator
from contextlib import contextmanager

import uvicorn

from ..config import Settings
from .app import create_app
from .auth import KeysFileError
from .service import Service

# After the drain (at most `drain_timeout_s`), how long uvicorn waits for what still runs
# (a stream whose last decode was slow, an upload) before it stops anyway. The process
# exits within drain_timeout_s + SHUTDOWN_GRACE_S of the signal (deploy/kubernetes's
# terminationGracePeriodSeconds covers both).
SHUTDOWN_GRACE_S = 5.0


class DrainingServer(uvicorn.Server):
    """On SIGINT/SIGTERM, first let open sessions send their last finals, then stop."""

    def __init__(self, config: uvicorn.Config, service: Service) -> None:
        super().__init__(config)
        self.service = service

    def handle_exit(self, sig, frame) -> None:  # type: ignore[no-untyped-def]
        self.service.sessions.draining = True  # /ready 503 and no new streams, at once
        if self.should_exit or not len(self.service.sessions):
            return super().handle_exit(sig, frame)
        asyncio.get_running_loop().create_task(self._drain_then_exit(sig, frame))

    async def _drain_then_exit(self, sig, frame) -> None:  # type: ignore[no-untyped-def]
        await self.service.sessions.drain()
        super().handle_exit(sig, frame)

    @contextmanager
    def capture_signals(self) -> Iterator[None]:
        """uvicorn raises the signal again once it has shut down, so Ctrl-C ended `serve`
        with click's "Aborted!" and status 1 (and `make run` with an error). A stop asked
        for by a signal is a clean stop: status 0."""
        with super().capture_signals():
            yield
            getattr(self, "_captured_signals", []).clear()


def run(settings: Settings, log_level: str = "info") -> None:
    """Serve until a signal; `settings` carry host, port and everything else."""
    try:
        app = create_app(settings)
    except KeysFileError as exc:  # unreadable or empty: one line, no traceback
        raise SystemExit(f"Error: {exc}") from None
    config = uvicorn.Config(app, host=settings.host, port=settings.port, log_level=log_level,
                            ws_max_size=settings.max_ws_message_bytes + 1024,
                            proxy_headers=True,
                            forwarded_allow_ips=settings.forwarded_allow_ips,
                            timeout_graceful_shutdown=SHUTDOWN_GRACE_S)
    DrainingServer(config, app.state.service).run()
