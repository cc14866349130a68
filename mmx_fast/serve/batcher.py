"""Dynamic batching: concurrent requests are gathered into one ``Explainer.explain_batch`` call.

One worker thread owns the model. Requests wait in a bounded FIFO queue; the worker takes the oldest one,
then gathers more requests with the SAME ``ExplainConfig`` (an ``Explainer`` has one config, so only those
can share a batched generation and a batched forward) until it has ``max_batch`` of them or ``max_wait_ms``
has passed since the oldest arrived, and runs them as one batch. Requests with another config keep their
place in the queue for the next round.

- Backpressure: ``submit`` raises ``QueueFull`` when ``max_queue`` requests are already waiting (the app
  answers 503 with a Retry-After estimated from the recent batch time).
- Cancellation: ``cancel`` removes a request that is still queued (its client went away or its deadline
  passed); a request already in a running batch finishes, and its result is dropped.
- Isolation: when a batch raises, its requests are re-run one by one (counted in mmx_fast_batch_reruns and
  logged with their request ids), so one bad request fails alone and
  its batch-mates still get their results.
- Drain: ``stop()`` refuses new requests, lets the worker finish everything queued, then joins it.

Results are delivered to the asyncio loop that submitted the request (``loop.call_soon_threadsafe``).
"""

from __future__ import annotations

import asyncio
import collections
import itertools
import logging
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from ..config import ExplainConfig

log = logging.getLogger("mmx_fast.serve.batcher")


class QueueFull(Exception):
    def __init__(self, depth: int, retry_after_s: float) -> None:
        super().__init__(f"the queue is full ({depth} requests waiting)")
        self.depth = depth
        self.retry_after_s = retry_after_s


class Draining(Exception):
    pass


@dataclass(eq=False)
class WorkItem:
    image: Any
    prompt: str
    answer: Any
    config: ExplainConfig
    loop: asyncio.AbstractEventLoop
    future: asyncio.Future
    id: int = 0
    enqueued: float = field(default_factory=time.perf_counter)
    started: float | None = None
    finished: float | None = None
    batch_size: int = 0
    cancelled: bool = False
    request_id: str = "-"


def _deliver(fut: asyncio.Future, result: Any, exc: BaseException | None) -> None:
    if fut.done():  # the waiter gave up (client gone, timeout)
        return
    if exc is not None:
        fut.set_exception(exc)
    else:
        fut.set_result(result)


