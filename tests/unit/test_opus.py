"""OpusStream: browsers' MediaRecorder chunks (WebM or Ogg with Opus) decoded as they arrive.

The committed speech is encoded here with PyAV (libopus, 24 kb/s as the live page asks for),
and a Chrome-shaped WebM (segment and clusters of unknown size, as MediaRecorder writes them)
is put together from the same packets by hand. No model weights.
"""

from __future__ import annotations

import io
import random
import threading
from fractions import Fraction

import av
import numpy as np
import pytest

from tests.conftest import DATA, read_wav
from whisper_service import opus
from whisper_service.audio import AudioError
from whisper_service.opus import BrokenAudio, OpusStream

MS = 16  # samples per millisecond at 16 kHz


@pytest.fixture(scope="module")
def speech() -> np.ndarray:
    return read_wav(DATA / "en_short.wav")


def encode(samples: np.ndarray, fmt: str, codec: str = "libopus") -> bytes:
    """16 kHz float samples as a file of container `fmt` (ogg, webm, matroska)."""
    buf = io.BytesIO()
    with av.open(buf, "w", format=fmt) as out:
        stream = out.add_stream(codec, rate=48000 if codec == "libopus" else 16000,
                                layout="mono")
        if codec == "libopus":
            stream.bit_rate = 24000
        frame = av.AudioFrame.from_ndarray((samples * 32767).astype(np.int16).reshape(1, -1),
                                           format="s16", layout="mono")
        frame.sample_rate, frame.pts, frame.time_base = 16000, 0, Fraction(1, 16000)
        for packet in [*stream.encode(frame), *stream.encode(None)]:
            out.mux(packet)
    return buf.getvalue()


@pytest.fixture(scope="module")
def files(speech) -> dict[str, bytes]:
    return {"ogg_opus": encode(speech, "ogg"), "webm_opus": encode(speech, "webm")}


def opus_head_and_packets(ogg: bytes) -> tuple[bytes, list[bytes]]:
    """The OpusHead and the audio packets of an Ogg/Opus file, demuxed by PyAV."""
    with av.open(io.BytesIO(ogg)) as container:
        head = bytes(container.streams.audio[0].codec_context.extradata)
        return head, [bytes(p) for p in container.demux(audio=0) if p.size]


@pytest.fixture(scope="module")
def opus_packets(files) -> tuple[bytes, list[bytes]]:
    return opus_head_and_packets(files["ogg_opus"])


