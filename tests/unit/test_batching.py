"""BatchScheduler with a fake batch runner: grouping, order, waiting and failures."""

from __future__ import annotations

import threading
import time
from concurrent.futures import wait

import numpy as np
import pytest

from whisper_service.engine.scheduler import BatchScheduler, SchedulerClosed


class Runner:
    """Records each batch; blocks while `gate` is closed, so tests can pile up requests."""

    def __init__(self) -> None:
        self.batches: list[list[tuple[str, int]]] = []
        self.gate = threading.Event()
        self.gate.set()
        self.started = threading.Event()

    def __call__(self, requests):
        self.started.set()
        self.gate.wait(10)
        self.batches.append(list(requests))
        if any(r[0] == "boom" for r in requests):
            raise ValueError("bad window")
        return [f"{key}:{n}" for key, n in requests]


def scheduler(runner: Runner, workers: int = 1, max_batch: int = 4, max_wait_s: float = 0.02):
    return BatchScheduler(runner, key=lambda r: r[0], slots=threading.Semaphore(workers),
                          workers=workers, max_batch=max_batch, max_wait_s=max_wait_s)


def blocked(runner: Runner, s: BatchScheduler):
    """Occupy the only worker, so that what is submitted next waits in the queue."""
    runner.gate.clear()
    first = s.submit(("a", 0))
    assert runner.started.wait(5)
    return first


def test_compatible_requests_share_a_batch_oldest_first_up_to_the_cap():
    runner = Runner()
    s = scheduler(runner, max_batch=3)
    first = blocked(runner, s)
    futures = [s.submit(r) for r in [("a", 1), ("b", 1), ("a", 2), ("a", 3), ("a", 4)]]
    runner.gate.set()
    wait([first, *futures], timeout=10)
    assert [f.result() for f in futures] == ["a:1", "b:1", "a:2", "a:3", "a:4"]
    # The oldest waiting request leads each batch; incompatible ones never mix.
    assert runner.batches == [[("a", 0)], [("a", 1), ("a", 2), ("a", 3)], [("b", 1)],
                              [("a", 4)]]
    assert s.batch_sizes == {1: 3, 3: 1}
    assert s.depth == 0
    s.close()


def test_windows_due_later_wait_behind_the_ones_due_now_and_ride_along_where_there_is_room():
    """A stream sent ahead of real time submits windows due only later (pacing.py): they run
    after every window due now, filling its batches' spare places, and count in no depth."""
    runner = Runner()
    s = scheduler(runner, max_batch=3)
    first = blocked(runner, s)
    later = time.monotonic() + 60
    ahead = [s.submit(("a", n), deadline=later + n) for n in (1, 2, 3)]
    live = [s.submit(("a", 10)), s.submit(("b", 10))]
    assert s.depth == 2  # the windows due in a minute make nobody's step longer
    runner.gate.set()
    wait([first, *ahead, *live], timeout=10)
    assert runner.batches == [[("a", 0)], [("a", 10), ("a", 1), ("a", 2)], [("b", 10)],
                              [("a", 3)]]
    s.close()


def test_the_request_heading_a_batch_sets_how_many_may_share_it():
    """Long windows need more working memory per window: fewer of them share a batch."""
    runner = Runner()
    s = BatchScheduler(runner, key=lambda r: r[0], slots=threading.Semaphore(1), workers=1,
                       max_batch=4, limit=lambda r: 2 if r[0] == "long" else 99)
    first = blocked(runner, s)
    futures = [s.submit(r) for r in [("long", i) for i in range(5)] + [("a", 1), ("a", 2)]]
    runner.gate.set()
    wait([first, *futures], timeout=10)
    assert runner.batches == [[("a", 0)], [("long", 0), ("long", 1)], [("long", 2), ("long", 3)],
                              [("long", 4)], [("a", 1), ("a", 2)]]
    s.close()


