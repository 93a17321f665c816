"""50 WebSocket sessions through a real server leave nothing behind: memory, tasks, threads,
session entries. Half end normally, half drop mid-stream, as vanished clients do."""

from __future__ import annotations

import json
import statistics
import time
import urllib.request

import psutil
import pytest
from websockets.sync.client import connect

from tests.conftest import DATA, read_wav
from tests.e2e.conftest import run_server

pytestmark = pytest.mark.memory

SESSIONS = 50
FRAME = 1600 * 2  # 100 ms of pcm_s16le


def scrape(url: str) -> dict[str, float]:
    """The unlabelled samples of /metrics, plus model references by model."""
    with urllib.request.urlopen(f"{url}/metrics", timeout=10) as res:
        text = res.read().decode()
    out = {}
    for line in text.splitlines():
        if line and not line.startswith("#"):
            name, _, value = line.rpartition(" ")
            out[name] = float(value)
    return out


def settled(url: str, timeout: float = 15.0) -> dict[str, float]:
    """Metrics once no session is open any more (a dropped client's session ends when the
    server notices the closed socket)."""
    deadline = time.monotonic() + timeout
    while True:
        metrics = scrape(url)
        if metrics["whisper_active_sessions"] == 0 or time.monotonic() > deadline:
            return metrics
        time.sleep(0.1)


def stream_once(ws_url: str, pcm: bytes, finish: bool) -> list[dict]:
    messages = []
    with connect(ws_url, open_timeout=10) as ws:
        ws.send(json.dumps({"type": "config", "language": "en"}))
        assert json.loads(ws.recv(timeout=30))["type"] == "ready"
        frames = range(0, len(pcm) if finish else len(pcm) // 2, FRAME)
        for start in frames:
            ws.send(pcm[start:start + FRAME])
        if not finish:
            return messages  # dropped: the socket closes without `end`
        ws.send(json.dumps({"type": "end"}))
        while not messages or messages[-1]["type"] != "done":
            messages.append(json.loads(ws.recv(timeout=60)))
    return messages


def test_50_sessions_leave_no_memory_tasks_threads_or_entries() -> None:
    speech = read_wav(DATA / "en_passage.wav")
    with run_server() as server:
        ws_url = server.url.replace("http", "ws") + "/v1/stream"
        process = psutil.Process(server.proc.pid)
        idle = settled(server.url)
        readings, finals, after_10 = [], 0, {}
        for i in range(SESSIONS):
            start = (i * 3 * 16000) % (len(speech) - 2 * 16000)
            pcm = (speech[start:start + 2 * 16000] * 32767).astype("<i2").tobytes()
            messages = stream_once(ws_url, pcm, finish=i % 2 == 0)
            finals += sum(m["type"] == "final" for m in messages)
            metrics = settled(server.url)
            readings.append(process.memory_info().rss / 2**20)
            if i == 9:
                after_10 = metrics
        end = settled(server.url)
        assert server.proc.poll() is None, server.output()
    assert finals >= SESSIONS // 4, "the finished sessions must have transcribed speech"
    assert end["whisper_active_sessions"] == 0
    assert end["whisper_sessions_total"] == SESSIONS
    assert end['whisper_model_references{model="tiny.en"}'] == 1  # the server's own
    assert not any(k.startswith("whisper_session_lag_seconds{") for k in end)
    assert end["whisper_event_loop_tasks"] <= idle["whisper_event_loop_tasks"]
    # The thread pool may start a few more when a dropped session's cleanup overlaps the next
    # session; a thread per session would be 40 more.
    assert end["whisper_threads"] <= after_10["whisper_threads"] + 4
    early, late = statistics.median(readings[10:20]), statistics.median(readings[-10:])
    assert late - early <= 25, f"server RSS {early:.0f} MB after 10 sessions, {late:.0f} MB " \
                               f"after {SESSIONS}: {[round(r) for r in readings]}"
