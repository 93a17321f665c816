"""Uploads whose audio is long for their bytes: refused past `max_audio_s` while decoding,
and long ones transcribed `file_chunk_s` at a time, through the OpenAI-compatible route."""

from __future__ import annotations

import time

import pytest
from starlette.testclient import TestClient

from tests.conftest import DATA, assert_wer, duration, reference, silent_flac

pytestmark = pytest.mark.once  # not again under other arithmetic: see pyproject.toml


def post(client: TestClient, name: str, data: bytes, **form):
    return client.post("/v1/audio/transcriptions", files={"file": (name, data)},
                       data={"response_format": "verbose_json", **form})


def test_two_hours_of_silence_is_refused_at_once_and_the_server_carries_on(client_for):
    client = client_for(max_audio_s=3600)
    data = silent_flac(2 * 3600)
    assert len(data) < 2 << 20  # precondition: far under the upload cap
    started = time.perf_counter()
    response = post(client, "silence.flac", data)
    elapsed = time.perf_counter() - started
    assert response.status_code == 413, response.text
    error = response.json()["error"]
    assert error["code"] == "audio_too_long"
    assert "silence.flac" in error["message"] and "3600 s" in error["message"]
    assert elapsed < 3.0, f"{elapsed:.1f} s to refuse (decoding 2 h takes ~3 s)"
    ok = post(client, "en_short.wav", (DATA / "en_short.wav").read_bytes())
    assert ok.status_code == 200, ok.text
    assert_wer("upload tiny.en en_short after a refusal", reference("en_short"),
               ok.json()["text"], 0.2)


def test_length_found_only_by_decoding_is_refused_past_the_limit(client_for):
    """No duration in the container: refused once the decoded samples pass the limit, while
    the chunks before it were being transcribed."""
    client = client_for(max_audio_s=60, file_chunk_s=30)
    response = post(client, "stream.flac", silent_flac(600, declared=False))
    assert response.status_code == 413, response.text
    assert response.json()["error"]["code"] == "audio_too_long"
    assert "limit of 60 s" in response.json()["error"]["message"]


def test_long_upload_is_transcribed_in_chunks_on_one_timeline(client_for):
    """en_long (65.6 s) in 30 s chunks: the text of all three, times from the file's start,
    and the whole file's duration."""
    client = client_for(file_chunk_s=30)
    response = post(client, "en_long.wav", (DATA / "en_long.wav").read_bytes(), language="en")
    assert response.status_code == 200, response.text
    body = response.json()
    assert body["duration"] == pytest.approx(duration("en_long"), abs=0.01)
    assert_wer("upload in chunks tiny.en en_long", reference("en_long"), body["text"], 0.1)
    segments = body["segments"]
    assert [s["id"] for s in segments] == list(range(1, len(segments) + 1))
    assert all(a["end"] <= b["start"] + 1e-3 for a, b in zip(segments, segments[1:]))
    assert segments[-1]["end"] > body["duration"] - 2.0
