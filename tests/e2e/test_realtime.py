"""Realtime transcription sessions through the official `openai` client, against `serve`.

Real speech goes in as OpenAI's clients send it (base64 PCM16 at 24 kHz, or G.711 at 8 kHz);
deltas, then `completed`, come back with the committed passages' words.
"""

from __future__ import annotations

import base64
import json
import signal
import time

import av
import numpy as np
import pytest

from tests.conftest import DATA, assert_wer, read_wav, reference

openai = pytest.importorskip("openai")

DELTA = "conversation.item.input_audio_transcription.delta"
COMPLETED = "conversation.item.input_audio_transcription.completed"
FRAME_S = 0.1


def _resampled(audio: np.ndarray, rate: int) -> np.ndarray:
    n = int(len(audio) * rate / 16000)
    return np.interp(np.arange(n) * 16000 / rate, np.arange(len(audio)), audio)


def _pcm16(audio: np.ndarray) -> bytes:
    return (np.clip(audio, -1, 1) * 32767).astype("<i2").tobytes()


def _ulaw(audio: np.ndarray) -> bytes:
    """8 kHz G.711 mu-law, as telephony gateways send it (encoded by FFmpeg through PyAV)."""
    codec = av.CodecContext.create("pcm_mulaw", "w")
    codec.sample_rate, codec.layout, codec.format = 8000, "mono", "s16"
    frame = av.AudioFrame.from_ndarray(np.frombuffer(_pcm16(audio), "<i2")[None, :],
                                       format="s16", layout="mono")
    frame.sample_rate = 8000
    return b"".join(bytes(p) for p in [*codec.encode(frame), *codec.encode(None)])


def _append(conn, data: bytes, bytes_per_s: int, pace: float = 0.5) -> None:
    """In 100 ms events, at twice real time (a live client's pace, shortened)."""
    step = int(bytes_per_s * FRAME_S)
    for i in range(0, len(data), step):
        conn.send({"type": "input_audio_buffer.append",
                   "audio": base64.b64encode(data[i:i + step]).decode()})
        time.sleep(FRAME_S * pace)


def _until(conn, kind: str, timeout: float = 30.0) -> list:
    """Events up to and including the first of `kind`."""
    events, deadline = [], time.monotonic() + timeout
    while time.monotonic() < deadline:
        event = conn.recv()
        events.append(event)
        if event.type == kind:
            return events
    pytest.fail(f"no {kind} within {timeout} s; got {[e.type for e in events]}: {events[-1:]}")


@pytest.fixture
def client(live_server):
    return openai.OpenAI(base_url=f"{live_server}/v1", api_key="unused")


def test_server_vad_session_streams_deltas_then_completed_turns(client):
    speech = _resampled(read_wav(DATA / "en_short.wav"), 24000)
    audio = _pcm16(np.concatenate([speech, np.zeros(24000 * 2)]))  # silence ends the turn
    with client.realtime.connect(extra_query={"intent": "transcription"}) as conn:
        assert conn.recv().type == "session.created"
        conn.send({"type": "session.update", "session": {"type": "transcription", "audio": {
            "input": {"format": {"type": "audio/pcm", "rate": 24000},
                      "transcription": {"model": "whisper-1", "language": "en"},
                      "turn_detection": {"type": "server_vad", "silence_duration_ms": 500}}}}})
        updated = conn.recv()
        assert updated.type == "session.updated"
        assert updated.session.audio.input.turn_detection.silence_duration_ms == 500
        _append(conn, audio, 48000)
        # A commit of the trailing silence: events are answered in order, so its empty item
        # completes after every turn of the passage.
        conn.send({"type": "input_audio_buffer.commit"})
        events = _until(conn, COMPLETED)
        while events[-1].transcript:
            events += _until(conn, COMPLETED)
        assert len([e for e in events if e.type == COMPLETED]) >= 2
        events = events[:-2]  # without the silence's committed and completed
        kinds = [e.type for e in events]
        assert kinds[0] == "input_audio_buffer.speech_started"
        assert kinds.index("input_audio_buffer.speech_stopped") < \
            kinds.index("input_audio_buffer.committed") < kinds.index(COMPLETED)
        deltas = [e for e in events if e.type == DELTA]
        assert len(deltas) >= 3  # streamed word groups, not one text per turn
        completed = [e for e in events if e.type == COMPLETED]
        for item in completed:  # each turn's deltas came under its id
            assert any(d.item_id == item.item_id for d in deltas)
            assert item.usage.seconds > 0
        assert_wer("realtime deltas", reference("en_short"),
                   "".join(d.delta + " " for d in deltas), 0.25)
        assert_wer("realtime completed", reference("en_short"),
                   " ".join(e.transcript for e in completed), 0.2)

        # A bad event gets an error in OpenAI's shape; the session stays usable.
        conn.send({"type": "response.create", "event_id": "evt_bad"})
        error = conn.recv()
        assert error.type == "error" and error.error.code == "unsupported_event"
        assert error.error.event_id == "evt_bad"
        conn.send({"type": "session.update", "session": {"type": "transcription", "audio": {
            "input": {"transcription": {"language": "xx"}}}}})
        assert conn.recv().error.param == "session.audio.input.transcription.language"
        conn.send({"type": "input_audio_buffer.commit"})
        assert conn.recv().error.code == "input_audio_buffer_commit_empty"

        # Manual turns: no VAD events, the commit ends the turn.
        conn.send({"type": "session.update", "session": {"type": "transcription", "audio": {
            "input": {"turn_detection": None}}}})
        assert conn.recv().type == "session.updated"
        _append(conn, _pcm16(speech[:int(3.2 * 24000)]), 48000, pace=0.25)
        conn.send({"type": "input_audio_buffer.commit"})
        events = _until(conn, COMPLETED)
        kinds = [e.type for e in events]
        assert "input_audio_buffer.speech_started" not in kinds
        assert "input_audio_buffer.committed" in kinds
        words = events[-1].transcript.lower()
        assert "quick" in words and "fox" in words, events[-1].transcript


