"""`whisper-service batch --ray` on a local Ray cluster against the same batch in process.

One cluster for the module (`ray.init(num_cpus=2)` here, in the test process); the CLI
connects to it by address, as it would to a real cluster, and its actors load their own
models (so the test process's one-load-per-model budget is untouched).
"""

from __future__ import annotations

import json
import time

import pytest

from tests.conftest import assert_wer, reference
from tests.integration.test_batch import corrupt_wav, mtimes
from tests.integration.test_cli import assert_one_line_error, run

pytestmark = pytest.mark.once  # not again under other arithmetic: see pyproject.toml

CLIPS = ("en_short", "en_term")


@pytest.fixture(scope="module")
def ray_address():
    import ray  # in the test extra: a missing Ray is a broken install, not a skip
    ray.init(num_cpus=2, include_dashboard=False, log_to_driver=False,
             configure_logging=False)
    try:
        yield ray.get_runtime_context().gcs_address
    finally:
        ray.shutdown()


def test_ray_equals_in_process_and_resumes(tmp_path, data_dir, ray_address):
    inputs = [data_dir / f"{name}.wav" for name in CLIPS] + [corrupt_wav(tmp_path)]
    local, on_ray = tmp_path / "local", tmp_path / "ray"

    in_process = run("batch", *inputs, "-m", "tiny.en", "-f", "verbose_json", "-o", local)
    distributed = run("batch", *inputs, "-m", "tiny.en", "-f", "verbose_json", "-o", on_ray,
                      "--ray", ray_address, timeout=300)
    for proc in (in_process, distributed):
        assert_one_line_error(proc, "corrupt.wav: not a decodable audio file",
                              "1 of 3 file(s) failed")
        assert "2 transcribed, 0 skipped (output exists), 1 failed" in proc.stderr
    assert "Ray cluster with 2 CPU(s): 2 actor(s) x 1 thread(s), 3 file(s) to do" \
        in distributed.stderr

    # Byte for byte the same outputs (text, times, tokens, probabilities), and nothing else.
    names = sorted(f"{name}.json" for name in CLIPS)
    assert sorted(p.name for p in on_ray.iterdir()) == names
    for name in names:
        assert (on_ray / name).read_bytes() == (local / name).read_bytes(), name
    assert_wer("batch ray tiny.en en_short", reference("en_short"),
               json.loads((on_ray / "en_short.json").read_text(encoding="utf-8"))["text"], 0.15)

    # A rerun of the finished files does nothing: Ray is not even contacted.
    done = mtimes(on_ray)
    started = time.monotonic()
    again = run("batch", *inputs[:-1], "-m", "tiny.en", "-f", "verbose_json", "-o", on_ray,
                "--ray", ray_address)
    assert again.returncode == 0, again.stderr
    assert "0 transcribed, 2 skipped (output exists), 0 failed" in again.stderr
    assert "Ray cluster" not in again.stderr
    assert mtimes(on_ray) == done
    assert time.monotonic() - started < 30

    # An output lost (as if the run had stopped before writing it) is made again, and only
    # that one; the corrupt file is tried and reported again.
    (on_ray / "en_term.json").unlink()
    resumed = run("batch", *inputs, "-m", "tiny.en", "-f", "verbose_json", "-o", on_ray,
                  "--ray", ray_address, timeout=300)
    assert_one_line_error(resumed, "corrupt.wav", "1 of 3 file(s) failed")
    assert "2 file(s) to do" in resumed.stderr
    assert "1 transcribed, 1 skipped (output exists), 1 failed" in resumed.stderr
    assert (on_ray / "en_term.json").read_bytes() == (local / "en_term.json").read_bytes()
    assert {k: v for k, v in mtimes(on_ray).items() if k != "en_term.json"} == \
        {k: v for k, v in done.items() if k != "en_term.json"}
    assert sorted(p.name for p in on_ray.iterdir()) == names

