"""Batch planning and the scheduler's two stages (with fake tokenize / infer functions: no model needed)."""

from __future__ import annotations

import asyncio
import os
import threading
import time

import numpy as np
import pytest

from embedserve.errors import DeadlineExceededError, InputError, OverloadedError
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
    """tokenize: text -> int; infer: rows [x, 2x] per text. Records what was tokenized and each job's texts.

    ``gate`` holds a job before it computes (``entered`` is set once one is held), ``tokenize_gate`` holds
    tokenization: with them a test knows exactly which pieces are queued behind which.
    """

    def __init__(self, delay: float = 0.0, fail: bool = False, refuse: str | None = None) -> None:
        self.jobs: list[int] = []
        self.inferred: list[list[str]] = []
        self.tokenized: list[str] = []
        self.delay = delay
        self.fail = fail
        self.refuse = refuse
        self.gate = threading.Event()
        self.gate.set()
        self.tokenize_gate = threading.Event()
        self.tokenize_gate.set()
        self.entered = threading.Event()
        self.tokenizing = threading.Event()

    def tokenize(self, batch: list[Pending]) -> None:
        self.tokenizing.set()
        self.tokenize_gate.wait(5)
        for pending in batch:
            self.tokenized.extend(pending.texts)
            if self.refuse is not None and self.refuse in pending.texts:
                pending.fail(InputError(f"refused {self.refuse!r}"))
                continue
            pending.tokens = np.array([int(t) for t in pending.texts], dtype=np.float32)

    def infer(self, job: list[Pending]) -> list[np.ndarray]:
        self.entered.set()
        self.gate.wait(5)
        self.jobs.append(sum(len(p.texts) for p in job))
        self.inferred.append([t for p in job for t in p.texts])
        time.sleep(self.delay)
        if self.fail:
            raise RuntimeError("boom: model exploded")
        return [np.stack([p.tokens, p.tokens * 2], axis=1) for p in job]

    async def hold(self, scheduler: Scheduler, text: str = "0") -> asyncio.Future:
        """Submit a one-text request and return once its job is computing, held at ``gate``."""
        self.gate.clear()
        self.entered.clear()
        blocker = asyncio.ensure_future(scheduler.submit([text], None))
        assert await asyncio.to_thread(self.entered.wait, 5)
        return blocker

    def scheduler(self, **kwargs) -> Scheduler:
        kwargs.setdefault("max_queue_texts", 10_000)
        kwargs.setdefault("max_job_texts", 32)
        return Scheduler(self.tokenize, self.infer, merge=np.concatenate, **kwargs)


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
    scheduler = Scheduler(model.tokenize, infer_or_stop, merge=np.concatenate, max_queue_texts=100, max_job_texts=32)

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


def _texts(start: int, count: int) -> list[str]:
    return [str(i) for i in range(start, start + count)]


async def _computable(scheduler: Scheduler, texts: int) -> None:
    """Wait until ``texts`` texts are tokenized and waiting for the (held) inference stage."""
    for _ in range(5000):
        if scheduler._inference.texts() == texts:
            return
        await asyncio.sleep(0.001)
    raise AssertionError(f"{scheduler._inference.texts()} texts are waiting for inference, not {texts}")


@pytest.mark.parametrize("pipelined", [True, False])
def test_a_large_request_is_cut_into_bounded_jobs_and_joined_in_order(pipelined):
    model = FakeModel()
    scheduler = model.scheduler(max_job_texts=32, pipelined=pipelined)

    async def main():
        return await scheduler.submit(_texts(0, 100), None)

    rows = asyncio.run(main())
    np.testing.assert_array_equal(rows[:, 0], np.arange(100))
    assert model.jobs == [32, 32, 32, 4]
    assert scheduler.stats.requests == 1 and scheduler.stats.texts == 100 and scheduler.queued_texts == 0
    scheduler.close()


