"""ModelManager bookkeeping with a stand-in loader (no weights): threads, refs, eviction."""

import os
import threading
import time
from types import SimpleNamespace

import pytest
from faster_whisper.feature_extractor import FeatureExtractor

from tests.conftest import held
from whisper_service import registry
from whisper_service.config import Settings
from whisper_service.engine import model as models
from whisper_service.engine.features import BoundedFeatureExtractor
from whisper_service.engine.manager import ModelInUseError, ModelManager


class FakeWeights:
    def __init__(self):
        self.unloaded = False
        self.is_multilingual = False

    def unload_model(self):
        self.unloaded = True


@pytest.fixture
def manager(monkeypatch, tmp_path):
    monkeypatch.setattr(registry, "resolve", lambda name, cache: tmp_path / name)

    def slow_load(self, path):
        time.sleep(0.05)  # wide window for racing threads
        return SimpleNamespace(model=FakeWeights(), path=path)

    monkeypatch.setattr(ModelManager, "_load", slow_load)
    return ModelManager(cache_dir=tmp_path)


def test_32_threads_cause_one_load(manager):
    barrier = threading.Barrier(32)
    results = []

    def worker():
        barrier.wait()
        results.append(manager.acquire("tiny.en"))

    threads = [threading.Thread(target=worker) for _ in range(32)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert len(results) == 32
    assert len({id(r.model) for r in results}) == 1
    assert manager.load_counts[manager.key("tiny.en")] == 1
    assert manager.loaded[manager.key("tiny.en")].refs == 32


def test_different_models_load_separately(manager):
    a, b = manager.get("tiny.en"), manager.get("base")
    assert a.model is not b.model
    assert set(k.name for k in manager.loaded) == {"tiny.en", "base"}
    with pytest.raises(TypeError):
        manager.loaded[manager.key("x")] = a  # read-only view


def test_unload_refuses_while_in_use_then_frees(manager):
    with held(manager, "base") as loaded:
        weights = loaded.model.model
        with pytest.raises(ModelInUseError, match="in use"):
            manager.unload("base")
    assert manager.unload("base") is True
    assert weights.unloaded
    assert manager.key("base") not in manager.loaded
    assert manager.unload("base") is False
    manager.get("base")
    assert manager.load_counts[manager.key("base")] == 2


def test_release_without_acquire_is_an_error(manager):
    loaded = manager.get("base")
    with pytest.raises(RuntimeError, match="without a matching acquire"):
        manager.release(loaded)


def test_idle_ttl_evicts_only_unheld(manager):
    manager.idle_ttl_s = 10
    held = manager.acquire("tiny.en")
    manager.get("base")
    evicted = manager.evict_idle(now=time.monotonic() + 11)
    assert evicted == ["base"]
    assert manager.key("tiny.en") in manager.loaded
    manager.release(held)
    assert manager.evict_idle(now=time.monotonic() + 11) == ["tiny.en"]


def test_cap_evicts_least_recently_used(manager):
    manager.max_loaded = 2
    manager.get("a")
    manager.get("b")
    manager.get("a")  # b is now least recently used
    manager.get("c")
    assert {k.name for k in manager.loaded} == {"a", "c"}
    with held(manager, "a"), held(manager, "c"):
        with pytest.raises(ModelInUseError, match="in use"):
            manager.get("d")


def test_stats_shape(manager):
    with held(manager, "tiny.en"):
        stats = manager.stats()
    assert stats["device"] == "cpu" and stats["compute_type"] == "int8"
    assert stats["loaded"]["tiny.en"]["refs"] == 1
    assert stats["load_counts"] == {"tiny.en": 1}


def test_device_and_compute_type_pass_through(monkeypatch, tmp_path):
    seen = {}

    class Recorder:
        def __init__(self, path, **kwargs):
            seen.update(kwargs, path=path)
            self.feature_extractor = FeatureExtractor(feature_size=128)

    monkeypatch.setattr(registry, "resolve", lambda name, cache: tmp_path)
    monkeypatch.setitem(__import__("sys").modules, "faster_whisper",
                        SimpleNamespace(WhisperModel=Recorder))
    manager = ModelManager(device="cuda", compute_type="float16", cpu_threads=3, num_workers=4,
                           cache_dir=tmp_path)
    manager.get("base")
    assert seen == {"path": str(tmp_path), "device": "cuda", "compute_type": "float16",
                    "cpu_threads": 3, "num_workers": 4}
    assert models.ModelKey("base", "cuda", "float16") in manager.loaded
    # Features in bounded memory, with the model's own mel count (large-v3 has 128).
    extractor = manager.get("base").model.feature_extractor
    assert type(extractor) is BoundedFeatureExtractor and extractor.mel_filters.shape[0] == 128


CORES = len(os.sched_getaffinity(0))


@pytest.mark.parametrize("workers, threads, concurrent, files, expected", [
    (0, 0, False, "sequential", (1, 0)),  # the CLI, files in a chain: one decode, every core
    (0, 0, False, "batched", (CORES, 1 if CORES > 1 else 0)),  # batches side by side
    (0, 0, True, "sequential", (CORES, 1 if CORES > 1 else 0)),  # the server: one per core
    (3, 0, False, "sequential", (3, 1)),
    (0, 4, True, "batched", (CORES, 4)),
    (1, 0, True, "batched", (1, 0)),
])
def test_workers_and_threads_from_settings(workers, threads, concurrent, files, expected,
                                           tmp_path):
    settings = Settings(num_workers=workers, cpu_threads=threads, cache_dir=tmp_path,
                        file_decoding=files)
    m = ModelManager.from_settings(settings, concurrent=concurrent)
    assert (m.num_workers, m.cpu_threads) == expected


@pytest.mark.parametrize("batching, max_batch", [(True, 8), (False, None)])
def test_batching_settings_give_each_model_one_scheduler(monkeypatch, tmp_path, batching,
                                                         max_batch):
    monkeypatch.setattr(registry, "resolve", lambda name, cache: tmp_path / name)
    monkeypatch.setattr(ModelManager, "_load",
                        lambda self, path: SimpleNamespace(model=FakeWeights(), path=path))
    settings = Settings(batching=batching, max_batch_size=8, batch_wait_ms=5,
                        window_pad_s=12, batch_beam_size=2, cache_dir=tmp_path)
    m = ModelManager.from_settings(settings, concurrent=True)
    loaded = m.get("tiny.en")
    assert loaded.window_pad_s == 12 and loaded.batch_beam_size == 2
    scheduler = loaded.scheduler
    assert (scheduler.max_batch if scheduler else None) == max_batch
    assert m.get("tiny.en").scheduler is scheduler  # shared, like the model
    if scheduler:
        assert scheduler.max_wait_s == 0.005
        m.unload("tiny.en")
        with pytest.raises(RuntimeError, match="unloaded"):
            scheduler.submit(SimpleNamespace(key=1))
