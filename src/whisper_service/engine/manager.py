"""ModelManager: one shared WhisperModel per (name, device, compute type) per process.

Sessions never load models; they acquire a shared instance and release it. Reference counts
keep eviction (idle TTL, a cap on loaded models) and `unload` from pulling weights out from
under a session that still uses them.
"""

from __future__ import annotations

import gc
import os
import threading
import time
from collections.abc import Mapping
from functools import partial
from pathlib import Path
from types import MappingProxyType
from typing import TYPE_CHECKING, Any

from .. import memory, registry
from ..config import Settings, get_settings
from ..context import WHISPER_MAX_PROMPT_TOKENS, init_context
from .features import BoundedFeatureExtractor
from .model import LoadedModel, ModelKey
from .scheduler import BatchScheduler
from .windows import Window, decode_windows, full_window_batch

if TYPE_CHECKING:
    from faster_whisper import WhisperModel

    from ..context import RollingContext


class ModelInUseError(RuntimeError):
    """Unloading or evicting a model that sessions still hold."""


class ModelManager:
    """Loads each model once, even when many threads ask at the same moment, and shares it."""

    def __init__(
        self,
        *,
        device: str = "cpu",
        compute_type: str = "int8",
        cpu_threads: int = 0,
        num_workers: int = 1,
        cache_dir: Path | None = None,
        max_loaded: int = 0,
        idle_ttl_s: float = 0.0,
        window_pad_s: float = 30.0,
        max_batch: int = 1,
        batch_wait_s: float = 0.0,
        batch_beam_size: int = 0,
    ) -> None:
        self.device, self.compute_type = device, compute_type
        self.cpu_threads, self.num_workers = cpu_threads, num_workers
        self.cache_dir = cache_dir or get_settings().cache_dir
        self.max_loaded, self.idle_ttl_s = max_loaded, idle_ttl_s
        self.window_pad_s, self.max_batch, self.batch_wait_s = \
            window_pad_s, max_batch, batch_wait_s
        self.batch_beam_size = batch_beam_size
        self._lock = threading.Lock()
        self._load_locks: dict[ModelKey, threading.Lock] = {}
        self._loaded: dict[ModelKey, LoadedModel] = {}
        self._load_counts: dict[ModelKey, int] = {}

    @classmethod
    def from_settings(cls, settings: Settings, concurrent: bool = False) -> ModelManager:
        """`concurrent`: many requests at once (the server). Then each core gets a worker of
        one thread: two streams on two cores ran as fast as one, where one worker with two
        threads made them take turns (bench/server.py). So does a batched file
        (`file_decoding`), whose batches then run side by side (bench/transcribe.py). One
        file decoded sequentially runs fastest on one worker with CTranslate2's default
        threads."""
        parallel = concurrent or settings.file_decoding == "batched"
        workers = settings.num_workers or (
            cpu_cores() if parallel and settings.device == "cpu" else 1)
        return cls(
            device=settings.device,
            compute_type=settings.compute_type,
            cpu_threads=settings.cpu_threads or (1 if workers > 1 else 0),
            num_workers=workers,
            cache_dir=settings.cache_dir,
            max_loaded=settings.max_loaded_models,
            idle_ttl_s=settings.model_idle_ttl_s,
            window_pad_s=settings.window_pad_s,
            max_batch=settings.max_batch_size if settings.batching else 1,
            batch_wait_s=settings.batch_wait_ms / 1000,
            batch_beam_size=settings.batch_beam_size,
        )

    def key(self, name: str) -> ModelKey:
        return ModelKey(name, self.device, self.compute_type)

    @property
    def loaded(self) -> Mapping[ModelKey, LoadedModel]:
        """Read-only view of what is loaded right now."""
        return MappingProxyType(self._loaded)

    @property
    def load_counts(self) -> Mapping[ModelKey, int]:
        """How many times each model was loaded in this process (1 unless unloaded and reloaded)."""
        return MappingProxyType(self._load_counts)

    def get(self, name: str) -> LoadedModel:
        """Return the shared model, loading it on first use. Does not take a reference."""
        key = self.key(name)
        with self._lock:
            loaded = self._loaded.get(key)
            if loaded is not None:
                loaded.last_used = time.monotonic()
                return loaded
            load_lock = self._load_locks.setdefault(key, threading.Lock())
        with load_lock:  # one loader per key; other keys load in parallel
            with self._lock:
                if key in self._loaded:
                    return self._loaded[key]
            path = registry.resolve(name, self.cache_dir)
            self.evict_idle()
            self._make_room()
            started = time.perf_counter()
            model = self._load(path)
            loaded = LoadedModel(key, model, path, time.perf_counter() - started,
                                 threading.Semaphore(self.num_workers), self.window_pad_s,
                                 self.batch_beam_size)
            if self.max_batch > 1:
                loaded.scheduler = BatchScheduler(
                    partial(decode_windows, loaded), key=lambda window: window.key,
                    slots=loaded.slots, workers=self.num_workers, max_batch=self.max_batch,
                    max_wait_s=self.batch_wait_s, name=f"decode-{name}",
                    limit=partial(Window.batch_limit, max_batch=self.max_batch,
                                  pad_s=self.window_pad_s,
                                  full_max=full_window_batch(_weights_bytes(path))))
            with self._lock:
                self._loaded[key] = loaded
                self._load_counts[key] = self._load_counts.get(key, 0) + 1
            return loaded

    def acquire(self, name: str) -> LoadedModel:
        """Take a reference: the model cannot be unloaded or evicted until it is released."""
        while True:
            loaded = self.get(name)
            with self._lock:
                if self._loaded.get(loaded.key) is loaded:  # not unloaded in between
                    loaded.refs += 1
                    loaded.last_used = time.monotonic()
                    return loaded

    def release(self, loaded: LoadedModel) -> None:
        with self._lock:
            if loaded.refs <= 0:
                raise RuntimeError(f"release of {loaded.key.name} without a matching acquire")
            loaded.refs -= 1
            loaded.last_used = time.monotonic()

    def unload(self, name: str) -> bool:
        """Free a model's weights now. Returns False if it was not loaded."""
        key = self.key(name)
        with self._lock:
            loaded = self._loaded.get(key)
            if loaded is None:
                return False
            if loaded.refs:
                raise ModelInUseError(f"model {name!r} is in use by {loaded.refs} session(s)")
            del self._loaded[key]
        self._free(loaded)
        return True

    def evict_idle(self, now: float | None = None) -> list[str]:
        """Unload models nobody holds that have been idle longer than the TTL."""
        if not self.idle_ttl_s:
            return []
        now = time.monotonic() if now is None else now
        with self._lock:
            stale = [m for m in self._loaded.values()
                     if not m.refs and now - m.last_used >= self.idle_ttl_s]
            for m in stale:
                del self._loaded[m.key]
        for m in stale:
            self._free(m)
        return [m.key.name for m in stale]

    def init_context(self, name: str, static_prompt: str = "",
                     max_context_tokens: int = WHISPER_MAX_PROMPT_TOKENS) -> RollingContext:
        """A fresh per-session rolling context that uses this model's tokenizer."""
        return init_context(self.get(name).model.hf_tokenizer, static_prompt, max_context_tokens)

    def stats(self) -> dict[str, Any]:
        with self._lock:
            return {
                "device": self.device,
                "compute_type": self.compute_type,
                "loaded": {
                    k.name: {"load_seconds": round(m.load_seconds, 3), "refs": m.refs,
                             "multilingual": m.multilingual, "path": str(m.path)}
                    for k, m in self._loaded.items()
                },
                "load_counts": {k.name: n for k, n in self.load_counts.items()},
            }

    def close(self) -> None:
        """Unload everything (refs are ignored: the process is going away)."""
        with self._lock:
            models = list(self._loaded.values())
            self._loaded.clear()
        for m in models:
            self._free(m)

    def _load(self, path: Path) -> WhisperModel:
        from faster_whisper import WhisperModel

        model = WhisperModel(str(path), device=self.device, compute_type=self.compute_type,
                             cpu_threads=self.cpu_threads, num_workers=self.num_workers)
        model.feature_extractor = BoundedFeatureExtractor.like(model.feature_extractor)
        return model

    def _make_room(self) -> None:
        """Under a cap, evict the least recently used model that nobody holds."""
        if not self.max_loaded:
            return
        with self._lock:
            if len(self._loaded) < self.max_loaded:
                return
            idle = sorted((m for m in self._loaded.values() if not m.refs),
                          key=lambda m: m.last_used)
            if not idle:
                raise ModelInUseError(
                    f"all {len(self._loaded)} loaded models are in use (max_loaded_models)")
            victim = idle[0]
            del self._loaded[victim.key]
        self._free(victim)

    @staticmethod
    def _free(loaded: LoadedModel) -> None:
        if loaded.scheduler is not None:
            loaded.scheduler.close()
        loaded.model.model.unload_model()
        del loaded.model
        gc.collect()
        memory.trim()


def cpu_cores() -> int:
    """Cores this process may run on (its affinity mask where the OS has one)."""
    affinity = getattr(os, "sched_getaffinity", None)
    return len(affinity(0)) if affinity else os.cpu_count() or 1


def _weights_bytes(path: Path) -> int:
    """The size of a CTranslate2 model directory's weights (0 if it has none to measure)."""
    weights = Path(path) / "model.bin"
    return weights.stat().st_size if weights.is_file() else 0