def test_jobs_are_also_cut_by_estimated_cost():
    model = FakeModel()
    # a text costs its value: 100 + 100 + 1 fits a budget of 250, the next 100 does not
    scheduler = model.scheduler(max_job_texts=32, max_job_units=250, cost=float)
    texts = ["100", "100", "1", "100", "300", "2"]

    async def main():
        return await scheduler.submit(texts, None)

    rows = asyncio.run(main())
    np.testing.assert_array_equal(rows[:, 0], [int(t) for t in texts])
    assert model.inferred == [["100", "100", "1"], ["100"], ["300"], ["2"]]  # a text over budget gets a job alone
    scheduler.close()


@pytest.mark.parametrize("pipelined", [True, False])
def test_a_small_request_waits_for_one_job_not_for_a_large_request(pipelined):
    model = FakeModel()
    scheduler = model.scheduler(max_job_texts=32, pipelined=pipelined)

    async def main():
        blocker = await model.hold(scheduler, "7")
        big = asyncio.ensure_future(scheduler.submit(_texts(1000, 128), None))  # 4 jobs
        await asyncio.sleep(0)
        small = asyncio.ensure_future(scheduler.submit(["5"], None))
        await _computable(scheduler, 129)
        model.gate.set()
        return await asyncio.gather(blocker, big, small)

    _, big, small = asyncio.run(main())
    np.testing.assert_array_equal(big[:, 0], np.arange(1000, 1128))
    assert small[0, 0] == 5
    # the big request's first job was queued first; the small one comes right after it, not after all four
    assert model.inferred[2] == ["5"] and model.jobs == [1, 32, 1, 32, 32, 32]
    scheduler.close()


def test_two_large_requests_alternate_job_by_job():
    model = FakeModel()
    scheduler = model.scheduler(max_job_texts=32)

    async def main():
        blocker = await model.hold(scheduler)
        first = asyncio.ensure_future(scheduler.submit(_texts(100, 64), None))
        await asyncio.sleep(0)
        second = asyncio.ensure_future(scheduler.submit(_texts(200, 64), None))
        await _computable(scheduler, 128)
        model.gate.set()
        return await asyncio.gather(blocker, first, second)

    _, first, second = asyncio.run(main())
    np.testing.assert_array_equal(first[:, 0], np.arange(100, 164))
    np.testing.assert_array_equal(second[:, 0], np.arange(200, 264))
    assert [job[0] for job in model.inferred[1:]] == ["100", "200", "132", "232"]
    scheduler.close()


def _refused_at_once(scheduler: Scheduler, texts: list[str]) -> OverloadedError:
    """Submit without letting the coroutine wait: a refusal must come before its first suspension."""
    coroutine = scheduler.submit(texts, None)
    with pytest.raises(OverloadedError) as info:
        coroutine.send(None)
    return info.value


def test_admission_bounds_the_predicted_wait_and_retry_after_follows_the_queue():
    model = FakeModel()
    # 100 texts/s measured (seeded here): 2 s of work is 200 texts ahead of a request
    scheduler = model.scheduler(max_job_texts=32, throughput=100.0, max_queue_wait_s=2.0)

    async def main():
        blocker = await model.hold(scheduler)
        big = asyncio.ensure_future(scheduler.submit(_texts(1000, 320), None))  # an empty queue admits anything
        await asyncio.sleep(0)
        # a second big request would wait for all of the first (interleaved with it): 3.2 s
        refused = _refused_at_once(scheduler, _texts(2000, 320))
        assert "3.2 s, above max_queue_wait_s=2" in refused.message
        assert refused.retry_after_s == pytest.approx(1.2)
        # a small request waits for one job of the big one: 0.32 s
        small = asyncio.ensure_future(scheduler.submit(["5"], None))
        await asyncio.sleep(0)
        # requests of ten texts are admitted while less than 2 s of work is ahead of them in the first round
        fillers = [asyncio.ensure_future(scheduler.submit(_texts(3000 + 10 * k, 10), None)) for k in range(17)]
        await asyncio.sleep(0)
        assert scheduler.queued_texts == 320 + 1 + 170  # all admitted: the last found 193 texts ahead (1.93 s)
        refused = _refused_at_once(scheduler, ["6"])  # 203 texts ahead: 2.03 s
        assert refused.retry_after_s == pytest.approx(0.03)
        model.gate.set()
        return await asyncio.gather(blocker, big, small, *fillers)

    results = asyncio.run(main())
    assert results[2][0, 0] == 5
    assert scheduler.stats.refused == 2 and scheduler.queued_texts == 0
    scheduler.close()


