"""Fuzzing the server's inputs with hypothesis (issue 18): random WebSocket message sequences on
/v1/stream, random multipart forms on the OpenAI routes, truncated and corrupted audio files,
and the CLI on undecodable files.

Every property is checked against an oracle written from docs/protocol.md, not against the
server's own parsing: which `error` codes come back and in what order, how the session ends
and with which close code, how much audio `done` counts, the shape of every message and of
every HTTP error body. Meanwhile one clean stream of a committed passage runs next to the
fuzzed clients (fed a few frames between examples) and must come out as it does alone; after
the fuzzing the server must still answer /health and transcribe a fresh clean stream.

The examples are fixed (`derandomize=True`, no example database), so CI runs the same inputs
every time; the seed follows the source of each inner `fuzz` function, so editing one draws
other examples. No shrinking: a failing example is reported as found, which keeps a failing
run within the CI budget. The counts keep the whole file near 25 s on 2 idle cores (36 s
beside a benchmark). Marker `fuzz`: run once per suite, not again under the other CTranslate2
backend (parsing and framing do not depend on the arithmetic; the transcripts are checked as
in test_server.py).
"""

from __future__ import annotations

import concurrent.futures
import contextlib
import functools
import json
import math
import shutil
import struct
import subprocess
import sys
import time
import wave
from dataclasses import dataclass, field
from pathlib import Path

import anyio
import numpy as np
import pytest
import srt
from hypothesis import HealthCheck, Phase, example, given, settings
from hypothesis import strategies as st
from starlette.testclient import TestClient

from tests.conftest import DATA, assert_wer, encode_audio, read_wav, reference
from whisper_service.audio import AudioError, decode_file
from whisper_service.config import Settings
from whisper_service.registry import LANGUAGES
from whisper_service.server import create_app

pytestmark = [pytest.mark.fuzz, pytest.mark.timeout(300)]

FRAME = 3200  # 100 ms of pcm_s16le at 16 kHz
FRAME_LIMIT = 16384  # max_ws_message_bytes here: frames past it are cheap to make
UPLOAD_LIMIT = 300_000  # max_upload_bytes here (en_short.wav is 252 kB)
RECEIVE_TIMEOUT_S = 30.0  # a server that sends nothing for this long hangs
WER_BOUND = 0.15  # observed 0.0 for both clean streams, alone or next to the fuzzing

SERVER_TYPES = {"ready", "partial", "final", "utterance", "error", "done"}
ERROR_CODES = {"unauthorized", "server_busy", "config_required", "invalid_json",
               "invalid_message", "invalid_config", "unsupported_sample_rate", "model_not_found",
               "invalid_audio", "message_too_large", "unknown_message_type", "idle_timeout",
               "session_too_long", "config_timeout", "too_many_pending", "too_many_streams"}
SAMPLE_BYTES = {"pcm_s16le": 2, "pcm_f32le": 4}
CONFIG_FIELDS = ("type", "model", "language", "task", "sample_rate", "encoding", "static_prompt",
                 "hotwords", "word_timestamps", "utterances", "vad")
VAD_FIELDS = ("threshold", "neg_threshold", "min_silence_duration_ms", "speech_pad_ms",
              "min_speech_duration_ms")
# Names faster-whisper would fetch from the Hub: never sent, so no test waits on a network.
HUB_SIZES = {"tiny", "base", "base.en", "small", "small.en", "medium", "medium.en", "large",
             "large-v1", "large-v2", "large-v3", "large-v3-turbo", "turbo", "distil-large-v2",
             "distil-large-v3", "distil-large-v3.5", "distil-medium.en", "distil-small.en"}

FUZZ = settings(max_examples=60, deadline=None, derandomize=True, database=None,
                suppress_health_check=list(HealthCheck), print_blob=False,
                phases=[Phase.explicit, Phase.generate])
UPLOAD_FUZZ = settings(FUZZ, max_examples=30)
CORRUPT_FUZZ = settings(FUZZ, max_examples=30)


# -- the app, and helpers to drive it --------------------------------------------------------

@pytest.fixture(scope="module")
def client(model_manager, tiny_en):
    """One app over the shared ModelManager. Small frame and upload limits make the fatal
    paths cheap to reach; no lag-based refusals (the fuzzing is sequential, the neighbour may
    lag while it waits for its next frames); `models` (the allow-list, where the server has
    one) keeps every client on tiny.en."""
    settings = Settings(default_model="tiny.en", cache_dir=model_manager.cache_dir,
                        models="tiny.en", max_ws_message_bytes=FRAME_LIMIT,
                        max_upload_bytes=UPLOAD_LIMIT, max_lag_s=1e9, idle_timeout_s=30.0,
                        max_audio_s=30.0)
    with TestClient(create_app(settings, manager=model_manager)) as client:
        yield client


def pcm(name: str) -> bytes:
    with wave.open(str(DATA / f"{name}.wav")) as w:
        return w.readframes(w.getnframes())


SPEECH_S16 = pcm("en_short")
SPEECH_F32 = (np.frombuffer(SPEECH_S16, "<i2").astype("<f4") / 32768).tobytes()


def receive(ws) -> dict:
    """The next ASGI message the server sent; a server silent for RECEIVE_TIMEOUT_S fails the
    test instead of hanging it (TestClient's own receive has no timeout)."""
    async def next_message():
        with anyio.fail_after(RECEIVE_TIMEOUT_S):
            return await ws._send_rx.receive()

    return ws.portal.call(next_message)


@dataclass
class Received:
    messages: list[dict] = field(default_factory=list)
    close: int | None = None