def test_windows_longer_than_the_common_length_share_smaller_batches():
    from whisper_service.engine.windows import Window

    def window(seconds: int) -> Window:
        return Window(np.zeros((80, seconds * 100), np.float32), 100, 1.0, (), None)

    assert [window(s).batch_limit(8, 10.0) for s in (5, 10, 20, 30)] == [8, 8, 4, 2]
    assert window(30).batch_limit(1, 10.0) == 1
    # A larger model's full windows go one at a time; shorter windows keep their batches.
    assert [window(s).batch_limit(8, 10.0, full_max=1) for s in (10, 20, 30)] == [8, 4, 1]
    assert window(30).batch_limit(64, 10.0, full_max=2) == 2


def test_full_windows_pair_only_on_a_small_model(tmp_path):
    from whisper_service.engine.manager import _weights_bytes
    from whisper_service.engine.windows import PAIRED_FULL_WINDOWS_MAX_WEIGHTS, full_window_batch

    assert full_window_batch(PAIRED_FULL_WINDOWS_MAX_WEIGHTS) == 2
    assert full_window_batch(PAIRED_FULL_WINDOWS_MAX_WEIGHTS + 1) == 1
    (tmp_path / "model.bin").write_bytes(b"x" * 1000)
    assert _weights_bytes(tmp_path) == 1000
    assert _weights_bytes(tmp_path / "missing") == 0


