"""Sockets that never speak, through a real `serve` process (issue 33's finding: 300 silent
WebSockets on /v1/stream held every session slot until the idle timeout, and a real client
was refused `server_busy`). A socket is now a session only once its config is accepted; until
then it holds a bounded waiting place for `config_timeout_s`. And limits per client.

Clients are told apart by address: the server trusts `X-Forwarded-For` from 127.0.0.1 (its
default `WHISPER_SERVICE_FORWARDED_ALLOW_IPS`), so each test socket can name its own.
"""

from __future__ import annotations

import asyncio
import json
import time
from collections import Counter

import httpx
import pytest
from websockets.asyncio.client import connect
from websockets.exceptions import ConnectionClosed

from tests.conftest import DATA, assert_wer, read_wav, reference
from tests.e2e.conftest import run_server
from tests.e2e.test_memory import scrape

pytestmark = pytest.mark.once  # outcomes are admissions and close codes: see pyproject.toml

SILENT = 300
FRAME = 3200  # 100 ms of pcm_s16le


def address(i: int) -> dict[str, str]:
    return {"X-Forwarded-For": f"10.{i // 65536}.{i // 256 % 256}.{i % 256}"}


async def silent(url: str, headers: dict[str, str], opened: asyncio.Event,
                 count: list[int]) -> tuple[int | None, str]:
    """Open a socket and never send a thing: how the server closed it."""
    try:
        async with connect(url, additional_headers=headers, open_timeout=30) as ws:
            count.append(1)
            if len(count) == SILENT:
                opened.set()
            try:
                async for message in ws:
                    json.loads(message)  # the error message that comes before the close
            except ConnectionClosed:
                pass
            return ws.close_code, ws.close_reason
    except ConnectionClosed as closed:
        return closed.rcvd.code if closed.rcvd else None, closed.rcvd.reason if closed.rcvd else ""


async def stream(url: str, headers: dict[str, str], audio: bytes) -> list[dict]:
    """A real client: config, the audio at 10x real time, `end`; every message until done."""
    messages: list[dict] = []
    async with connect(url, additional_headers=headers, open_timeout=30) as ws:
        await ws.send(json.dumps({"type": "config", "language": "en"}))
        messages.append(json.loads(await ws.recv()))
        if messages[0]["type"] != "ready":
            return messages
        for at in range(0, len(audio), FRAME):
            await ws.send(audio[at:at + FRAME])
            await asyncio.sleep(0.01)
        await ws.send(json.dumps({"type": "end"}))
        async for message in ws:
            messages.append(json.loads(message))
            if messages[-1]["type"] == "done":
                break
    return messages


async def flood_then_client(url: str, one_address: bool) -> tuple[list, list[dict], float]:
    speech = (read_wav(DATA / "en_short.wav") * 32767).astype("<i2").tobytes()
    opened, count = asyncio.Event(), []
    started = time.monotonic()
    sockets = [asyncio.create_task(silent(url, address(0 if one_address else i), opened, count))
               for i in range(SILENT)]
    if not one_address:  # the refused ones never count as open
        await asyncio.wait_for(opened.wait(), 60)
    else:
        await asyncio.sleep(1.0)
    messages = await stream(url, address(SILENT + 1), speech)
    closes = await asyncio.gather(*sockets)
    return closes, messages, time.monotonic() - started


def test_300_silent_sockets_hold_no_session_slot():
    """300 silent sockets from 300 addresses, then a real client: it is served and its
    transcript is complete. The silent ones are closed `config_timeout`: the oldest 44 (and
    one more for the real client) to make room past the 256 waiting places, the rest at the
    5 s deadline."""
    with run_server() as server:
        url = server.url.replace("http", "ws") + "/v1/stream"
        closes, messages, took = asyncio.run(flood_then_client(url, one_address=False))
        assert messages[0]["type"] == "ready", messages[0]
        assert messages[-1]["type"] == "done" and messages[-1]["reason"] == "end of stream"
        assert_wer("websocket tiny.en en_short after 300 silent sockets", reference("en_short"),
                   messages[-1]["text"], 0.2)
        codes = Counter(code for code, _ in closes)
        assert codes == {1008: SILENT}, codes
        evicted = sum("make room" in reason for _, reason in closes)
        assert evicted >= SILENT - 256, closes[:3]
        metrics = scrape(server.url)
        assert metrics['whisper_rejected_total{reason="pending_evicted"}'] == evicted
        assert metrics['whisper_rejected_total{reason="config_timeout"}'] == SILENT - evicted
        assert metrics.get('whisper_rejected_total{reason="busy"}', 0) == 0
        assert metrics["whisper_sessions_total"] == 1  # only the real client was a session
        assert took < 60  # the silent ones went at the deadline, not at the idle timeout
        assert server.proc.poll() is None, server.output()