def read_until_close(ws, limit: int = 2000) -> Received:
    """Every message up to the server's close: each a JSON object in a text frame."""
    got = Received()
    for _ in range(limit):
        message = receive(ws)
        if message["type"] == "websocket.close":
            got.close = message.get("code", 1000)
            return got
        assert message["type"] == "websocket.send", message
        assert message.get("bytes") is None and isinstance(message.get("text"), str), \
            f"the server sends only JSON text frames: {message}"
        body = json.loads(message["text"])
        assert isinstance(body, dict) and body.get("type") in SERVER_TYPES, body
        got.messages.append(body)
    raise AssertionError(f"no close after {limit} messages")


def wait_for_sessions(client: TestClient, count: int, timeout: float = 10.0) -> None:
    sessions = client.app.state.service.sessions
    deadline = time.monotonic() + timeout
    while len(sessions) != count and time.monotonic() < deadline:
        time.sleep(0.01)
    assert len(sessions) == count, f"{len(sessions)} sessions open, expected {count}"


def tiny_refs(model_manager) -> int:
    return model_manager.loaded[model_manager.key("tiny.en")].refs


class Neighbour(contextlib.ExitStack):
    """A clean stream of a committed passage, fed a few frames at a time between examples.
    A context manager: a test that fails midway still closes it (an open WebSocket would keep
    TestClient's event loop, and so the module's teardown, waiting forever)."""

    def __init__(self, client: TestClient, name: str, steps: int) -> None:
        super().__init__()
        self.client, self.name, self.data, self.sent = client, name, pcm(name), 0
        frames = math.ceil(len(self.data) / FRAME)
        self.per_step = max(1, frames // steps)

    def __enter__(self) -> Neighbour:
        super().__enter__()
        self.ws = self.enter_context(self.client.websocket_connect("/v1/stream"))
        self.ws.send_json({"type": "config", "model": "tiny.en", "language": "en"})
        ready = receive(self.ws)
        assert json.loads(ready["text"])["type"] == "ready", ready
        return self

    def step(self) -> None:
        for _ in range(self.per_step):
            if self.sent < len(self.data):
                self.ws.send_bytes(self.data[self.sent:self.sent + FRAME])
                self.sent += FRAME

    def finish(self) -> list[dict]:
        """The rest of the passage, `end`, and every message up to the close."""
        while self.sent < len(self.data):
            self.step()
        self.ws.send_json({"type": "end"})
        got = read_until_close(self.ws)
        assert got.close == 1000 and got.messages[-1]["type"] == "done", got.messages[-3:]
        assert not [m for m in got.messages if m["type"] == "error"], got.messages
        return got.messages


def finals_text(messages: list[dict]) -> str:
    return " ".join(m["text"] for m in messages if m["type"] == "final")


def check_transcript(label: str, name: str, messages: list[dict]) -> None:
    done = messages[-1]
    assert done["audio_seconds"] == pytest.approx(len(pcm(name)) / 32000, abs=0.002)
    assert_wer(f"{label} finals", reference(name), finals_text(messages), WER_BOUND)
    assert_wer(f"{label} done", reference(name), done["text"], WER_BOUND)


def clean_stream(client: TestClient, name: str) -> list[dict]:
    with client.websocket_connect("/v1/stream") as ws:
        ws.send_json({"type": "config", "model": "tiny.en"})
        data = pcm(name)
        for i in range(0, len(data), FRAME):
            ws.send_bytes(data[i:i + FRAME])
        ws.send_json({"type": "end"})
        got = read_until_close(ws)
    assert got.close == 1000 and got.messages[0]["type"] == "ready", got.messages[:2]
    return got.messages


# -- WebSocket scripts: what a client sends, and what the protocol says comes back -----------

@dataclass(frozen=True)
class Config:
    """A config message and what the server must make of it: `ready`, or one fatal error
    (`code`) whose message starts with the name of the field at fault (`where`)."""

    body: dict
    code: str | None = None
    where: str | None = None

    @property
    def encoding(self) -> str:
        return self.body.get("encoding", "pcm_s16le")

    @property
    def rate(self) -> int:
        return int(self.body.get("sample_rate", 16000))


@dataclass(frozen=True)
class Script:
    first: str | bytes | Config
    actions: tuple[str | bytes, ...]
    finish: str  # "end": send `end` after the actions; "vanish": just disconnect


def not_in(*excluded):
    return lambda value: value not in excluded


json_scalars = st.one_of(st.none(), st.booleans(), st.integers(-2**40, 2**40),
                         st.floats(allow_nan=True, allow_infinity=True), st.text(max_size=12))
json_values = st.recursive(json_scalars, lambda inner: st.one_of(
    st.lists(inner, max_size=3), st.dictionaries(st.text(max_size=6), inner, max_size=3)),
    max_leaves=6)
not_a_bool = st.sampled_from([2, -1, "maybe", "", [], {}, None, 0.5])
not_a_string = st.one_of(st.integers(), st.booleans(), st.lists(st.integers(), max_size=2),
                         st.dictionaries(st.text(max_size=3), st.integers(), max_size=2))


def _valid_vad() -> st.SearchStrategy[dict]:
    @st.composite
    def vad(draw) -> dict:
        body: dict = {}
        threshold = 0.5
        if draw(st.booleans()):
            threshold = body["threshold"] = draw(st.floats(0.01, 0.99))
        if draw(st.booleans()):
            # At most the threshold: x * t <= t for x <= 1, in floating point too.
            body["neg_threshold"] = draw(st.none() | st.floats(0.01, 1.0).map(
                lambda x: x * threshold))
        for name, top in (("min_silence_duration_ms", 10000), ("speech_pad_ms", 2000),
                          ("min_speech_duration_ms", 10000)):
            if draw(st.booleans()):
                body[name] = draw(st.integers(0, top))
        return body

    return vad()


# Per field: values the server must accept, and values it must refuse in validation.
VALID = {
    "model": st.sampled_from([None, "", "whisper-1", "tiny.en"]),
    "language": st.sampled_from(["auto", "", "en"]),
    "task": st.just("transcribe"),
    "sample_rate": st.one_of(st.just(16000), st.integers(8000, 48000)),
    "encoding": st.sampled_from(["pcm_s16le", "pcm_f32le"]),
    "static_prompt": st.text(max_size=30),
    "hotwords": st.sampled_from(["", "Katelynn Smyth"]),
    "word_timestamps": st.booleans(),
    "utterances": st.sampled_from([True, False, None]),
    "vad": _valid_vad(),
}
INVALID = {
    "model": not_a_string,
    "language": st.one_of(st.text(max_size=8).filter(not_in("", "auto", *LANGUAGES)),
                          st.none(), st.integers()),
    "task": st.one_of(st.text(max_size=10).filter(not_in("transcribe", "translate")),
                      not_a_string),
    "sample_rate": st.one_of(st.integers(max_value=7999), st.integers(min_value=48001),
                             st.floats(8000.5, 47999.5).filter(lambda x: x % 1),
                             st.sampled_from([math.nan, math.inf, "fast", [16000], None])),
    "encoding": st.one_of(st.text(max_size=10).filter(
        not_in("pcm_s16le", "pcm_f32le", "webm_opus", "ogg_opus")), not_a_string),
    "static_prompt": st.one_of(st.just("x" * 2001), st.integers(), st.none()),
    "hotwords": st.one_of(st.just("x" * 501), st.integers(), st.none()),
    "word_timestamps": not_a_bool,
    "utterances": st.sampled_from([2, -1, "maybe", [], {}, 0.5]),
    "vad": st.one_of(
        st.sampled_from([None, [], 0.5, "on", True]),
        st.sampled_from(VAD_FIELDS[:2]).flatmap(lambda f: st.fixed_dictionaries(
            {f: st.sampled_from([0, 1, -0.1, 1.5, math.nan, math.inf, "high"])})),
        st.sampled_from(VAD_FIELDS[2:]).flatmap(lambda f: st.fixed_dictionaries(
            {f: st.sampled_from([-1, 10001 if f != "speech_pad_ms" else 2001, 2.5, "long"])})),
        st.just({"threshold": 0.3, "neg_threshold": 0.6}),
        st.text(min_size=1, max_size=6).filter(not_in(*VAD_FIELDS)).map(lambda k: {k: 1}),
    ),
}
# Values that pass validation but not the server: what the model cannot do, what it lacks.
UNSUPPORTED = {
    "model": ("model_not_found", st.text(min_size=1, max_size=12).filter(
        lambda s: s not in ("", "tiny.en", "whisper-1", "base", *HUB_SIZES)
        and "/" not in s and "\x00" not in s and not Path(s).expanduser().exists())),
    "language": ("invalid_config", st.sampled_from([c for c in LANGUAGES if c != "en"])),
    "task": ("invalid_config", st.just("translate")),
    # 2000 characters pass validation, but not the prompt's token budget (max_context_tokens).
    "static_prompt": ("invalid_config", st.just("names " * 333 + "ab")),
}


@st.composite
def configs(draw) -> Config:
    """Mostly valid configs; about a third break one or two fields, in any of the three ways
    (validation, what the model supports, an unknown field)."""
    fields = [f for f in CONFIG_FIELDS[1:] if draw(st.booleans())]
    broken = draw(st.lists(st.sampled_from([*CONFIG_FIELDS[1:], "extra"]), min_size=1,
                           max_size=2, unique=True)) if draw(st.integers(0, 2)) == 2 else []
    body: dict = {"type": "config"}
    invalid, unsupported = [], []
    for name in CONFIG_FIELDS[1:]:
        if name in broken:
            if name in UNSUPPORTED and draw(st.booleans()):
                body[name] = draw(UNSUPPORTED[name][1])
                unsupported.append(name)
            else:
                body[name] = draw(INVALID[name])
                invalid.append(name)
        elif name in fields:
            body[name] = draw(VALID[name])
    extra = []
    if "extra" in broken:
        key = draw(st.text(min_size=1, max_size=8).filter(not_in(*CONFIG_FIELDS)))
        body[key] = draw(json_scalars)
        extra.append(key)
    if draw(st.booleans()):  # field order must not matter
        body = dict(draw(st.permutations(list(body.items()))))
    # The oracle, from docs/protocol.md: validation first (the first field in the config's
    # declared order, then unknown fields), then the model's availability, then what it can do.
    if invalid:
        where = invalid[0]
        return Config(body, "unsupported_sample_rate" if where == "sample_rate"
                      else "invalid_config", where)
    if extra:
        return Config(body, "invalid_config", extra[0])
    if "model" in unsupported:
        return Config(body, "model_not_found")
    if unsupported:
        return Config(body, "invalid_config")
    return Config(body)


@st.composite
def speech_configs(draw) -> Config:
    """Valid configs that leave the VAD and the rate alone, so the speech they send is heard
    and decoded: the finals, utterances and `done` of fuzzed sessions get checked too."""
    body = {"type": "config"}
    for name in ("model", "language", "encoding", "static_prompt", "word_timestamps",
                 "utterances"):
        if draw(st.booleans()):
            body[name] = draw(VALID[name])
    return Config(body)


def text_messages() -> st.SearchStrategy[str]:
    return st.one_of(
        st.just('{"type": "end"}'),
        st.text(max_size=20),  # mostly not JSON
        st.sampled_from(["{", "[1, 2", "{'type': 'end'}", "", "null", "NaN", '"end"']),
        json_values.map(json.dumps),
        st.fixed_dictionaries({"type": json_values}).map(json.dumps),
        st.text(max_size=10).map(lambda t: json.dumps({"type": t})),
        st.sampled_from(["config", "End", "pause", "end "]).map(
            lambda t: json.dumps({"type": t, "model": "tiny.en"})),
    )


def frames(encoding: str) -> st.SearchStrategy[bytes]:
    size = SAMPLE_BYTES[encoding]
    speech = SPEECH_S16 if encoding == "pcm_s16le" else SPEECH_F32
    specials = [math.nan, math.inf, -math.inf, 1e30, -1e30, 0.0, 1.0, -1.0, 5e-39]
    return st.one_of(
        st.binary(max_size=40),  # any length: odd, not a multiple of 4, empty
        st.binary(min_size=200, max_size=4000),
        st.tuples(st.integers(0, len(speech) // size - 1),
                  st.integers(1, FRAME_LIMIT // size)).map(
            lambda t: speech[t[0] * size:(t[0] + t[1]) * size]),  # real speech, cut anywhere
        st.lists(st.sampled_from(specials), min_size=1, max_size=1200).map(
            lambda xs: struct.pack(f"<{len(xs)}f", *xs)),  # NaN, inf, denormals as float32
        st.integers(FRAME_LIMIT // 2 + 1, FRAME_LIMIT // 2 + 500).map(lambda n: b"\x01\x00" * n),
    )


@st.composite
def speech_bursts(draw, encoding: str) -> tuple[bytes, ...]:
    """1 to 1.5 s of the committed speech, from near the start of a phrase, in 100 ms frames:
    enough for the VAD to open and the session to decode, among whatever else the script
    sends."""
    size = SAMPLE_BYTES[encoding]
    speech = SPEECH_S16 if encoding == "pcm_s16le" else SPEECH_F32
    start = draw(st.sampled_from([0, 16000, 30000, 48000, 66000])) + draw(st.integers(0, 4000))
    burst = speech[start * size:(start + draw(st.integers(16000, 24000))) * size]
    step = 1600 * size
    return tuple(burst[i:i + step] for i in range(0, len(burst), step))


@st.composite
def scripts(draw) -> Script:
    # Weights by hand (one_of's own choice drifts with the seed): 20% sessions that speak,
    # 50% any config, 10% audio first, 20% other text (a text frame that is a config comes
    # from the config strategies only, with its oracle).
    kind = draw(st.integers(0, 9))
    first = draw(speech_configs() if kind < 2 else configs() if kind < 7 else
                 frames("pcm_s16le") if kind == 7 else
                 text_messages().filter(lambda t: classify_text(t) != "config"))
    valid = isinstance(first, Config) and first.code is None
    encoding = first.encoding if valid else "pcm_s16le"
    actions = draw(st.lists(st.one_of(frames(encoding), text_messages()), max_size=8))
    if kind < 2:  # a burst of speech before any `end`
        ends = [i for i, a in enumerate(actions) if isinstance(a, str)
                and classify_text(a) == "end"]
        at = draw(st.integers(0, ends[0] if ends else len(actions)))
        actions[at:at] = draw(speech_bursts(encoding))
    finish = "vanish" if draw(st.integers(0, 4)) == 4 else "end"
    return Script(first, tuple(actions), finish)


@dataclass
class Expected:
    errors: list[str]  # every error code, in order
    close: int | None  # None: the session ended with `done` (close 1000)
    where: str | None = None  # a fatal config error names this field
    samples: int = 0  # pcm samples the server must count, at the client's rate
    config: Config | None = None


def classify_text(text: str) -> str:
    """What a text frame is, per docs/protocol.md section 4."""
    try:
        message = json.loads(text)
    except ValueError:
        return "invalid_json"
    if not isinstance(message, dict) or not isinstance(message.get("type"), str):
        return "invalid_message"
    return message["type"]


def expected(script: Script) -> Expected:
    first = script.first
    if isinstance(first, bytes):
        return Expected(["config_required"], 1008)
    if isinstance(first, str):
        kind = classify_text(first)
        return Expected([kind if kind in ("invalid_json", "invalid_message")
                         else "config_required"], 1008)
    if first.code:
        return Expected([first.code], 1008, first.where)
    size = SAMPLE_BYTES[first.encoding]
    errors, samples = [], 0
    for action in script.actions:
        if isinstance(action, bytes):
            if len(action) > FRAME_LIMIT:
                return Expected([*errors, "message_too_large"], 1009, samples=samples,
                                config=first)
            if len(action) % size:
                errors.append("invalid_audio")
            else:
                samples += len(action) // size
            continue
        kind = classify_text(action)
        if kind == "end":
            return Expected(errors, None, samples=samples, config=first)
        errors.append(kind if kind in ("invalid_json", "invalid_message")
                      else "unknown_message_type")
    return Expected(errors, None, samples=samples, config=first)


def send(ws, message: str | bytes | Config) -> None:
    if isinstance(message, Config):
        ws.send_text(json.dumps(message.body))
    elif isinstance(message, bytes):
        ws.send_bytes(message)
    else:
        ws.send_text(message)


def check_session(script: Script, want: Expected, got: Received) -> None:
    """Every message the server sent against the protocol and the oracle."""
    messages = got.messages
    for m in messages:
        if m["type"] == "error":
            assert m["code"] in ERROR_CODES and isinstance(m["message"], str) and m["message"], m
    codes = [m["code"] for m in messages if m["type"] == "error"]
    assert codes == want.errors, (codes, want.errors, messages[-3:])
    if want.close == 1008:  # refused before the session opened: the error and nothing else
        assert got.close == 1008 and len(messages) == 1, (got.close, messages)
        if want.where:
            assert messages[0]["message"].startswith(want.where), messages[0]
        return
    ready, rest = messages[0], messages[1:]
    assert ready["type"] == "ready" and ready["session_id"], ready
    config = want.config.body
    effective = ready["config"]
    assert effective["model"] == "tiny.en"
    assert effective["encoding"] == want.config.encoding
    assert effective["sample_rate"] == want.config.rate
    assert effective["word_timestamps"] == bool(config.get("word_timestamps", False))
    assert not [m for m in rest if m["type"] == "ready"]
    if want.close == 1009:
        assert got.close == 1009 and rest[-1]["code"] == "message_too_large", rest[-2:]
        assert not [m for m in rest if m["type"] == "done"]
        return
    done = rest[-1]
    assert got.close == 1000 and done["type"] == "done", (got.close, rest[-3:])
    assert done["reason"] == "end of stream"
    assert not [m for m in rest[:-1] if m["type"] == "done"]
    seconds = want.samples / want.config.rate
    tolerance = 0.0015 if want.config.rate == 16000 else 0.03  # the resampler's own delay
    assert done["audio_seconds"] == pytest.approx(seconds, abs=tolerance), done
    finals = [m for m in rest if m["type"] == "final"]
    utterances = [m for m in rest if m["type"] == "utterance"]
    assert done["segments"] == len(finals) and done["utterances"] == len(utterances), done
    end = done["audio_seconds"] + 0.05
    previous = 0.0
    for f in finals:
        assert previous - 1e-6 <= f["start"] <= f["end"] <= end, (previous, f)
        assert isinstance(f["text"], str) and isinstance(f["language"], str), f
        assert ("words" in f) == effective["word_timestamps"], f
        previous = f["end"]
    for p in (m for m in rest if m["type"] == "partial"):
        assert 0 <= p["start"] <= p["end"] <= end and isinstance(p["text"], str), p
    if config.get("utterances") is False:
        assert not utterances
        assert done["text"] == " ".join(f["text"] for f in finals), done
    else:
        assert done["text"] == " ".join(u["text"] for u in utterances), done
        for u in utterances:  # exactly the span of the finals it covers
            covered = [f for f in finals if u["start"] <= f["start"] and f["end"] <= u["end"]]
            assert covered and covered[0]["start"] == u["start"], (u, covered)
            assert covered[-1]["end"] == u["end"], (u, covered)


def run_script(client: TestClient, script: Script) -> Received | None:
    received = None
    try:
        with client.websocket_connect("/v1/stream") as ws:
            send(ws, script.first)
            for action in script.actions:
                send(ws, action)
            if script.finish == "vanish":
                return None  # leaving without `end`: the server must just drop the session
            ws.send_text('{"type": "end"}')
            received = read_until_close(ws)
    except concurrent.futures.CancelledError:
        # TestClient cancels the app's task when the client leaves while the handler is still
        # at work (a decode in flight, its clean-up after the close frame): a dropped
        # connection. What the client got is checked as usual, and the caller checks that
        # nothing was left behind (wait_for_sessions, the model references).
        pass
    return received


def test_random_message_sequences_on_the_stream(client, model_manager):
    refs = tiny_refs(model_manager)
    seen: dict[str, int] = {}

    @FUZZ
    @given(script=scripts())
    @example(script=Script(b"\x00\x00" * 100, (), "end"))  # audio before the config
    @example(script=Script(Config({"type": "config", "word_timestamps": True}), tuple(
        SPEECH_S16[i:i + FRAME] for i in range(0, 2 * 32000, FRAME)), "end"))  # plain speech
    @example(script=Script(Config({"type": "config"}), (SPEECH_S16[:32000],), "vanish"))
    @example(script=Script(Config({"type": "config"}), (  # config twice, odd frame, after end
        SPEECH_S16[:FRAME], '{"type": "config"}', b"\x01", '{"type": "end"}', b"\x00\x00"),
        "end"))
    @example(script=Script(Config({"type": "config", "encoding": "pcm_f32le",
                                   "sample_rate": 44100}),
                           (struct.pack("<4f", math.nan, math.inf, -math.inf, 2.0), b"\x00" * 6,
                            b"\x00" * (FRAME_LIMIT + 4), b"\x00" * 4), "end"))
    @example(script=Script(Config({"type": "config", "vad": {"threshold": 0.3,
                                                              "neg_threshold": 0.6}},
                                  "invalid_config", "vad"), (), "end"))
    def fuzz(script: Script) -> None:
        want = expected(script)
        got = run_script(client, script)
        outcome = "vanish" if got is None else want.errors[-1] if want.close else "done"
        seen[outcome] = seen.get(outcome, 0) + 1
        if got is not None:
            check_session(script, want, got)
            if any(m["type"] == "final" for m in got.messages):
                seen["finals"] = seen.get("finals", 0) + 1
        wait_for_sessions(client, 1)  # the neighbour's only: nothing left behind
        neighbour.step()

    with Neighbour(client, "en_passage", steps=FUZZ.max_examples) as neighbour:
        fuzz()
        messages = neighbour.finish()
    check_transcript("websocket next to fuzzed clients", "en_passage", messages)
    wait_for_sessions(client, 0)
    assert tiny_refs(model_manager) == refs  # every session gave its model reference back
    # The examples reached the paths they are for (the explicit ones pin each; a change in
    # the strategies shows here), fuzzed audio included: generated sessions decoded speech.
    assert {"done", "finals", "config_required", "invalid_config", "message_too_large",
            "vanish"} <= set(seen), seen
    assert seen["finals"] >= 2 and seen["done"] >= 10, seen
    # Still alive: liveness, and a fresh clean stream transcribed as well as ever.
    assert client.get("/health").json() == {"status": "ok"}
    check_transcript("websocket after the fuzzing", "en_short", clean_stream(client, "en_short"))


# -- uploads: random multipart forms ---------------------------------------------------------

SNIPPET = read_wav(DATA / "en_short.wav")[:20000]  # 1.25 s: "the quick brown"
SNIPPET_S = len(SNIPPET) / 16000
CONTAINERS = {"wav": ("wav", "pcm_s16le"), "flac": ("flac", "flac"), "ogg": ("ogg", "libopus"),
              "mp3": ("mp3", "libmp3lame")}
RESPONSE_FORMATS = ("json", "text", "srt", "vtt", "verbose_json")
FORM_FIELDS = ("file", "model", "language", "prompt", "response_format", "temperature",
               "timestamp_granularities[]")
VALIDATION = "request validation"  # refused by the route's types: 400 invalid_request


@functools.lru_cache(maxsize=None)
def encoded(fmt: str) -> bytes:
    """The snippet in one of the formats, made with PyAV (as ffmpeg would)."""
    container, codec = CONTAINERS[fmt]
    return encode_audio(SNIPPET, container, codec)


@dataclass(frozen=True)
class Upload:
    """One request to the upload routes and the answers the docs allow: (status, code) pairs,
    code None for a 2xx, VALIDATION for the framework's own refusals."""

    route: str
    allowed: frozenset
    files: tuple = ()
    data: tuple = ()
    raw: tuple[bytes, str] | None = None  # a body and content type, not a form at all
    response_format: str = "json"
    audio: bool = False  # a well-formed audio file: a 200 carries its duration

    @property
    def validation(self) -> bool:
        """A request the framework refuses before the route runs (400)."""
        return (400, VALIDATION) in self.allowed

    def post(self, client: TestClient):
        if self.raw is not None:
            return client.post(self.route, content=self.raw[0],
                               headers={"content-type": self.raw[1]} if self.raw[1] else {})
        return client.post(self.route, files=list(self.files) or None, data=dict(self.data))


def _not_a_float(text: str) -> bool:
    try:
        float(text)
    except ValueError:
        return bool(text.strip())
    return False


header_text = st.text(st.characters(min_codepoint=32, max_codepoint=126), max_size=30)


def wrong(draw) -> bool:
    return draw(st.integers(0, 3)) == 3


@st.composite
def uploads(draw) -> Upload:
    route = "/v1/audio/" + draw(st.sampled_from(["transcriptions"] * 4 + ["translations"]))
    if draw(st.integers(0, 9)) == 9:  # not a multipart form, or a broken one
        content_type = draw(st.one_of(
            st.sampled_from(["", "multipart/form-data", "multipart/form-data; boundary=zz",
                             "application/json", "application/x-www-form-urlencoded"]),
            header_text))
        body = draw(st.one_of(st.binary(max_size=300), st.just(b"--zz\r\nContent-Disposition: "
                                                             b"form-data; name=\"file\"\r\n\r\n")))
        return Upload(route, frozenset({(400, VALIDATION)}),
                      raw=(body, content_type))
    problems: set[tuple[int, str]] = set()
    validation = False
    data: list[tuple[str, object]] = []
    files: list[tuple[str, tuple]] = []
    kind = draw(st.sampled_from(["audio"] * 4 + ["junk", "empty", "big", "missing", "field"]))
    fmt = draw(st.sampled_from(sorted(CONTAINERS)))
    content = {"audio": lambda: encoded(fmt), "empty": lambda: b"",
               "junk": lambda: draw(st.binary(min_size=1, max_size=2000)),
               "big": lambda: b"\x00" * (UPLOAD_LIMIT + 1),
               "missing": lambda: b"", "field": lambda: b""}[kind]()
    filename = draw(st.one_of(st.just(f"clip.{fmt}"), st.text(max_size=16)))
    content_type = draw(st.one_of(st.none(), st.sampled_from(["audio/wav", "audio/mpeg",
                                                               "application/octet-stream"]),
                                  header_text))
    if kind == "field":  # the file sent as a plain form field
        data.append(("file", draw(st.text(max_size=20))))
        validation = True
    elif kind == "missing":
        validation = True
    else:
        files.append(("file", (filename, content, content_type) if content_type is not None
                      else (filename, content)))
        if filename == "":  # no filename: a plain field to the framework
            validation = True
        elif kind in ("junk", "empty"):
            problems.add((400, "invalid_audio"))
        elif kind == "big":
            problems.add((413, "file_too_large"))
    # Each field: absent, valid, or (one time in four) wrong.
    if draw(st.booleans()):
        model = draw(UNSUPPORTED["model"][1] if wrong(draw) else
                     st.sampled_from(["", "whisper-1", "tiny.en"]))
        data.append(("model", model))
        if model not in ("", "whisper-1", "tiny.en"):
            problems.add((404, "model_not_found"))
    if draw(st.booleans()):
        language = draw(st.one_of(INVALID["language"].filter(lambda v: isinstance(v, str)),
                                  UNSUPPORTED["language"][1]) if wrong(draw)
                        else VALID["language"])
        data.append(("language", language))
        if language not in ("", "auto", "en"):
            problems.add((400, "invalid_request"))
    if draw(st.booleans()):
        data.append(("prompt", draw(st.text(max_size=80))))
    response_format = "json"
    if draw(st.booleans()):
        response_format = draw(st.text(max_size=12) if wrong(draw)
                               else st.sampled_from(RESPONSE_FORMATS))
        data.append(("response_format", response_format))
        if response_format == "":
            response_format = "json"  # an empty form field is no field
        elif response_format not in RESPONSE_FORMATS:
            problems.add((400, "invalid_response_format"))
    if draw(st.booleans()):
        good = not wrong(draw)
        data.append(("temperature", draw(st.floats(0, 1).map(lambda x: f"{x:.3g}") if good
                                         else st.text(max_size=8).filter(_not_a_float))))
        validation = validation or not good
    for _ in range(draw(st.integers(0, 2))):
        data.append(("timestamp_granularities[]",
                     draw(st.one_of(st.sampled_from(["word", "segment"]), st.text(max_size=8)))))
    if draw(st.booleans()):
        data.append((draw(st.text(min_size=1, max_size=10).filter(not_in(*FORM_FIELDS))),
                     draw(st.text(max_size=20))))
    if route.endswith("translations"):
        problems.add((400, "invalid_request"))  # tiny.en is English-only
    if validation:
        allowed = {(400, VALIDATION)}
    elif problems:
        allowed = problems | ({(200, None)} if problems == {(400, "invalid_audio")}
                              and kind == "junk" else set())  # junk that ffmpeg can read
    else:
        allowed = {(200, None)}
    # httpx sends a form as a dict: a field given twice goes as a list.
    merged: dict[str, object] = {}
    for key, value in data:
        merged[key] = [*merged[key], value] if isinstance(merged.get(key), list) else \
            [merged[key], value] if key in merged else value
    return Upload(route, frozenset(allowed), tuple(files), tuple(merged.items()), None,
                  response_format, kind == "audio")


def error_code(response) -> str:
    """The code of an error response; its body must be OpenAI's error object, the framework's
    own refusals (request validation, broken multipart) included."""
    body = response.json()
    error = body["error"]
    assert set(error) == {"message", "type", "code"}, body
    assert all(isinstance(v, str) and v for v in error.values()), body
    return error["code"]


def check_answer(upload: Upload, response, elapsed: float) -> tuple[int, str | None]:
    status = response.status_code
    assert status < 500, (status, response.text[:300])
    assert elapsed < RECEIVE_TIMEOUT_S, f"{elapsed:.1f} s for one upload"
    if status >= 400:
        assert response.headers["content-type"].startswith("application/json"), response.headers
        code = error_code(response)
        # Whatever code the framework's refusals get once they have OpenAI's body.
        outcome = (status, VALIDATION if upload.validation and (status, code) == (
            400, "invalid_request") else code)
    else:
        outcome = (status, None)
        text = response.text
        if upload.response_format in ("json", "verbose_json"):
            body = response.json()
            assert isinstance(body["text"], str), body
            if upload.response_format == "verbose_json":
                assert isinstance(body["segments"], list), body
                if upload.audio:
                    assert body["duration"] == pytest.approx(SNIPPET_S, abs=0.1), body
        elif upload.response_format == "srt":
            list(srt.parse(text, ignore_errors=False))
        elif upload.response_format == "vtt":
            assert text.startswith("WEBVTT"), text[:50]
    assert outcome in upload.allowed, (outcome, sorted(upload.allowed, key=str),
                                       response.text[:300])
    return outcome


def test_random_multipart_forms_on_the_upload_routes(client, model_manager):
    refs = tiny_refs(model_manager)
    seen: dict[str, int] = {}

    @UPLOAD_FUZZ
    @given(upload=uploads())
    def fuzz(upload: Upload) -> None:
        started = time.monotonic()
        response = upload.post(client)
        status, code = check_answer(upload, response, time.monotonic() - started)
        seen[code or str(status)] = seen.get(code or str(status), 0) + 1
        neighbour.step()

    with Neighbour(client, "en_short", steps=UPLOAD_FUZZ.max_examples) as neighbour:
        fuzz()
        messages = neighbour.finish()
    check_transcript("websocket next to fuzzed uploads", "en_short", messages)
    assert tiny_refs(model_manager) == refs
    assert {"200", "invalid_audio", VALIDATION} <= set(seen), seen
    assert client.get("/health").json() == {"status": "ok"}
    clean = client.post("/v1/audio/transcriptions",
                        files={"file": ("en_short.wav", (DATA / "en_short.wav").read_bytes())})
    assert clean.status_code == 200
    assert_wer("upload after the fuzzing", reference("en_short"), clean.json()["text"],
               WER_BOUND)


def test_framework_refusals_use_the_openai_error_body(client):
    """A form without `file`, a temperature that is not a number or out of OpenAI's range, a
    multipart body without a boundary, a GET: OpenAI's error object, with a code, not
    FastAPI's `{"detail": ...}`."""
    wav = encoded("wav")
    answers = [
        client.post("/v1/audio/transcriptions", data={"model": "tiny.en"}),
        client.post("/v1/audio/transcriptions", files={"file": ("a.wav", wav)},
                    data={"temperature": "warm"}),
        client.post("/v1/audio/transcriptions", files={"file": ("a.wav", wav)},
                    data={"temperature": "inf"}),
        client.post("/v1/audio/transcriptions", content=b"--x\r\n",
                    headers={"content-type": "multipart/form-data"}),
        client.get("/v1/audio/transcriptions"),
    ]
    for answer in answers:
        error = answer.json().get("error")
        assert isinstance(error, dict) and set(error) == {"message", "type", "code"}, \
            (answer.status_code, answer.text[:200])
    assert [(a.status_code, a.json()["error"]["code"]) for a in answers] == [
        (400, "invalid_request")] * 4 + [(405, "method_not_allowed")]
    assert answers[0].json()["error"]["message"].startswith("file:")
    assert answers[2].json()["error"]["message"].startswith("temperature:")


# -- truncated and corrupted audio files -----------------------------------------------------

@dataclass(frozen=True)
class Corrupted:
    fmt: str
    name: str
    data: bytes
    damage: tuple[str, ...]

    @property
    def truncated_only(self) -> bool:
        return all(op.startswith("truncate") for op in self.damage)


@st.composite
def corrupted_files(draw) -> Corrupted:
    """One of the formats, cut and damaged: bytes flipped, zeroed or inserted, in the header
    (the first 64 bytes) or anywhere, at positions hypothesis picks."""
    fmt = draw(st.sampled_from(sorted(CONTAINERS)))
    data = bytearray(encoded(fmt))
    damage = []
    for _ in range(draw(st.integers(1, 3))):
        op = draw(st.sampled_from(["truncate", "flip", "zero", "insert"]))
        size = max(len(data), 1)
        header = draw(st.integers(0, 2)) == 2
        at = draw(st.integers(0, 63) if header else st.integers(0, size - 1)) % size
        if op == "truncate":
            del data[at:]
        elif op == "flip" and data:
            data[at] ^= draw(st.integers(1, 255))
        elif op == "zero":
            length = draw(st.integers(1, 512))
            data[at:at + length] = bytes(len(data[at:at + length]))
        elif op == "insert":
            data[at:at] = draw(st.binary(min_size=1, max_size=64))
        damage.append(f"{op}@{at}")
    name = draw(st.sampled_from([f"clip.{fmt}", "clip.bin", "clip", "clip.wav"]))
    return Corrupted(fmt, name, bytes(data), tuple(damage))


def test_truncated_and_corrupted_audio_uploads(client, model_manager):
    refs = tiny_refs(model_manager)
    seen: dict[str, int] = {}

    @CORRUPT_FUZZ
    @given(file=corrupted_files())
    @example(file=Corrupted("wav", "cut.wav", encoded("wav")[:30], ("truncate@30",)))
    @example(file=Corrupted("ogg", "cut.ogg", encoded("ogg")[:len(encoded("ogg")) // 2],
                            ("truncate@half",)))
    @example(file=Corrupted("mp3", "cut.mp3", encoded("mp3")[:len(encoded("mp3")) // 2],
                            ("truncate@half",)))
    def fuzz(file: Corrupted) -> None:
        started = time.monotonic()
        response = client.post("/v1/audio/transcriptions", data={"response_format":
                                                                  "verbose_json"},
                               files={"file": (file.name, file.data)})
        elapsed = time.monotonic() - started
        assert elapsed < RECEIVE_TIMEOUT_S, f"{elapsed:.1f} s for a {len(file.data)} B file"
        assert response.status_code in (200, 400, 413), (response.status_code, response.text)
        if response.status_code != 200:
            # 413: a damaged header that declares hours of audio is refused, not decoded.
            code = {400: "invalid_audio", 413: "audio_too_long"}[response.status_code]
            assert error_code(response) == code, response.text
            seen[code] = seen.get(code, 0) + 1
            neighbour.step()
            return
        body = response.json()
        assert isinstance(body["text"], str) and body["duration"] >= 0, body
        if file.truncated_only:  # cutting a file never makes it longer
            assert body["duration"] <= SNIPPET_S + 0.1, (body["duration"], file.damage)
        seen["200"] = seen.get("200", 0) + 1
        neighbour.step()

    with Neighbour(client, "en_short", steps=CORRUPT_FUZZ.max_examples) as neighbour:
        fuzz()
        messages = neighbour.finish()
    check_transcript("websocket next to corrupted uploads", "en_short", messages)
    assert tiny_refs(model_manager) == refs
    assert {"200", "invalid_audio"} <= set(seen), seen
    assert client.get("/health").json() == {"status": "ok"}


EXE = shutil.which("whisper-service") or str(Path(sys.executable).parent / "whisper-service")


def test_cli_names_each_undecodable_file_in_one_error_line(tmp_path):
    """Fixed damaged files (each checked undecodable in-process first), and one cut but
    decodable file that must still be transcribed: one process, one model load."""
    ogg = bytearray(encoded("ogg"))
    ogg[:4] = bytes(4)  # no "OggS" capture pattern
    bad = {"header-cut.wav": encoded("wav")[:30], "cut.flac": encoded("flac")[:44],
           "no-capture.ogg": bytes(ogg), "id3-only.mp3": encoded("mp3")[:200]}
    paths = []
    for name, data in bad.items():
        path = tmp_path / name
        path.write_bytes(data)
        with pytest.raises(AudioError):
            decode_file(path)
        paths.append(path)
    whole = (DATA / "en_short.wav").read_bytes()
    cut = tmp_path / "cut-in-half.wav"
    cut.write_bytes(whole[:len(whole) * 6 // 10])  # the first sentence and a bit
    proc = subprocess.run([EXE, "transcribe", *paths, cut, "-m", "tiny.en", "--quiet"],
                          capture_output=True, text=True, timeout=120)
    assert proc.returncode != 0
    assert "Traceback" not in proc.stderr, proc.stderr
    errors = [line for line in proc.stderr.splitlines() if line.startswith("Error:")]
    for name in bad:
        assert sum(name in line for line in errors) == 1, (name, proc.stderr)
    assert not [line for line in errors if cut.name in line], proc.stderr
    assert errors[-1] == f"Error: {len(bad)} of {len(bad) + 1} file(s) failed", proc.stderr
    assert len(errors) == len(bad) + 1, proc.stderr
    assert "fox" in proc.stdout.lower(), proc.stdout