def test_the_text_cap_refusal_says_when_to_retry():
    model = FakeModel()
    scheduler = model.scheduler(max_queue_texts=40, throughput=10.0, max_queue_wait_s=100.0)

    async def main():
        blocker = await model.hold(scheduler)
        queued = asyncio.ensure_future(scheduler.submit(_texts(10, 30), None))
        await asyncio.sleep(0)
        refused = _refused_at_once(scheduler, _texts(50, 15))  # 5 texts too many: 0.5 s of work at 10 texts/s
        assert "max_queue_texts=40" in refused.message and refused.retry_after_s == pytest.approx(0.5)
        model.gate.set()
        await asyncio.gather(blocker, queued)

    asyncio.run(main())
    scheduler.close()


def test_throughput_is_measured_from_finished_jobs_weighted_by_their_seconds():
    model = FakeModel()
    scheduler = model.scheduler(throughput=100.0, inference_threads=2)
    assert scheduler.throughput == pytest.approx(100.0)  # the seed is for all threads together
    scheduler.observe(1000.0, 1.0)  # one thread computed a job of 1,000 units in 1 s
    assert scheduler.throughput == pytest.approx(2 * (50 * 0.9 + 1000) / (0.9 + 1.0))

    measured = scheduler.throughput

    async def main():
        await scheduler.submit(_texts(0, 15), None)
        assert scheduler.throughput == measured  # under half a job: mostly per-call overhead, not measured
        await scheduler.submit(_texts(0, 16), None)

    asyncio.run(main())
    assert scheduler.throughput != measured  # half a job was measured
    scheduler.close()


@pytest.mark.parametrize("pipelined", [True, False])
def test_a_request_that_does_not_start_by_its_deadline_is_dropped_with_503s_error(pipelined):
    model = FakeModel()
    scheduler = model.scheduler(deadline_s=0.3, pipelined=pipelined)

    async def main():
        blocker = await model.hold(scheduler, "1")  # started at once: it runs past its deadline to its end
        late = asyncio.ensure_future(scheduler.submit(["2", "3"], None))
        with pytest.raises(DeadlineExceededError, match=r"request_deadline_s=0\.3 \(EMBEDSERVE_REQUEST_DEADLINE_S\)"):
            await asyncio.wait_for(late, 5)
        assert scheduler.queued_texts == 0  # released at the deadline, while the model is still busy
        model.gate.set()
        assert (await blocker)[0, 0] == 1
        return await scheduler.submit(["4"], None)

    assert asyncio.run(main())[0, 0] == 4
    assert model.inferred == [["1"], ["4"]]  # the expired texts never reached the model
    assert scheduler.stats.expired == 1 and scheduler.queued_texts == 0
    scheduler.close()


@pytest.mark.parametrize("pipelined", [True, False])
def test_a_cancelled_request_is_skipped_before_tokenizing_and_releases_its_place_at_once(pipelined):
    model = FakeModel()
    scheduler = model.scheduler(pipelined=pipelined)

    async def main():
        model.tokenize_gate.clear()  # the first request holds the tokenizer (its own thread, or the inference one)
        first = asyncio.ensure_future(scheduler.submit(["1"], None))
        assert await asyncio.to_thread(model.tokenizing.wait, 5)
        doomed = asyncio.ensure_future(scheduler.submit(["2", "3"], None))
        await asyncio.sleep(0)
        assert scheduler.queued_texts == 2 + (0 if not pipelined else 1)  # pipelined: the first is tokenizing
        doomed.cancel()
        await asyncio.sleep(0)  # the future's callbacks run
        assert scheduler.queued_texts == (0 if not pipelined else 1)
        model.tokenize_gate.set()
        return await asyncio.gather(first, scheduler.submit(["4"], None))

    first, last = asyncio.run(main())
    assert (first[0, 0], last[0, 0]) == (1, 4)
    assert "2" not in model.tokenized and "2" not in [t for job in model.inferred for t in job]
    assert scheduler.stats.abandoned == 1 and scheduler.queued_texts == 0
    scheduler.close()


