"""Pacing: when a stream's audio is due, and how late the server is with it."""

from __future__ import annotations

import pytest

from whisper_service.streaming.pacing import Pacing

SR = 16000


class Clock:
    def __init__(self) -> None:
        self.now = 100.0

    def __call__(self) -> float:
        return self.now


def test_a_real_time_client_is_due_as_it_arrives():
    clock = Clock()
    pacing = Pacing(clock)
    for _ in range(30):  # 3 s in 100 ms frames, in real time
        pacing.arrived(SR // 10)
        clock.now += 0.1
    assert pacing.due(SR) == pytest.approx(101.0, abs=0.06)
    clock.now = 103.5
    assert pacing.lateness(2 * SR) == pytest.approx(1.5, abs=0.06)  # 1 s unheard, 0.5 s more
    assert pacing.lateness(3 * SR) == 0.0  # all heard


def test_audio_sent_ahead_of_real_time_is_due_only_when_real_time_reaches_it():
    clock = Clock()
    pacing = Pacing(clock)
    pacing.arrived(60 * SR)  # a reconnect replays a minute at once
    clock.now += 5.0
    assert pacing.lateness(0) == pytest.approx(5.0, abs=1e-3)  # due on arrival
    assert pacing.lateness(4 * SR) == pytest.approx(1.0, abs=1e-3)
    assert pacing.lateness(10 * SR) == 0.0  # heard 10 s in 5: ahead of real time
    assert pacing.due(30 * SR) == pytest.approx(130.0)


def test_audio_that_arrives_late_is_due_when_it_arrives():
    clock = Clock()
    pacing = Pacing(clock)
    pacing.arrived(SR)
    clock.now += 10.0  # the network stalled; the rest comes late
    pacing.arrived(SR)
    assert pacing.due(2 * SR) == pytest.approx(110.0)
    assert pacing.lateness(SR) == 0.0


def test_marks_merge_and_are_forgotten_once_heard():
    clock = Clock()
    pacing = Pacing(clock)
    for _ in range(1000):
        pacing.arrived(160)  # a burst of 10 ms frames in one instant
    assert len(pacing._marks) == 1
    for _ in range(100):
        clock.now += 0.1
        pacing.arrived(1600)
    assert len(pacing._marks) > 50
    pacing.forget(pacing.received - 1600)
    assert len(pacing._marks) <= 2
    clock.now += 30.0
    pacing.catch_up(pacing.received + 800)  # pushed without a recorded arrival: now
    assert pacing.due(pacing.received) == pytest.approx(clock.now)