def element(eid: int, body: bytes = b"", unknown: bool = False) -> bytes:
    """One EBML element; `unknown`: the header alone, with the unknown size MediaRecorder
    writes for its segment and clusters (the children follow)."""
    unknown_size = b"\x01\xff\xff\xff\xff\xff\xff\xff"
    size = unknown_size if unknown else (0x10000000 | len(body)).to_bytes(4, "big")
    return eid.to_bytes((eid.bit_length() + 7) // 8, "big") + size + body


def block(track: int, packet: bytes, flags: int = 0x80) -> bytes:
    return element(0xA3, bytes([0x80 | track, 0, 0, flags]) + packet)


def chrome_webm(head: bytes, packets: list[bytes], codec: bytes = b"A_OPUS",
                extra_track: tuple[bytes, bytes] | None = None, per_cluster: int = 40) -> bytes:
    """A WebM as Chrome's MediaRecorder writes it. `extra_track` (codec, block payload) adds
    a track 2 whose block precedes every audio block, as in a video recording."""
    tracks = element(0xAE, element(0xD7, b"\x01") + element(0x83, b"\x02") +
                     element(0x86, codec) + element(0x63A2, head))
    if extra_track:
        tracks += element(0xAE, element(0xD7, b"\x02") + element(0x83, b"\x01") +
                          element(0x86, extra_track[0]))
    out = element(0x1A45DFA3, element(0x4282, b"webm")) + element(0x18538067, unknown=True)
    out += element(0x1549A966, element(0x2AD7B1, b"\x0f\x42\x40")) + element(0x1654AE6B, tracks)
    for i, packet in enumerate(packets):
        if i % per_cluster == 0:
            out += element(0x1F43B675, unknown=True) + element(0xE7, b"\x00")
        if extra_track:
            out += block(2, extra_track[1])
        out += block(1, packet)
    return out


def decode(encoding: str, chunks: list[bytes]) -> np.ndarray:
    stream = OpusStream(encoding)
    out = [stream(chunk) for chunk in chunks]
    stream.flush()
    out.append(stream.take())
    assert stream.pending_bytes == 0
    return np.concatenate(out)


def split(data: bytes, sizes: list[int]) -> list[bytes]:
    """`data` cut into pieces of `sizes`, the last size repeated to the end."""
    chunks, pos = [], 0
    for size in sizes:
        chunks.append(data[pos:pos + size])
        pos += size
    while pos < len(data):
        chunks.append(data[pos:pos + sizes[-1]])
        pos += sizes[-1]
    return chunks


def random_cuts(data: bytes, seed: int) -> list[bytes]:
    """1-byte pieces through the header, then pieces of 1 to 2000 bytes cut anywhere."""
    rng = random.Random(seed)
    return split(data, [1] * 150 + [rng.randint(1, 2000) for _ in range(len(data) // 500)])


def assert_close(decoded: np.ndarray, speech: np.ndarray) -> None:
    # Length: the decoder drops the pre-skip; the encoder's padding of the last packet
    # (at most 20 ms) stays, as no container end trimming applies to a live stream.
    assert abs(len(decoded) - len(speech)) <= 40 * MS, (len(decoded), len(speech))
    n = min(len(decoded), len(speech))
    # Opus is lossy: 0.992 observed at 24 kb/s, with no delay between the two.
    assert np.corrcoef(decoded[:n], speech[:n])[0, 1] > 0.97


@pytest.mark.parametrize("encoding", ["ogg_opus", "webm_opus"])
def test_chunks_cut_anywhere_decode_the_same_speech(encoding, files, speech):
    threads = threading.active_count()
    data = files[encoding]
    whole = decode(encoding, [data])
    assert_close(whole, speech)
    # Header split byte by byte, then at random: the same samples, to the bit.
    for seed in range(5):
        assert np.array_equal(decode(encoding, random_cuts(data, seed)), whole)
    assert np.array_equal(decode(encoding, split(data, [1])), whole)
    # MediaRecorder's first chunk: the header and a little audio (Chrome, 100 ms chunks).
    assert np.array_equal(decode(encoding, split(data, [300, 1200])), whole)
    assert threading.active_count() == threads  # nothing runs beside the caller


def test_bytes_after_a_packet_do_not_change_it(files, monkeypatch):
    """FFmpeg's decoders read past a packet's end and expect zeros there: without the padding,
    whatever followed a packet in memory changed its samples (by up to 0.12 here)."""
    clean = decode("ogg_opus", [files["ogg_opus"]])
    feed = opus._OggOpus.feed

    def followed_by_garbage(self, data: bytes) -> list[memoryview]:
        return [memoryview(p + b"\xff" * 64)[:len(p)] for p in feed(self, data)]

    monkeypatch.setattr(opus._OggOpus, "feed", followed_by_garbage)
    assert np.array_equal(decode("ogg_opus", [files["ogg_opus"]]), clean)


def test_chrome_shaped_webm_decodes_like_the_ogg(files, opus_packets, speech):
    head, packets = opus_packets
    data = chrome_webm(head, packets)
    decoded = decode("webm_opus", random_cuts(data, 7))
    assert np.array_equal(decoded, decode("ogg_opus", [files["ogg_opus"]]))
    assert_close(decoded, speech)


@pytest.mark.parametrize("encoding", ["ogg_opus", "webm_opus"])
def test_memory_holds_one_page_or_element_at_most(encoding, files):
    stream = OpusStream(encoding)
    most = 0
    for chunk in split(files[encoding], [1000]):
        stream(chunk)
        most = max(most, stream.pending_bytes)
    # PyAV's Ogg pages hold up to a second (~3 kB here); WebM blocks a packet each.
    assert 0 < most < 8192


def test_other_tracks_are_skipped_without_being_held(opus_packets):
    """A video recording's WebM: the big blocks of track 2 pass by without being kept."""
    head, packets = opus_packets
    video = chrome_webm(head, packets[:100], extra_track=(b"V_VP8", b"\x00" * 300_000))
    stream = OpusStream("webm_opus")
    out, most = [], 0
    for chunk in split(video, [4096]):
        out.append(stream(chunk))
        most = max(most, stream.pending_bytes)
    stream.flush()
    out.append(stream.take())
    assert most < 4096
    alone = decode("webm_opus", [chrome_webm(head, packets[:100])])
    assert np.array_equal(np.concatenate(out), alone)


@pytest.mark.parametrize("encoding, garbage, message", [
    ("ogg_opus", b"\x00", "not an Ogg stream"),
    ("ogg_opus", b"RIFF\x24\x00\x00\x00WAVEfmt " * 4, "not an Ogg stream"),
    ("webm_opus", b"\x00", "not a WebM stream"),
    ("webm_opus", b"OggS\x00\x02" + bytes(100), "not a WebM stream"),
])
def test_garbage_is_refused_at_once(encoding, garbage, message):
    with pytest.raises(BrokenAudio, match=message):
        OpusStream(encoding)(garbage)


@pytest.mark.parametrize("encoding", ["ogg_opus", "webm_opus"])
def test_a_stream_that_starts_mid_way_is_refused(encoding, files):
    with pytest.raises(BrokenAudio, match="first one on|not an Ogg stream"):
        OpusStream(encoding)(files[encoding][5000:])


@pytest.mark.parametrize("encoding", ["ogg_opus", "webm_opus"])
def test_truncated_header_is_reported_at_the_end(encoding, files):
    stream = OpusStream(encoding)
    assert len(stream(files[encoding][:30])) == 0
    with pytest.raises(AudioError, match="ended before its header was complete"):
        stream.flush()
    with pytest.raises(AudioError, match="after the end"):
        stream.feed(files[encoding][30:])


@pytest.mark.parametrize("encoding", ["ogg_opus", "webm_opus"])
def test_a_stream_cut_inside_a_packet_keeps_what_came_before(encoding, files, speech):
    data = files[encoding]
    stream = OpusStream(encoding)
    heard = stream(data[:len(data) // 2 + 7])
    with pytest.raises(AudioError, match="ended inside"):
        stream.flush()
    heard = np.concatenate([heard, stream.take()])
    assert 0.4 * len(speech) < len(heard) < 0.6 * len(speech)


@pytest.mark.parametrize("encoding, fmt, message", [
    ("ogg_opus", "ogg", r"no Opus stream in the Ogg data \(found FLAC\)"),
    ("webm_opus", "matroska", r"no Opus track \(found A_FLAC\)"),
])
def test_other_codecs_are_refused(encoding, fmt, message, speech):
    with pytest.raises(BrokenAudio, match=message):
        OpusStream(encoding)(encode(speech[:16000], fmt, "flac"))


def test_garbage_after_a_good_start_breaks_the_stream(files, opus_packets):
    ogg = OpusStream("ogg_opus")
    ogg(files["ogg_opus"][:2000])
    with pytest.raises(BrokenAudio):
        ogg(b"\x00" * 40_000)
    head, packets = opus_packets
    webm = OpusStream("webm_opus")
    assert len(webm(chrome_webm(head, packets[:20])))
    with pytest.raises(BrokenAudio, match="corrupt"):
        webm(b"\x00" * 10)
    with pytest.raises(BrokenAudio, match="undeclared track 5"):
        OpusStream("webm_opus")(chrome_webm(head, packets[:2]) + block(5, b"\x00"))


def test_laced_and_oversized_webm_elements_are_refused(opus_packets):
    head, packets = opus_packets
    with pytest.raises(BrokenAudio, match="laced"):
        OpusStream("webm_opus")(chrome_webm(head, packets[:2]) + block(1, b"\x00\x01", 0x82))
    # A track entry whose OpusHead claims 1 MiB: refused before it is waited for.
    start = element(0x1A45DFA3, element(0x4282, b"webm")) + element(0x18538067, unknown=True)
    start += element(0x1654AE6B, unknown=True) + element(0xAE, unknown=True)
    with pytest.raises(BrokenAudio, match="too large"):
        OpusStream("webm_opus")(start + b"\x63\xa2" + (0x10000000 | 2**20).to_bytes(4, "big"))


@pytest.mark.parametrize("head", [b"OpusHead\x01\x03\x00\x00\x80\xbb\x00\x00\x00\x00\x00",
                                  b"OpusHead\x01", b"VorbisHead" + bytes(10)])
def test_a_bad_opus_header_breaks_the_stream(opus_packets, head):
    """Three channels without a mapping table, a short header, another codec's header."""
    with pytest.raises(BrokenAudio, match="OpusHead"):
        OpusStream("webm_opus")(chrome_webm(head, opus_packets[1][:3]))


def test_corrupt_packet_is_skipped_and_reported(opus_packets):
    head, packets = opus_packets
    bad = [*packets[:50], b"\xff" * 50, *packets[51:]]
    data = chrome_webm(head, bad)
    stream = OpusStream("webm_opus")
    with pytest.raises(AudioError, match="corrupt Opus packet") as info:
        stream.feed(data[:len(data) // 2])
    assert not isinstance(info.value, BrokenAudio)  # recoverable: the stream goes on
    first = stream.take()
    rest = stream(data[len(data) // 2:])
    stream.flush()
    total = len(first) + len(rest) + len(stream.take())
    good = decode("webm_opus", [chrome_webm(head, packets)])
    assert total == len(good) - 20 * MS  # exactly the one 20 ms packet is missing


def test_one_message_may_not_decode_to_hours(files, monkeypatch):
    """A byte of Opus can stand for tens of ms: one message is capped in decoded seconds."""
    monkeypatch.setattr(opus, "MAX_MESSAGE_S", 2.0)
    with pytest.raises(BrokenAudio, match="more than 2 s"):
        OpusStream("webm_opus")(files["webm_opus"])
    stream = OpusStream("webm_opus")
    assert len(np.concatenate([stream(c) for c in split(files["webm_opus"], [4000])])) > 5 * 16000


def test_pcm_is_not_an_opus_encoding():
    with pytest.raises(AudioError, match="not an Opus encoding"):
        OpusStream("pcm_s16le")