class Batcher:
    """``run_batch(config, images, prompts, answers) -> list[Explanation]`` is called on the worker thread."""

    def __init__(
        self,
        run_batch: Callable[[ExplainConfig, list, list, list], list],
        *,
        max_batch: int = 8,
        max_wait_ms: float = 10.0,
        max_queue: int = 64,
        metrics=None,
        on_idle: Callable[[], None] | None = None,
    ) -> None:
        if max_batch < 1 or max_queue < 1 or max_wait_ms < 0:
            raise ValueError(
                f"max_batch={max_batch}, max_queue={max_queue}, max_wait_ms={max_wait_ms}: expected "
                "max_batch >= 1, max_queue >= 1, max_wait_ms >= 0"
            )
        self.run_batch = run_batch
        self.max_batch = max_batch
        self.max_wait = max_wait_ms / 1000.0
        self.max_queue = max_queue
        self.metrics = metrics
        self.on_idle = on_idle  # called on the worker thread when a batch ends with nothing queued
        self._queue: collections.deque[WorkItem] = collections.deque()
        self._cond = threading.Condition()
        self._stopping = False
        self._ids = itertools.count(1)
        self._batch_time = 0.0  # moving average of one batch's wall time (for Retry-After)
        self._thread = threading.Thread(target=self._loop, name="mmx-fast-batcher", daemon=True)
        self._thread.start()

    # --- called from the event loop ----------------------------------------------------------------------
    def submit(self, image, prompt: str, answer, config: ExplainConfig, request_id: str = "-") -> WorkItem:
        loop = asyncio.get_running_loop()
        item = WorkItem(image, prompt, answer, config, loop, loop.create_future(), request_id=request_id)
        with self._cond:
            if self._stopping:
                raise Draining("the server is shutting down")
            depth = len(self._queue)
            if depth >= self.max_queue:
                rounds = depth / self.max_batch + 1
                raise QueueFull(depth, max(1.0, rounds * (self._batch_time or 1.0)))
            item.id = next(self._ids)
            self._queue.append(item)
            self._set_depth()
            self._cond.notify_all()
        return item

    def cancel(self, item: WorkItem) -> bool:
        """Drop ``item`` if it is still queued (True); a running item cannot be stopped (False)."""
        with self._cond:
            item.cancelled = True
            try:
                self._queue.remove(item)
            except ValueError:
                return False
            self._set_depth()
            return True

    @property
    def depth(self) -> int:
        return len(self._queue)

    @property
    def draining(self) -> bool:
        return self._stopping

    def stop(self, timeout: float | None = None) -> None:
        """Refuse new work, finish everything queued, join the worker."""
        with self._cond:
            self._stopping = True
            self._cond.notify_all()
        self._thread.join(timeout)

    # --- the worker thread ------------------------------------------------------------------------------
    def _set_depth(self) -> None:
        if self.metrics is not None:
            self.metrics.queue_depth.set(len(self._queue))

    def _take_batch(self) -> list[WorkItem] | None:
        with self._cond:
            while not self._queue:
                if self._stopping:
                    return None
                self._cond.wait()
            first = self._queue[0]
            deadline = first.enqueued + self.max_wait
            while True:
                same = [it for it in self._queue if it.config == first.config]
                if first not in self._queue:  # cancelled while we waited: start over
                    return []
                if len(same) >= self.max_batch or self._stopping:
                    break
                left = deadline - time.perf_counter()
                if left <= 0:
                    break
                self._cond.wait(left)
            batch = same[: self.max_batch]
            for it in batch:
                self._queue.remove(it)
            self._set_depth()
            return batch

    def _loop(self) -> None:
        while True:
            batch = self._take_batch()
            if batch is None:
                return
            if batch:
                self._run(batch)
                if not self._queue and self.on_idle is not None:
                    self.on_idle()

    def _run(self, batch: list[WorkItem]) -> None:
        t0 = time.perf_counter()
        m = self.metrics
        for it in batch:
            it.started = t0
            it.batch_size = len(batch)
        if m is not None:
            m.batch_size.observe(len(batch))
            m.in_flight.set(len(batch))
        cfg = batch[0].config
        try:
            results: list[tuple[Any, BaseException | None]] = [
                (r, None)
                for r in self.run_batch(
                    cfg, [it.image for it in batch], [it.prompt for it in batch], [it.answer for it in batch]
                )
            ]
        except Exception as batch_error:
            if len(batch) == 1:
                results = [(None, batch_error)]
            else:  # isolate the culprit(s): one by one, so batch-mates still get their answers
                if m is not None:
                    m.batch_reruns.inc()
                log.warning(  # the log line's request_id field lists the batch's requests
                    "batch of %d raised %s: %s; re-running its requests one by one",
                    len(batch),
                    type(batch_error).__name__,
                    batch_error,
                    extra={"request_id": ",".join(it.request_id for it in batch)},
                )
                results = []
                for it in batch:
                    try:
                        results.append((self.run_batch(cfg, [it.image], [it.prompt], [it.answer])[0], None))
                    except Exception as e:
                        results.append((None, e))
        t1 = time.perf_counter()
        self._batch_time = (t1 - t0) if not self._batch_time else 0.8 * self._batch_time + 0.2 * (t1 - t0)
        if m is not None:
            m.in_flight.set(0)
        for it, (res, exc) in zip(batch, results):
            it.finished = t1
            try:
                it.loop.call_soon_threadsafe(_deliver, it.future, res, exc)
            except RuntimeError:  # the event loop is closed (the server is gone): nobody is waiting
                pass
