"""`stream=true` uploads through OpenAI's own SDK (which needs a real socket): the server runs
in-process under uvicorn, on the run's shared ModelManager (no model loads again)."""

from __future__ import annotations

import socket
import threading
import time
from collections.abc import Iterator
from types import SimpleNamespace

import numpy as np
import openai
import pytest
import uvicorn

from tests.conftest import DATA, Pipe, assert_wer, duration, encode_audio, read_wav, reference
from whisper_service.config import Settings
from whisper_service.server import create_app
from whisper_service.text import normalize

pytestmark = pytest.mark.integration

CHUNK_S, MAX_AUDIO_S = 30, 70  # en_long (66 s) fits; three chunks of it; a 100 s file doesn't


@pytest.fixture(scope="module")
def server(model_manager, tiny_en) -> Iterator[SimpleNamespace]:
    settings = Settings(default_model="tiny.en", cache_dir=model_manager.cache_dir,
                        file_chunk_s=CHUNK_S, max_audio_s=MAX_AUDIO_S)
    app = create_app(settings, manager=model_manager)
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    runner = uvicorn.Server(uvicorn.Config(app, host="127.0.0.1", port=port,
                                           log_level="warning"))
    thread = threading.Thread(target=runner.run, daemon=True)  # no signal handlers off main
    thread.start()
    deadline = time.monotonic() + 60
    while not runner.started:
        assert thread.is_alive() and time.monotonic() < deadline, "uvicorn did not start"
        time.sleep(0.05)
    url = f"http://127.0.0.1:{port}"
    yield SimpleNamespace(url=url, service=app.state.service,
                          client=openai.OpenAI(base_url=f"{url}/v1", api_key="unused",
                                               max_retries=0))
    runner.should_exit = True
    thread.join(timeout=30)


def metric(server, name: str, **labels: str) -> float:
    return server.service.metrics.registry.get_sample_value(name, labels) or 0.0


def running(server) -> float:
    """File jobs holding a turn (`whisper_file_jobs{state="running"}`)."""
    return metric(server, "whisper_file_jobs", state="running")


def wait_until(condition, timeout: float = 15.0) -> float:
    """Seconds until `condition()` held (fails past `timeout`)."""
    started = time.monotonic()
    while not condition():
        assert time.monotonic() - started < timeout, "condition not met in time"
        time.sleep(0.05)
    return time.monotonic() - started


def test_deltas_add_up_to_the_text_of_a_plain_request(server):
    """en_passage: six sentences, six segments, each a delta as soon as decoded; the done
    event's text is their concatenation and what the same upload gets without `stream`."""
    client = server.client
    with open(DATA / "en_passage.wav", "rb") as f:
        events = list(client.audio.transcriptions.create(model="tiny.en", file=f, stream=True))
    deltas = [e for e in events if e.type == "transcript.text.delta"]
    done = events[-1]
    assert done.type == "transcript.text.done" and len(events) == len(deltas) + 1
    assert len(deltas) >= 2, events
    assert "".join(d.delta for d in deltas) == done.text
    assert_wer("sse tiny.en en_passage", reference("en_passage"), done.text, 0.15)
    usage = done.usage
    audio_tokens = round(duration("en_passage") * 50)
    assert usage.type == "tokens" and usage.input_token_details.audio_tokens == audio_tokens
    assert usage.input_tokens == audio_tokens and usage.output_tokens >= len(done.text.split())
    assert usage.total_tokens == usage.input_tokens + usage.output_tokens
    with open(DATA / "en_passage.wav", "rb") as f:
        plain = client.audio.transcriptions.create(model="tiny.en", file=f)
    assert plain.text == done.text


