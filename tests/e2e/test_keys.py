"""Keys that stay secret: a real `whisper-service serve` with keys and uvicorn's access log on.

Clients that put the key in a URL (`?api_key=`) must not leave it in the server's log, nor
must tickets; the page must open its stream with a ticket, never with the key in the URL.
"""

from __future__ import annotations

import json
import re
import secrets
import shutil
import urllib.error
import urllib.request
import wave
from collections.abc import Iterator
from pathlib import Path

import pytest
from websockets.sync.client import connect

from tests.conftest import DATA
from tests.e2e.conftest import ServerProcess, run_server

pytestmark = pytest.mark.security  # once per suite: see pyproject.toml

# Random per run, so finding one in the log can only mean the server wrote it there.
ENV_KEYS = [f"env-key-{secrets.token_urlsafe(16)}" for _ in range(2)]
FILE_KEY = f"file-key-{secrets.token_urlsafe(16)}"


@pytest.fixture(scope="module")
def server(tmp_path_factory) -> Iterator[ServerProcess]:
    keys_file = tmp_path_factory.mktemp("keys") / "keys.txt"
    keys_file.write_text(f"# one key a line\n\n{FILE_KEY}\n")
    env = {"WHISPER_SERVICE_API_KEY": ",".join(ENV_KEYS),
           "WHISPER_SERVICE_API_KEYS_FILE": str(keys_file)}
    with run_server(env=env, log_level="info") as server:  # info: uvicorn's access log is on
        yield server


def full_log(server: ServerProcess) -> str:
    server.log.seek(0)
    return server.log.read().decode("utf-8", "replace")


def http(server: ServerProcess, method: str, path: str,
         headers: dict[str, str] | None = None) -> tuple[int, dict]:
    request = urllib.request.Request(server.url + path, method=method, headers=headers or {})
    try:
        with urllib.request.urlopen(request, timeout=10) as res:
            return res.status, json.loads(res.read())
    except urllib.error.HTTPError as exc:
        return exc.code, json.loads(exc.read())


def ticket(server: ServerProcess, key: str) -> str:
    status, body = http(server, "POST", "/v1/stream/ticket", {"Authorization": f"Bearer {key}"})
    assert status == 200 and body["expires_in"] == 30, body
    return body["ticket"]


def pcm(seconds: float) -> bytes:
    with wave.open(str(DATA / "en_short.wav")) as w:
        return w.readframes(int(seconds * w.getframerate()))


def stream(url: str, audio: bytes, **connect_args) -> list[dict]:
    """A whole session: config, audio in 100 ms frames, end, everything up to `done`."""
    with connect(url, **connect_args) as ws:
        ws.send(json.dumps({"type": "config", "model": "tiny.en", "language": "en"}))
        messages = [json.loads(ws.recv(timeout=60))]
        assert messages[0]["type"] == "ready", messages
        for i in range(0, len(audio), 3200):
            ws.send(audio[i:i + 3200])
        ws.send(json.dumps({"type": "end"}))
        while messages[-1]["type"] != "done":
            messages.append(json.loads(ws.recv(timeout=60)))
        return messages


