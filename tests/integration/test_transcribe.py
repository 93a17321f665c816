"""File transcription with real models on espeak-ng speech."""

import pytest
from faster_whisper import WhisperModel
from jiwer import wer

from tests.conftest import read_wav, reference
from whisper_service.text import normalize
from whisper_service.transcribe import Decoder, DecodeRequest, TranscribeOptions

pytestmark = pytest.mark.integration


def decode(loaded, name, **options):
    return Decoder(loaded).decode(DecodeRequest(read_wav_data(name), TranscribeOptions(**options)))


def read_wav_data(name):
    from tests.conftest import DATA

    return read_wav(DATA / f"{name}.wav")


def test_english_wer_with_base(base):
    result = decode(base, "en_passage", language="en")
    error = wer(normalize(reference("en_passage")), normalize(result.text))
    assert error < 0.25, result.text
    assert result.language == "en"


def test_english_wer_with_tiny_en(tiny_en):
    result = decode(tiny_en, "en_short")
    assert wer(normalize(reference("en_short")), normalize(result.text)) < 0.5, result.text


@pytest.mark.parametrize("name, language", [("de_short", "de"), ("es_short", "es")])
def test_language_detection_with_base(base, name, language):
    result = decode(base, name)
    assert result.language == language
    assert result.language_probability > 0.2


def test_translate_returns_english(base):
    result = decode(base, "es_short", task="translate")
    words = set(normalize(result.text).split())
    assert {"good", "morning", "madrid", "park"} & words, result.text
    assert not {"buenos", "parque", "tarde"} & words, result.text


def test_word_timestamps_are_ordered(base):
    result = decode(base, "en_short", word_timestamps=True)
    words = [w for s in result.segments for w in s.words]
    assert len(words) >= 12
    assert all(a.end <= b.start + 1e-3 for a, b in zip(words, words[1:]))
    assert words[-1].end <= result.duration + 0.05


def test_english_only_model_rejects_other_languages(tiny_en):
    with pytest.raises(ValueError, match="English-only"):
        decode(tiny_en, "en_short", language="de")
    with pytest.raises(ValueError, match="cannot translate"):
        decode(tiny_en, "en_short", task="translate")


def test_thin_layer_gives_faster_whispers_text(base):
    """Same settings through our Decoder and straight through faster-whisper: same text."""
    audio = read_wav_data("en_short")
    raw: WhisperModel = base.model
    segments, _ = raw.transcribe(audio, language="en", beam_size=5, vad_filter=True)
    ours = decode(base, "en_short", language="en")
    assert ours.text == "".join(s.text for s in segments).strip()
