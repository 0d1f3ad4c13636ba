"""Parity metrics and thresholds on synthetic vectors (no model)."""

from __future__ import annotations

import numpy as np
import pytest

from export.parity import (
    FP32_THRESHOLDS,
    MetricThresholds,
    ParityError,
    ParityThresholds,
    ProbeCorpus,
    check,
    compare,
    evaluate,
    spearman,
)


@pytest.fixture(scope="module")
def corpus() -> ProbeCorpus:
    return ProbeCorpus.load()


def test_packaged_corpus_has_what_the_gate_needs(corpus):
    summary = corpus.summary()
    assert summary["texts"] >= 300
    assert summary["queries"] >= 100 and summary["documents"] >= 200 and summary["pairs"] >= 100
    assert any(t.strip() == "" for t in corpus.documents)  # whitespace-only texts are probed
    assert max(len(t.split()) for t in corpus.documents) > 256  # longer than max_seq_length


def test_spearman_basics():
    a = np.array([1.0, 2.0, 3.0, 4.0])
    assert spearman(a, a * 10 + 3) == pytest.approx(1.0)
    assert spearman(a, -a) == pytest.approx(-1.0)
    assert spearman(np.array([1.0, 1.0, 2.0]), np.array([5.0, 5.0, 9.0])) == pytest.approx(1.0)


def test_identical_vectors_are_perfect(corpus):
    ref = np.random.default_rng(0).normal(size=(len(corpus.texts), 16)).astype(np.float32)
    m = compare(ref, ref.copy(), corpus)
    assert m["cosine_min"] == pytest.approx(1.0)
    assert m["top10_overlap_mean"] == 1.0
    assert m["spearman"] == pytest.approx(1.0)
    assert m["max_abs_diff"] == 0.0


def test_one_broken_vector_is_found_and_named(corpus):
    rng = np.random.default_rng(1)
    ref = rng.normal(size=(len(corpus.texts), 16)).astype(np.float32)
    cand = ref.copy()
    cand[5] = -cand[5]
    metrics = compare(ref, cand, corpus)
    assert metrics["cosine_min"] == pytest.approx(-1.0)
    assert metrics["worst"]["cosine_min"] == corpus.texts[5]
    with pytest.raises(ParityError) as info:
        evaluate(
            role="cpu",
            precision="int8",
            provider="CPUExecutionProvider",
            reference=ref,
            candidates={"batched": cand},
            corpus=corpus,
            thresholds=FP32_THRESHOLDS,
        )
    err = info.value
    assert err.metric == "cosine_min" and err.value == pytest.approx(-1.0) and err.threshold == 0.9999
    assert err.text == corpus.texts[5]
    assert "cosine_min" in str(err) and "0.9999" in str(err) and "cpu (int8)" in str(err)


def test_check_orders_violations_and_skips_disabled():
    metrics = {"cosine_min": 0.5, "cosine_p1": 0.99, "max_abs_diff": 0.2}
    limits = MetricThresholds(cosine_min=0.9, cosine_p1=0.98, max_abs_diff=0.1)
    assert [v[0] for v in check(metrics, limits)] == ["max_abs_diff", "cosine_min"]
    assert check(metrics, MetricThresholds()) == []


def test_threshold_overrides():
    t = ParityThresholds().with_override("int8.cosine_min=0.5").with_override("fp32.spearman=none")
    assert t.int8.cosine_min == 0.5 and t.fp32.spearman is None
    assert ParityThresholds.from_dict(t.as_dict()) == t
    for bad in ("int8.cosine=0.5", "int4.cosine_min=1", "cosine_min=1"):
        with pytest.raises(ValueError):
            ParityThresholds().with_override(bad)
