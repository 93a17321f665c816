"""The server in-process (Starlette's TestClient) on the shared ModelManager: real models,
real speech, the WebSocket protocol, the OpenAI-compatible API, limits and bad input."""

from __future__ import annotations

import json
import threading
import time
import wave

import numpy as np
import pytest
from openai import OpenAI
from starlette.testclient import TestClient
from starlette.websockets import WebSocketDisconnect

from tests.conftest import DATA, assert_wer, duration, read_wav, reference
from whisper_service.text import normalize

pytestmark = pytest.mark.integration

FRAME = 3200  # 100 ms of pcm_s16le


def pcm(name: str) -> bytes:
    with wave.open(str(DATA / f"{name}.wav")) as w:
        return w.readframes(w.getnframes())


def stream_file(client: TestClient, name: str, config: dict | None = None,
                frame: int = FRAME, **connect) -> list[dict]:
    messages = []
    with client.websocket_connect("/v1/stream", **connect) as ws:
        ws.send_json({"type": "config", "model": "tiny.en", **(config or {})})
        messages.append(ws.receive_json())
        assert messages[0]["type"] == "ready", messages
        data = pcm(name)
        for i in range(0, len(data), frame):
            ws.send_bytes(data[i:i + frame])
        ws.send_json({"type": "end"})
        while messages[-1]["type"] != "done":
            messages.append(ws.receive_json())
    return messages


def finals_text(messages: list[dict]) -> str:
    return " ".join(m["text"] for m in messages if m["type"] == "final")


def test_websocket_stream_transcribes_speech(client_for):
    client = client_for()
    messages = stream_file(client, "en_short", {"word_timestamps": True})
    ready, done = messages[0], messages[-1]
    assert ready["config"]["model"] == "tiny.en" and ready["session_id"]
    assert done["audio_seconds"] == pytest.approx(duration("en_short"), abs=0.05)
    finals = [m for m in messages if m["type"] == "final"]
    assert done["segments"] == len(finals) > 0
    assert_wer("websocket tiny.en en_short", reference("en_short"), finals_text(messages), 0.2)
    assert all(a["end"] <= b["start"] + 1e-6 for a, b in zip(finals, finals[1:]))
    assert all(f["words"] and f["language"] == "en" for f in finals)
    # Utterances (on by default) cover the finals; `done` carries their joined text.
    utterances = [m for m in messages if m["type"] == "utterance"]
    assert utterances and done["utterances"] == len(utterances)
    assert done["text"] == " ".join(u["text"] for u in utterances)
    assert_wer("websocket utterances tiny.en en_short", reference("en_short"), done["text"], 0.2)
    for f in finals:
        assert sum(u["start"] <= f["start"] and f["end"] <= u["end"] for u in utterances) == 1
    assert all(u["words"] and u["language"] == "en" for u in utterances)


def test_resampled_float_stream(client_for):
    """44.1 kHz pcm_f32le from a client is resampled to 16 kHz on the server."""
    import av

    audio = read_wav(DATA / "en_short.wav")
    resampler = av.AudioResampler(format="flt", layout="mono", rate=44100)
    frame = av.AudioFrame.from_ndarray(audio.reshape(1, -1), format="flt", layout="mono")
    frame.sample_rate = 16000
    hi = np.concatenate([f.to_ndarray().reshape(-1) for f in resampler.resample(frame)])
    client = client_for()
    with client.websocket_connect("/v1/stream") as ws:
        ws.send_json({"type": "config", "sample_rate": 44100, "encoding": "pcm_f32le"})
        assert ws.receive_json()["type"] == "ready"
        data = hi.astype("<f4").tobytes()
        for i in range(0, len(data), 17640):
            ws.send_bytes(data[i:i + 17640])
        ws.send_json({"type": "end"})
        messages = []
        while not messages or messages[-1]["type"] != "done":
            messages.append(ws.receive_json())
    assert messages[-1]["audio_seconds"] == pytest.approx(duration("en_short"), abs=0.1)
    assert "lazy" in finals_text(messages).lower()


def expect_error(ws, code: str, close: int | None = None) -> dict:
    """The next message is error `code`; with `close`, the server then closes with that code."""
    message = ws.receive_json()
    assert message["type"] == "error" and message["code"] == code, message
    assert message["message"]
    if close is not None:
        with pytest.raises(WebSocketDisconnect) as closed:
            ws.receive_json()
        assert closed.value.code == close
    return message


