"""When a stream's audio is due: the clock that admission and decode order run on.

A real-time client's audio is due as it arrives. A client that sends ahead of real time (a
reconnect replaying its buffer, a file pushed through a stream) asks for nothing sooner than
real time would have brought that audio, so its audio is due only when real time reaches it:
at `first arrival + position`. So the server is late only where audio it could have heard
is still unheard past its due time, and a fast sender never makes the server look late.

Positions are samples of one stream (16 kHz), counted from its first sample.
"""

from __future__ import annotations

import time
from collections import deque
from collections.abc import Callable

from ..audio import SAMPLE_RATE

# Arrivals this close together are one mark: a burst of a thousand frames is one entry.
MERGE_S = 0.05


class Pacing:
    """Arrival times of a stream's audio, and from them when each sample is due."""

    def __init__(self, clock: Callable[[], float] = time.monotonic) -> None:
        self.clock = clock
        self.received = 0  # samples arrived so far
        self._first: float | None = None  # when the first audio arrived
        self._marks: deque[tuple[int, float]] = deque()  # (end sample, arrival), in order

    def arrived(self, samples: int, at: float | None = None) -> None:
        """`samples` more audio arrived (at `at`, default now)."""
        if samples <= 0:
            return
        at = self.clock() if at is None else at
        if self._first is None:
            self._first = at
        self.received += samples
        if self._marks and at - self._marks[-1][1] <= MERGE_S:
            self._marks[-1] = (self.received, self._marks[-1][1])
        else:
            self._marks.append((self.received, at))

    def catch_up(self, samples: int) -> None:
        """Audio up to `samples` has arrived, now if it was not recorded before."""
        self.arrived(samples - self.received)

    def due(self, sample: int) -> float:
        """When audio up to `sample` is due: its arrival, or real time from the first
        arrival, whichever is later. Audio not yet arrived is due at the earliest real-time
        moment it could arrive."""
        if self._first is None:
            return self.clock()
        paced = self._first + sample / SAMPLE_RATE
        for end, at in self._marks:
            if sample <= end:
                return max(at, paced)
        return max(self.clock(), paced)

    def lateness(self, heard: int) -> float:
        """How far the server is behind this stream: the time since the oldest audio it has
        not heard (`heard`: samples decoded or judged silent) became due; 0 when it is
        heard up to what arrived, or what it has not heard is not due yet."""
        if heard >= self.received:
            return 0.0
        return max(0.0, self.clock() - self.due(heard + 1))

    def forget(self, heard: int) -> None:
        """Drop the marks of audio before `heard`: a stream's marks stay few."""
        while len(self._marks) > 1 and self._marks[0][0] <= heard:
            self._marks.popleft()