@pytest.mark.parametrize("pipelined", [True, False])
def test_a_cancelled_large_request_stops_between_its_jobs(pipelined):
    model = FakeModel()
    scheduler = model.scheduler(max_job_texts=32, pipelined=pipelined)

    async def main():
        model.gate.clear()
        model.entered.clear()
        doomed = asyncio.ensure_future(scheduler.submit(_texts(100, 96), None))  # three jobs
        assert await asyncio.to_thread(model.entered.wait, 5)  # its first job is computing
        doomed.cancel()
        await asyncio.sleep(0)
        assert scheduler.queued_texts == 0
        model.gate.set()
        return await scheduler.submit(["4"], None)

    assert asyncio.run(main())[0, 0] == 4
    assert model.jobs == [32, 1]  # the first job finished; the other two never reached the model
    if not pipelined:
        assert model.tokenized == [*_texts(100, 32), "4"]  # nor the tokenizer
    assert scheduler.stats.abandoned == 1
    scheduler.close()


def test_a_piece_that_fails_to_tokenize_fails_its_whole_request_and_the_rest_is_skipped():
    model = FakeModel(refuse="140")
    scheduler = model.scheduler(max_job_texts=32, pipelined=False)

    async def main():
        failed = scheduler.submit(_texts(100, 96), None)
        with pytest.raises(InputError, match="refused '140'"):
            await failed
        return await scheduler.submit(["4"], None)

    assert asyncio.run(main())[0, 0] == 4
    assert model.jobs == [32, 1]  # the first job ran; the second failed; the third was skipped
    assert scheduler.queued_texts == 0
    scheduler.close()


@pytest.mark.parametrize("pipelined", [True, False])
def test_stage_threads_run_at_a_lower_priority_than_the_event_loop(pipelined):
    """With ``nice``, the tokenize and inference threads run that much nicer than the thread that made the
    scheduler (the event loop's), so that on a full machine requests are admitted or refused before more compute."""
    seen: dict[str, int] = {}

    def priority() -> int:
        return os.getpriority(os.PRIO_PROCESS, threading.get_native_id())

    model = FakeModel()

    def tokenize(batch):
        seen["tokenize"] = priority()
        model.tokenize(batch)

    def infer(job):
        seen["infer"] = priority()
        return model.infer(job)

    own = priority()
    scheduler = Scheduler(
        tokenize, infer, merge=np.concatenate, max_queue_texts=100, max_job_texts=8, pipelined=pipelined, nice=5
    )
    rows = asyncio.run(scheduler.submit(["3"], None))
    scheduler.close()
    np.testing.assert_array_equal(rows, [[3.0, 6.0]])
    assert seen == {"tokenize": min(19, own + 5), "infer": min(19, own + 5)}
    assert priority() == own  # the caller's thread is untouched


def test_an_express_thread_computes_small_requests_while_large_ones_hold_the_others():
    """With one of two threads express, a large request's pieces never occupy both: a one-text request submitted
    while a large request's job is held is computed at once, on the express thread, and the large request's other
    pieces wait for the general thread; the express thread runs at the stage's niceness, the other one nicer."""
    release = threading.Event()
    held = threading.Event()
    ran: list[tuple[str, list[str], int]] = []

    def tokenize(batch):
        for pending in batch:
            pending.tokens = np.array([float(t.split("-")[-1]) for t in pending.texts], dtype=np.float32)

    def infer(job):
        texts = [t for p in job for t in p.texts]
        nice = os.getpriority(os.PRIO_PROCESS, threading.get_native_id())
        ran.append((threading.current_thread().name, texts, nice))
        if texts[0].startswith("big"):
            held.set()
            release.wait(5)
        return [np.stack([p.tokens, p.tokens * 2], axis=1) for p in job]

    own = os.getpriority(os.PRIO_PROCESS, threading.get_native_id())
    scheduler = Scheduler(
        tokenize,
        infer,
        merge=np.concatenate,
        max_queue_texts=100,
        max_job_texts=2,
        pipelined=False,
        inference_threads=2,
        express_threads=1,
        express_units=1,
        nice=2,
    )
    assert scheduler.compute_threads == 1

    async def main():
        big = asyncio.ensure_future(scheduler.submit([f"big-{i}" for i in range(6)], None))  # 3 pieces
        assert await asyncio.to_thread(held.wait, 5)
        mid = asyncio.ensure_future(scheduler.submit(["mid-8", "mid-9"], None))  # one piece, above express_units
        small = await asyncio.wait_for(scheduler.submit(["small-7"], None), 5)  # while the big job is held
        assert not big.done() and sum(len(texts) for _, texts, _ in ran if texts[0].startswith("big")) == 2
        assert not mid.done()  # not a query: it waits for the general thread
        release.set()
        return small, await big, await mid

    small, big, mid = asyncio.run(main())
    scheduler.close()
    np.testing.assert_array_equal(small, [[7.0, 14.0]])
    np.testing.assert_array_equal(big[:, 0], np.arange(6))
    threads = {texts[0]: (name, nice) for name, texts, nice in ran}
    assert threads["small-7"] == ("embedserve-infer-express-1", min(19, own + 2))
    assert threads["mid-8"][0] == "embedserve-infer-0"
    np.testing.assert_array_equal(mid[:, 0], [8, 9])
    assert {threads[f"big-{i}"] for i in (0, 2, 4)} == {("embedserve-infer-0", min(19, own + 2 + 5))}


