"""A loaded model: the shared weights, the decode slots in front of them, and the scheduler
that batches window decodes on them. One per (name, device, compute type) per process."""

from __future__ import annotations

import threading
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any, NamedTuple

from ..transcript import Transcript
from .scheduler import BatchScheduler

if TYPE_CHECKING:
    from faster_whisper import WhisperModel


class ModelKey(NamedTuple):
    name: str
    device: str
    compute_type: str


@dataclass(eq=False)
class LoadedModel:
    key: ModelKey
    model: WhisperModel
    path: Path
    load_seconds: float
    # Decodes running at once: CTranslate2 runs num_workers anyway and queues the rest, so
    # waiting here first keeps the decode working memory per worker, not per session.
    slots: threading.Semaphore = field(default_factory=lambda: threading.Semaphore(1))
    window_pad_s: float = 30.0  # streaming windows are padded to a multiple of this
    batch_beam_size: int = 0  # beam size for windows decoded under load; 0: their own
    scheduler: BatchScheduler[Any, Transcript] | None = None  # batches windows.Window decodes
    # Held by the encoder pass of a full 30 s window (a file's): the step that needs the
    # most memory, taken by one worker at a time (windows._encode_group).
    long_encode: threading.Lock = field(default_factory=threading.Lock)
    refs: int = 0
    last_used: float = field(default_factory=time.monotonic)

    @property
    def multilingual(self) -> bool:
        return bool(self.model.model.is_multilingual)
