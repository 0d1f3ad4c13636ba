"""Batch planning and the asyncio micro-batcher (with a fake embedder: no model needed)."""

from __future__ import annotations

import asyncio
import threading
import time

import numpy as np
import pytest

from embedserve.batching import MicroBatcher, plan_batches
from embedserve.errors import OverloadedError


def test_plan_sorts_and_respects_both_budgets():
    lengths = [50, 3, 200, 4, 5, 60, 7]
    batches = plan_batches(lengths, max_batch_size=3, max_batch_tokens=200)
    flat = np.concatenate(batches)
    assert sorted(flat.tolist()) == list(range(len(lengths)))  # every item exactly once
    assert [lengths[i] for i in flat] == sorted(lengths)  # shortest first
    for batch in batches:
        assert len(batch) <= 3
        assert len(batch) == 1 or len(batch) * max(lengths[i] for i in batch) <= 200


def test_plan_does_not_pad_short_texts_to_a_long_one():
    lengths = [10] * 7 + [250]
    batches = plan_batches(lengths, max_batch_size=32, max_batch_tokens=8192)
    assert [sorted(b.tolist()) for b in batches] == [list(range(7)), [7]]
    # equal lengths stay together (one call is cheaper than several)
    assert len(plan_batches([60] * 32, max_batch_size=32, max_batch_tokens=8192)) == 1


def test_plan_minimises_padded_tokens_plus_call_overhead():
    rng = np.random.default_rng(0)
    lengths = rng.choice([5, 12, 40, 60, 120, 256], size=64).tolist()
    batches = plan_batches(lengths, max_batch_size=32, max_batch_tokens=8192, batch_overhead_tokens=32)
    cost = sum(len(b) * max(lengths[i] for i in b) + 32 for b in batches)
    fixed = plan_batches(lengths, max_batch_size=32, max_batch_tokens=8192, batch_overhead_tokens=10**9)
    fixed_cost = sum(len(b) * max(lengths[i] for i in b) + 32 for b in fixed)
    assert len(fixed) == 2  # a huge call overhead degenerates to full batches of 32
    assert cost < fixed_cost / 1.5


def test_plan_gives_an_oversized_item_its_own_batch():
    batches = plan_batches([1000, 2], max_batch_size=32, max_batch_tokens=100)
    assert [b.tolist() for b in batches] == [[1], [0]]


def test_plan_empty():
    assert plan_batches([], max_batch_size=4, max_batch_tokens=10) == []


def _fake_run(log: list[int] | None = None, delay: float = 0.0):
    def run(items: list[int]) -> np.ndarray:
        if log is not None:
            log.append(len(items))
        time.sleep(delay)
        return np.array([[float(i), float(i) * 2] for i in items], dtype=np.float32)

    return run


def test_concurrent_requests_get_their_own_rows_in_order():
    job_sizes: list[int] = []
    batcher = MicroBatcher(_fake_run(job_sizes, delay=0.01), max_queue_items=10_000, max_wait_s=0.005)

    async def main():
        requests = [list(range(k * 100, k * 100 + (k % 5) + 1)) for k in range(64)]
        results = await asyncio.gather(*(batcher.submit(r) for r in requests))
        for request, result in zip(requests, results, strict=True):
            np.testing.assert_array_equal(result.rows[:, 0], request)
            np.testing.assert_array_equal(result.rows[:, 1], np.array(request) * 2)

    asyncio.run(main())
    assert sum(job_sizes) == sum((k % 5) + 1 for k in range(64))
    assert len(job_sizes) < 64  # requests were batched together
    batcher.close()


def test_failed_job_fails_every_waiter_with_the_cause():
    def run(items):
        raise RuntimeError("boom: model exploded")

    batcher = MicroBatcher(run, max_queue_items=100, max_wait_s=0.01)

    async def main():
        return await asyncio.gather(*(batcher.submit([i]) for i in range(5)), return_exceptions=True)

    results = asyncio.run(main())
    assert all(isinstance(r, RuntimeError) and "boom" in str(r) for r in results)
    assert batcher.stats.failed_jobs >= 1
    assert batcher.queued_items == 0
    batcher.close()


def test_full_queue_is_refused_at_once_and_names_the_limit():
    gate = threading.Event()

    def run(items):
        gate.wait(5)
        return np.zeros((len(items), 1), dtype=np.float32)

    batcher = MicroBatcher(run, max_queue_items=4, max_wait_s=0)

    async def main():
        first = asyncio.ensure_future(batcher.submit([1, 2, 3]))
        await asyncio.sleep(0.05)  # the first job is running: the queue is empty again
        second = asyncio.ensure_future(batcher.submit([4, 5, 6]))
        await asyncio.sleep(0)
        with pytest.raises(OverloadedError, match="max_queue_texts=4"):
            await batcher.submit([7, 8])
        gate.set()
        await asyncio.gather(first, second)

    asyncio.run(main())
    batcher.close()


def test_cancelled_request_does_not_block_others():
    batcher = MicroBatcher(_fake_run(delay=0.02), max_queue_items=100, max_wait_s=0)

    async def main():
        first = asyncio.ensure_future(batcher.submit([1]))
        await asyncio.sleep(0.005)
        doomed = asyncio.ensure_future(batcher.submit([2]))
        await asyncio.sleep(0)
        doomed.cancel()
        third = await batcher.submit([3])
        assert (await first).rows[0, 0] == 1
        assert third.rows[0, 0] == 3

    asyncio.run(main())
    assert batcher.queued_items == 0
    batcher.close()