def test_silent_sockets_from_one_address_take_only_its_waiting_places():
    """300 from one address: 16 wait (then time out), 284 are refused `too_many_pending` at
    once; a client at another address is served meanwhile."""
    with run_server() as server:
        url = server.url.replace("http", "ws") + "/v1/stream"
        closes, messages, _ = asyncio.run(flood_then_client(url, one_address=True))
        assert messages[-1]["type"] == "done", messages
        codes = Counter(code for code, _ in closes)
        assert codes == {1013: SILENT - 16, 1008: 16}, codes
        assert all("limit 16" in reason for code, reason in closes if code == 1013)
        metrics = scrape(server.url)
        assert metrics['whisper_rejected_total{reason="pending_limit"}'] == SILENT - 16


def test_a_client_over_its_stream_limit_is_refused_and_another_is_served():
    speech = (read_wav(DATA / "en_short.wav") * 32767).astype("<i2").tobytes()

    async def main(url: str) -> tuple[list[dict], list[dict]]:
        async def hold(headers: dict[str, str]):
            ws = await connect(url, additional_headers=headers, open_timeout=30)
            await ws.send(json.dumps({"type": "config", "language": "en"}))
            assert json.loads(await ws.recv())["type"] == "ready"
            return ws

        held = [await hold(address(1)), await hold(address(1))]
        try:
            third = await stream(url, address(1), speech)
            other = await stream(url, address(2), speech)
        finally:
            for ws in held:
                await ws.close()
        return third, other

    with run_server(env={"WHISPER_SERVICE_MAX_STREAMS_PER_CLIENT": "2"}) as server:
        third, other = asyncio.run(main(server.url.replace("http", "ws") + "/v1/stream"))
        assert third[0]["type"] == "error" and third[0]["code"] == "too_many_streams", third
        assert "limit 2" in third[0]["message"]
        assert other[0]["type"] == "ready" and other[-1]["type"] == "done"
        metrics = scrape(server.url)
        assert metrics['whisper_rejected_total{reason="client_streams"}'] == 1


def test_a_slow_upload_holds_no_file_slot_and_times_out():
    """One file job at a time. A body sent a few bytes a second does not delay another
    client's upload (it holds a connection, not the slot), and is cut off with 408 at
    `upload_timeout_s`."""
    wav = (DATA / "en_short.wav").read_bytes()
    env = {"WHISPER_SERVICE_MAX_FILE_JOBS": "1", "WHISPER_SERVICE_MAX_FILE_QUEUE": "0",
           "WHISPER_SERVICE_UPLOAD_TIMEOUT_S": "8"}

    async def main(base: str) -> tuple[httpx.Response | Exception, httpx.Response]:
        boundary = "slowslowslow"
        head = (f"--{boundary}\r\nContent-Disposition: form-data; name=\"file\"; "
                f"filename=\"a.wav\"\r\nContent-Type: audio/wav\r\n\r\n").encode()

        async def trickle():
            yield head
            for at in range(0, len(wav), 4):
                yield wav[at:at + 4]
                await asyncio.sleep(0.25)

        async with httpx.AsyncClient(timeout=60) as client:
            slow = asyncio.create_task(client.post(
                f"{base}/v1/audio/transcriptions", content=trickle(),
                headers={"Content-Type": f"multipart/form-data; boundary={boundary}"}))
            await asyncio.sleep(1.0)  # the slow body is arriving
            fast = await client.post(f"{base}/v1/audio/transcriptions",
                                     files={"file": ("b.wav", wav)}, data={"model": "tiny.en"})
            assert not slow.done()  # still arriving while the other was served
            try:
                return await slow, fast
            except httpx.TransportError as exc:  # cut off while it was still sending
                return exc, fast

    with run_server(env=env) as server:
        slow, fast = asyncio.run(main(server.url))
        # With one file slot and no queue, a slot held by the slow body would have made this
        # 503 server_busy.
        assert fast.status_code == 200, fast.text
        assert_wer("upload tiny.en en_short next to a slow body", reference("en_short"),
                   fast.json()["text"], 0.2)
        # The server answers 408 and closes; a client still writing its body may see only
        # the close (httpx does), as with any server that cuts off an upload.
        if isinstance(slow, httpx.Response):
            assert slow.status_code == 408 and slow.json()["error"]["code"] == "upload_timeout"
        metrics = scrape(server.url)
        assert metrics['whisper_rejected_total{reason="upload_timeout"}'] == 1
        assert server.proc.poll() is None, server.output()