def test_keys_and_tickets_stay_out_of_the_log(server):
    ws_url = server.url.replace("http", "ws") + "/v1/stream"
    # An old client: the key in the URL still works...
    status, _ = http(server, "GET", f"/v1/models?api_key={ENV_KEYS[0]}")
    assert status == 200
    assert http(server, "GET", "/v1/models?api_key=wrong")[0] == 401
    assert http(server, "GET", "/v1/models", {"X-API-Key": FILE_KEY})[0] == 200

    # A ticket opens one stream, once.
    one = ticket(server, ENV_KEYS[1])
    messages = stream(f"{ws_url}?ticket={one}", pcm(3.0))
    assert messages[-1]["audio_seconds"] == pytest.approx(3.0, abs=0.05)
    assert "quick" in messages[-1]["text"].lower(), messages[-1]
    with connect(f"{ws_url}?ticket={one}") as ws:
        refused = json.loads(ws.recv(timeout=10))
    assert refused["type"] == "error" and refused["code"] == "unauthorized"

    # The key as a subprotocol: the server picks `whisper-service`, never the key.
    with connect(ws_url, subprotocols=["whisper-service", f"bearer.{FILE_KEY}"]) as ws:
        assert ws.subprotocol == "whisper-service"
    assert stream(ws_url, pcm(0.5), subprotocols=["whisper-service",
                                                  f"bearer.{ENV_KEYS[0]}"])[-1]["type"] == "done"

    log = full_log(server)
    for secret in (*ENV_KEYS, FILE_KEY, one):
        assert secret not in log, f"{secret[:12]}... in the server's log:\n{log[-3000:]}"
    # The requests were logged, with the values redacted.
    assert re.search(r'"GET /v1/models\?api_key=\*\*\* HTTP/1\.1" 200', log), log[-3000:]
    assert re.search(r'"GET /v1/models\?api_key=\*\*\* HTTP/1\.1" 401', log), log[-3000:]
    assert '"POST /v1/stream/ticket HTTP/1.1" 200' in log, log[-3000:]
    assert '"WebSocket /v1/stream?ticket=***" [accepted]' in log, log[-3000:]


CHROMIUM = "/usr/bin/chromium"


@pytest.fixture(scope="module")
def browser(tmp_path_factory):
    sync_api = pytest.importorskip("playwright.sync_api")
    if not Path(CHROMIUM).exists() or shutil.which(CHROMIUM) is None:
        pytest.skip(f"{CHROMIUM} missing: apt-get install chromium (make test does this)")
    from tests.e2e.test_browser import _fake_mic_wav

    wav = _fake_mic_wav(tmp_path_factory.mktemp("fake-mic") / "mic.wav")
    with sync_api.sync_playwright() as p:
        browser = p.chromium.launch(
            executable_path=CHROMIUM, headless=True,
            args=["--use-fake-ui-for-media-stream", "--use-fake-device-for-media-stream",
                  f"--use-file-for-fake-audio-capture={wav}", "--no-sandbox", "--disable-gpu",
                  "--disable-background-networking", "--no-first-run"])
        yield browser
        browser.close()


def test_page_streams_with_a_ticket_not_the_key(server, browser):
    """`?api_key=` on the page URL: read, moved out of the address bar, sent in headers; the
    stream opens with a ticket."""
    from playwright.sync_api import expect

    context = browser.new_context()
    context.grant_permissions(["microphone"], origin=server.url)
    page = context.new_page()
    errors: list[str] = []
    page.on("pageerror", lambda exc: errors.append(str(exc)))
    sockets: list[str] = []
    page.on("websocket", lambda ws: sockets.append(ws.url))
    try:
        page.goto(f"{server.url}/?api_key={ENV_KEYS[1]}")
        page.wait_for_function(
            "() => [...document.querySelectorAll('#model option')].some(o => o.value === 'tiny.en'"
            " && o.textContent.includes('English-only'))")  # GET /v1/models passed the key check
        assert ENV_KEYS[1] not in page.url and "api_key" not in page.url
        assert page.evaluate("sessionStorage.getItem('whisper-service.api_key')") == ENV_KEYS[1]
        page.select_option("#model", "tiny.en")
        page.click("#start")
        expect(page.locator("#status")).to_have_text(re.compile(r"^Listening: tiny\.en"),
                                                     timeout=30_000)
        page.click("#stop")
        expect(page.locator("#status")).to_have_text(re.compile(r"^Done: "), timeout=30_000)
        assert len(sockets) == 1 and "?ticket=" in sockets[0], sockets
        assert ENV_KEYS[1] not in sockets[0] and "api_key" not in sockets[0]

        # A reload keeps the key for this tab, without it in the URL.
        page.reload()
        expect(page.locator("#api-key")).to_have_value(ENV_KEYS[1])
        assert errors == [], errors
    finally:
        context.close()
    log = full_log(server)
    assert ENV_KEYS[1] not in log, log[-3000:]
    assert re.search(r'"GET /v1/models HTTP/1\.1" 200', log), log[-3000:]