@pytest.mark.parametrize("seconds, most_at_once", [(30, 1), (10, 2)])
def test_full_windows_are_encoded_one_at_a_time(seconds, most_at_once):
    """Two workers encoding at once: full 30 s windows take turns (their encoder pass needs
    the most memory), shorter ones do not."""
    from types import SimpleNamespace

    from whisper_service.engine.model import LoadedModel
    from whisper_service.engine.windows import _encode_group

    running, most = [0], [0]
    lock = threading.Lock()
    both = threading.Barrier(2)

    def encode(storage, to_cpu):
        with lock:
            running[0] += 1
            most[0] = max(most[0], running[0])
        time.sleep(0.2)
        with lock:
            running[0] -= 1
        return storage

    model = SimpleNamespace(model=SimpleNamespace(encode=encode))
    loaded = LoadedModel(None, model, None, 0.0, window_pad_s=10.0)  # type: ignore[arg-type]
    features = np.zeros((1, 80, seconds * 100), np.float32)

    def worker():
        both.wait()
        _encode_group(loaded, features)

    threads = [threading.Thread(target=worker) for _ in range(2)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(5)
    assert most[0] == most_at_once


def test_a_request_cancelled_while_queued_is_dropped_and_its_batch_still_answered():
    runner = Runner()
    s = scheduler(runner, max_batch=3)
    first = blocked(runner, s)
    futures = [s.submit(("a", n)) for n in (1, 2, 3)]
    assert futures[1].cancel()  # e.g. a waiter that gave up on it
    runner.gate.set()
    wait([first, futures[0], futures[2]], timeout=10)
    assert [futures[0].result(timeout=5), futures[2].result(timeout=5)] == ["a:1", "a:3"]
    assert runner.batches[1] == [("a", 1), ("a", 3)]
    assert not first.cancel() and not futures[0].cancel()  # running or done: not cancellable
    s.close()


def test_one_request_alone_runs_without_waiting_for_a_batch():
    runner = Runner()
    s = scheduler(runner, max_wait_s=5.0)  # a wait would be plain to see
    started = time.monotonic()
    assert s.decode(("a", 1)) == "a:1"
    assert time.monotonic() - started < 2.0
    s.close()


def test_several_pending_wait_at_most_max_wait_for_the_batch_to_fill():
    runner = Runner()
    s = scheduler(runner, max_batch=8, max_wait_s=0.3)
    first = blocked(runner, s)
    futures = [s.submit(("a", n)) for n in (1, 2)]
    runner.gate.set()
    started = time.monotonic()
    time.sleep(0.1)
    late = s.submit(("a", 3))  # arrives within the wait: joins the batch
    wait([first, *futures, late], timeout=10)
    assert runner.batches[1] == [("a", 1), ("a", 2), ("a", 3)]
    assert time.monotonic() - started < 3.0
    s.close()


def test_a_failing_batch_fails_only_its_requests():
    runner = Runner()
    s = scheduler(runner)
    first = blocked(runner, s)
    bad, good = s.submit(("boom", 1)), s.submit(("a", 1))
    runner.gate.set()
    assert first.result(10) == "a:0"
    with pytest.raises(ValueError, match="bad window"):
        bad.result(10)
    assert good.result(10) == "a:1"
    assert s.decode(("a", 2)) == "a:2"  # still serving
    s.close()


def test_two_workers_run_two_batches_at_once():
    slots = threading.Semaphore(2)
    both = threading.Barrier(2, timeout=5)

    def run(requests):
        both.wait()  # only passes if two batches run concurrently
        return [r for r in requests]

    s = BatchScheduler(run, key=lambda r: r, slots=slots, workers=2, max_batch=4)
    a, b = s.submit("x"), s.submit("y")
    assert (a.result(10), b.result(10)) == ("x", "y")
    s.close()


def test_close_fails_what_is_queued_and_refuses_more():
    runner = Runner()
    s = scheduler(runner)
    first = blocked(runner, s)
    queued = s.submit(("b", 1))
    closer = threading.Thread(target=s.close)
    closer.start()
    with pytest.raises(SchedulerClosed):
        queued.result(10)
    runner.gate.set()
    closer.join(10)
    assert first.result(10) == "a:0"
    with pytest.raises(SchedulerClosed):
        s.submit(("a", 9))


def test_file_decodes_share_the_slots():
    """A slot held elsewhere (a file decoding a window) delays batches until it is free."""
    runner = Runner()
    slots = threading.Semaphore(1)
    s = BatchScheduler(runner, key=lambda r: r[0], slots=slots, workers=1)
    slots.acquire()
    future = s.submit(("a", 1))
    time.sleep(0.2)
    assert not future.done()
    slots.release()
    assert future.result(10) == "a:1"
    s.close()


def test_a_session_steps_longer_as_windows_queue_per_worker():
    from types import SimpleNamespace

    from whisper_service.engine.decoder import Decoder

    scheduler = SimpleNamespace(depth=0, workers=2, max_batch=8)
    decoder = Decoder(SimpleNamespace(scheduler=scheduler))
    loads = []
    for depth in (0, 1, 4):
        scheduler.depth = depth
        loads.append(decoder.step_factor())
    assert loads == [1.0, 2.0, 5.0]
    assert Decoder(SimpleNamespace(scheduler=None)).step_factor() == 1.0  # batching off: no signal


def test_a_model_is_idle_for_steps_with_nothing_queued_and_workers_mostly_free():
    from types import SimpleNamespace

    from whisper_service.engine.decoder import Decoder

    scheduler = SimpleNamespace(depth=0, running=1, workers=2, utilization=lambda: 0.3)
    decoder = Decoder(SimpleNamespace(scheduler=scheduler))
    assert decoder.idle() and decoder.busy()  # one decode running leaves a worker free
    scheduler.depth = 1
    assert not decoder.idle()
    scheduler.depth, scheduler.utilization = 0, lambda: 0.5
    assert not decoder.idle()
    assert Decoder(SimpleNamespace(scheduler=None)).idle()


def test_wait_idle_returns_once_nothing_is_queued_or_running():
    runner = Runner()
    s = scheduler(runner)
    assert s.wait_idle(0)
    first = blocked(runner, s)
    queued = s.submit(("a", 1))
    assert not s.wait_idle(0.05)  # one running, one queued
    runner.gate.set()
    assert s.wait_idle(5)
    assert first.done() and queued.done()
    s.close()


def run_one_batch(s, slow: Runner, seconds: float) -> None:
    """One batch that runs for `seconds`, to its end, with nothing left running."""
    slow.gate.clear()
    running = s.submit(("a", 0))
    assert slow.started.wait(5)
    time.sleep(seconds)
    slow.gate.set()
    running.result(5)
    assert s.wait_idle(5)


def test_utilization_is_the_busy_share_of_the_workers_over_the_last_seconds(monkeypatch):
    from whisper_service.engine import scheduler as batching

    monkeypatch.setattr(batching, "UTILIZATION_WINDOW_S", 0.5)
    slow = Runner()
    s = scheduler(slow, workers=1)
    assert s.utilization() == 0.0
    run_one_batch(s, slow, 0.3)  # its busy time is recorded as it finishes
    assert 0.5 <= s.utilization() <= 1.0  # 0.3 s busy of the last 0.5 s
    time.sleep(0.6)
    assert s.utilization() == 0.0  # and forgotten once it is older than the window
    s.close()


def test_utilization_on_a_clock_that_skips_waits_sees_an_idle_model():
    """A simulated replay decodes back to back, skipping the waits for audio: on a clock that
    adds those waits (SkippingClock), a batch grows old as it would in real time."""
    from whisper_service.streaming import SkippingClock

    slow = Runner()
    s = scheduler(slow, workers=1)
    s.use_clock(skipping := SkippingClock())
    run_one_batch(s, slow, 0.3)
    on_wall = s.utilization()  # 0.3 s of the last 5 s, on the wall clock
    assert 0.05 <= on_wall <= 0.2
    skipping.skipped += 6.0  # the replay skipped 6 s of waiting since: the batch is old
    assert s.utilization() == 0.0
    s.use_clock(time.monotonic)  # and back: the history on the other clock is dropped
    assert s.utilization() == 0.0
    s.close()


def test_submit_all_fills_a_batch_on_every_worker_from_the_first():
    """Requests submitted one by one: the first leaves alone while the rest queue. Submitted
    together (as warm-up does), each of the two workers takes a full batch."""
    def slow_key(request):  # one at a time, the dispatcher would take the first alone
        time.sleep(0.02)
        return request[0]

    runner = Runner()
    s = BatchScheduler(runner, key=slow_key, slots=threading.Semaphore(2), workers=2,
                       max_batch=3, max_wait_s=0.5)
    futures = s.submit_all([("a", n) for n in range(6)])
    wait(futures, timeout=10)
    assert [f.result() for f in futures] == [f"a:{n}" for n in range(6)]
    assert sorted(map(len, runner.batches)) == [3, 3]
    assert s.batch_sizes == {3: 2}
    s.close()
    with pytest.raises(SchedulerClosed):
        s.submit_all([("a", 9)])


class Concurrency(Runner):
    """A Runner that counts the batches running at once, by their first request's key."""

    def __init__(self) -> None:
        super().__init__()
        self.lock = threading.Lock()
        self.now: dict[str, int] = {}
        self.most: dict[str, int] = {}

    def __call__(self, requests):
        key = requests[0][0]
        with self.lock:
            self.now[key] = self.now.get(key, 0) + 1
            self.most[key] = max(self.most.get(key, 0), self.now[key])
        time.sleep(0.05)
        with self.lock:
            self.now[key] -= 1
        return super().__call__(requests)


@pytest.mark.parametrize("live", [True, False])
def test_background_work_leaves_a_worker_to_the_live_while_there_are_any(live):
    """A file's windows (background) run on all but one worker while live requests came in
    lately, and on every worker when none did."""
    runner = Concurrency()
    s = scheduler(runner, workers=2, max_batch=1)
    if live:
        s.submit(("live", 0)).result(5)
    files = s.submit_all([("file", n) for n in range(8)], background=True)
    wait(files, timeout=10)
    assert [f.result() for f in files] == [f"file:{n}" for n in range(8)]
    assert runner.most["file"] == (1 if live else 2)
    s.close()


@pytest.mark.parametrize("live", [True, False])
def test_background_batches_hold_one_request_while_there_are_live_ones(live):
    """While live requests came lately, a file's windows go one to a batch, so the worker
    they hold frees sooner; with nobody live they fill batches."""
    runner = Runner()
    s = scheduler(runner, workers=1, max_batch=4)
    if live:
        s.submit(("live", 0)).result(5)
    runner.batches.clear()
    runner.gate.clear()
    blocker = s.submit(("block", 0), background=True)
    assert runner.started.wait(5)
    files = s.submit_all([("file", n) for n in range(4)], background=True)
    runner.gate.set()
    wait([blocker, *files], timeout=10)
    sizes = [len(b) for b in runner.batches if b[0][0] == "file"]
    assert sizes == ([1, 1, 1, 1] if live else [4])
    s.close()

