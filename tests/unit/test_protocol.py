"""The stream protocol's messages: what a config accepts, and the codes of what it refuses;
the upload form's own fields, and the events of `stream=true` uploads (no weights)."""

from __future__ import annotations

import json
import threading
from types import SimpleNamespace

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from starlette.testclient import TestClient

from whisper_service.audio import AudioTooLong
from whisper_service.config import Settings
from whisper_service.context import init_context
from whisper_service.server.errors import ApiError
from whisper_service.server.sse import (
    TextDeltas,
    TranscriptStream,
    done_event,
    error_event,
    event,
)
from whisper_service.server.stream_protocol import (
    ProtocolError,
    StreamConfig,
    parse_config,
    parse_json,
)
from whisper_service.streaming import StreamingSession
from whisper_service.transcript import MAX_HOTWORDS_CHARS, Segment, Transcript
from whisper_service.vad import VadOptions


def refused(message: dict) -> ProtocolError:
    with pytest.raises(ProtocolError) as caught:
        parse_config(message)
    return caught.value


def test_defaults_and_a_full_config():
    assert parse_config({"type": "config"}) == StreamConfig()
    config = parse_config({"type": "config", "model": "tiny.en", "language": "de",
                           "task": "translate", "sample_rate": 44100, "encoding": "pcm_f32le",
                           "static_prompt": "Katelynn", "word_timestamps": True,
                           "vad": {"threshold": 0.6, "min_silence_duration_ms": 300}})
    assert config.vad == VadOptions(threshold=0.6, min_silence_duration_ms=300)
    assert (config.sample_rate, config.encoding, config.word_timestamps) == (
        44100, "pcm_f32le", True)


@pytest.mark.parametrize("message, code, where", [
    ({"type": "end"}, "config_required", "first message must be a config"),
    ({"type": "config", "sample_rate": 96000}, "unsupported_sample_rate", "sample_rate"),
    ({"type": "config", "language": "xx"}, "invalid_config", "unsupported language code"),
    ({"type": "config", "task": "summarize"}, "invalid_config", "task"),
    ({"type": "config", "encoding": "mp3"}, "invalid_config", "encoding"),
    ({"type": "config", "colour": "blue"}, "invalid_config", "colour: Extra inputs"),
    ({"type": "config", "vad": {"threshold": 1.5}}, "invalid_config", "vad.threshold"),
    ({"type": "config", "vad": {"speech_pad_ms": -1}}, "invalid_config", "vad.speech_pad_ms"),
    ({"type": "config", "vad": {"window": 3}}, "invalid_config", "vad.window"),
    ({"type": "config", "vad": {"threshold": 0.3, "neg_threshold": 0.4}}, "invalid_config",
     "neg_threshold must be at most threshold"),
    ({"type": "config", "static_prompt": "x" * 2001}, "invalid_config", "static_prompt"),
])
def test_refused_configs_have_codes_and_name_the_field(message, code, where):
    error = refused(message)
    assert error.code == code and where in error.message, error.message
    assert error.close_code == 1008
    assert error.to_dict() == {"type": "error", "code": code, "message": error.message}


@pytest.mark.parametrize("text, code", [
    ("{not json", "invalid_json"), ("[1, 2]", "invalid_message"),
    ('{"type": 3}', "invalid_message"),
])
def test_bad_json(text, code):
    with pytest.raises(ProtocolError) as caught:
        parse_json(text)
    assert caught.value.code == code


def test_stream_options_take_the_servers_settings_and_the_clients_choices():
    settings = Settings(min_chunk_s=1.0, stream_beam_size=2, max_context_tokens=100)
    config = parse_config({"type": "config", "language": "auto", "static_prompt": "Smyth",
                           "vad": {"min_silence_duration_ms": 200}})
    options = config.stream_options(settings)
    assert (options.min_chunk_s, options.beam_size, options.max_context_tokens) == (1.0, 2, 100)
    assert options.language is None and options.static_prompt == "Smyth"
    assert options.vad.min_silence_duration_ms == 200
    assert parse_config({"type": "config", "language": "de"}).stream_options(
        settings).language == "de"


# -- hotwords in the stream config ---------------------------------------------------------------

