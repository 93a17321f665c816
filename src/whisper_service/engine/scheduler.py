"""BatchScheduler: many sessions' decode requests, run together as batches on one model.

Sessions call `decode(request)` and block, exactly as they would on the model itself. Behind
that call, a dispatcher thread waits for a free decode slot (the model's `num_workers`, which
file decodes share window by window), then takes the oldest pending request together with
every compatible request that waits behind it, up to `max_batch`, and runs them as one batch.

- Earliest due first: a batch always contains the request whose deadline comes first (by
  default a request is due when submitted, so this is oldest first). A stream sent ahead of
  real time submits windows that are due only later (pacing.py), so they wait behind the
  live streams' windows and run on the capacity that is spare, riding along in their
  batches where there is room. A long file still takes turns with the streams.
- Background work leaves a worker to the live: a request submitted as `background` (a file's
  window) runs on at most all but one of the workers while live requests came in the last
  UTILIZATION_WINDOW_S, and on all of them otherwise. A batch, once running, cannot be
  interrupted, so without this an upload's batches could hold every worker for seconds
  while streams' windows waited (bench/capacity.py --upload). Meanwhile a background batch
  also holds one request only: a worker the streams need then frees sooner, and the
  streams' p90 latency next to an upload rose less, for an upload a few percent slower.
- No wait for one request alone: a lone client's latency stays what it was without batching.
  With several pending, the dispatcher waits at most `max_wait_s` for the batch to fill.
- Nothing here knows about models or devices: `run` decodes a batch, `key` says which
  requests may share one (the same padded length, for instance), and `limit` how many may
  share the batch a request heads (fewer long windows than short ones, for instance).
"""

from __future__ import annotations

import threading
import time
from collections import Counter, deque
from collections.abc import Callable, Hashable, Sequence
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass, field
from typing import Generic, TypeVar

UTILIZATION_WINDOW_S = 5.0

R = TypeVar("R")
T = TypeVar("T")


@dataclass(eq=False)
class _Job(Generic[R, T]):
    request: R
    key: Hashable
    future: Future[T] = field(default_factory=Future)
    queued_at: float = field(default_factory=time.monotonic)
    deadline: float = 0.0  # when its result is due; set to `queued_at` if not given
    background: bool = False  # leaves a worker to the live ones (see the module)

    def __post_init__(self) -> None:
        self.deadline = self.deadline or self.queued_at


class SchedulerClosed(RuntimeError):
    """The model behind the scheduler was unloaded."""


