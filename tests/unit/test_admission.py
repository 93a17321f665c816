"""Admission without models: the file queue's bound, the token bucket, and where they refuse."""

from __future__ import annotations

import asyncio

import pytest
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import PlainTextResponse
from starlette.routing import Route
from starlette.testclient import TestClient

from whisper_service.server.admission import (
    FileAdmission,
    PendingSockets,
    RateLimiter,
    RateLimitMiddleware,
    UploadGuard,
    client_id,
)
from whisper_service.server.errors import ApiError, ProtocolError


def test_file_admission_runs_a_bounded_number_queues_a_bounded_number_refuses_the_rest():
    changes: list[tuple[int, int]] = []
    refused: list[int] = []
    admission = FileAdmission(running=2, queued=1, on_change=lambda r, w: changes.append((r, w)),
                              on_reject=lambda: refused.append(1))
    order: list[str] = []

    async def job(name: str, release: asyncio.Event) -> str:
        async with admission.turn():
            order.append(f"{name} runs")
            await release.wait()
        return name

    async def main() -> None:
        gates = [asyncio.Event() for _ in range(3)]
        tasks = [asyncio.create_task(job(f"j{i}", gates[i])) for i in range(3)]
        await asyncio.sleep(0.05)
        assert order == ["j0 runs", "j1 runs"]  # the third waits its turn
        assert admission.waiting == 1
        with pytest.raises(ApiError) as refusal:  # a fourth: the queue is full
            async with admission.turn():
                pass
        assert refusal.value.status == 503 and refusal.value.code == "server_busy"
        assert refusal.value.headers == {"Retry-After": "10"} and refused == [1]
        gates[0].set()
        await asyncio.sleep(0.05)
        assert order[-1] == "j2 runs"
        for gate in gates:
            gate.set()
        assert await asyncio.gather(*tasks) == ["j0", "j1", "j2"]

    asyncio.run(main())
    assert changes[-1] == (0, 0) and (2, 1) in changes


def test_a_failing_job_gives_its_turn_back():
    admission = FileAdmission(running=1, queued=0)

    async def main() -> None:
        with pytest.raises(RuntimeError):
            async with admission.turn():
                raise RuntimeError("decode failed")
        async with admission.turn():  # not refused: the failed one left
            pass

    asyncio.run(main())


def test_token_bucket_allows_a_burst_then_the_rate():
    now = [0.0]
    limiter = RateLimiter(per_minute=60, burst=2, clock=lambda: now[0])
    assert [limiter.take("a"), limiter.take("a")] == [0, 0]
    assert limiter.take("a") == pytest.approx(1.0)  # one token a second
    assert limiter.take("b") == 0  # buckets are per client
    now[0] = 1.0
    assert limiter.take("a") == 0
    assert limiter.take("a") == pytest.approx(1.0)
    now[0] = 100.0
    assert [limiter.take("a") for _ in range(3)][:2] == [0, 0]  # refilled, up to the burst


def test_token_bucket_forgets_the_longest_idle_clients_past_its_bound():
    limiter = RateLimiter(per_minute=1, burst=1, max_clients=3)
    for client in "abcd":
        limiter.take(client)
    assert list(limiter._buckets) == ["b", "c", "d"]
    assert limiter.take("a") == 0  # forgotten, so it starts with a full bucket


def test_rate_limit_middleware_refuses_with_retry_after_before_the_route_runs():
    calls: list[str] = []

    async def upload(request: Request) -> PlainTextResponse:
        calls.append(client_id(request))
        return PlainTextResponse("ok")

    app = Starlette(routes=[Route("/v1/audio/transcriptions", upload, methods=["POST"]),
                            Route("/health", upload)])
    app.add_middleware(RateLimitMiddleware, limiter=RateLimiter(per_minute=6, burst=1),
                       prefixes=("/v1/audio/",))
    client = TestClient(app)
    headers = {"Authorization": "Bearer k1"}
    assert client.post("/v1/audio/transcriptions", headers=headers).status_code == 200
    refused = client.post("/v1/audio/transcriptions", headers=headers, content=b"x" * 1000)
    assert refused.status_code == 429 and refused.json()["error"]["code"] == "rate_limited"
    assert refused.headers["Retry-After"] == "10"  # 6 a minute: one token per 10 s
    # Another key has its own bucket; other paths are not limited.
    assert client.post("/v1/audio/transcriptions",
                       headers={"X-API-Key": "k2"}).status_code == 200
    assert all(client.get("/health").status_code == 200 for _ in range(3))
    assert calls[0].startswith("key:") and "k1" not in calls[0]  # kept only as a hash
    assert calls[1] != calls[0]
    assert calls[2].startswith("ip:")