def test_hotwords_are_bounded_and_reach_the_stream_options():
    config = parse_config({"type": "config", "hotwords": "Katelynn Smyth",
                           "static_prompt": "Sales team"})
    options = config.stream_options(Settings())
    assert (options.hotwords, options.static_prompt) == ("Katelynn Smyth", "Sales team")
    parse_config({"type": "config", "hotwords": "x" * MAX_HOTWORDS_CHARS})
    error = refused({"type": "config", "hotwords": "x" * (MAX_HOTWORDS_CHARS + 1)})
    assert error.code == "invalid_config" and error.message.startswith("hotwords:"), error.message
    assert refused({"type": "config", "hotwords": 3}).message.startswith("hotwords:")


class FakeManager:
    """Just enough of ModelManager for StreamingSession.open: no weights."""

    def __init__(self, tokenizer) -> None:
        self.tokenizer, self.released = tokenizer, 0

    def acquire(self, name):
        return SimpleNamespace(multilingual=False, key=SimpleNamespace(name=name))

    def release(self, loaded) -> None:
        self.released += 1

    def init_context(self, name, static_prompt, max_context_tokens):
        return init_context(self.tokenizer, static_prompt, max_context_tokens)


def test_hotwords_lead_the_static_prompt_of_a_stream(tiny_en_tokenizer):
    config = parse_config({"type": "config", "language": "en", "hotwords": "Katelynn Smyth",
                           "static_prompt": "Sales team:"})
    manager = FakeManager(tiny_en_tokenizer)
    with StreamingSession.open(manager, "tiny.en", config.stream_options(Settings())) as session:
        assert session.context.static_prompt == "Katelynn Smyth Sales team:"
        session.context.append("hello there")
        assert session.context.prompt() == "Katelynn Smyth Sales team: hello there"
        session.context.reset()  # a loop guard's reset keeps them
        assert session.context.prompt() == "Katelynn Smyth Sales team:"
    # Together past the prompt budget: refused (invalid_config), the model given back.
    settings = Settings(max_context_tokens=8)
    crowded = parse_config({"type": "config", "hotwords": "Katelynn Smyth, Siobhán",
                            "static_prompt": "Glossary: CTranslate2"})
    with pytest.raises(ValueError, match="static_prompt: .*hotwords"):
        StreamingSession.open(manager, "tiny.en", crowded.stream_options(settings))
    assert manager.released == 2


# -- the HTTP upload form and its Server-Sent Events ---------------------------------------------

@pytest.fixture
def http(tmp_path) -> TestClient:
    from whisper_service.server import create_app

    return TestClient(create_app(Settings(cache_dir=tmp_path)))  # no lifespan: no model


@pytest.mark.parametrize("route", ["transcriptions", "translations"])
@pytest.mark.parametrize("form, where", [
    ({"hotwords": "x" * (MAX_HOTWORDS_CHARS + 1)}, "hotwords: String should have at most 500"),
    ({"stream": "maybe"}, "stream: Input should be a valid boolean"),
])
def test_form_fields_refused_with_400_naming_the_field(http, route, form, where):
    response = http.post(f"/v1/audio/{route}", files={"file": ("a.wav", b"RIFF")}, data=form)
    assert response.status_code == 400, response.text
    error = response.json()["error"]
    assert error["code"] == "invalid_request" and error["message"].startswith(where), error


@pytest.mark.parametrize("response_format", ["srt", "vtt", "verbose_json"])
def test_stream_is_refused_for_formats_openai_does_not_stream(http, response_format):
    response = http.post("/v1/audio/transcriptions", files={"file": ("a.wav", b"RIFF")},
                         data={"stream": "true", "response_format": response_format})
    assert response.status_code == 400 and response.headers["content-type"].startswith(
        "application/json")
    error = response.json()["error"]
    assert error["code"] == "invalid_request"
    assert f"stream: response_format {response_format} can't be streamed" in error["message"]
    registry = http.app.state.service.metrics.registry
    assert registry.get_sample_value("whisper_file_jobs", {"state": "running"}) == 0  # given back


def test_a_stream_is_refused_as_json_while_draining(http):
    http.app.state.service.sessions.draining = True
    response = http.post("/v1/audio/transcriptions", files={"file": ("a.wav", b"RIFF")},
                         data={"stream": "true"})
    assert response.status_code == 503 and response.headers["retry-after"] == "1"
    assert response.json()["error"]["code"] == "shutting_down"


def segment(text: str, tokens: int = 3) -> Segment:
    return Segment(1, 0.0, 1.0, text, tokens=tuple(range(tokens)))


