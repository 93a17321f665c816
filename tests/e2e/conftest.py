"""End-to-end fixtures: a real `whisper-service serve` process on a free local port.

The server runs in its own process, so its model load does not count against the test
process's one-load-per-model budget (see tests/conftest.py).
"""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import tempfile
import time
import urllib.error
import urllib.request
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import IO

import pytest

READY_TIMEOUT_S = 120.0


def _free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _ready(url: str, key: str = "") -> bool:
    headers = {"Authorization": f"Bearer {key}"} if key else {}
    try:
        with urllib.request.urlopen(urllib.request.Request(f"{url}/ready", headers=headers),
                                    timeout=2) as res:
            return res.status == 200
    except (urllib.error.URLError, ConnectionError, OSError):
        return False


@dataclass
class ServerProcess:
    url: str
    proc: subprocess.Popen[bytes]
    log: IO[bytes]
    api_key: str = ""

    def output(self) -> str:
        self.log.seek(0)
        return self.log.read().decode("utf-8", "replace")[-4000:]


@contextmanager
def run_server(model: str = "tiny.en", env: dict[str, str] | None = None,
               log_level: str = "warning", wait: bool = True) -> Iterator[ServerProcess]:
    """A `whisper-service serve` process, ready to take requests; stopped on exit. `env` adds
    variables to the test process's environment. With `wait=False` it is only started: call
    `wait_ready` (several servers then start side by side)."""
    exe = Path(sys.executable).with_name("whisper-service")
    assert exe.exists(), f"console script not found next to the interpreter: {exe}"
    port = _free_port()
    url = f"http://127.0.0.1:{port}"
    env = {**os.environ, **(env or {})}  # inherits WHISPER_SERVICE_CACHE_DIR (tests/conftest.py)
    log = tempfile.TemporaryFile(mode="w+b", prefix="whisper-service-e2e-")
    proc = subprocess.Popen(
        [str(exe), "serve", "--host", "127.0.0.1", "--port", str(port), "--model", model,
         "--log-level", log_level],
        stdout=log, stderr=subprocess.STDOUT, env=env,
    )
    server = ServerProcess(url, proc, log, env.get("WHISPER_SERVICE_API_KEY", ""))
    try:
        if wait:
            wait_ready(server)
        yield server
    finally:
        if proc.poll() is None:
            proc.send_signal(signal.SIGTERM)
            try:
                proc.wait(timeout=15)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait(timeout=5)
        log.close()


def wait_ready(server: ServerProcess) -> None:
    deadline = time.monotonic() + READY_TIMEOUT_S
    key = server.api_key.split(",")[0].strip()
    while not _ready(server.url, key):
        if server.proc.poll() is not None:
            pytest.fail(f"whisper-service exited with {server.proc.returncode}:\n"
                        f"{server.output()}")
        if time.monotonic() > deadline:
            pytest.fail(f"whisper-service not ready within {READY_TIMEOUT_S:.0f} s:\n"
                        f"{server.output()}")
        time.sleep(0.25)


@pytest.fixture(scope="session")
def live_server() -> Iterator[str]:
    """Base URL (no trailing slash) of a server with tiny.en loaded; stopped after the session."""
    with run_server() as server:
        yield server.url
