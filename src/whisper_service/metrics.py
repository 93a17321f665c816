"""Prometheus metrics on a registry of the app's own (several apps can live in one process)."""

from __future__ import annotations

from prometheus_client import (
    CollectorRegistry,
    Counter,
    Gauge,
    Histogram,
    ProcessCollector,
    generate_latest,
)
from prometheus_client.core import GaugeMetricFamily

from .models import ModelManager


class _ModelCollector:
    """Reads load counts from the ModelManager at scrape time, so the two never disagree."""

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


class Metrics:
    def __init__(self, manager: ModelManager) -> None:
        self.registry = CollectorRegistry()
        ProcessCollector(registry=self.registry)  # process_resident_memory_bytes and friends
        self.registry.register(_ModelCollector(manager))
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
        self.rejected = Counter("whisper_rejected", "Requests or sessions refused", ["reason"],
                                registry=self.registry)

    def render(self) -> bytes:
        return generate_latest(self.registry)
