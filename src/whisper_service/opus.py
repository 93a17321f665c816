"""Browsers' Opus chunks: MediaRecorder's WebM and Ogg streams, demuxed as they arrive.

A browser's MediaRecorder hands out a WebM (Chrome, Firefox) or Ogg (Firefox) stream with
Opus in it, in chunks cut anywhere; only the first chunk carries the header. Why not
`av.open` on the chunks: libavformat pulls its input through a blocking read(), and a
file-like that runs dry is the end of the file for good (PyAV issue 1017; Matroska's demuxer
stays done, and avformat_find_stream_info reads ahead at open). Fed live, it needs a thread
blocked in read() per session (what PyAV's maintainers suggest in issue 308), or a process
per client (WhisperLiveKit runs ffmpeg). Both containers state the size of every page or
element, though, so a few lines here find the complete Opus packets in whatever bytes
arrived, keep only the unfinished tail, and hand the packets to PyAV's Opus decoder
(CodecContext, push-style: issue 308's other half). No thread, no process, no re-decoding,
and memory bounded by one page or element.
"""
from __future__ import annotations

import re
import threading
from collections import deque

import av
import numpy as np

from .audio import OPUS_ENCODINGS, SAMPLE_RATE, AudioError, Encoding

OPUS_RATE = 48000  # Opus always decodes at 48 kHz; the header's input rate is informative
MAX_ELEMENT_BYTES = 256 * 1024  # an Opus packet is at most 7.7 kB per channel (120 ms, 510 kb/s)
MAX_SKIP_BYTES = 16 * 2**20  # a live stream's other elements (tags, cues, void) are small
# One message may decode to this much audio at most: a 2-byte Opus packet can stand for 120 ms,
# so 1 MiB of tiny packets would be hours (a decompression bomb); a PCM message is 32 s.
MAX_MESSAGE_S = 60.0


class BrokenAudio(AudioError):
    """A compressed stream whose framing is lost (not that container, no Opus in it, garbage
    where a page or element belongs): no later byte can be decoded, so the session ends."""


class OpusStream:
    """A MediaRecorder stream (`webm_opus` or `ogg_opus`) to 16 kHz mono float32, decoded as
    its chunks arrive. The decoder and resampler keep their state between chunks, so chunk
    edges do not matter and nothing is decoded twice.

    `feed` decodes into an outbox that `take` empties: it may run in a worker thread (the
    event loop only takes), and what it decoded for a caller that was cancelled meanwhile
    (a server drain) is still there for `flush`'s caller. A lock keeps `feed` and `flush`
    from running at once.
    """

    def __init__(self, encoding: Encoding) -> None:
        if encoding not in OPUS_ENCODINGS:
            raise AudioError(f"{encoding!r} is not an Opus encoding")
        self.encoding = encoding
        self._packets = _WebmOpus() if encoding == "webm_opus" else _OggOpus()
        self._codec: av.AudioCodecContext | None = None
        self._resampler = av.AudioResampler(format="flt", layout="mono", rate=SAMPLE_RATE)
        self._lock = threading.Lock()
        self._out: deque[np.ndarray] = deque()
        self.bytes_in = 0
        self.finished = False

    @property
    def pending_bytes(self) -> int:
        """Bytes held for the rest of their page or element: all the stream keeps."""
        return self._packets.pending

    def __call__(self, data: bytes) -> np.ndarray:
        """`feed` then `take`: the samples this chunk completed."""
        self.feed(data)
        return self.take()

    def feed(self, data: bytes) -> None:
        """Decode the packets `data` completes. Raises BrokenAudio when the stream cannot go
        on, AudioError when a corrupt packet was skipped (the rest was decoded)."""
        with self._lock:
            if self.finished:
                raise AudioError(f"{self.encoding}: audio after the end of the stream")
            self.bytes_in += len(data)
            packets = self._packets.feed(data)
            if packets and self._codec is None:
                self._codec = _opus_decoder(self._packets.head, self.encoding)
            self._decode(packets)

    def take(self) -> np.ndarray:
        """Everything decoded since the last take (possibly nothing)."""
        parts = []
        while self._out:
            parts.append(self._out.popleft())
        return np.concatenate(parts) if parts else np.zeros(0, dtype=np.float32)

    def flush(self) -> None:
        """End of stream: the decoder's and the resampler's last samples go to the outbox.
        Raises AudioError if the stream stopped inside its header or a page or element."""
        with self._lock:
            if self.finished:
                return
            self.finished = True
            if self._codec is not None:
                self._resample(self._codec.decode(None))
            self._resample([None])
            self._packets.check_complete(self.bytes_in)

    def _decode(self, packets: list[bytes]) -> None:
        limit, decoded, skipped = MAX_MESSAGE_S * SAMPLE_RATE, 0, None
        for packet in packets:
            try:
                frames = self._codec.decode(_padded(packet))
            except av.error.FFmpegError as exc:  # one corrupt packet; the next may be fine
                skipped = skipped or exc
                continue
            decoded += self._resample(frames)
            if decoded > limit:
                raise BrokenAudio(f"{self.encoding}: one message decodes to more than "
                                  f"{MAX_MESSAGE_S:g} s of audio; send the chunks as they come")
        if skipped is not None:
            raise AudioError(f"{self.encoding}: skipped a corrupt Opus packet "
                             f"({getattr(skipped, 'strerror', None) or skipped})")

    def _resample(self, frames) -> int:
        count = 0
        for frame in frames:
            if frame is not None:
                frame.pts = None  # the resampler checks timestamps; a chunk's may jump
            for out in self._resampler.resample(frame):
                samples = out.to_ndarray().reshape(-1)
                self._out.append(samples)
                count += len(samples)
        return count


