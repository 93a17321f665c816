"""Admission of streaming sessions: by count, and by how far the open ones lag."""

from __future__ import annotations

import asyncio
from types import MappingProxyType, SimpleNamespace

import pytest

from whisper_service.metrics import Metrics
from whisper_service.server.errors import ProtocolError
from whisper_service.server.service import Sessions


def sessions(limit: int = 4, max_lag_s: float = 2.0, per_client: int = 0) -> Sessions:
    manager = SimpleNamespace(load_counts=MappingProxyType({}), loaded={},
                              stats=lambda: {"loaded": {}})
    return Sessions(limit, max_lag_s, Metrics(manager), per_client=per_client)


def test_new_sessions_are_refused_while_the_server_is_late_then_admitted_again():
    s = sessions()
    late = {"a": 5.0, "b": 0.5}  # mean 2.75 s > 2 s
    with s.open() as (a, _), s.open() as (b, _):
        s.watch(a, lambda: late["a"])
        s.watch(b, lambda: late["b"])
        with pytest.raises(ProtocolError) as refused:
            with s.open():
                pass
        assert refused.value.code == "server_busy" and "2.8 s behind" in refused.value.message
        text = s.metrics.render().decode()
        assert f'whisper_session_lag_seconds{{session="{a}"}} 5.0' in text
        assert 'whisper_rejected_total{reason="lagging"} 1.0' in text
        late["a"] = 1.0  # caught up, read live: mean 0.75 s
        with s.open() as (c, _):
            assert len(s) == 3
    assert len(s) == 0 and s.mean_lag_s == 0.0
    assert "whisper_session_lag_seconds{" not in s.metrics.render().decode()


def test_a_session_whose_client_left_stops_counting_at_once():
    s = sessions()
    with s.open() as (a, _):
        s.watch(a, lambda: 60.0)  # a burst nobody will read any more
        s.forget(a)  # the client left; its handler is still winding down
        with s.open():
            assert s.mean_lag_s == 0.0
    assert "whisper_session_lag_seconds{" not in s.metrics.render().decode()


def test_one_client_may_hold_only_its_share_of_the_sessions():
    s = sessions(per_client=2)
    with s.open("ip:a"), s.open("ip:a"):
        with pytest.raises(ProtocolError) as refused:
            with s.open("ip:a"):
                pass
        assert refused.value.code == "too_many_streams" and refused.value.close_code == 1013
        assert "limit 2" in refused.value.message
        with s.open("ip:b"), s.open("key:k"):  # other clients are served
            assert len(s) == 4
    with s.open("ip:a"), s.open("ip:a"):  # given back when the sessions end
        pass
    assert 'whisper_rejected_total{reason="client_streams"} 1.0' in s.metrics.render().decode()


def test_the_count_limit_still_holds():
    s = sessions(limit=1)
    with s.open():
        with pytest.raises(ProtocolError, match="1 streaming sessions open"):
            with s.open():
                pass


def test_a_drain_refuses_new_sessions_and_finishes_the_open_ones():
    s = sessions()
    with s.open() as (_, finish):
        asyncio.run(s.drain(timeout=0.05))  # the open one is asked to finish; it doesn't here
        assert finish.is_set() and s.draining
        with pytest.raises(ProtocolError) as refused:
            with s.open():
                pass
    assert refused.value.code == "shutting_down" and refused.value.close_code == 1001
    assert 'whisper_rejected_total{reason="draining"} 1.0' in s.metrics.render().decode()


def test_while_draining_ready_says_503_and_new_work_goes_elsewhere(tmp_path):
    """What a load balancer sees of a replica after SIGTERM: /ready 503 at once, a WebSocket
    handshake answered 503 before it is accepted (nginx then tries the next replica), uploads
    503 `shutting_down`; /health still 200 (the process is alive, finishing its streams)."""
    from starlette.testclient import TestClient, WebSocketDenialResponse

    from whisper_service.config import Settings
    from whisper_service.server import create_app

    client = TestClient(create_app(Settings(cache_dir=tmp_path)))  # no lifespan: no model
    client.app.state.service.sessions.draining = True
    ready = client.get("/ready")
    assert ready.status_code == 503 and ready.json()["draining"] is True
    assert client.get("/health").status_code == 200
    with pytest.raises(WebSocketDenialResponse) as denied:
        with client.websocket_connect("/v1/stream"):
            pass
    assert denied.value.status_code == 503
    assert denied.value.json()["error"]["code"] == "shutting_down"
    upload = client.post("/v1/audio/transcriptions", files={"file": ("a.wav", b"RIFF")},
                         data={"model": "tiny.en"})
    assert upload.status_code == 503 and upload.headers["retry-after"] == "1"
    assert upload.json()["error"]["code"] == "shutting_down"