def test_bad_input_gets_coded_errors_while_another_session_streams(client_for):
    client = client_for()
    result: dict = {}
    worker = threading.Thread(target=lambda: result.update(
        messages=stream_file(client, "en_passage")))
    worker.start()

    # Binary audio before the config.
    with client.websocket_connect("/v1/stream") as ws:
        ws.send_bytes(b"\x00\x00" * 100)
        expect_error(ws, "config_required")
    # Malformed JSON as the config.
    with client.websocket_connect("/v1/stream") as ws:
        ws.send_text("{not json")
        expect_error(ws, "invalid_json")
    # An unknown model, an unsupported sample rate, an unknown field.
    for config, code in [({"model": "no-such-model"}, "model_not_found"),
                         ({"sample_rate": 96000}, "unsupported_sample_rate"),
                         ({"language": "xx"}, "invalid_config"),
                         ({"colour": "blue"}, "invalid_config")]:
        with client.websocket_connect("/v1/stream") as ws:
            ws.send_json({"type": "config", **config})
            expect_error(ws, code, close=1008)
    # Mid-stream mistakes are reported and the session carries on.
    with client.websocket_connect("/v1/stream") as ws:
        ws.send_json({"type": "config"})
        assert ws.receive_json()["type"] == "ready"
        ws.send_json({"type": "pause"})
        expect_error(ws, "unknown_message_type")
        ws.send_text("[1, 2")
        expect_error(ws, "invalid_json")
        ws.send_bytes(b"\x01\x02\x03")  # odd length: not pcm_s16le
        expect_error(ws, "invalid_audio")
        ws.send_json({"type": "end"})
        assert ws.receive_json()["type"] in ("partial", "done")
    # Non-audio and truncated uploads.
    junk = client.post("/v1/audio/transcriptions", files={"file": ("x.mp3", b"junk" * 100)})
    assert junk.status_code == 400 and junk.json()["error"]["code"] == "invalid_audio"
    truncated = (DATA / "en_short.wav").read_bytes()[:30]  # cut inside the header
    cut = client.post("/v1/audio/transcriptions", files={"file": ("cut.wav", truncated)})
    assert cut.status_code == 400 and cut.json()["error"]["code"] == "invalid_audio"
    unknown = client.post("/v1/audio/transcriptions", data={"model": "no-such-model"},
                          files={"file": ("a.wav", (DATA / "en_short.wav").read_bytes())})
    assert unknown.status_code == 404 and unknown.json()["error"]["code"] == "model_not_found"

    worker.join(timeout=300)
    messages = result["messages"]
    assert messages[-1]["type"] == "done"
    assert messages[-1]["audio_seconds"] == pytest.approx(duration("en_passage"), abs=0.05)
    assert_wer("websocket tiny.en en_passage next to bad clients", reference("en_passage"),
               finals_text(messages), 0.2)


