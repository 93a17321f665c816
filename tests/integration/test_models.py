"""The shared ModelManager with real weights."""

import subprocess
import sys
import textwrap
import threading

import pytest

from tests.conftest import held

pytestmark = pytest.mark.once  # not again under other arithmetic: see pyproject.toml


def test_concurrent_acquire_shares_one_instance(model_manager, tiny_en):
    got = []
    barrier = threading.Barrier(32)

    def worker():
        barrier.wait()
        with held(model_manager, "tiny.en") as loaded:
            got.append(loaded.model)

    threads = [threading.Thread(target=worker) for _ in range(32)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert len(got) == 32 and all(m is tiny_en.model for m in got)
    assert model_manager.load_counts[model_manager.key("tiny.en")] == 1
    assert model_manager.loaded[model_manager.key("tiny.en")].refs == 1  # the fixture's


def test_unload_really_frees_memory():
    """Runs in a child process so this test run still loads each model once."""
    script = textwrap.dedent("""
        import gc, psutil
        from whisper_service.engine.manager import ModelManager
        from whisper_service.config import get_settings
        rss = lambda: psutil.Process().memory_info().rss / 2**20
        m = ModelManager.from_settings(get_settings())
        before = rss()
        loaded = m.acquire("base")
        loaded.model.transcribe(__import__("numpy").zeros(16000, "float32"))
        m.release(loaded)
        loaded_rss = rss()
        assert m.unload("base")
        print(before, loaded_rss, rss())
    """)
    out = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True,
                         timeout=120)
    assert out.returncode == 0, out.stderr
    before, loaded, after = map(float, out.stdout.split())
    assert loaded - before > 100, (before, loaded, after)  # base int8 is ~145 MB of weights
    assert loaded - after > 100, (before, loaded, after)
