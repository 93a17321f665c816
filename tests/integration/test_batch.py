"""`whisper-service batch` in process, run as a user would run it: outputs, per-file errors,
atomic writes and resume. The Ray runner is in tests/e2e/test_batch_ray.py."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from tests.conftest import assert_wer, duration, reference
from tests.integration.test_cli import assert_one_line_error, run

pytestmark = pytest.mark.once  # not again under other arithmetic: see pyproject.toml

CLIPS = ("en_short", "en_passage")


def corrupt_wav(directory: Path) -> Path:
    """A .wav name with garbage inside: the file that must not stop the others."""
    path = directory / "corrupt.wav"
    path.write_bytes(b"RIFF\x00\x00garbage" + bytes(range(256)) * 20)
    return path


def mtimes(directory: Path) -> dict[str, int]:
    return {p.name: p.stat().st_mtime_ns for p in directory.iterdir()}


def test_outputs_errors_and_resume(tmp_path, data_dir):
    out = tmp_path / "out"
    inputs = [data_dir / f"{name}.wav" for name in CLIPS] + [corrupt_wav(tmp_path)]

    first = run("batch", *inputs, "-m", "tiny.en", "-o", out)
    assert_one_line_error(first, "corrupt.wav: not a decodable audio file",
                          "1 of 3 file(s) failed")
    assert "2 transcribed, 0 skipped (output exists), 1 failed" in first.stderr
    # Exactly the outputs: nothing for the corrupt file, no temporary file left behind.
    assert sorted(p.name for p in out.iterdir()) == ["en_passage.txt", "en_short.txt"]
    for name in CLIPS:
        assert_wer(f"batch tiny.en {name}", reference(name),
                   (out / f"{name}.txt").read_text(encoding="utf-8"), 0.15)
    done = mtimes(out)

    # A rerun skips what is done, changes no output, and tries the failed file again.
    again = run("batch", *inputs, "-m", "tiny.en", "-o", out)
    assert_one_line_error(again, "corrupt.wav: not a decodable audio file",
                          "1 of 3 file(s) failed")
    assert "0 transcribed, 2 skipped (output exists), 1 failed" in again.stderr
    assert mtimes(out) == done

    # Without the corrupt file there is nothing to do: success, and still no change.
    clean = run("batch", *inputs[:2], "-m", "tiny.en", "-o", out)
    assert clean.returncode == 0, clean.stderr
    assert "0 transcribed, 2 skipped (output exists), 0 failed" in clean.stderr
    assert mtimes(out) == done

    # A partial write from a killed run is a hidden temporary file: it never counts as done.
    text = (out / "en_short.txt").read_text(encoding="utf-8")
    (out / "en_short.txt").unlink()
    stale = out / ".en_short.txt.killed.tmp"
    stale.write_text(text[:10], encoding="utf-8")
    redo = run("batch", *inputs[:2], "-m", "tiny.en", "-o", out, "--quiet")
    assert redo.returncode == 0, redo.stderr
    assert redo.stderr == ""  # --quiet: no summary either
    assert (out / "en_short.txt").read_text(encoding="utf-8") == text
    assert (out / "en_passage.txt").stat().st_mtime_ns == done["en_passage.txt"]
    assert sorted(p.name for p in out.iterdir()) == \
        [stale.name, "en_passage.txt", "en_short.txt"]  # ours gone, the stale one not ours


def test_workers_formats_and_name_clashes(tmp_path, data_dir):
    """Two files at once on one model; two inputs that would write one output name."""
    out = tmp_path / "out"
    other = tmp_path / "other"
    other.mkdir()
    clash = other / "en_short.wav"
    clash.write_bytes((data_dir / "en_term.wav").read_bytes())
    proc = run("batch", data_dir / "en_short.wav", data_dir / "en_term.wav", clash,
               tmp_path / "missing.wav", data_dir / "en_short.wav", "-m", "tiny.en", "-o", out,
               "-f", "verbose_json", "--workers", "2")
    assert_one_line_error(proc, f"{clash}: same output name en_short.json as",
                          "missing.wav: no such file", "2 of 4 file(s) failed")
    assert sorted(p.name for p in out.iterdir()) == ["en_short.json", "en_term.json"]
    short = json.loads((out / "en_short.json").read_text(encoding="utf-8"))
    assert abs(short["duration"] - duration("en_short")) < 0.05
    assert_wer("batch tiny.en en_short workers 2", reference("en_short"), short["text"], 0.15)
    term = json.loads((out / "en_term.json").read_text(encoding="utf-8"))
    assert term["task"] == "transcribe" and len(term["segments"]) >= 2
    assert "sales team" in term["text"].lower()


def test_ray_is_optional(tmp_path, data_dir):
    """Without Ray importable, batch runs in process and `--ray` says what to install."""
    code = ("import sys; sys.modules['ray'] = None\n"
            "from whisper_service.cli import main\n"
            "main()")

    def cli(*args):
        return subprocess.run([sys.executable, "-c", code, *map(str, args)],
                              capture_output=True, text=True, timeout=180, env=os.environ)

    out = tmp_path / "out"
    assert_one_line_error(cli("batch", data_dir / "en_short.wav", "-o", out, "--ray", "auto"),
                          "pip install 'whisper-service[ray]'")
    assert not out.exists()  # refused before anything was made
    proc = cli("batch", data_dir / "en_short.wav", "-m", "tiny.en", "-o", out, "-q")
    assert proc.returncode == 0, proc.stderr
    assert "fox" in (out / "en_short.txt").read_text(encoding="utf-8").lower()


@pytest.mark.parametrize("args, needle", [
    (["--ray", "auto", "--workers", "2"], "--workers is for runs without --ray"),
    (["--ray", "127.0.0.1:1"], "--ray 127.0.0.1:1: cannot connect"),
    (["-m", "tiny.en", "--ray", "auto", "-l", "de"], "English-only"),
    (["-m", "no-such-model"], "Bundled models: tiny.en, base"),
    (["-o", "/proc/not-writable"], "/proc/not-writable"),
])
def test_usage_errors_are_one_line(tmp_path, data_dir, args, needle):
    proc = run("batch", data_dir / "en_short.wav", "-o", tmp_path / "out", *args,
               env={"HF_HUB_OFFLINE": "1"})
    assert_one_line_error(proc, needle)


def test_ray_sizing_and_failure_reasons():
    """No model, no Ray: how actors are sized, and how a failed Ray job becomes one line."""
    from whisper_service.batch import _reason, ray_sizing

    assert ray_sizing(2.0, 10, 1) == ray_sizing(2, 10, 1)
    assert (ray_sizing(2, 10, 1).actors, ray_sizing(2, 1, 1).actors) == (2, 1)
    assert (ray_sizing(16, 100, 4).actors, ray_sizing(8, 100, 3).actors) == (4, 2)
    assert ray_sizing(0, 5, 1).actors == 1  # a head without CPUs: one actor waits for a node
    remote = RuntimeError(
        "ray.exceptions.ActorDiedError: The actor died because of an error raised in its "
        "creation task\n  File \"x.py\", line 1, in __init__\n"
        "pydantic_core._pydantic_core.ValidationError: 1 validation error for Settings\n"
        "max_buffer_s\n    For further information visit https://errors.pydantic.dev/")
    assert _reason(remote) == "ValidationError: 1 validation error for Settings"
    assert _reason(RuntimeError("node lost\n\n")) == "node lost"
    assert _reason(RuntimeError()) == "RuntimeError"