@settings(max_examples=200, deadline=None, derandomize=True)
@given(st.lists(st.text(alphabet=" \n\tab.é", max_size=6), max_size=8))
def test_deltas_add_up_to_the_transcript_text_exactly(texts):
    deltas = TextDeltas()
    pieces = [deltas.add(text) for text in texts]
    transcript = Transcript("en", 1.0, 1.0, tuple(segment(t) for t in texts))
    assert "".join(pieces) == transcript.text


def test_deltas_drop_the_leading_space_and_hold_back_a_trailing_one():
    deltas = TextDeltas()
    assert [deltas.add(t) for t in (" Hello world. ", "  ", "\n", " Again.")] == [
        "Hello world.", "", "", "   \n Again."]


def test_events_have_the_shapes_of_openais_sdk():
    """Validated strictly by the SDK's own models (it only constructs them, unchecked)."""
    from openai.types.audio import TranscriptionTextDeltaEvent, TranscriptionTextDoneEvent

    transcript = Transcript("en", 1.0, 2.5, (segment(" Hi.", 4), segment(" There.", 5)))
    done = TranscriptionTextDoneEvent.model_validate(done_event(transcript, text_tokens=7))
    assert done.text == "Hi. There." and done.usage.type == "tokens"
    assert (done.usage.input_tokens, done.usage.output_tokens, done.usage.total_tokens) == (
        125 + 7, 9, 141)
    assert done.usage.input_token_details.audio_tokens == 125  # 2.5 s at 50 a second
    delta = {"type": "transcript.text.delta", "delta": "Hi."}
    assert TranscriptionTextDeltaEvent.model_validate(delta).delta == "Hi."
    assert event(delta) == b'data: {"type":"transcript.text.delta","delta":"Hi."}\n\n'
    error = error_event(ApiError(413, "audio_too_long", "too long"))
    assert error == {"type": "error", "error": {"message": "too long",
                                                "type": "invalid_request_error",
                                                "code": "audio_too_long"}}
    assert error_event(ApiError(500, "server_error", "x"))["error"]["type"] == "server_error"


def sse_payloads(body: str) -> list[dict]:
    return [json.loads(line.removeprefix("data: ")) for line in body.splitlines() if line]


def test_an_error_after_the_first_byte_is_an_error_event_and_everything_is_given_back():
    """A fake transcription: two segments, then audio past the limit. The client gets both
    deltas and then the error; `on_close` runs once, after the worker ended."""
    from starlette.applications import Starlette
    from starlette.routing import Route

    closed: list[bool] = []
    worker_done = threading.Event()

    def work(on_segment, on_progress):
        try:
            for text in (" One.", " Two."):
                on_segment(segment(text))
                on_progress(1.0)
            raise AudioTooLong("x.webm: audio is longer than the limit of 70 s")
        finally:
            worker_done.set()

    def refusal(exc: Exception) -> ApiError:
        return ApiError(413, "audio_too_long", str(exc))

    async def on_close() -> None:
        closed.append(worker_done.is_set())

    async def route(request):
        return TranscriptStream(work, refusal, 0, lambda: closed.append("gone"), on_close)

    client = TestClient(Starlette(routes=[Route("/", route, methods=["POST"])]))
    response = client.post("/")
    assert response.status_code == 200
    assert response.headers["content-type"].startswith("text/event-stream")
    assert response.headers["x-accel-buffering"] == "no"
    assert sse_payloads(response.text) == [
        {"type": "transcript.text.delta", "delta": "One."},
        {"type": "transcript.text.delta", "delta": " Two."},
        {"type": "error", "error": {"message": "x.webm: audio is longer than the limit of 70 s",
                                    "type": "invalid_request_error", "code": "audio_too_long"}}]
    assert closed == [True]


@pytest.mark.parametrize("task", ["transcribe", "translate"])
def test_form_hotwords_reach_the_decode_options(task):
    from whisper_service.server.openai import AudioForm

    assert AudioForm(hotwords="Katelynn Smyth").options(task).hotwords == "Katelynn Smyth"
    assert AudioForm(hotwords="").options(task).hotwords is None  # an empty field is none


def test_only_transcriptions_refuse_stream_with_subtitles():
    """Translations answer whole whatever the format: `stream` is no reason to refuse one."""
    from whisper_service.server.openai import AudioForm

    form = AudioForm(stream=True, response_format="srt")
    assert form.options("translate").task == "translate"
    with pytest.raises(ApiError) as caught:
        form.options("transcribe")
    assert (caught.value.status, caught.value.code) == (400, "invalid_request")
