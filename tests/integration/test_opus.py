"""Browsers' compressed audio over /v1/stream: `webm_opus` and `ogg_opus` MediaRecorder chunks
through the real server in-process, on tiny.en, and bad Opus streams beside a good one."""

from __future__ import annotations

import threading

import pytest
from starlette.testclient import TestClient

from tests.conftest import DATA, assert_wer, duration, read_wav, reference
from tests.integration.test_server import expect_error, finals_text
from tests.unit.test_opus import chrome_webm, encode, opus_head_and_packets

pytestmark = pytest.mark.integration

CHUNK = 1000  # bytes: ~250 ms of 24 kb/s Opus, the size of the page's MediaRecorder chunks


@pytest.fixture(scope="module")
def clip() -> dict[str, bytes]:
    speech = read_wav(DATA / "en_short.wav")
    return {"webm_opus": encode(speech, "webm"), "ogg_opus": encode(speech, "ogg")}


def stream_opus(client: TestClient, encoding: str, data: bytes, chunk: int = CHUNK,
                config: dict | None = None) -> list[dict]:
    messages = []
    with client.websocket_connect("/v1/stream") as ws:
        ws.send_json({"type": "config", "model": "tiny.en", "language": "en",
                      "encoding": encoding, **(config or {})})
        messages.append(ws.receive_json())
        assert messages[0]["type"] == "ready", messages
        for i in range(0, len(data), chunk):
            ws.send_bytes(data[i:i + chunk])
        ws.send_json({"type": "end"})
        while messages[-1]["type"] != "done":
            messages.append(ws.receive_json())
    return messages


@pytest.mark.parametrize("encoding", ["webm_opus", "ogg_opus"])
def test_opus_stream_transcribes_speech(client_for, clip, encoding):
    # sample_rate means nothing for Opus (the container states it): a wrong one is ignored.
    messages = stream_opus(client_for(), encoding, clip[encoding], config={"sample_rate": 8000})
    assert messages[0]["config"]["encoding"] == encoding
    done = messages[-1]
    assert not [m for m in messages if m["type"] == "error"], messages
    # The decoded clip is the WAV plus at most the encoder's last 20 ms packet.
    assert done["audio_seconds"] == pytest.approx(duration("en_short"), abs=0.05)
    # Observed: WER 0.000 for the finals and the utterances, in both containers.
    assert_wer(f"websocket {encoding} tiny.en en_short", reference("en_short"),
               finals_text(messages), 0.2)
    assert_wer(f"websocket {encoding} utterances tiny.en en_short", reference("en_short"),
               done["text"], 0.2)


def test_bad_opus_streams_end_alone_while_another_streams(client_for, clip):
    client = client_for()
    result: dict = {}
    worker = threading.Thread(target=lambda: result.update(
        messages=stream_opus(client, "webm_opus", clip["webm_opus"], chunk=333)))
    worker.start()

    def start(ws, encoding: str) -> None:
        ws.send_json({"type": "config", "model": "tiny.en", "encoding": encoding})
        assert ws.receive_json()["type"] == "ready"

    def until_done(ws) -> list[dict]:
        messages = [ws.receive_json()]
        while messages[-1]["type"] != "done":
            messages.append(ws.receive_json())
        return messages

    # Garbage, another codec, and a stream that starts mid-way: fatal, closed with 1007.
    flac = encode(read_wav(DATA / "en_short.wav")[:16000], "matroska", "flac")
    for encoding, data, words in [("webm_opus", b"not a webm stream at all", "not a WebM"),
                                  ("ogg_opus", b"\x00" * 64, "not an Ogg"),
                                  ("webm_opus", flac, "no Opus track"),
                                  ("webm_opus", clip["webm_opus"][4000:], "not a WebM")]:
        with client.websocket_connect("/v1/stream") as ws:
            start(ws, encoding)
            ws.send_bytes(data)
            assert words in expect_error(ws, "invalid_audio", close=1007)["message"]

    # A header cut short, then `end`: reported, and the stream still finishes with `done`.
    with client.websocket_connect("/v1/stream") as ws:
        start(ws, "ogg_opus")
        ws.send_bytes(clip["ogg_opus"][:30])
        ws.send_json({"type": "end"})
        assert "before its header" in expect_error(ws, "invalid_audio")["message"]
        done = ws.receive_json()
        assert done["type"] == "done" and done["audio_seconds"] == 0

    # A corrupt packet: reported, skipped, and the rest of the speech is heard.
    head, packets = opus_head_and_packets(clip["ogg_opus"])
    with client.websocket_connect("/v1/stream") as ws:
        start(ws, "webm_opus")
        ws.send_bytes(chrome_webm(head, [*packets[:100], b"\xff" * 50, *packets[101:]]))
        ws.send_json({"type": "end"})
        messages = until_done(ws)
    errors = [m for m in messages if m["type"] == "error"]
    assert [e["code"] for e in errors] == ["invalid_audio"], errors
    assert "corrupt Opus packet" in errors[0]["message"]
    assert messages[-1]["audio_seconds"] == pytest.approx(duration("en_short") - 0.02, abs=0.05)
    assert "lazy" in finals_text(messages).lower()

    worker.join(timeout=120)
    assert not worker.is_alive()
    assert_wer("websocket webm_opus tiny.en en_short next to bad clients", reference("en_short"),
               finals_text(result["messages"]), 0.2)
    assert client.get("/health").status_code == 200
