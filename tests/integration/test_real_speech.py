"""Real human speech: the live path against the offline transcript of the same recording.

Two real recordings (tests/data/real: a LibriSpeech reading, and JFK's inaugural address
recorded outdoors in 1961), each streamed through a session in 100 ms pushes as fast as it
decodes, so every step sees the same audio on every run. The transcript a client keeps
(`done.text`: utterances where they came) must read as well as the offline transcript, and
the finals, decoded from short windows, within a margin of it. The margins hold under every
CTranslate2 arithmetic (tests/README.md, bench/backends.py).
"""

from __future__ import annotations

import pytest

from tests.conftest import DATA, assert_wer, english_wer
from whisper_service.audio import decode_file
from whisper_service.engine.decoder import Decoder
from whisper_service.streaming import StreamingSession, StreamOptions, replay
from whisper_service.transcript import DecodeRequest, TranscribeOptions

pytestmark = pytest.mark.integration

REAL = DATA / "real"
CLIPS = ("read_librispeech_2412-153948-0000", "spontaneous_jfk_inaugural_1961")
# Over offline's WER, pooled over both clips (58 words: one word is 0.017), at least twice
# the worst seen under any arithmetic plus 0.05 (tests/README.md).
TRANSCRIPT_MARGIN = 0.12  # the transcript a client keeps
FINALS_MARGIN = 0.3  # the finals, decoded from short windows


@pytest.fixture(scope="module")
def heard(model_manager, tiny_en) -> dict[str, dict[str, str]]:
    """Per clip: the reference, the offline transcript, and the live finals and transcript."""
    out = {}
    for name in CLIPS:
        audio = decode_file(REAL / f"{name}.flac")
        offline = Decoder(tiny_en).decode(DecodeRequest(audio, TranscribeOptions(language="en")))
        options = StreamOptions.from_settings(language="en")
        with StreamingSession.open(model_manager, "tiny.en", options) as session:
            events = [e for _, e in replay(session, audio, "fast")]
            transcript = session.transcript
        finals = " ".join(e.text for e in events if e.type == "final")
        out[name] = {"reference": (REAL / f"{name}.txt").read_text(), "offline": offline.text,
                     "finals": finals, "transcript": transcript}
    return out


def pooled(heard: dict[str, dict[str, str]], field: str) -> tuple[str, str]:
    """Both clips as one text, so that a wrong word weighs by the words of both."""
    return (" ".join(h["reference"] for h in heard.values()),
            " ".join(h[field] for h in heard.values()))


def test_offline_hears_real_speech(heard):
    assert_wer("real tiny.en offline", *pooled(heard, "offline"), 0.15)


def test_the_live_transcript_reads_as_well_as_offline(heard):
    offline = english_wer(*pooled(heard, "offline"))
    live = assert_wer("real tiny.en transcript", *pooled(heard, "transcript"), 0.2)
    assert live <= offline + TRANSCRIPT_MARGIN, (live, offline, heard)


def test_the_finals_stay_within_a_margin_of_offline(heard):
    offline = english_wer(*pooled(heard, "offline"))
    finals = assert_wer("real tiny.en finals", *pooled(heard, "finals"), 0.35)
    assert finals <= offline + FINALS_MARGIN, (finals, offline, heard)
