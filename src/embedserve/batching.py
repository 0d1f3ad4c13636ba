"""Batching: cutting sorted texts into inference batches, and the per-worker asyncio micro-batcher.

:func:`plan_batches` is pure. :class:`MicroBatcher` collects concurrent requests, hands them to one inference
thread as a single job (the embedder sorts them by length and cuts them by token budget), and gives every
caller its own vectors. A failed job fails every waiter with the cause attached; nothing is dropped.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import logging
import time
from collections import deque
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Generic, TypeVar

import numpy as np

from embedserve.errors import OverloadedError

log = logging.getLogger(__name__)

T = TypeVar("T")


#: Fixed cost of one inference call, in padded tokens (measured: splitting a 64-text mixed request was fastest
#: with 16-64 tokens, see README "Performance"). It keeps the planner from cutting batches that are too small.
BATCH_OVERHEAD_TOKENS = 32


def plan_batches(
    lengths: Sequence[int],
    *,
    max_batch_size: int,
    max_batch_tokens: int,
    batch_overhead_tokens: int = BATCH_OVERHEAD_TOKENS,
) -> list[np.ndarray]:
    """Sort item indices by length and cut them into batches that waste the least padding.

    Every batch is padded to its longest item, so its cost is ``len(batch) * longest`` tokens plus a fixed
    ``batch_overhead_tokens`` per call. Over the sorted items, an exact dynamic programme picks the cut points that
    minimise the total cost: a short text is not padded to 256 tokens because one long text arrived with it
    (measured 2-3x faster than fixed batches of 32 on mixed lengths). A batch holds at most ``max_batch_size``
    items and at most ``max_batch_tokens`` padded tokens; an item longer than the token budget gets a batch of
    its own.

    Returns:
        Index arrays into ``lengths``, shortest batches first.
    """
    order = np.argsort(np.asarray(lengths, dtype=np.int64), kind="stable")
    ordered = [int(lengths[i]) for i in order]
    n = len(ordered)
    best = [0.0] + [float("inf")] * n  # best[i]: least cost of the first i sorted items
    cut = [0] * (n + 1)
    for end in range(1, n + 1):
        longest = ordered[end - 1]
        for start in range(end - 1, max(-1, end - 1 - max_batch_size), -1):
            count = end - start
            if count > 1 and count * longest > max_batch_tokens:
                break
            cost = best[start] + count * longest + batch_overhead_tokens
            if cost < best[end]:
                best[end], cut[end] = cost, start
    batches: list[np.ndarray] = []
    end = n
    while end > 0:
        batches.append(order[cut[end] : end])
        end = cut[end]
    return batches[::-1]


@dataclass
class _Pending(Generic[T]):
    items: Sequence[T]
    future: asyncio.Future
    enqueued: float = field(default_factory=time.perf_counter)


@dataclass(frozen=True)
class Submitted:
    """A request's rows and where its time went."""

    rows: np.ndarray
    queue_s: float
    compute_s: float
    job_items: int


@dataclass
class BatcherStats:
    """Counters for ``/info`` and benchmarks."""

    jobs: int = 0
    requests: int = 0
    items: int = 0
    failed_jobs: int = 0
    queue_wait_s: float = 0.0
    compute_s: float = 0.0


