"""The engine on the packaged MiniLM: one path for direct calls and concurrent requests, the same vectors."""

from __future__ import annotations

import asyncio

import numpy as np
import pytest

from embedserve import EmbedOptions, Engine, InputTooLongError, OverloadedError, RuntimeConfig
from embedserve.providers import CPU
from embedserve.scheduler import plan_batches

pytestmark = pytest.mark.slow

WORDS = "the quick brown fox jumps over a lazy dog while forty two cats watch from the old stone wall".split()


def texts(n: int, seed: int = 0) -> list[str]:
    rng = np.random.default_rng(seed)
    return [f"{i}: " + " ".join(rng.choice(WORDS, size=int(rng.integers(1, 60)))) for i in range(n)]


@pytest.fixture(scope="module")
def fp32(minilm_artifact) -> Engine:
    engine = Engine(minilm_artifact, RuntimeConfig(artifact="gpu", providers=(CPU,), intra_op_threads=1))
    yield engine
    engine.close()


def test_concurrent_requests_get_exactly_the_direct_call_vectors(fp32):
    """fp32 is batch-invariant to float rounding: the scheduler's jobs must give each request its own rows."""
    sample = texts(120)
    direct = fp32.embed(sample)
    sizes = [1 + (i % 7) for i in range(40)]
    requests, start = [], 0
    for size in sizes:
        requests.append(sample[start : start + size])
        start += size
    requests = [r for r in requests if r]

    async def send():
        return await asyncio.gather(*(fp32.submit(r) for r in requests))

    results = asyncio.run(send())
    got = np.concatenate([r.vectors for r in results])
    np.testing.assert_allclose(got, direct[: len(got)], atol=2e-6)
    assert all(r.tokens > 0 and r.batch_texts >= 1 and r.inference_s > 0 for r in results)
    assert fp32.scheduler.stats.jobs < len(requests)  # requests were batched together
    assert fp32.queued_texts == 0


def test_options_apply_per_request_inside_one_job(fp32):
    text = "matryoshka dolls nest inside each other"

    async def send():
        return await asyncio.gather(
            fp32.submit([text]),
            fp32.submit([text], EmbedOptions(normalize=False)),
            fp32.submit([text], EmbedOptions(dimensions=32)),
            fp32.submit(["word " * 300], EmbedOptions(truncate=False)),
            fp32.submit(["word " * 300]),
            return_exceptions=True,
        )

    plain, raw, cut, refused, truncated = asyncio.run(send())
    assert np.linalg.norm(plain.vectors) == pytest.approx(1.0, abs=1e-5)
    np.testing.assert_allclose(raw.vectors / np.linalg.norm(raw.vectors), plain.vectors, atol=1e-6)
    assert cut.vectors.shape == (1, 32) and np.linalg.norm(cut.vectors) == pytest.approx(1.0, abs=1e-5)
    assert isinstance(refused, InputTooLongError) and "max_input_tokens=256" in str(refused)
    assert truncated.truncated == 1 and truncated.tokens == 256


def test_tokenizer_threads_and_steps_do_not_change_vectors(minilm_artifact, fp32):
    many = texts(2500, seed=1)  # more than one step of the direct call: the next step tokenizes while this runs
    threaded = Engine(
        minilm_artifact, RuntimeConfig(artifact="gpu", providers=(CPU,), intra_op_threads=1, tokenizer_threads=3)
    )
    try:
        assert threaded.tokenizer_threads == 3
        result = threaded.run(many)
        assert result.vectors.shape == (2500, 384)
        np.testing.assert_allclose(result.vectors[::50], fp32.embed(many[::50]), atol=2e-6)
        assert result.tokens == threaded.tokenize(many).n_tokens
    finally:
        threaded.close()


def test_the_queue_bound_is_enforced(minilm_artifact):
    engine = Engine(minilm_artifact, RuntimeConfig(artifact="cpu", providers=(CPU,), max_queue_texts=8))

    async def send():
        return await asyncio.gather(*(engine.submit(["x " * 200] * 4) for _ in range(6)), return_exceptions=True)

    try:
        results = asyncio.run(send())
        refused = [r for r in results if isinstance(r, OverloadedError)]
        assert refused and all("max_queue_texts=8" in str(r) for r in refused)
        assert all(r.vectors.shape == (4, 384) for r in results if not isinstance(r, Exception))
        assert engine.queued_texts == 0
    finally:
        engine.close()


def test_a_timed_out_request_is_not_computed_to_its_end(fp32):
    """A request whose caller went away (BentoML's timeout cancels the handler) stops between batches instead of
    running the rest of its job (2,048 long texts are minutes of work on a CPU)."""
    from embedserve.errors import JobAbandoned

    sample = texts(512, seed=3)
    tokens = fp32.tokenize(sample)
    before = fp32.timings.batches
    calls = iter([False, True])
    with pytest.raises(JobAbandoned):
        fp32.compute(tokens, abandoned=lambda: next(calls))
    assert fp32.timings.batches - before == 1  # one batch ran, then the job stopped

    async def main():
        with pytest.raises(asyncio.TimeoutError):
            await asyncio.wait_for(fp32.submit(sample), timeout=0.3)
        await asyncio.sleep(1.0)  # the stage notices at its next batch
        return await fp32.submit(["after the timeout"])

    before = fp32.timings.batches
    abandoned = fp32.scheduler.stats.abandoned
    assert asyncio.run(main()).vectors.shape == (1, 384)
    assert fp32.scheduler.stats.abandoned == abandoned + 1
    shape = fp32.shape
    full = len(
        plan_batches(
            tokens.lengths,
            max_batch_size=shape.max_batch_size,
            max_batch_tokens=shape.max_batch_tokens,
            batch_overhead_tokens=shape.overhead_tokens,
        )
    )
    assert full >= 16 and fp32.timings.batches - before < full  # the job's batches (and the last request's one)