@pytest.mark.once
def test_a_session_that_cannot_open_is_refused_once_until_an_update(client):
    """German on an English-only model: valid as a config, refused when the session opens at
    the first audio. The client hears it once, not once per append, and the audio is dropped
    until a `session.update` makes the config workable."""
    silence = _pcm16(np.zeros(24000))
    with client.realtime.connect(extra_query={"intent": "transcription"}) as conn:
        assert conn.recv().type == "session.created"
        conn.send({"type": "session.update", "session": {"type": "transcription", "audio": {
            "input": {"transcription": {"model": "tiny.en", "language": "de"}}}}})
        assert conn.recv().type == "session.updated"
        _append(conn, silence, 48000, pace=0.1)  # ten appends
        conn.send({"type": "input_audio_buffer.commit", "event_id": "evt_marker"})
        refused = conn.recv()
        assert refused.type == "error" and refused.error.code == "invalid_value", refused
        assert "English-only" in refused.error.message
        after = conn.recv()  # the next error is the commit's: nothing was heard
        assert after.error.code == "input_audio_buffer_commit_empty", after
        assert after.error.event_id == "evt_marker"
        conn.send({"type": "session.update", "session": {"type": "transcription", "audio": {
            "input": {"transcription": {"language": "en"}, "turn_detection": None}}}})
        assert conn.recv().type == "session.updated"
        _append(conn, silence, 48000, pace=0.1)
        conn.send({"type": "input_audio_buffer.commit"})
        assert _until(conn, "input_audio_buffer.committed")[-1].type == \
            "input_audio_buffer.committed"


@pytest.mark.once  # the dialect and G.711 are arithmetic-free; the GA test reruns the engine
def test_beta_dialect_with_telephone_audio(live_server):
    """`client.beta.realtime` (OpenAI-Beta: realtime=v1) and G.711 mu-law at 8 kHz. The beta
    client always dials wss:// unless given `websocket_base_url`."""
    client = openai.OpenAI(base_url=f"{live_server}/v1", api_key="unused",
                           websocket_base_url=f"{live_server.replace('http', 'ws', 1)}/v1")
    speech = _resampled(read_wav(DATA / "en_short.wav"), 8000)
    with client.beta.realtime.connect(model="whisper-1") as conn:
        assert conn.recv().type == "transcription_session.created"
        conn.send({"type": "transcription_session.update", "session": {
            "input_audio_format": "g711_ulaw", "turn_detection": None,
            "input_audio_transcription": {"model": "whisper-1", "language": "en"}}})
        updated = conn.recv()
        assert updated.type == "transcription_session.updated"
        assert updated.session.input_audio_format == "g711_ulaw"
        _append(conn, _ulaw(speech), 8000, pace=0.25)
        conn.send({"type": "input_audio_buffer.clear"})
        assert _until(conn, "input_audio_buffer.cleared")
        _append(conn, _ulaw(speech), 8000, pace=0.25)
        conn.send({"type": "input_audio_buffer.commit"})
        events = _until(conn, COMPLETED)
        committed = [e for e in events if e.type == "input_audio_buffer.committed"]
        assert len(committed) == 1  # the cleared turn was never committed
        assert events[-1].item_id == committed[0].item_id
        assert_wer("realtime g711", reference("en_short"), events[-1].transcript, 0.25)


@pytest.mark.once
def test_sigterm_completes_the_turn_in_progress_then_closes_1001():
    """A drain commits what a manual-turn client sent but never committed: nothing is lost."""
    from websockets.exceptions import ConnectionClosed
    from websockets.sync.client import connect

    from tests.e2e.conftest import run_server

    speech = _resampled(read_wav(DATA / "en_short.wav"), 24000)[:int(3.2 * 24000)]
    with run_server() as server:
        url = server.url.replace("http", "ws") + "/v1/realtime?intent=transcription"
        with connect(url, open_timeout=10) as ws:
            assert json.loads(ws.recv(timeout=30))["type"] == "session.created"
            ws.send(json.dumps({"type": "session.update", "session": {
                "type": "transcription", "audio": {"input": {
                    "transcription": {"language": "en"}, "turn_detection": None}}}}))
            assert json.loads(ws.recv(timeout=10))["type"] == "session.updated"
            data = _pcm16(speech)
            for i in range(0, len(data), 4800):
                ws.send(json.dumps({"type": "input_audio_buffer.append",
                                    "audio": base64.b64encode(data[i:i + 4800]).decode()}))
            time.sleep(1.0)
            server.proc.send_signal(signal.SIGTERM)
            events = []
            with pytest.raises(ConnectionClosed) as closed:
                while True:
                    events.append(json.loads(ws.recv(timeout=30)))
        assert closed.value.rcvd.code == 1001
        kinds = [e["type"] for e in events]
        assert "input_audio_buffer.committed" in kinds and kinds[-1] == COMPLETED, kinds
        words = events[-1]["transcript"].lower()
        assert "quick" in words and "fox" in words, events[-1]["transcript"]
        assert server.proc.wait(timeout=20) in (0, -signal.SIGTERM)  # uvicorn re-raises it
