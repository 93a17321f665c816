"""Graceful shutdown: SIGTERM mid-stream finalizes open sessions before the sockets close."""

from __future__ import annotations

import json
import signal
import threading
import time

import numpy as np
import pytest
from websockets.exceptions import ConnectionClosed
from websockets.sync.client import connect

from tests.conftest import DATA, assert_wer, read_wav, reference
from tests.e2e.conftest import run_server

pytestmark = pytest.mark.once  # not again under other arithmetic: see pyproject.toml

FRAME_S = 0.1


def pause_after_sentences(audio: np.ndarray, sentences: int) -> float:
    """The middle (s) of the digital silence after the first `sentences` sentences."""
    silent = np.concatenate([[False], np.abs(audio) < 1e-4, [False]]).astype(np.int8)
    starts, stops = np.flatnonzero(np.diff(silent) == 1), np.flatnonzero(np.diff(silent) == -1)
    gaps = [(a, b) for a, b in zip(starts, stops) if a > 0 and b - a > 0.5 * 16000]
    start, stop = gaps[sentences - 1]
    return (start + stop) / 2 / 16000


def test_sigterm_mid_stream_sends_finals_and_done_then_exits_cleanly() -> None:
    passage = read_wav(DATA / "en_passage.wav")
    streamed_s = pause_after_sentences(passage, 2)  # two sentences, sent in real time
    audio = passage[: int(streamed_s * 16000)]
    pcm = (audio * 32767).astype("<i2").tobytes()
    frame = int(FRAME_S * 16000) * 2
    with run_server() as server:
        ws_url = server.url.replace("http", "ws") + "/v1/stream"
        messages: list[dict] = []
        with connect(ws_url, open_timeout=10) as ws:
            ws.send(json.dumps({"type": "config", "language": "en"}))
            assert json.loads(ws.recv(timeout=30))["type"] == "ready"

            def read() -> None:
                try:
                    while True:
                        messages.append(json.loads(ws.recv(timeout=60)))
                except ConnectionClosed:
                    pass

            reader = threading.Thread(target=read)
            reader.start()
            started = time.monotonic()
            for i, start in enumerate(range(0, len(pcm), frame)):
                time.sleep(max(0.0, started + i * FRAME_S - time.monotonic()))
                ws.send(pcm[start:start + frame])
            time.sleep(0.5)  # let the last frames reach the session
            server.proc.send_signal(signal.SIGTERM)
            reader.join(timeout=60)
            assert not reader.is_alive(), "the server did not close the socket after SIGTERM"
            close_code = ws.close_code
        # A stop asked for by a signal is a clean stop (uvicorn's re-raised signal is not).
        assert server.proc.wait(timeout=30) == 0, server.output()
        assert "Traceback" not in server.output(), server.output()

    types = [m["type"] for m in messages]
    assert "error" not in types, messages
    assert types[-1] == "done", types
    done = messages[-1]
    assert done["reason"] == "server shutting down"
    assert abs(done["audio_seconds"] - streamed_s) < 0.2
    assert close_code == 1001
    finals = [m for m in messages if m["type"] == "final"]
    # Everything streamed before the signal came back as final text, up to its last word.
    assert finals and finals[-1]["end"] > streamed_s - 1.5, finals
    expected = ". ".join(reference("en_passage").split(". ")[:2])  # "... recorded speech"
    assert_wer("websocket tiny.en en_passage before SIGTERM", expected,
               " ".join(m["text"] for m in finals), 0.2)


def test_ctrl_c_stops_serve_cleanly():
    """`make run`, then Ctrl-C: status 0, and neither click's "Aborted!" nor a traceback."""
    with run_server(log_level="info") as server:
        server.proc.send_signal(signal.SIGINT)
        assert server.proc.wait(timeout=30) == 0, server.output()
        output = server.output()
    assert "Aborted" not in output and "Traceback" not in output, output
    assert "Finished server process" in output
