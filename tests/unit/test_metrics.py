"""Prometheus metrics: the model load counts come from the ModelManager itself."""

from __future__ import annotations

from collections import Counter
from types import MappingProxyType, SimpleNamespace

from whisper_service.engine.model import ModelKey
from whisper_service.metrics import Metrics


class FakeManager:
    def __init__(self) -> None:
        self.load_counts = MappingProxyType({ModelKey("tiny.en", "cpu", "int8"): 1,
                                             ModelKey("base", "cpu", "int8"): 2})
        # What /metrics reads of a model's BatchScheduler; "base" decodes without one.
        scheduler = SimpleNamespace(depth=3, batch_sizes=Counter({1: 2, 4: 1, 8: 1}),
                                    wait_s_total=0.75, utilization=lambda: 0.625)
        self.loaded = {ModelKey("tiny.en", "cpu", "int8"): SimpleNamespace(scheduler=scheduler),
                          ModelKey("base", "cpu", "int8"): SimpleNamespace(scheduler=None)}

    def stats(self) -> dict:
        return {"loaded": {"tiny.en": {"refs": 3}}}


def test_render_reads_the_manager_at_scrape_time():
    manager = FakeManager()
    metrics = Metrics(manager)
    metrics.active_sessions.inc()
    metrics.audio_seconds.labels("stream").inc(2.5)
    metrics.decode_seconds.labels("file").observe(0.4)
    text = metrics.render().decode()
    assert 'whisper_model_loads{model="tiny.en"} 1.0' in text
    assert 'whisper_model_loads{model="base"} 2.0' in text
    assert 'whisper_model_references{model="tiny.en"} 3.0' in text
    assert "whisper_active_sessions 1.0" in text
    assert 'whisper_audio_seconds_total{source="stream"} 2.5' in text
    assert 'whisper_decode_seconds_bucket{le="0.5",source="file"} 1.0' in text
    assert 'whisper_decode_queue_depth{model="tiny.en"} 3.0' in text
    assert 'whisper_decode_utilization{model="tiny.en"} 0.625' in text
    assert 'whisper_batch_size_bucket{le="2",model="tiny.en"} 2.0' in text
    assert 'whisper_batch_size_bucket{le="4",model="tiny.en"} 3.0' in text
    assert 'whisper_batch_size_count{model="tiny.en"} 4.0' in text
    assert 'whisper_batch_size_sum{model="tiny.en"} 14.0' in text
    assert 'whisper_decode_queue_wait_seconds_total{model="tiny.en"} 0.75' in text
    assert 'model="base"' not in text.split("whisper_decode_queue_depth")[1]
    manager.load_counts = MappingProxyType({ModelKey("tiny.en", "cpu", "int8"): 2})
    assert 'whisper_model_loads{model="tiny.en"} 2.0' in metrics.render().decode()


def test_two_apps_in_one_process_keep_separate_counts():
    a, b = Metrics(FakeManager()), Metrics(FakeManager())
    a.sessions.inc()
    assert "whisper_sessions_total 1.0" in a.render().decode()
    assert "whisper_sessions_total 0.0" in b.render().decode()
