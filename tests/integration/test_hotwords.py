"""Hotwords on real models: en_term says "Katelynn Smyth" four times, which Whisper spells
"Caitlin Smythe" (base; tiny.en in a stream) or "Katelyn Smife" (tiny.en, file decode).

Correct spellings of the four, measured on default (oneDNN on this AMD CPU), CT2_USE_MKL=0
and CT2_FORCE_CPU_ISA=GENERIC, without -> with hotwords: base file decode 0 -> 4 on all
three; tiny.en stream 0 -> 4 (finals and utterances) on all three. tiny.en's file decode
depends on the backend (oneDNN: "Katelyn Smyth", the surname only, 0 -> 0; GENERIC 0 -> 4),
so it is not asserted.
"""

from __future__ import annotations

import pytest

from tests.conftest import DATA, read_wav
from whisper_service.streaming import StreamingSession, StreamOptions, replay

pytestmark = pytest.mark.integration

NAME = "Katelynn Smyth"


def test_hotwords_in_the_upload_form_set_the_spelling(client_for, base):
    """Through the HTTP form, on base: without hotwords the name is never spelled right."""
    client = client_for()
    audio = (DATA / "en_term.wav").read_bytes()

    def text(**form: str) -> str:
        response = client.post("/v1/audio/transcriptions", files={"file": ("t.wav", audio)},
                               data={"model": "base", "language": "en", **form})
        assert response.status_code == 200, response.text
        return response.json()["text"]

    plain, hot = text(), text(hotwords=NAME)
    assert plain.count(NAME) <= 1, plain  # observed 0 on every backend
    assert hot.count(NAME) >= 3, hot  # said four times; observed 4 on every backend


def test_hotwords_in_a_stream_set_the_spelling(model_manager, tiny_en):
    """tiny.en, 100 ms pushes. Folded into the static prompt, hotwords reach every decode,
    prefixed or not: finals and utterances. (Without them: 0 of 4 on every backend, the
    figure test_streaming.py's static prompt test asserts on the same path.)"""
    # A static prompt keeps 30 s windows: steps of 1.2 s halve their decodes (CI time).
    options = StreamOptions.from_settings(language="en", hotwords=NAME, min_chunk_s=1.2,
                                          idle_chunk_s=1.2)
    session = StreamingSession.open(model_manager, "tiny.en", options)
    with session:
        events = [e for _, e in replay(session, read_wav(DATA / "en_term.wav"), "fast", 0.1)]
    assert session.context.static_prompt == NAME
    finals = " ".join(e.text for e in events if e.type == "final")
    utterances = " ".join(e.text for e in events if e.type == "utterance")
    assert finals.count(NAME) >= 3, finals  # observed 4 on every backend
    assert utterances.count(NAME) >= 3, utterances  # observed 4 on every backend