def test_a_stream_of_new_requests_does_not_hold_back_a_cut_requests_next_pieces():
    """Four closed-loop clients keep one-text requests coming while a request of three pieces waits: each round
    takes one piece of it, so it is done within a few rounds, not after the stream (the soak's 34 s waits)."""
    model = FakeModel()
    scheduler = model.scheduler(max_job_texts=1, pipelined=False)

    async def main():
        blocker = await model.hold(scheduler, "7")
        cut = asyncio.ensure_future(scheduler.submit(["100", "101", "102"], None))

        async def client(c: int) -> None:
            for k in range(30):
                await scheduler.submit([str(1000 + c * 100 + k)], None)

        clients = [asyncio.ensure_future(client(c)) for c in range(4)]
        await asyncio.sleep(0.05)  # every client's first request is queued
        model.gate.set()
        rows = await cut
        await asyncio.gather(blocker, *clients)
        return rows

    rows = asyncio.run(main())
    scheduler.close()
    np.testing.assert_array_equal(rows[:, 0], [100, 101, 102])
    order = [texts[0] for texts in model.inferred]
    assert len(order) == 1 + 3 + 120
    assert order.index("102") <= 1 + 3 * (1 + 4)  # one piece per round, each round one request of each client


def test_admission_counts_pieces_left_behind_in_earlier_rounds_by_the_express_thread():
    """The express thread takes the newest query, which moves the current round past the requests still waiting
    for the held general thread: a newcomer must still count them (10 texts queued at 10 texts/s: 1.0 s > 0.9 s)."""
    release, held = threading.Event(), threading.Event()

    def tokenize(batch):
        for pending in batch:
            pending.tokens = np.zeros(len(pending.texts), dtype=np.float32)

    def infer(job):
        if job[0].texts[0] == "big":
            held.set()
            release.wait(5)
        return [np.stack([p.tokens, p.tokens], axis=1) for p in job]

    scheduler = Scheduler(
        tokenize,
        infer,
        merge=np.concatenate,
        max_queue_texts=100,
        max_job_texts=4,
        pipelined=False,
        inference_threads=2,
        express_threads=1,
        express_units=1,
        max_queue_wait_s=0.9,
        throughput=10.0,
    )

    async def main():
        big = asyncio.ensure_future(scheduler.submit(["big", "big"], None))
        assert await asyncio.to_thread(held.wait, 5)
        mids = [asyncio.ensure_future(scheduler.submit(["mid", "mid"], None)) for _ in range(5)]  # 10 texts wait
        await asyncio.sleep(0)
        for _ in range(2):  # computed at once by the express thread; the second is in a round after the waiting
            await asyncio.wait_for(scheduler.submit(["query"], None), 5)
        with pytest.raises(OverloadedError, match=r"would take 1\.0 s"):
            await scheduler.submit(["late", "late"], None)
        release.set()
        await asyncio.gather(big, *mids)

    asyncio.run(main())
    scheduler.close()
