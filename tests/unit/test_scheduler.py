"""Batch planning and the scheduler's two stages (with fake tokenize / infer functions: no model needed)."""

from __future__ import annotations

import asyncio
import threading
import time

import numpy as np
import pytest

from embedserve.errors import InputError, OverloadedError
from embedserve.scheduler import Pending, Scheduler, plan_batches


def _exact_cost(lengths, max_batch_size, max_batch_tokens, overhead):
    """The least cost over every way of cutting the sorted lengths (quadratic reference dynamic programme)."""
    ordered = sorted(lengths)
    n = len(ordered)
    best = [0.0] + [float("inf")] * n
    for end in range(1, n + 1):
        for start in range(end - 1, -1, -1):
            count = end - start
            if count > max_batch_size or (count > 1 and count * ordered[end - 1] > max_batch_tokens):
                break
            best[end] = min(best[end], best[start] + count * ordered[end - 1] + overhead)
    return best[n]


def _cost(batches, lengths, overhead):
    return sum(len(b) * max(lengths[i] for i in b) + overhead for b in batches)


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


@pytest.mark.parametrize("seed", range(12))
@pytest.mark.parametrize(("size", "tokens", "overhead"), [(32, 8192, 32), (256, 65536, 2048), (8, 300, 16)])
def test_plan_matches_the_exhaustive_optimum(seed, size, tokens, overhead):
    rng = np.random.default_rng(seed)
    n = int(rng.integers(1, 300))
    lengths = rng.choice([3, 5, 9, 12, 16, 40, 60, 120, 200, 256], size=n).tolist()
    batches = plan_batches(lengths, max_batch_size=size, max_batch_tokens=tokens, batch_overhead_tokens=overhead)
    assert sorted(np.concatenate(batches).tolist()) == list(range(n))
    for batch in batches:
        assert len(batch) <= size
        assert len(batch) == 1 or len(batch) * max(lengths[i] for i in batch) <= tokens
    assert _cost(batches, lengths, overhead) == _exact_cost(lengths, size, tokens, overhead)


def test_plan_minimises_padded_tokens_plus_call_overhead():
    rng = np.random.default_rng(0)
    lengths = rng.choice([5, 12, 40, 60, 120, 256], size=64).tolist()
    batches = plan_batches(lengths, max_batch_size=32, max_batch_tokens=8192, batch_overhead_tokens=32)
    fixed = plan_batches(lengths, max_batch_size=32, max_batch_tokens=8192, batch_overhead_tokens=10**9)
    assert len(fixed) == 2  # a huge call overhead degenerates to full batches of 32
    assert _cost(batches, lengths, 32) < _cost(fixed, lengths, 32) / 1.5


def test_plan_cost_grows_with_distinct_lengths_not_items():
    lengths = np.random.default_rng(1).integers(8, 24, size=20_000)
    started = time.perf_counter()
    batches = plan_batches(lengths, max_batch_size=256, max_batch_tokens=65536, batch_overhead_tokens=2048)
    assert time.perf_counter() - started < 2.0  # a correctness bound, not a benchmark: quadratic would take minutes
    assert sum(len(b) for b in batches) == 20_000


def test_plan_gives_an_oversized_item_its_own_batch():
    batches = plan_batches([1000, 2], max_batch_size=32, max_batch_tokens=100)
    assert [b.tolist() for b in batches] == [[1], [0]]


def test_plan_empty():
    assert plan_batches([], max_batch_size=4, max_batch_tokens=10) == []


class FakeModel:
    """tokenize: text -> int; infer: rows [x, 2x] per text. Records job sizes."""

    def __init__(self, delay: float = 0.0, fail: bool = False, refuse: str | None = None) -> None:
        self.jobs: list[int] = []
        self.delay = delay
        self.fail = fail
        self.refuse = refuse
        self.gate = threading.Event()
        self.gate.set()

    def tokenize(self, batch: list[Pending]) -> None:
        for pending in batch:
            if self.refuse is not None and self.refuse in pending.texts:
                pending.fail(InputError(f"refused {self.refuse!r}"))
                continue
            pending.tokens = np.array([int(t) for t in pending.texts], dtype=np.float32)

    def infer(self, job: list[Pending]) -> list[np.ndarray]:
        self.gate.wait(5)
        self.jobs.append(sum(len(p.texts) for p in job))
        time.sleep(self.delay)
        if self.fail:
            raise RuntimeError("boom: model exploded")
        return [np.stack([p.tokens, p.tokens * 2], axis=1) for p in job]

    def scheduler(self, **kwargs) -> Scheduler:
        kwargs.setdefault("max_queue_texts", 10_000)
        kwargs.setdefault("max_job_texts", 32)
        return Scheduler(self.tokenize, self.infer, **kwargs)