def _padded(data: bytes) -> av.Packet:
    """A packet followed by the zeroed padding FFmpeg requires (AV_INPUT_BUFFER_PADDING_SIZE):
    `av.Packet(bytes)` wraps the bytes as they are, the Opus decoder reads past a packet's
    end, and whatever followed in memory changed the samples (2 of 60 random chunkings of the
    same WebM decoded differently; none of 200 with the padding)."""
    packet = av.Packet(len(data))  # av_new_packet: the padding is allocated and zeroed
    memoryview(packet)[:] = data
    return packet


def _opus_decoder(head: bytes, encoding: str) -> av.AudioCodecContext:
    """PyAV's (FFmpeg's own) Opus decoder, set up from the stream's OpusHead (RFC 7845): the
    channel count and the pre-skip, which the decoder drops from the start."""
    if len(head) < 19 or not head.startswith(b"OpusHead") or head[8] > 15:
        raise BrokenAudio(f"{encoding}: the Opus header (OpusHead) is invalid")
    codec = av.CodecContext.create("opus", "r")
    codec.extradata = head
    codec.sample_rate = OPUS_RATE
    if head[9] <= 2:  # more channels: the header's mapping table sets the layout
        codec.layout = "mono" if head[9] == 1 else "stereo"
    try:  # now, not at the first packet: a bad header would fail every packet after it
        codec.open()
    except av.error.FFmpegError as exc:
        raise BrokenAudio(f"{encoding}: the Opus header (OpusHead) is invalid "
                          f"({getattr(exc, 'strerror', None) or exc})") from None
    return codec


class _OggOpus:
    """Ogg pages to the packets of the first Opus logical stream (RFC 3533, RFC 7845): its
    OpusHead becomes `head`, OpusTags is skipped, the rest are audio packets."""

    def __init__(self) -> None:
        self._buf = bytearray()
        self._pages = 0
        self._serial: int | None = None
        self._others: list[str] = []  # the codecs of other streams, for the error message
        self._packet = bytearray()  # a packet that goes on in the next page
        self._count = 0  # packets of the Opus stream so far
        self.head: bytes | None = None

    def feed(self, data: bytes) -> list[bytes]:
        buf, pos, packets = self._buf, 0, []
        buf += data
        while pos < len(buf):
            capture = buf[pos:pos + 4]
            if capture != b"OggS"[:len(capture)]:
                raise BrokenAudio("ogg_opus: not an Ogg stream" if self._pages == 0 else
                                  "ogg_opus: bytes between Ogg pages; the stream is corrupt")
            if len(buf) - pos < 27:
                break
            if buf[pos + 4] != 0:
                raise BrokenAudio(f"ogg_opus: Ogg version {buf[pos + 4]} is not 0")
            body = pos + 27 + buf[pos + 26]
            if len(buf) < body:
                break
            lacing = bytes(buf[pos + 27:body])
            end = body + sum(lacing)  # at most 65 kB: a page's own limit
            if len(buf) < end:
                break
            serial = int.from_bytes(buf[pos + 14:pos + 18], "little")
            self._page(buf[pos + 5], serial, lacing, bytes(buf[body:end]), packets)
            pos = end
        del buf[:pos]
        return packets

    def _page(self, flags: int, serial: int, lacing: bytes, body: bytes,
              packets: list[bytes]) -> None:
        first, self._pages = self._pages == 0, self._pages + 1
        if flags & 0x02 and self._serial is None:  # a stream's first page names its codec
            if not body.startswith(b"OpusHead"):
                self._others.append(_codec_name(body))
                return
            self._serial = serial
        elif first:
            raise BrokenAudio("ogg_opus: the stream does not start with its first page; send "
                              "the recorder's chunks from the first one on")
        if serial != self._serial:
            if self._serial is None:
                raise BrokenAudio("ogg_opus: no Opus stream in the Ogg data (found "
                                  f"{', '.join(self._others)})")
            return  # another logical stream's page
        if not flags & 0x01:  # not continued: a packet cut short before it is dropped
            self._packet.clear()
        start = 0
        for size in lacing:  # a packet ends at the first lacing value below 255
            self._packet += body[start:start + size]
            start += size
            if len(self._packet) > MAX_ELEMENT_BYTES:
                raise BrokenAudio(f"ogg_opus: a packet over {MAX_ELEMENT_BYTES} bytes")
            if size < 255:
                self._take(bytes(self._packet), packets)
                self._packet.clear()

    def _take(self, packet: bytes, packets: list[bytes]) -> None:
        index, self._count = self._count, self._count + 1
        if index == 0:
            self.head = packet
        elif not (index == 1 and packet.startswith(b"OpusTags")) and packet:
            packets.append(packet)

    @property
    def pending(self) -> int:
        return len(self._buf) + len(self._packet)

    def check_complete(self, received: int) -> None:
        if received and self.head is None:
            raise AudioError("ogg_opus: the stream ended before its header was complete")
        if self.pending:
            raise AudioError(f"ogg_opus: the stream ended inside a page; its last "
                             f"{self.pending} bytes were not decoded")