class BatchScheduler(Generic[R, T]):
    """Runs `run(requests) -> results` on batches of compatible requests, oldest first."""

    def __init__(self, run: Callable[[Sequence[R]], Sequence[T]], key: Callable[[R], Hashable],
                 slots: threading.Semaphore, workers: int, max_batch: int = 8,
                 max_wait_s: float = 0.02, name: str = "batch",
                 limit: Callable[[R], int] | None = None) -> None:
        if max_batch < 1:
            raise ValueError("max_batch must be at least 1")
        self.max_batch, self.max_wait_s, self.workers = max_batch, max_wait_s, workers
        self._run, self._key, self._slots = run, key, slots
        self._limit = limit or (lambda request: max_batch)
        self.batch_sizes: Counter[int] = Counter()  # batches run, by size (for /metrics)
        self.wait_s_total = 0.0  # time requests spent queued, summed
        self._busy: deque[tuple[float, float]] = deque()  # (start, end) of recent batches
        self.clock: Callable[[], float] = time.monotonic  # `utilization`'s (see use_clock)
        self._running = 0  # batches taken and not yet answered
        self._background = 0  # of them, background batches
        self._live_at = -float("inf")  # when a live (not background) request came last
        self._pending: deque[_Job[R, T]] = deque()
        self._cond = threading.Condition()
        self._closed = False
        self._pool = ThreadPoolExecutor(max_workers=workers, thread_name_prefix=name)
        self._dispatcher = threading.Thread(target=self._dispatch, name=f"{name}-dispatch",
                                            daemon=True)
        self._dispatcher.start()

    @property
    def depth(self) -> int:
        """Requests waiting for a batch that are due (not counting the ones running, nor the
        ones due later: those wait for spare capacity, and make nobody else wait)."""
        now = time.monotonic()
        return sum(job.deadline <= now for job in list(self._pending))

    @property
    def running(self) -> int:
        """Batches being decoded now."""
        return self._running

    def use_clock(self, clock: Callable[[], float]) -> None:
        """Measure `utilization` on `clock` from now on; the history on the old clock goes.
        A benchmark that replays audio without waiting for it sets one that adds the waits
        it skipped (streaming.SkippingClock), so that a session's share of the workers is
        what it would be in real time."""
        with self._cond:
            self.clock = clock
            self._busy.clear()

    def utilization(self) -> float:
        """The share of the workers' time spent running batches over the last
        UTILIZATION_WINDOW_S (batches still running count once they end)."""
        now = self.clock()
        since = now - UTILIZATION_WINDOW_S
        with self._cond:
            self._forget_busy(since)
            busy = sum(end - max(start, since) for start, end in self._busy)
        return min(1.0, busy / (self.workers * UTILIZATION_WINDOW_S))

    def wait_idle(self, timeout: float | None = None) -> bool:
        """Wait until nothing is queued or running (a memory reading then sees no decode's
        working memory); False if that did not happen within `timeout`."""
        with self._cond:
            return self._cond.wait_for(lambda: not self._pending and not self._running, timeout)

    def _forget_busy(self, since: float) -> None:
        while self._busy and self._busy[0][1] <= since:
            self._busy.popleft()

    def submit(self, request: R, deadline: float | None = None,
               background: bool = False) -> Future[T]:
        return self.submit_all([request], deadline, background)[0]

    def submit_all(self, requests: Sequence[R], deadline: float | None = None,
                   background: bool = False) -> list[Future[T]]:
        """Submit several at once: they queue together, so the first batch does not leave
        with the first request alone (warm-up wants full batches on every worker).
        `deadline` (`time.monotonic()`): when their results are due; default now.
        `background`: work that leaves a worker to the live requests (see the module)."""
        jobs = [_Job(request, self._key(request), deadline=deadline or 0.0,
                     background=background) for request in requests]
        with self._cond:
            if self._closed:
                raise SchedulerClosed("the model was unloaded")
            self._pending.extend(jobs)
            if not background:
                self._live_at = time.monotonic()
            self._cond.notify_all()
        return [job.future for job in jobs]

    def decode(self, request: R) -> T:
        """Submit and wait: the blocking call sessions make."""
        return self.submit(request).result()

    def close(self) -> None:
        """Fail what is still queued, let running batches finish, stop the threads."""
        with self._cond:
            self._closed = True
            pending, self._pending = list(self._pending), deque()
            self._cond.notify_all()
        for job in pending:
            job.future.set_exception(SchedulerClosed("the model was unloaded"))
        self._dispatcher.join(timeout=5)
        self._pool.shutdown(wait=True)

    # -- the dispatcher thread ------------------------------------------------------------------

    def _dispatch(self) -> None:
        while True:
            with self._cond:
                # Background work may wait for the live to go quiet: looked at again each
                # second, as nothing else would wake this thread when they do.
                while not (self._closed or self._ready()):
                    self._cond.wait(1.0)
                if self._closed:
                    return
            self._slots.acquire()  # a decode slot is free: form a batch now
            batch = self._take()
            if not batch:
                self._slots.release()
                continue
            self._pool.submit(self._execute, batch)

    def _take(self) -> list[_Job[R, T]]:
        """The earliest due job and the compatible ones due next; waits only if others pend."""
        with self._cond:
            if len(self._ready()) > 1 and self._size() > 1:
                until = time.monotonic() + self.max_wait_s
                while not self._closed and self._ready() and self._compatible() < self._size():
                    left = until - time.monotonic()
                    if left <= 0:
                        break
                    self._cond.wait(left)
            if not self._ready():
                return []
            key = self._head().key
            batch = sorted((job for job in self._ready() if job.key == key),
                           key=_due)[:self._size()]
            taken = set(map(id, batch))
            self._pending = deque(job for job in self._pending if id(job) not in taken)
            # A job whose future was cancelled while it waited is dropped; the others can no
            # longer be cancelled (set_result on a cancelled future would raise, and the rest
            # of the batch would never hear of its results).
            batch = [job for job in batch if job.future.set_running_or_notify_cancel()]
            self._running += bool(batch)  # counted while still under the lock (wait_idle)
            self._background += bool(batch) and batch[0].background
            return batch

    def _live(self) -> bool:
        """Whether a live (not background) request came in the last UTILIZATION_WINDOW_S."""
        return time.monotonic() - self._live_at < UTILIZATION_WINDOW_S

    def _ready(self) -> list[_Job[R, T]]:
        """The pending jobs that may run now: background ones only while they leave a worker
        to the live (or no live request came lately)."""
        if not self._live() or self._background < max(1, self.workers - 1):
            return list(self._pending)
        return [job for job in self._pending if not job.background]

    def _head(self) -> _Job[R, T]:
        """The job due first (the oldest of those due at the same moment)."""
        return min(self._ready(), key=_due)

    def _size(self) -> int:
        """How many jobs the batch headed by the earliest due may hold: a background batch
        one while the live are there (see the module)."""
        head = self._head()
        if head.background and self._live():
            return 1
        return max(1, min(self.max_batch, self._limit(head.request)))

    def _compatible(self) -> int:
        key = self._head().key
        return sum(job.key == key for job in self._ready())

    def _execute(self, batch: list[_Job[R, T]]) -> None:
        try:
            started, began = time.monotonic(), self.clock()
            with self._cond:
                self.batch_sizes[len(batch)] += 1
                self.wait_s_total += sum(started - job.queued_at for job in batch)
            try:
                results = list(self._run([job.request for job in batch]))
                if len(results) != len(batch):
                    raise RuntimeError(f"{len(results)} results for {len(batch)} requests")
            except BaseException as exc:  # every waiting session hears of it; others go on
                for job in batch:
                    job.future.set_exception(exc)
                return
            for job, result in zip(batch, results):
                job.future.set_result(result)
        finally:
            ended = self.clock()
            with self._cond:
                self._busy.append((began, ended))
                self._forget_busy(ended - UTILIZATION_WINDOW_S)
                self._running -= 1
                self._background -= bool(batch) and batch[0].background
                self._cond.notify_all()
            self._slots.release()


def _due(job: _Job) -> float:
    return job.deadline
