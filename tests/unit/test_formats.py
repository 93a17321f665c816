import json

import pytest
import srt
import webvtt

from whisper_service.formats import render, timestamp
from whisper_service.transcript import Segment, Transcript, Word

TRANSCRIPT = Transcript(
    language="en", language_probability=0.98, duration=4000.5,
    segments=(
        Segment(0, 0.0, 1.5, " Hello world.", (Word(0.0, 0.6, " Hello", 0.9),
                                               Word(0.7, 1.5, " world.", 0.8))),
        Segment(1, 1.5, 1.5, " Zero length."),
        Segment(2, 3661.25, 3665.0, "  "),
        Segment(3, 3665.0, 3670.123, " An hour later, -->arrows."),
    ),
)


def test_timestamp():
    assert timestamp(3661.2509, ",") == "01:01:01,251"
    assert timestamp(-1, ".") == "00:00:00.000"


def test_srt_parses_strictly():
    subs = list(srt.parse(render(TRANSCRIPT, "srt"), ignore_errors=False))
    assert [s.content for s in subs] == ["Hello world.", "Zero length.",
                                         "An hour later, -->arrows."]
    assert all(s.end > s.start for s in subs)
    assert subs[2].start.total_seconds() == pytest.approx(3665.0)


def test_vtt_parses(tmp_path):
    path = tmp_path / "x.vtt"
    path.write_text(render(TRANSCRIPT, "vtt"))
    captions = webvtt.read(str(path))
    assert [c.text for c in captions][0] == "Hello world."
    assert captions[2].start == "01:01:05.000"


def test_json_and_verbose_json():
    data = json.loads(render(TRANSCRIPT, "json"))
    assert data["language"] == "en" and data["duration"] == 4000.5
    assert data["segments"][0]["words"][1] == {"word": "world.", "start": 0.7, "end": 1.5,
                                               "probability": 0.8}
    verbose = json.loads(render(TRANSCRIPT, "verbose_json", task="translate"))
    assert verbose["task"] == "translate"
    assert verbose["text"].startswith("Hello world.")
    assert len(verbose["words"]) == 2


def test_text_and_unknown_format():
    assert render(TRANSCRIPT, "txt").startswith("Hello world. Zero length.")
    with pytest.raises(ValueError, match="unsupported format"):
        render(TRANSCRIPT, "docx")  # type: ignore[arg-type]
