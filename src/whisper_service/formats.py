"""Transcript to txt, srt, vtt, json and verbose_json (OpenAI's shapes, plus a few fields)."""

from __future__ import annotations

import json
from typing import Any, Literal

from .transcript import Segment, Transcript

Format = Literal["txt", "text", "srt", "vtt", "json", "verbose_json"]
FORMATS: tuple[str, ...] = ("txt", "srt", "vtt", "json", "verbose_json")
EXTENSIONS = {"txt": "txt", "text": "txt", "srt": "srt", "vtt": "vtt", "json": "json",
              "verbose_json": "json"}
MEDIA_TYPES = {"txt": "text/plain", "text": "text/plain", "srt": "application/x-subrip",
               "vtt": "text/vtt", "json": "application/json", "verbose_json": "application/json"}


def render(transcript: Transcript, fmt: Format, task: str = "transcribe") -> str:
    if fmt in ("txt", "text"):
        return transcript.text + "\n"
    if fmt == "srt":
        return to_srt(transcript.segments)
    if fmt == "vtt":
        return to_vtt(transcript.segments)
    if fmt == "json":
        return json.dumps(to_json(transcript), ensure_ascii=False) + "\n"
    if fmt == "verbose_json":
        return json.dumps(to_verbose_json(transcript, task), ensure_ascii=False) + "\n"
    raise ValueError(f"unsupported format {fmt!r}; use one of {', '.join(FORMATS)}")


def timestamp(seconds: float, sep: str) -> str:
    ms = max(0, round(seconds * 1000))
    h, ms = divmod(ms, 3_600_000)
    m, ms = divmod(ms, 60_000)
    s, ms = divmod(ms, 1000)
    return f"{h:02d}:{m:02d}:{s:02d}{sep}{ms:03d}"


def _cues(segments: tuple[Segment, ...]) -> list[tuple[float, float, str]]:
    """Non-empty cues with end > start, which strict subtitle parsers require."""
    cues = []
    for seg in segments:
        text = seg.text.strip()
        if text:
            cues.append((seg.start, max(seg.end, seg.start + 0.001), text))
    return cues


def to_srt(segments: tuple[Segment, ...]) -> str:
    blocks = [f"{i}\n{timestamp(s, ',')} --> {timestamp(e, ',')}\n{t}\n"
              for i, (s, e, t) in enumerate(_cues(segments), 1)]
    return "\n".join(blocks)


def to_vtt(segments: tuple[Segment, ...]) -> str:
    blocks = [f"{timestamp(s, '.')} --> {timestamp(e, '.')}\n{t}\n" for s, e, t in _cues(segments)]
    return "WEBVTT\n\n" + "\n".join(blocks)


def to_json(t: Transcript) -> dict[str, Any]:
    return {
        "text": t.text,
        "language": t.language,
        "language_probability": round(t.language_probability, 4),
        "duration": round(t.duration, 3),
        "segments": [
            {"id": s.id, "start": round(s.start, 3), "end": round(s.end, 3), "text": s.text.strip(),
             **({"words": _words(s)} if s.words else {})}
            for s in t.segments
        ],
    }


def to_verbose_json(t: Transcript, task: str = "transcribe") -> dict[str, Any]:
    out: dict[str, Any] = {
        "task": task,
        "language": t.language,
        "language_probability": round(t.language_probability, 4),
        "duration": round(t.duration, 3),
        "text": t.text,
        "segments": [
            {"id": s.id, "seek": 0, "start": round(s.start, 3), "end": round(s.end, 3),
             "text": s.text, "tokens": list(s.tokens), "temperature": s.temperature,
             "avg_logprob": s.avg_logprob, "compression_ratio": s.compression_ratio,
             "no_speech_prob": s.no_speech_prob,
             **({"words": _words(s)} if s.words else {})}
            for s in t.segments
        ],
    }
    words = [w for s in t.segments for w in _words(s)]
    if words:
        out["words"] = words
    return out


def _words(s: Segment) -> list[dict[str, Any]]:
    return [{"word": w.word.strip(), "start": round(w.start, 3), "end": round(w.end, 3),
             "probability": round(w.probability, 4)} for w in s.words]
