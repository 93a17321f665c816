"""The installed console script, run as a user would run it."""

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import srt
import webvtt

from tests.conftest import duration, write_wav

pytestmark = pytest.mark.once  # not again under other arithmetic: see pyproject.toml

EXE = shutil.which("whisper-service") or str(Path(sys.executable).parent / "whisper-service")


def run(*args, timeout=180, env=None):
    return subprocess.run([EXE, *map(str, args)], capture_output=True, text=True, timeout=timeout,
                          env={**os.environ, **(env or {})})


def assert_one_line_error(proc, *needles):
    assert proc.returncode != 0
    assert "Traceback" not in proc.stderr
    lines = [line for line in proc.stderr.splitlines() if line.startswith("Error:")]
    assert lines, proc.stderr
    for needle in needles:
        assert any(needle in line for line in lines), proc.stderr


def test_subtitles_and_json_files(tmp_path, data_dir):
    out = tmp_path / "out"
    for fmt in ("srt", "vtt", "json", "verbose_json", "txt"):
        proc = run("transcribe", data_dir / "en_passage.wav", "-m", "base", "-l", "en",
                   "-f", fmt, "-o", out, "--word-timestamps", "--quiet")
        assert proc.returncode == 0, proc.stderr
        if fmt == "srt":
            subs = list(srt.parse((out / "en_passage.srt").read_text(), ignore_errors=False))
            assert len(subs) >= 2
            assert all(a.end <= b.start for a, b in zip(subs, subs[1:]))
            assert "speech" in subs[0].content.lower()
        elif fmt == "vtt":
            captions = webvtt.read(str(out / "en_passage.vtt"))
            assert len(captions) >= 2 and captions[0].text
        elif fmt in ("json", "verbose_json"):
            data = json.loads((out / "en_passage.json").read_text())
            assert data["language"] == "en"
            assert abs(data["duration"] - duration("en_passage")) < 0.05
            assert data["segments"] and "words" in data["segments"][0]
        else:
            assert "written text" in (out / "en_passage.txt").read_text().lower()


def test_bad_files_do_not_stop_good_ones(tmp_path, data_dir):
    empty = tmp_path / "empty.wav"
    empty.write_bytes(b"")
    junk = tmp_path / "junk.ogg"
    junk.write_bytes(b"\x00\x01garbage" * 100)
    out = tmp_path / "out"
    proc = run("transcribe", tmp_path / "missing.wav", tmp_path, empty, junk,
               data_dir / "en_short.wav", "-m", "tiny.en", "-o", out)
    assert_one_line_error(proc, "missing.wav: no such file", "is a directory",
                          "empty.wav: file is empty", "junk.ogg: not a decodable audio file",
                          "4 of 5 file(s) failed")
    assert "fox" in (out / "en_short.txt").read_text().lower()


def test_stdout_and_translate(data_dir):
    proc = run("transcribe", data_dir / "es_short.wav", "--task", "translate", "-m", "base")
    assert proc.returncode == 0, proc.stderr
    assert "madrid" in proc.stdout.lower()


@pytest.mark.parametrize("args, needle", [
    (["-m", "no-such-model"], "Bundled models: tiny.en, base"),
    (["-m", "large-v3"], "not reachable"),
    (["-l", "xx"], "unsupported language code 'xx'"),
    (["-m", "tiny.en", "-l", "de"], "English-only"),
    (["-o", "/proc/not-writable"], "/proc/not-writable"),
])
def test_usage_errors_are_one_line(data_dir, args, needle):
    # Offline mode makes the hub unreachable whatever network this machine has.
    proc = run("transcribe", data_dir / "en_short.wav", *args, env={"HF_HUB_OFFLINE": "1"})
    assert_one_line_error(proc, needle)


def test_zero_length_audio(tmp_path):
    path = write_wav(tmp_path / "zero.wav")
    assert_one_line_error(run("transcribe", path, "-m", "tiny.en"), "zero.wav")


def test_models_lists_bundled():
    proc = run("models")
    assert proc.returncode == 0
    lines = proc.stdout.splitlines()
    assert any(line.startswith("tiny.en") and "English-only" in line for line in lines)
    assert any(line.startswith("base") and "multilingual" in line and "MB" in line
               for line in lines)


@pytest.mark.parametrize("env, args, needle", [
    ({"WHISPER_SERVICE_MAX_BUFFER_S": "40"}, ["serve"], "WHISPER_SERVICE_MAX_BUFFER_S"),
    ({"WHISPER_SERVICE_MIN_CHUNK_S": "0.05"}, ["models"], "WHISPER_SERVICE_MIN_CHUNK_S"),
    ({}, ["serve", "--port", "70000"], "--port"),
    ({}, ["stream", "x.wav", "--min-chunk", "0.01"], "--min-chunk"),
])
def test_invalid_settings_stop_at_start_in_one_line(env, args, needle):
    proc = run(*args, env=env, timeout=60)
    assert_one_line_error(proc, needle)
