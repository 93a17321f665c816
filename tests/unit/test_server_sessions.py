"""Admission of streaming sessions: by count, and by how far the open ones lag."""

from __future__ import annotations

from types import MappingProxyType, SimpleNamespace

import pytest

from whisper_service.metrics import Metrics
from whisper_service.server.errors import ProtocolError
from whisper_service.server.service import Sessions


def sessions(limit: int = 4, max_lag_s: float = 2.0) -> Sessions:
    manager = SimpleNamespace(load_counts=MappingProxyType({}), pipelines={},
                              stats=lambda: {"loaded": {}})
    return Sessions(limit, max_lag_s, Metrics(manager))


def test_new_sessions_are_refused_while_open_ones_lag_then_admitted_again():
    s = sessions()
    with s.open() as (a, _), s.open() as (b, _):
        s.report_lag(a, 5.0)
        s.report_lag(b, 0.5)  # mean 2.75 s > 2 s
        with pytest.raises(ProtocolError) as refused:
            with s.open():
                pass
        assert refused.value.code == "server_busy" and "lag 2.8 s" in refused.value.message
        text = s.metrics.render().decode()
        assert f'whisper_session_lag_seconds{{session="{a}"}} 5.0' in text
        assert 'whisper_rejected_total{reason="lagging"} 1.0' in text
        s.report_lag(a, 1.0)  # caught up: mean 0.75 s
        with s.open() as (c, _):
            assert len(s) == 3
    assert len(s) == 0 and s.mean_lag_s == 0.0
    assert "whisper_session_lag_seconds{" not in s.metrics.render().decode()


def test_the_count_limit_still_holds():
    s = sessions(limit=1)
    with s.open():
        with pytest.raises(ProtocolError, match="1 streaming sessions open"):
            with s.open():
                pass