@pytest.mark.parametrize("pipelined", [True, False])
def test_concurrent_requests_get_their_own_rows_in_order(pipelined):
    model = FakeModel(delay=0.01)
    scheduler = model.scheduler(pipelined=pipelined)

    async def main():
        requests = [[str(k * 100 + j) for j in range((k % 5) + 1)] for k in range(64)]
        results = await asyncio.gather(*(scheduler.submit(r, None) for r in requests))
        for request, rows in zip(requests, results, strict=True):
            expected = np.array([int(t) for t in request])
            np.testing.assert_array_equal(rows[:, 0], expected)
            np.testing.assert_array_equal(rows[:, 1], expected * 2)

    asyncio.run(main())
    assert sum(model.jobs) == sum((k % 5) + 1 for k in range(64))
    assert len(model.jobs) < 64  # requests were batched together
    assert max(model.jobs) <= 32 + 4  # a job holds at most max_job_texts, unless one request is larger
    assert scheduler.queued_texts == 0
    scheduler.close()


def test_failed_job_fails_every_waiter_with_the_cause():
    model = FakeModel(fail=True)
    scheduler = model.scheduler()

    async def main():
        return await asyncio.gather(*(scheduler.submit([str(i)], None) for i in range(5)), return_exceptions=True)

    results = asyncio.run(main())
    assert all(isinstance(r, RuntimeError) and "boom" in str(r) for r in results)
    assert scheduler.stats.failed_jobs >= 1
    assert scheduler.queued_texts == 0
    scheduler.close()


@pytest.mark.parametrize("pipelined", [True, False])
def test_a_tokenization_error_fails_only_its_request(pipelined):
    model = FakeModel(refuse="13")
    scheduler = model.scheduler(pipelined=pipelined)

    async def main():
        return await asyncio.gather(
            *(scheduler.submit([str(i), str(i + 1)], None) for i in range(0, 20, 2)), return_exceptions=True
        )

    results = asyncio.run(main())
    failed = [i for i, r in enumerate(results) if isinstance(r, Exception)]
    assert failed == [6] and "refused '13'" in str(results[6])
    assert all(r[0, 0] == 2 * i for i, r in enumerate(results) if i != 6)
    assert scheduler.queued_texts == 0
    scheduler.close()


def test_full_queue_is_refused_at_once_and_names_the_limit():
    model = FakeModel()
    model.gate.clear()
    scheduler = model.scheduler(max_queue_texts=4)

    async def main():
        first = asyncio.ensure_future(scheduler.submit(["1", "2", "3"], None))
        await asyncio.sleep(0.05)  # the first job is running: the queue is empty again
        second = asyncio.ensure_future(scheduler.submit(["4", "5", "6"], None))
        await asyncio.sleep(0.01)
        with pytest.raises(OverloadedError, match="max_queue_texts=4"):
            await scheduler.submit(["7", "8"], None)
        model.gate.set()
        await asyncio.gather(first, second)

    asyncio.run(main())
    scheduler.close()


def test_cancelled_request_is_skipped_and_does_not_block_others():
    model = FakeModel(delay=0.02)
    model.gate.clear()
    scheduler = model.scheduler()

    async def main():
        first = asyncio.ensure_future(scheduler.submit(["1"], None))
        await asyncio.sleep(0.02)  # the first job holds the inference stage
        doomed = asyncio.ensure_future(scheduler.submit(["2"], None))
        await asyncio.sleep(0.02)
        doomed.cancel()
        await asyncio.sleep(0.01)
        model.gate.set()
        third = await scheduler.submit(["3"], None)
        assert (await first)[0, 0] == 1
        assert third[0, 0] == 3

    asyncio.run(main())
    assert scheduler.queued_texts == 0
    assert scheduler.stats.abandoned == 1 and sum(model.jobs) == 2  # the cancelled text was never computed
    scheduler.close()


def test_batch_wait_collects_a_fuller_job():
    model = FakeModel()
    scheduler = model.scheduler(max_wait_s=0.05)

    async def main():
        first = asyncio.ensure_future(scheduler.submit(["1"], None))
        await asyncio.sleep(0.01)
        await asyncio.gather(first, *(scheduler.submit([str(i)], None) for i in range(2, 6)))

    asyncio.run(main())
    assert model.jobs == [5]
    scheduler.close()


def test_a_job_whose_callers_all_left_stops_quietly_and_the_stage_goes_on():
    """The engine raises JobAbandoned between batches once every caller of the job went away (a timeout): counted
    as abandoned, not as a failed job, and the next request is served."""
    from embedserve.errors import JobAbandoned

    model = FakeModel()
    infer = model.infer

    def infer_or_stop(job):
        model.gate.wait(5)  # the job is running (its first batch) when its caller leaves
        if all(p.abandoned for p in job):
            raise JobAbandoned("every caller went away")
        return infer(job)

    model.gate.clear()
    scheduler = Scheduler(model.tokenize, infer_or_stop, max_queue_texts=100, max_job_texts=32)

    async def main():
        doomed = asyncio.ensure_future(scheduler.submit(["1", "2"], None))
        await asyncio.sleep(0.02)
        doomed.cancel()  # as BentoML's timeout cancels the handler
        await asyncio.sleep(0.02)
        model.gate.set()
        return await scheduler.submit(["3"], None)

    assert asyncio.run(main())[0, 0] == 3
    assert scheduler.stats.abandoned == 1 and scheduler.stats.failed_jobs == 0
    scheduler.close()
