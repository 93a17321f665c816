"""The live page in a real headless Chromium against a real `whisper-service serve`.

Chromium's fake capture device plays a WAV file (looped) as the microphone, so the whole path
getUserMedia -> AudioWorklet -> 16 kHz PCM over /v1/stream -> finals in the DOM is exercised.
"""

from __future__ import annotations

import json
import re
import shutil
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import pytest

from tests.conftest import DATA, assert_wer, duration, read_wav, reference, write_wav

pytestmark = pytest.mark.once  # not again under other arithmetic: see pyproject.toml

sync_api = pytest.importorskip("playwright.sync_api")

CHROMIUM = "/usr/bin/chromium"
ARTIFACTS = Path(__file__).parent / "artifacts"
FAKE_RATE = 48000
EXPECTED_WORDS = ("quick", "lazy", "dog", "sister", "window", "morning")
FINALS_TIMEOUT_MS = 40_000
LOOP_S = 0.25 + duration("en_short") + 1.25  # the fake microphone's loop (see below)


def _fake_mic_wav(path: Path) -> Path:
    """tests/data/en_short.wav at 48 kHz (Chromium's fake capture is safest at 44.1/48 kHz),
    with silence around the speech so the server's VAD closes the utterance each loop."""
    speech = read_wav(DATA / "en_short.wav")
    n_out = int(round(len(speech) * FAKE_RATE / 16000))
    t_out = np.arange(n_out) * (16000 / FAKE_RATE)
    up = np.interp(t_out, np.arange(len(speech)), speech)
    audio = np.concatenate([np.zeros(FAKE_RATE // 4), up, np.zeros(FAKE_RATE * 5 // 4)])
    return write_wav(path, audio, FAKE_RATE)


@pytest.fixture(scope="module")
def browser(tmp_path_factory):
    if not Path(CHROMIUM).exists() or shutil.which(CHROMIUM) is None:
        pytest.skip(f"{CHROMIUM} missing: apt-get install chromium (make test does this)")
    wav = _fake_mic_wav(tmp_path_factory.mktemp("fake-mic") / "mic.wav")
    with sync_api.sync_playwright() as p:
        browser = p.chromium.launch(
            executable_path=CHROMIUM,
            headless=True,
            args=[
                "--use-fake-ui-for-media-stream",
                "--use-fake-device-for-media-stream",
                f"--use-file-for-fake-audio-capture={wav}",
                "--no-sandbox",
                "--disable-gpu",
                "--disable-background-networking",
                "--disable-component-update",
                "--no-first-run",
                "--disable-quic",
                "--disable-sync",
                "--autoplay-policy=no-user-gesture-required",
            ],
        )
        yield browser
        browser.close()


@pytest.fixture
def page_errors() -> list[str]:
    return []


@pytest.fixture
def page(browser, live_server, page_errors):
    context = browser.new_context(viewport={"width": 1000, "height": 1100})
    context.grant_permissions(["microphone"], origin=live_server)
    page = context.new_page()
    page.set_default_timeout(15_000)
    # Uncaught exceptions on the page fail the test (checked at the end of each test).
    page.on("pageerror", lambda exc: page_errors.append(str(exc)))
    page.goto(f"{live_server}/")
    # The model list comes from GET /v1/models; wait until the server's list replaced the
    # built-in fallback (the server's labels mention whether a model is loaded).
    page.wait_for_function(
        "() => [...document.querySelectorAll('#model option')]"
        ".some(o => o.value === 'tiny.en' && o.textContent.includes('English-only'))")
    page.select_option("#model", "tiny.en")
    yield page
    context.close()


def _found_words(text: str) -> set[str]:
    words = set(re.findall(r"[a-z]+", text.lower()))
    return {w for w in EXPECTED_WORDS if w in words}


@dataclass
class Recording:
    """What the page sent and heard in one live session, from the WebSocket's frames."""

    configs: list[dict] = field(default_factory=list)
    audio_bytes: int = 0  # binary frames sent (the audio, header and all)
    messages: list[dict] = field(default_factory=list)  # from the server
    done_seconds: float = 0.0  # audio the server decoded
    listener: object = None  # the page's "websocket" handler that fills this in

    def first_loop_finals(self) -> str:
        """The finals of the fake microphone's first pass over the clip."""
        return " ".join(m["text"] for m in self.messages
                        if m["type"] == "final" and m["start"] < LOOP_S)

    @property
    def bytes_per_second(self) -> float:
        return self.audio_bytes / self.done_seconds


def _record(page, choice: str) -> Recording:
    """Start the live page with `choice` as the audio sent and wait until the clip's first
    pass is final and decoded whole (an utterance ends past 7 s: the speech ends at 8.1 s).
    The caller checks the DOM, then calls `_stop`."""
    rec = Recording()

    def on_websocket(ws):
        def sent(payload):
            if isinstance(payload, (bytes, bytearray)):
                rec.audio_bytes += len(payload)
            elif json.loads(payload).get("type") == "config":
                rec.configs.append(json.loads(payload))

        def received(payload):
            if isinstance(payload, str):
                rec.messages.append(json.loads(payload))
        ws.on("framesent", sent)
        ws.on("framereceived", received)

    page.on("websocket", on_websocket)
    rec.listener = on_websocket
    expect = sync_api.expect
    expect(page.locator("#stop")).to_be_disabled()
    page.select_option("#encoding", choice)
    page.click("#start")
    expect(page.locator("#stop")).to_be_enabled()
    expect(page.locator("#status")).to_have_text(re.compile(r"^Listening: tiny\.en"),
                                                 timeout=30_000)
    page.wait_for_function(
        "() => [...document.querySelectorAll('#transcript .utterance')]"
        ".some(e => Number(e.dataset.end) > 7)", timeout=FINALS_TIMEOUT_MS)
    return rec


def _stop(page, rec: Recording) -> None:
    expect = sync_api.expect
    page.click("#stop")
    status = page.locator("#status")
    expect(status).to_have_text(re.compile(r"^Done: \d+\.\d s of audio, \d+ segments?\."),
                                timeout=20_000)
    expect(status).to_have_attribute("data-kind", "ok")
    expect(page.locator("#start")).to_be_enabled()
    expect(page.locator("#stop")).to_be_disabled()
    expect(page.locator("#model")).to_be_enabled()
    expect(page.locator("#encoding")).to_be_enabled()
    page.remove_listener("websocket", rec.listener)  # the next session is another recording
    rec.done_seconds = float(re.search(r"Done: ([\d.]+) s", status.text_content()).group(1))
    assert rec.done_seconds >= 3.0, f"server saw only {rec.done_seconds} s of audio"
    assert [m["type"] for m in rec.messages].count("done") == 1
    assert not [m for m in rec.messages if m["type"] == "error"], rec.messages
    # The page's own figure is what the frames carried (its last update may miss the end).
    shown = page.locator("#rate")
    expect(shown).to_have_text(re.compile(r"^(PCM|Opus) · \d+\.\d kB/s$"))
    assert 0 < int(shown.get_attribute("data-bytes")) <= rec.audio_bytes


FIRST_LOOP: dict[str, str] = {}  # encoding -> the first pass's finals, for the Opus run


def test_live_microphone_transcription(page, page_errors):
    rec = _record(page, "pcm")
    finals = page.locator("#transcript .final, #transcript .utterance").all_text_contents()
    found = _found_words(" ".join(finals))
    assert len(found) >= 2, f"expected at least two of {EXPECTED_WORDS} in finals {finals}"
    assert not page.locator("#transcript").evaluate("e => e.classList.contains('is-empty')")

    # The partial (unconfirmed) text must look different from the confirmed finals.
    style = "e => { const s = getComputedStyle(e); return [s.color, s.fontStyle]; }"
    partial_style = page.locator("#partial").evaluate(style)
    final_style = page.locator("#transcript .final, #transcript .utterance").first.evaluate(style)
    assert partial_style != final_style, f"partial {partial_style} looks like final {final_style}"

    # Each utterance replaced the finals of its span (the fake microphone pauses between
    # loops, so the VAD ends utterances): none of those finals is left, and the utterance's
    # words were heard.
    shown = page.evaluate("""() => [...document.querySelectorAll('#transcript > span')]
        .filter(e => e.id !== 'partial')
        .map(e => ({kind: e.className, text: e.textContent, start: e.dataset.start,
                    end: e.dataset.end}))""")
    utterances = [e for e in shown if e["kind"] == "utterance"]
    spans = [(float(e["start"]), float(e["end"])) for e in utterances]
    for e in shown:
        if e["kind"] == "final":
            start, end = float(e["start"]), float(e["end"])
            assert not any(a - 0.001 <= start and end <= b + 0.001 for a, b in spans), (e, spans)
    assert _found_words(" ".join(e["text"] for e in utterances)), utterances

    _stop(page, rec)
    assert len(rec.configs) == 1, rec.configs
    config = rec.configs[0]
    assert config["model"] == "tiny.en"
    assert config["sample_rate"] == 16000 and config["encoding"] == "pcm_s16le"
    # 16 kHz Int16 mono: the bytes sent must match the audio the server counted (±0.5 s).
    assert abs(rec.audio_bytes / 32000 - rec.done_seconds) < 0.5, (rec.audio_bytes,
                                                                   rec.done_seconds)
    assert_wer("browser pcm tiny.en en_short", reference("en_short"), rec.first_loop_finals(),
               0.2)
    FIRST_LOOP["pcm"] = rec.first_loop_finals()
    print(f"\nPCM: {rec.audio_bytes} bytes for {rec.done_seconds} s of audio, "
          f"{rec.bytes_per_second:.0f} B/s")
    assert page_errors == [], page_errors

    ARTIFACTS.mkdir(parents=True, exist_ok=True)
    page.screenshot(path=str(ARTIFACTS / "live.png"), full_page=True)


def test_live_microphone_opus_matches_pcm(page, page_errors):
    """The default where the browser records Opus: MediaRecorder's WebM chunks, a tenth of
    the PCM bytes or less, and the same first pass of finals as PCM, within the margin."""
    assert page.locator("#encoding").input_value() == "opus"  # the default in Chromium
    rec = _record(page, "opus")
    _stop(page, rec)
    assert [(c["encoding"], "sample_rate" in c) for c in rec.configs] == [("webm_opus", False)]
    expect_text = re.compile(r"^Opus · \d+\.\d kB/s$")
    sync_api.expect(page.locator("#rate")).to_have_text(expect_text)
    print(f"\nOpus: {rec.audio_bytes} bytes for {rec.done_seconds} s of audio, "
          f"{rec.bytes_per_second:.0f} B/s")
    # PCM is 32000 B/s; Opus at 24 kb/s came to 2.7 kB/s (WebM framing included), 12x less.
    assert rec.bytes_per_second < 32000 / 7, rec.bytes_per_second
    # Observed: WER 0.053 against the reference and against PCM's 0.0: the clip's first "The"
    # is lost. Chromium's gain control lifts the fake microphone by ~9 dB into clipping in both
    # modes; its Opus recording of that is what tiny.en hears without the word (with
    # autoGainControl off, the same recording is transcribed whole).
    opus = rec.first_loop_finals()
    assert_wer("browser opus tiny.en en_short", reference("en_short"), opus, 0.2)
    if "pcm" not in FIRST_LOOP:  # this test alone: the PCM pass on the same page first
        pcm = _record(page, "pcm")
        _stop(page, pcm)
        FIRST_LOOP["pcm"] = pcm.first_loop_finals()
    assert_wer("browser opus vs pcm tiny.en en_short", FIRST_LOOP["pcm"], opus, 0.2)
    assert page_errors == [], page_errors


def test_file_upload_srt(page, page_errors):
    srt = pytest.importorskip("srt")
    expect = sync_api.expect
    result = page.locator("#file-result")
    download = page.locator("#download")
    expect(download).to_be_hidden()

    page.set_input_files("#file", str(DATA / "en_short.wav"))
    page.select_option("#format", "srt")
    page.click("#upload")

    expect(result).to_contain_text("-->", timeout=30_000)
    expect(result).to_contain_text(re.compile("lazy", re.IGNORECASE))
    expect(page.locator("#status")).to_have_text(re.compile(r"^en_short\.wav: done in"))
    expect(page.locator("#status")).to_have_attribute("data-kind", "ok")
    expect(page.locator("#upload")).to_be_enabled()

    subtitles = list(srt.parse(result.text_content()))
    assert subtitles, "no subtitles parsed"
    assert all(s.start < s.end for s in subtitles)
    assert subtitles[-1].end.total_seconds() <= 7.5  # the clip is 6.7 s long
    assert len(_found_words(" ".join(s.content for s in subtitles))) >= 3

    expect(download).to_be_visible()
    name = download.get_attribute("download")
    assert name == "en_short.srt"
    href = download.get_attribute("href")
    assert href and href.startswith("blob:")
    # The download link carries the same text that is shown.
    blob_text = page.evaluate("async (u) => (await fetch(u)).text()", href)
    assert blob_text.strip() == result.text_content().strip()
    assert page_errors == [], page_errors
