"""A recording pushed through a session as a live client would push it: the CLI's `stream`
command, the benchmarks and the tests all hear a session this way."""

from __future__ import annotations

import time
from collections.abc import Iterator
from typing import Literal

import numpy as np

from ..audio import SAMPLE_RATE
from .events import StreamEvent
from .session import StreamingSession

ReplayMode = Literal["simulated", "realtime", "fast"]


class SkippingClock:
    """Monotonic time plus the waits a simulated replay skipped: on it, a replayed session's
    decodes take the share of time they would take in real time. A scheduler measuring its
    utilization on wall time would see the replay's back-to-back decodes as a busy model."""

    def __init__(self) -> None:
        self.skipped = 0.0

    def __call__(self) -> float:
        return time.monotonic() + self.skipped


def replay(session: StreamingSession, audio: np.ndarray, mode: ReplayMode = "simulated",
           chunk_s: float = 0.1,
           skipping: SkippingClock | None = None) -> Iterator[tuple[float, StreamEvent]]:
    """Push a recording through a session as a live client would, yielding (emitted_at, event).

    `simulated` (computation-aware): audio becomes available at its own time, and the clock
    also advances by the compute actually spent, so latencies include compute without waiting
    in real time. `realtime` paces pushes by the wall clock; `fast` pushes without pause. In
    the first two, the chunks that arrived during a decode are pushed together, as the server
    does with frames that queued up on its socket. `skipping` (simulated): the waits for
    audio that were skipped are added to it.
    """
    step = max(1, int(chunk_s * SAMPLE_RATE))
    clock, started = 0.0, time.perf_counter()
    arrivals = [min(i + step, len(audio)) / SAMPLE_RATE for i in range(0, len(audio), step)]
    i = 0
    while i <= len(arrivals):
        if i == len(arrivals):
            chunk, available_at = None, len(audio) / SAMPLE_RATE
            i += 1
        else:
            if mode == "realtime":
                time.sleep(max(0.0, arrivals[i] - (time.perf_counter() - started)))
            now = clock if mode == "simulated" else time.perf_counter() - started
            j = i + 1
            while mode != "fast" and j < len(arrivals) and arrivals[j] <= now:
                j += 1
            chunk, available_at = audio[i * step:j * step], arrivals[j - 1]
            i = j
        if skipping is not None and mode == "simulated":  # the wait for this audio
            skipping.skipped += max(0.0, available_at - clock)
        spent = time.perf_counter()
        events = session.push(chunk) if chunk is not None else session.end_of_stream()
        spent = time.perf_counter() - spent
        clock = max(clock, available_at) + spent
        emitted_at = clock if mode == "simulated" else time.perf_counter() - started
        for event in events:
            yield emitted_at, event
        if session.utterances_due:  # as the server does: after the finals that closed them
            spent = time.perf_counter()
            events = session.decode_utterances()
            clock += time.perf_counter() - spent
            emitted_at = clock if mode == "simulated" else time.perf_counter() - started
            for event in events:
                yield emitted_at, event