@pytest.mark.once  # what is checked does not depend on the arithmetic
def test_client_that_vanishes_leaves_nothing_behind(client_for, model_manager):
    client = client_for()
    app = client.app
    refs = model_manager.loaded[model_manager.key("tiny.en")].refs
    threads = threading.active_count()
    names = [t.name for t in threading.enumerate()]
    for _ in range(3):
        with client.websocket_connect("/v1/stream") as ws:
            ws.send_json({"type": "config"})
            assert ws.receive_json()["type"] == "ready"
            data = pcm("en_short")
            for i in range(0, len(data) // 2, FRAME):
                ws.send_bytes(data[i:i + FRAME])
            # leave without "end": the socket just goes away
    deadline = time.monotonic() + 30
    sessions = app.state.service.sessions
    while len(sessions) and time.monotonic() < deadline:
        time.sleep(0.05)
    assert len(sessions) == 0
    assert model_manager.loaded[model_manager.key("tiny.en")].refs == refs
    metrics = client.get("/metrics").text
    assert "whisper_active_sessions 0.0" in metrics
    # anyio's worker threads are pooled
    assert threading.active_count() <= threads + 1, \
        (names, [t.name for t in threading.enumerate()])


@pytest.mark.once  # what is checked does not depend on the arithmetic
def test_busy_server_says_so(client_for):
    client = client_for(max_sessions=1)
    with client.websocket_connect("/v1/stream") as first:
        first.send_json({"type": "config"})
        assert first.receive_json()["type"] == "ready"
        with client.websocket_connect("/v1/stream") as second:
            # A socket takes a session slot only with its config, so the refusal answers it.
            second.send_json({"type": "config"})
            expect_error(second, "server_busy", close=1013)
        first.send_json({"type": "end"})
        assert first.receive_json()["type"] in ("partial", "done")


@pytest.mark.once  # what is checked does not depend on the arithmetic
def test_limits(client_for):
    client = client_for(max_ws_message_bytes=4096, idle_timeout_s=1.0, max_upload_bytes=50_000)
    with client.websocket_connect("/v1/stream") as ws:
        ws.send_json({"type": "config"})
        ws.receive_json()
        ws.send_bytes(b"\x00" * 8192)
        expect_error(ws, "message_too_large", close=1009)
    with client.websocket_connect("/v1/stream") as ws:
        ws.send_json({"type": "config"})
        ws.receive_json()
        expect_error(ws, "idle_timeout")  # nothing sent for a second
        done = ws.receive_json()
        assert done["type"] == "done" and done["reason"] == "idle timeout"
    big = client.post("/v1/audio/transcriptions",
                      files={"file": ("big.wav", (DATA / "en_short.wav").read_bytes())})
    assert big.status_code == 413 and big.json()["error"]["code"] == "file_too_large"


@pytest.mark.once  # what is checked does not depend on the arithmetic
def test_api_key(client_for):
    client = client_for(api_key="s3cret")
    assert client.get("/health").status_code == 200
    denied = client.get("/v1/models")
    assert denied.status_code == 401 and denied.json()["error"]["code"] == "unauthorized"
    assert client.get("/v1/models", headers={"Authorization": "Bearer s3cret"}).status_code == 200
    assert client.get("/").status_code == 200  # the page and its assets hold no data
    assert client.get("/static/app.js").status_code == 200
    with client.websocket_connect("/v1/stream") as ws:
        expect_error(ws, "unauthorized", close=1008)
    with client.websocket_connect("/v1/stream?api_key=s3cret") as ws:
        ws.send_json({"type": "config"})
        assert ws.receive_json()["type"] == "ready"
        # A whole exchange: leaving right after `ready` races TestClient's own teardown.
        ws.send_json({"type": "end"})
        assert ws.receive_json()["type"] == "done"


def test_openai_client(client_for, base):
    client = client_for()
    openai = OpenAI(base_url="http://testserver/v1", api_key="unused", http_client=client)
    with open(DATA / "en_short.wav", "rb") as f:
        result = openai.audio.transcriptions.create(model="whisper-1", file=f)
    assert "lazy" in result.text.lower()
    with open(DATA / "en_passage.wav", "rb") as f:
        verbose = openai.audio.transcriptions.create(
            model="base", file=f, language="en", response_format="verbose_json",
            timestamp_granularities=["word", "segment"])
    assert verbose.language == "en"
    assert verbose.duration == pytest.approx(duration("en_passage"), abs=0.05)
    assert len(verbose.words) > 40 and verbose.segments
    with open(DATA / "en_short.wav", "rb") as f:
        subtitles = openai.audio.transcriptions.create(model="tiny.en", file=f,
                                                       response_format="srt")
    import srt

    assert list(srt.parse(subtitles, ignore_errors=False))
    with open(DATA / "es_short.wav", "rb") as f:
        english = openai.audio.translations.create(model="base", file=f)
    assert {"good", "madrid", "park"} & set(normalize(english.text).split())
    models = [m.id for m in openai.models.list()]
    assert "tiny.en" in models and "base" in models


@pytest.mark.once  # what is checked does not depend on the arithmetic
def test_health_ready_metrics(client_for, model_manager):
    client = client_for()
    assert client.get("/ready").json() == {"ready": True, "draining": False,
                                           "default_model": "tiny.en",
                                           "decode_workers": model_manager.num_workers}
    stream_file(client, "en_short")
    metrics = client.get("/metrics").text
    assert "whisper_sessions_total 1.0" in metrics
    assert 'whisper_model_loads{model="tiny.en"} 1.0' in metrics
    assert 'whisper_decode_seconds_count{source="stream"}' in metrics
    assert "process_resident_memory_bytes" in metrics
    audio = [line for line in metrics.splitlines()
             if line.startswith('whisper_audio_seconds_total{source="stream"}')]
    assert audio and float(audio[0].split()[-1]) == pytest.approx(duration("en_short"), abs=0.05)
    page = client.get("/")
    assert page.status_code == 200 and "<html" in page.text.lower()
    assert json.loads(client.get("/v1/models").text)["data"][0]["id"] == "tiny.en"


@pytest.mark.once  # what is checked does not depend on the arithmetic
def test_models_off_the_allow_list_are_refused_alike_and_never_loaded(client_for,
                                                                      model_manager):
    """Clients can neither probe the server's files nor load models the operator did not
    list: a missing path, an existing directory, a real model directory on the server and a
    hub name all get the same answer, and nothing new is loaded."""
    from whisper_service.registry import resolve

    client = client_for(models="tiny.en")
    loaded = set(model_manager.loaded)
    model_dir = str(resolve("tiny.en", model_manager.cache_dir))
    wav = (DATA / "en_short.wav").read_bytes()
    names = ["/etc", "/no/such/dir", model_dir, "Systran/faster-whisper-large-v3", "base"]
    answers = []
    for name in names:
        res = client.post("/v1/audio/transcriptions", data={"model": name},
                          files={"file": ("a.wav", wav)})
        assert res.status_code == 404 and res.json()["error"]["code"] == "model_not_found"
        answers.append(res.json()["error"]["message"].replace(repr(name), "NAME"))
        with client.websocket_connect("/v1/stream") as ws:
            ws.send_json({"type": "config", "model": name})
            error = ws.receive_json()
            assert error["code"] == "model_not_found"
            assert error["message"].replace(repr(name), "NAME") == answers[0]
    assert len(set(answers)) == 1 and model_dir not in answers[0]
    assert set(model_manager.loaded) == loaded
    assert [m["id"] for m in client.get("/v1/models").json()["data"]] == ["tiny.en"]
    # What is listed works.
    ok = client.post("/v1/audio/transcriptions", data={"model": "tiny.en"},
                     files={"file": ("a.wav", wav)})
    assert ok.status_code == 200 and ok.json()["text"]