class MicroBatcher(Generic[T]):
    """Batches concurrent requests for one model on one inference thread.

    Args:
        run: blocking function embedding a list of items, returning one row per item in order.
        max_queue_items: items allowed to wait; past it :meth:`submit` raises :class:`OverloadedError` at once.
        max_wait_s: how long to wait for more requests after the first one arrives (0 = none).
        max_items_per_job: items handed to ``run`` at once (the embedder cuts them into inference batches).
    """

    def __init__(
        self,
        run: Callable[[list[T]], np.ndarray],
        *,
        max_queue_items: int,
        max_wait_s: float = 0.002,
        max_items_per_job: int = 512,
    ) -> None:
        self._run = run
        self.max_queue_items = max_queue_items
        self.max_wait_s = max_wait_s
        self.max_items_per_job = max_items_per_job
        self._queue: deque[_Pending[T]] = deque()
        self._queued_items = 0
        self._wakeup: asyncio.Event | None = None
        self._task: asyncio.Task | None = None
        self._executor = concurrent.futures.ThreadPoolExecutor(max_workers=1, thread_name_prefix="embedserve-infer")
        self.stats = BatcherStats()

    @property
    def queued_items(self) -> int:
        return self._queued_items

    def _ensure_started(self) -> None:
        if self._task is None or self._task.done():
            self._wakeup = asyncio.Event()
            self._task = asyncio.get_running_loop().create_task(self._loop(), name="embedserve-batcher")

    async def submit(self, items: Sequence[T]) -> Submitted:
        """Queue ``items`` and wait for their rows (in the same order), with the queue and compute times.

        Raises:
            OverloadedError: the queue already holds ``max_queue_items`` items.
            Exception: whatever the inference function raised for the job holding these items.
        """
        if not items:
            raise ValueError("submit() needs at least one item")
        if self._queued_items + len(items) > self.max_queue_items:
            raise OverloadedError(
                f"server busy: {self._queued_items} texts are queued and max_queue_texts={self.max_queue_items}; "
                "retry shortly"
            )
        self._ensure_started()
        future: asyncio.Future = asyncio.get_running_loop().create_future()
        self._queue.append(_Pending(items=items, future=future))
        self._queued_items += len(items)
        assert self._wakeup is not None
        self._wakeup.set()
        return await future

    def _take_job(self) -> list[_Pending[T]]:
        job: list[_Pending[T]] = []
        count = 0
        while self._queue:
            head = self._queue[0]
            if head.future.done():  # the caller went away (cancelled): skip its items
                self._queue.popleft()
                self._queued_items -= len(head.items)
                continue
            if job and count + len(head.items) > self.max_items_per_job:
                break
            self._queue.popleft()
            self._queued_items -= len(head.items)
            job.append(head)
            count += len(head.items)
        return job

    async def _loop(self) -> None:
        loop = asyncio.get_running_loop()
        assert self._wakeup is not None
        while True:
            await self._wakeup.wait()
            self._wakeup.clear()
            if self.max_wait_s > 0 and self._queued_items < self.max_items_per_job:
                await asyncio.sleep(self.max_wait_s)
            while self._queue:
                job = self._take_job()
                if not job:
                    break
                await self._run_job(loop, job)

    async def _run_job(self, loop: asyncio.AbstractEventLoop, job: list[_Pending[T]]) -> None:
        items: list[T] = [item for pending in job for item in pending.items]
        started = time.perf_counter()
        try:
            rows = await loop.run_in_executor(self._executor, self._run, items)
            if len(rows) != len(items):
                raise RuntimeError(f"inference returned {len(rows)} rows for {len(items)} items")
        except Exception as exc:  # fail every waiter of this job, with the cause
            self.stats.failed_jobs += 1
            log.exception("inference job of %d items failed", len(items))
            for pending in job:
                if not pending.future.done():
                    pending.future.set_exception(exc)
            return
        finished = time.perf_counter()
        self.stats.jobs += 1
        self.stats.requests += len(job)
        self.stats.items += len(items)
        self.stats.compute_s += finished - started
        offset = 0
        for pending in job:
            count = len(pending.items)
            self.stats.queue_wait_s += started - pending.enqueued
            if not pending.future.done():
                pending.future.set_result(
                    Submitted(
                        rows=rows[offset : offset + count],
                        queue_s=started - pending.enqueued,
                        compute_s=finished - started,
                        job_items=len(items),
                    )
                )
            offset += count

    def close(self) -> None:
        if self._task is not None:
            self._task.cancel()
        self._executor.shutdown(wait=False, cancel_futures=True)