def _codec_name(header: bytes) -> str:
    """"\\x01vorbis…" -> "vorbis": what another Ogg stream carries, for an error message."""
    return re.sub(rb"[^A-Za-z0-9]", b"", header[:8]).decode() or "unknown"


# Matroska element IDs (WebM is a subset): https://www.matroska.org/technical/elements.html
EBML, DOC_TYPE, SEGMENT, TRACKS, TRACK_ENTRY, CLUSTER, BLOCK_GROUP = (
    0x1A45DFA3, 0x4282, 0x18538067, 0x1654AE6B, 0xAE, 0x1F43B675, 0xA0)
TRACK_NUMBER, CODEC_ID, CODEC_PRIVATE, SIMPLE_BLOCK, BLOCK = 0xD7, 0x86, 0x63A2, 0xA3, 0xA1
_ENTERED = {SEGMENT, TRACKS, TRACK_ENTRY, CLUSTER, BLOCK_GROUP}  # their children follow
_READ = {EBML, TRACK_NUMBER, CODEC_ID, CODEC_PRIVATE}  # read whole; others are skipped


class _WebmOpus:
    """WebM elements to the packets of the first Opus track. Elements are walked in order,
    without tracking their nesting: the masters that matter (segment, tracks, cluster, block
    group) are entered, every other element is skipped by its size, as EBML intends, so
    MediaRecorder's clusters of unknown size need nothing special. The OpusHead is the
    track's CodecPrivate."""

    def __init__(self) -> None:
        self._buf = bytearray()
        self._skip = 0  # bytes of a skipped element still to come
        self._started = False  # the EBML header was read
        self._tracks: list[dict[int, bytes]] = []
        self._track: int | None = None  # the Opus track's number, chosen at the first block
        self.head: bytes | None = None

    def feed(self, data: bytes) -> list[bytes]:
        buf, pos, packets = self._buf, 0, []
        buf += data
        magic = EBML.to_bytes(4, "big")
        if not self._started and buf[:4] != magic[:len(buf[:4])]:
            raise BrokenAudio("webm_opus: not a WebM stream; send the recorder's chunks from "
                              "the first one on")
        while True:
            if self._skip:
                step = min(self._skip, len(buf) - pos)
                pos, self._skip = pos + step, self._skip - step
                if self._skip:
                    break
            element = _ebml_element(buf, pos)
            if element is None:
                break
            eid, size, start = element
            if not self._started and eid != EBML:
                raise BrokenAudio("webm_opus: not a WebM stream (no EBML header)")
            if eid in _ENTERED:
                if eid == TRACK_ENTRY:
                    self._tracks.append({})
                pos = start
                continue
            if size is None:
                raise BrokenAudio(f"webm_opus: element 0x{eid:X} of unknown size")
            if eid in (SIMPLE_BLOCK, BLOCK):
                track = _ebml_vint(buf, start, size=True)
                if track is None:
                    break
                if track[0] != self._opus_track(track[0]):
                    pos, self._skip = start, size  # another track's block
                    continue
            elif eid not in _READ:
                if size > MAX_SKIP_BYTES:
                    raise BrokenAudio(f"webm_opus: element 0x{eid:X} of {size} bytes; the "
                                      "stream is corrupt")
                pos, self._skip = start, size
                continue
            if size > MAX_ELEMENT_BYTES:
                raise BrokenAudio(f"webm_opus: element 0x{eid:X} of {size} bytes is too large")
            if len(buf) < start + size:
                break
            self._element(eid, bytes(buf[start:start + size]), packets)
            pos = start + size
        del buf[:pos]
        return packets

    def _element(self, eid: int, body: bytes, packets: list[bytes]) -> None:
        if eid == EBML:
            doc_type = _ebml_children(body).get(DOC_TYPE, b"").rstrip(b"\0")
            if doc_type not in (b"webm", b"matroska"):
                raise BrokenAudio(f"webm_opus: EBML document type {doc_type!r} is not webm")
            self._started = True
        elif eid in (SIMPLE_BLOCK, BLOCK):
            _, length = _ebml_vint(body, 0, size=True)
            if len(body) < length + 3:
                raise BrokenAudio("webm_opus: a block shorter than its header")
            if body[length + 2] & 0x06:
                raise BrokenAudio("webm_opus: laced blocks are not supported")
            if len(body) > length + 3:
                packets.append(body[length + 3:])  # after track, timecode (2), flags (1)
        elif self._tracks:  # a field of the current track entry
            self._tracks[-1][eid] = body

    def _opus_track(self, number: int) -> int:
        """The Opus track's number, chosen at the first block (all track entries precede
        it); a block of a track that was never declared means the stream is corrupt."""
        numbers = [int.from_bytes(t.get(TRACK_NUMBER, b""), "big") for t in self._tracks]
        if number not in numbers:
            raise BrokenAudio(f"webm_opus: a block of undeclared track {number}; the stream "
                              "is corrupt")
        if self._track is None:
            codecs = [t.get(CODEC_ID, b"?").decode(errors="replace") for t in self._tracks]
            if "A_OPUS" not in codecs:
                raise BrokenAudio(f"webm_opus: no Opus track (found {', '.join(codecs)})")
            track = self._tracks[codecs.index("A_OPUS")]
            self._track, self.head = numbers[codecs.index("A_OPUS")], track.get(CODEC_PRIVATE)
            if self.head is None:
                raise BrokenAudio("webm_opus: the Opus track has no OpusHead (CodecPrivate)")
        return self._track

    @property
    def pending(self) -> int:
        return len(self._buf)

    def check_complete(self, received: int) -> None:
        if received and not self._started:
            raise AudioError("webm_opus: the stream ended before its header was complete")
        if self._buf or self._skip:
            raise AudioError(f"webm_opus: the stream ended inside an element; its last "
                             f"{len(self._buf)} bytes were not decoded")


