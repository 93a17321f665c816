"""What a session says: the messages at the end of the data path, before any protocol."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Literal

from ..transcript import Word


@dataclass(frozen=True)
class StreamEvent:
    """`partial`: the uncommitted tail, replaced by the next one. `final`: never changes.
    `utterance`: a whole utterance decoded again, superseding the finals of its span.
    `speech_start` / `speech_end` (only with `StreamOptions.turn_events`): a turn's bounds,
    the end coming after the turn's last final."""

    type: Literal["partial", "final", "utterance", "speech_start", "speech_end"]
    start: float
    end: float
    text: str
    words: tuple[Word, ...] = ()
    language: str | None = None

    def to_dict(self, words: bool = False) -> dict[str, Any]:
        out: dict[str, Any] = {"type": self.type, "start": round(self.start, 3),
                               "end": round(self.end, 3), "text": self.text}
        if self.type != "partial":
            out["language"] = self.language
            if words:
                out["words"] = [{"start": w.start, "end": w.end, "text": w.word.strip(),
                                 "probability": w.probability} for w in self.words]
        return out