def test_the_app_limits_stream_opens_and_tickets_per_key(tmp_path):
    """Through the app (no lifespan, so no model loads): a stream open spends a token, a
    ticket's issue spends one, and opening the socket with that ticket spends none."""
    from whisper_service.config import Settings
    from whisper_service.server import create_app

    client = TestClient(create_app(Settings(cache_dir=tmp_path, api_key="k1,k2",
                                            rate_limit_per_minute=6, rate_limit_burst=2)))
    key = ["whisper-service", "bearer.k1"]
    with client.websocket_connect("/v1/stream", subprotocols=key) as ws:
        ws.send_bytes(b"\0\0")
        assert ws.receive_json()["code"] == "config_required"  # let in
    ticket = client.post("/v1/stream/ticket", headers={"Authorization": "Bearer k1"})
    assert ticket.status_code == 200  # the second token
    with client.websocket_connect(f"/v1/stream?ticket={ticket.json()['ticket']}") as ws:
        ws.send_bytes(b"\0\0")
        assert ws.receive_json()["code"] == "config_required"  # no token needed
    with client.websocket_connect("/v1/stream", subprotocols=key) as ws:
        refused = ws.receive_json()
        assert refused["code"] == "rate_limited" and "retry in 10 s" in refused["message"]
    again = client.post("/v1/stream/ticket", headers={"Authorization": "Bearer k1"})
    assert again.status_code == 429 and again.headers["Retry-After"] == "10"
    # The other key is another client.
    other = client.post("/v1/stream/ticket", headers={"Authorization": "Bearer k2"})
    assert other.status_code == 200
    assert 'whisper_rejected_total{reason="rate_limited"} 2.0' in client.get(
        "/metrics", headers={"X-API-Key": "k2"}).text


def test_pending_sockets_refuse_past_the_per_client_limit_and_evict_the_oldest_past_the_cap():
    reasons: list[str] = []
    closed: list[str] = []
    pending = PendingSockets(limit=3, per_client=2, on_reject=reasons.append)

    def socket(name: str):
        async def evict() -> None:
            closed.append(name)
        return evict

    async def main() -> None:
        async with pending.waiting("ip:a", socket("a1")), pending.waiting("ip:a", socket("a2")):
            with pytest.raises(ProtocolError) as refused:
                async with pending.waiting("ip:a", socket("a3")):
                    pass
            assert refused.value.code == "too_many_pending"
            assert refused.value.close_code == 1013 and "limit 2" in refused.value.message
            async with pending.waiting("ip:b", socket("b1")):
                assert len(pending) == 3 and closed == []
                async with pending.waiting("ip:c", socket("c1")):  # full: the oldest goes
                    assert closed == ["a1"] and len(pending) == 3
        assert len(pending) == 0
        async with pending.waiting("ip:a", socket("a4")), pending.waiting("ip:a", socket("a5")):
            pass  # the client's places came back

    asyncio.run(main())
    assert reasons == ["pending_limit", "pending_evicted"]


def upload_app(seen: list[int]) -> Starlette:
    async def upload(request: Request) -> PlainTextResponse:
        body = await request.body()
        seen.append(len(body))
        return PlainTextResponse(str(len(body)))

    return Starlette(routes=[Route("/v1/audio/up", upload, methods=["POST"]),
                             Route("/other", upload, methods=["POST"])])


def call(app, body_parts: list[bytes], delay_s: float = 0.0, path: str = "/v1/audio/up"):
    """Drive the ASGI app directly: the body arrives in parts, `delay_s` apart."""
    sent: list[dict] = []
    parts = list(body_parts)

    async def receive() -> dict:
        if delay_s:
            await asyncio.sleep(delay_s)
        chunk = parts.pop(0) if parts else b""
        return {"type": "http.request", "body": chunk, "more_body": bool(parts)}

    async def send(message: dict) -> None:
        sent.append(message)

    scope = {"type": "http", "method": "POST", "path": path, "headers": [],
             "query_string": b"", "asgi": {"version": "3.0"}}
    asyncio.run(app(scope, receive, send))
    start = next(m for m in sent if m["type"] == "http.response.start")
    body = b"".join(m.get("body", b"") for m in sent if m["type"] == "http.response.body")
    return start["status"], body


def test_upload_guard_bounds_a_body_by_time_and_by_bytes_on_upload_paths_only():
    seen: list[int] = []
    reasons: list[str] = []
    guard = UploadGuard(upload_app(seen), ("/v1/audio/",), max_bytes=100, timeout_s=0.3,
                        on_reject=reasons.append)
    assert call(guard, [b"x" * 40, b"y" * 40]) == (200, b"80")
    # A few bytes at a time, too slowly: cut off at the deadline, never handed to the route.
    status, body = call(guard, [b"z"] * 20, delay_s=0.05)
    assert status == 408 and b'"upload_timeout"' in body
    status, body = call(guard, [b"x" * 60, b"y" * 60, b"never read"])
    assert status == 413 and b'"file_too_large"' in body
    assert call(guard, [b"x" * 60, b"y" * 60], path="/other") == (200, b"120")
    assert seen == [80, 120] and reasons == ["upload_timeout", "upload_too_large"]