def _ebml_vint(buf: bytes | bytearray, pos: int, size: bool) -> tuple[int, int] | None:
    """An EBML variable-length integer at `pos`: (value, length), None if incomplete. Sizes
    lose their length marker; IDs keep it, as the specification writes them."""
    if pos >= len(buf):
        return None
    length = 9 - buf[pos].bit_length()  # one leading zero bit per extra byte
    if buf[pos] == 0 or (not size and length > 4):
        raise BrokenAudio("webm_opus: invalid EBML; the stream is corrupt")
    if pos + length > len(buf):
        return None
    value = int.from_bytes(buf[pos:pos + length], "big")
    return (value & ((1 << 7 * length) - 1) if size else value), length


def _ebml_element(buf: bytes | bytearray, pos: int) -> tuple[int, int | None, int] | None:
    """(id, size or None when unknown, where the content starts), None if incomplete."""
    eid = _ebml_vint(buf, pos, size=False)
    if eid is None:
        return None
    size = _ebml_vint(buf, pos + eid[1], size=True)
    if size is None:
        return None
    unknown = size[0] == (1 << 7 * size[1]) - 1  # all value bits set
    return eid[0], None if unknown else size[0], pos + eid[1] + size[1]


def _ebml_children(body: bytes) -> dict[int, bytes]:
    """The direct children of a small master element read whole (the EBML header)."""
    children, pos = {}, 0
    while (element := _ebml_element(body, pos)) is not None:
        eid, size, start = element
        if size is None or start + size > len(body):
            break
        children[eid] = body[start:start + size]
        pos = start + size
    return children
