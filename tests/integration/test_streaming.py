"""Streaming sessions on real models and real speech."""

import numpy as np
import pytest
from jiwer import wer

from tests.conftest import DATA, read_wav, reference
from whisper_service.streaming import StreamingSession, StreamOptions, replay
from whisper_service.text import normalize
from whisper_service.transcribe import Decoder, DecodeRequest, TranscribeOptions

pytestmark = pytest.mark.integration


def stream(manager, model, audio, chunk_s=0.1, **options):
    session = StreamingSession.open(manager, model, StreamOptions(**options))
    with session:
        events = [e for _, e in replay(session, audio, "fast", chunk_s)]
    return session, events


def finals(events):
    return [e for e in events if e.type == "final"]


def text_of(events):
    return " ".join(e.text for e in finals(events))


def test_streaming_matches_offline_within_margin(model_manager, base):
    audio = read_wav(DATA / "en_passage.wav")
    offline = Decoder(base).decode(DecodeRequest(audio, TranscribeOptions(language="en")))
    _, events = stream(model_manager, "base", audio, language="en")
    ref = normalize(reference("en_passage"))
    assert wer(ref, normalize(text_of(events))) <= wer(ref, normalize(offline.text)) + 0.1
    assert wer(ref, normalize(text_of(events))) < 0.3


def test_finals_are_ordered_and_do_not_overlap(model_manager, tiny_en):
    _, events = stream(model_manager, "tiny.en", read_wav(DATA / "en_passage.wav"))
    fs = finals(events)
    assert len(fs) >= 5
    assert all(f.start <= f.end for f in fs)
    assert all(a.end <= b.start + 1e-6 for a, b in zip(fs, fs[1:]))
    assert all(f.text for f in fs)
    assert events[-1].type == "partial" and events[-1].text == ""  # nothing left tentative


def test_push_size_does_not_change_text(model_manager, tiny_en):
    """Bigger pushes decode less often (catch-up), and CTranslate2's multi-threaded int8 maths
    is not bit-exact from run to run, so texts may differ slightly, but not materially."""
    audio = read_wav(DATA / "en_passage.wav")  # 53 words: one changed word is 0.02 WER
    texts = {chunk: text_of(stream(model_manager, "tiny.en", audio, chunk)[1])
             for chunk in (0.01, 0.1, 0.37, 2.0)}
    assert wer(normalize(reference("en_passage")), normalize(texts[0.1])) < 0.2, texts
    for chunk in (0.01, 0.37, 2.0):
        assert wer(normalize(texts[0.1]), normalize(texts[chunk])) <= 0.15, texts


@pytest.mark.parametrize("kind", ["silence", "white_noise", "hum"])
def test_no_words_from_silence_noise_or_hum(model_manager, tiny_en, kind):
    rng = np.random.default_rng(0)
    t = np.arange(16000 * 20) / 16000
    audio = {"silence": np.zeros_like(t),
             "white_noise": 0.05 * rng.standard_normal(len(t)),
             "hum": 0.2 * np.sin(2 * np.pi * 50 * t) + 0.1 * np.sin(2 * np.pi * 100 * t)}[kind]
    session, events = stream(model_manager, "tiny.en", audio.astype(np.float32))
    assert finals(events) == []
    assert all(e.text == "" for e in events)


def test_language_detection_and_translation_in_streaming(model_manager, base):
    audio = read_wav(DATA / "es_short.wav")
    session, events = stream(model_manager, "base", audio)
    assert session.language == "es"
    assert {e.language for e in finals(events)} == {"es"}
    _, events = stream(model_manager, "base", audio, task="translate")
    words = set(normalize(text_of(events)).split())
    assert {"good", "morning", "madrid", "park", "today"} & words, text_of(events)


def test_rolling_context_with_real_inference(model_manager, tiny_en, monkeypatch):
    """The context grows with committed text and is the prompt of the next decode."""
    prompts = []
    original = Decoder.decode

    def spy(self, request, on_progress=None):
        prompts.append(request.options.initial_prompt)
        return original(self, request, on_progress)

    monkeypatch.setattr(Decoder, "decode", spy)
    audio = read_wav(DATA / "en_short.wav")
    session = StreamingSession.open(model_manager, "tiny.en", StreamOptions(static_prompt="Foxes."))
    with session:
        first = text_of([e for _, e in replay(session, audio, "fast")])
        grown = session.context.prompt()
        session.push(np.zeros(16000, np.float32))
        second = [e for _, e in replay(session, audio, "fast")]
    assert grown.startswith("Foxes.") and len(session.context.committed_words) > 5
    assert normalize(first).split()[-3:] == normalize(grown).split()[-3:]
    later = prompts[-1]
    assert later.startswith("Foxes.") and normalize(first) in normalize(later)
    assert finals(second)


@pytest.mark.parametrize("model", ["tiny.en", "base"])
def test_context_improves_consistency_across_segments(model_manager, tiny_en, base, model):
    """A rare spelling given in the static prompt is used in every segment; without it,
    Whisper writes the common spelling ("Caitlin Smith")."""
    audio = read_wav(DATA / "en_term.wav")
    _, plain = stream(model_manager, model, audio, language="en")
    _, prompted = stream(model_manager, model, audio, language="en",
                         static_prompt="Katelynn Smyth")
    name = "Katelynn Smyth"
    assert text_of(plain).count(name) == 0, text_of(plain)
    assert text_of(prompted).count(name) >= 3, text_of(prompted)  # said four times
    assert "Caitlin" not in text_of(prompted)


def test_context_trimming_during_real_inference_session(model_manager, tiny_en):
    """Minutes of speech never take the context past its limit; the static prompt survives."""
    passage = read_wav(DATA / "en_passage.wav")
    audio = np.concatenate([passage] * 3)  # over a minute
    static = "Whisper Service glossary: LocalAgreement, Silero."
    session = StreamingSession.open(model_manager, "tiny.en",
                                    StreamOptions(static_prompt=static, max_context_tokens=60))
    seen = []
    with session:
        for _, event in replay(session, audio, "fast", chunk_s=0.5):
            seen.append(session.context.token_count())
            assert session.buffered_seconds <= 15 + 1.1
        assert session.context.prompt().startswith(static)
    assert max(seen) <= 60
    assert session.stats["finals"] > 20