@pytest.mark.once
def test_refusals_before_the_first_byte_keep_their_status(server):
    client = server.client
    audio = (DATA / "en_short.wav").read_bytes()
    with pytest.raises(openai.BadRequestError) as caught:
        client.audio.transcriptions.create(model="tiny.en", file=("a.wav", audio), stream=True,
                                           response_format="srt")
    assert caught.value.body["code"] == "invalid_request" and "stream" in caught.value.message
    with pytest.raises(openai.BadRequestError) as caught:
        client.audio.transcriptions.create(model="tiny.en", file=("a.wav", b"junk"), stream=True)
    assert caught.value.body["code"] == "invalid_audio"
    with pytest.raises(openai.NotFoundError):
        client.audio.transcriptions.create(model="large-v3", file=("a.wav", audio), stream=True)
    names = "Katelynn Smyth, Siobhán Ní Bhriain, Jörg Müller, Nguyễn Văn An, " * 6
    with pytest.raises(openai.BadRequestError) as caught:  # under 500 characters, not 96 tokens
        client.audio.transcriptions.create(model="tiny.en", file=("a.wav", audio), stream=True,
                                           extra_body={"hotwords": names})
    assert caught.value.body["code"] == "invalid_request"
    assert caught.value.body["message"].startswith("hotwords: ")
    assert running(server) == 0


def undeclared_webm(audio: np.ndarray) -> bytes:
    """16 kHz audio as WebM Opus written as to a pipe, as a browser's MediaRecorder writes it:
    the file states no length, so the server finds it out only by decoding, after the
    stream has started. (FLAC, Ogg and Matroska PCM would still give it away: libav reads
    their end or their bitrate.)"""
    return encode_audio(audio, "webm", "libopus", rate=48000, sink=Pipe())


@pytest.mark.once
def test_an_error_after_the_first_byte_raises_in_the_sdk_and_the_server_carries_on(server):
    """en_short, then silence to 100 s, with no declared length: the first 30 s chunk is
    streamed, then the third is found past the 70 s limit (the second is read ahead)."""
    speech = read_wav(DATA / "en_short.wav")
    audio = np.concatenate([speech, np.zeros(100 * 16000 - len(speech), np.float32)])
    stream = server.client.audio.transcriptions.create(
        model="tiny.en", file=("long.webm", undeclared_webm(audio)), stream=True)
    deltas = []
    with pytest.raises(openai.APIError) as caught:
        for event in stream:
            deltas.append(event.delta)
    assert deltas, "the error should come after the first chunk's text"
    assert caught.value.body["code"] == "audio_too_long"
    assert f"limit of {MAX_AUDIO_S} s" in caught.value.message
    wait_until(lambda: running(server) == 0)  # the turn is given back
    with open(DATA / "en_short.wav", "rb") as f:
        after = server.client.audio.transcriptions.create(model="tiny.en", file=f)
    assert_wer("sse tiny.en en_short after an error", reference("en_short"), after.text, 0.2)


@pytest.mark.once
def test_a_client_that_leaves_stops_the_transcription_at_the_next_window(server):
    """en_long (66 s, three chunks): the client leaves after the first delta; the worker stops
    before the file's end (no audio seconds counted), the turn is free again at once."""
    gone = metric(server, "whisper_rejected_total", reason="client_gone")
    audio_s = metric(server, "whisper_audio_seconds_total", source="file")
    with open(DATA / "en_long.wav", "rb") as f:
        stream = server.client.audio.transcriptions.create(model="tiny.en", file=f, stream=True)
        first = next(iter(stream))
    assert first.type == "transcript.text.delta" and first.delta
    assert running(server) == 1  # the stream holds its turn while it runs
    stream.close()
    took = wait_until(lambda: running(server) == 0)
    assert took < 10.0, f"{took:.1f} s to stop (a window of tiny.en takes about 1 s)"
    assert metric(server, "whisper_rejected_total", reason="client_gone") == gone + 1
    assert metric(server, "whisper_audio_seconds_total", source="file") == audio_s


@pytest.mark.once
@pytest.mark.filterwarnings("ignore:deprecated:DeprecationWarning")  # the SDK's translations
def test_translations_ignore_stream_and_answer_whole(server, base):
    """OpenAI's whisper-1 ignores `stream`; so do translations here: `stream=true` (sent as a
    form field, as the SDK sends `extra_body`) gets the whole JSON Translation, no events."""
    response = server.client.audio.translations.with_raw_response.create(
        model="base", file=("es.wav", (DATA / "es_short.wav").read_bytes()), temperature=0.0,
        extra_body={"stream": True})
    assert response.headers["content-type"].startswith("application/json")
    text = response.parse().text
    assert {"good", "morning", "madrid", "park", "today"} & set(normalize(text).split()), text
