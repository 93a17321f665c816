"""Prometheus metrics on a registry of the app's own (several apps can live in one process)."""

from __future__ import annotations

import asyncio
import threading

from prometheus_client import (
    CollectorRegistry,
    Counter,
    Gauge,
    Histogram,
    ProcessCollector,
    generate_latest,
)
from prometheus_client.core import (
    CounterMetricFamily,
    GaugeMetricFamily,
    HistogramMetricFamily,
)

from .engine.manager import ModelManager

BATCH_BUCKETS = (1, 2, 4, 8, 16, 32, 64)


class _ModelCollector:
    """Reads load counts and batch schedulers at scrape time, so the two never disagree."""

    def __init__(self, manager: ModelManager) -> None:
        self.manager = manager

    def collect(self):
        stats = self.manager.stats()
        loads = GaugeMetricFamily("whisper_model_loads", "Times each model was loaded",
                                  labels=["model"])
        for key, count in self.manager.load_counts.items():
            loads.add_metric([key.name], count)
        refs = GaugeMetricFamily("whisper_model_references", "Sessions holding each model",
                                 labels=["model"])
        for name, info in stats["loaded"].items():
            refs.add_metric([name], info["refs"])
        yield loads
        yield refs
        yield from self._batching()

    def _batching(self):
        depth = GaugeMetricFamily("whisper_decode_queue_depth",
                                  "Window decodes waiting for a batch", labels=["model"])
        sizes = HistogramMetricFamily("whisper_batch_size", "Windows per batched decode",
                                      labels=["model"])
        busy = GaugeMetricFamily("whisper_decode_utilization",
                                 "Share of the decode workers' time spent decoding, last 5 s",
                                 labels=["model"])
        waited = CounterMetricFamily("whisper_decode_queue_wait_seconds",
                                     "Time window decodes spent queued, summed",
                                     labels=["model"])
        for key, loaded in self.manager.loaded.items():
            scheduler = loaded.scheduler
            if scheduler is None:
                continue
            depth.add_metric([key.name], scheduler.depth)
            busy.add_metric([key.name], scheduler.utilization())
            counts = dict(scheduler.batch_sizes)
            buckets = [(str(b), sum(c for size, c in counts.items() if size <= b))
                       for b in BATCH_BUCKETS] + [("+Inf", sum(counts.values()))]
            sizes.add_metric([key.name], buckets,
                             sum_value=sum(size * c for size, c in counts.items()))
            waited.add_metric([key.name], scheduler.wait_s_total)
        yield depth
        yield busy
        yield sizes
        yield waited


class _RuntimeCollector:
    """Threads and event-loop tasks: both return to their idle level when sessions end, so a
    count that keeps growing is a leak (tests/e2e/test_memory.py watches them)."""

    def collect(self):
        yield GaugeMetricFamily("whisper_threads", "Threads in the process",
                                value=threading.active_count())
        try:
            tasks = len(asyncio.all_tasks())
        except RuntimeError:  # scraped outside the event loop
            return
        yield GaugeMetricFamily("whisper_event_loop_tasks", "Tasks alive on the event loop",
                                value=tasks)


class Metrics:
    def __init__(self, manager: ModelManager) -> None:
        self.registry = CollectorRegistry()
        ProcessCollector(registry=self.registry)  # process_resident_memory_bytes and friends
        self.registry.register(_ModelCollector(manager))
        self.registry.register(_RuntimeCollector())
        self.active_sessions = Gauge("whisper_active_sessions", "Open streaming sessions",
                                     registry=self.registry)
        self.sessions = Counter("whisper_sessions", "Streaming sessions opened",
                                registry=self.registry)
        self.audio_seconds = Counter("whisper_audio_seconds", "Audio seconds processed",
                                     ["source"], registry=self.registry)
        self.decode_seconds = Histogram(
            "whisper_decode_seconds", "Wall time of one decode call", ["source"],
            buckets=(0.05, 0.1, 0.2, 0.3, 0.5, 0.75, 1, 1.5, 2, 3, 5, 10, 30, 60),
            registry=self.registry)
        self.session_lag = Gauge("whisper_session_lag_seconds", "How late the server is with "
                                 "a streaming session: seconds since its oldest unheard audio "
                                 "was due (audio sent ahead of real time is due later)",
                                 ["session"], registry=self.registry)
        self.file_jobs = Gauge("whisper_file_jobs", "File transcriptions running or waiting "
                               "for a turn", ["state"], registry=self.registry)
        self.rejected = Counter("whisper_rejected", "Requests or sessions refused", ["reason"],
                                registry=self.registry)

    def render(self) -> bytes:
        return generate_latest(self.registry)
