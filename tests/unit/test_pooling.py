"""Pooling and normalisation on hand-built arrays, right and left padding."""

from __future__ import annotations

import numpy as np
import pytest

from embedserve.pooling import (
    POOLING_MODES,
    cls_pool,
    exclude_prompt,
    l2_normalize,
    last_token_pool,
    max_pool,
    mean_pool,
    mean_sqrt_len_pool,
    pool,
    truncate_dimensions,
    weighted_mean_pool,
)

# Two sequences: row 0 has 3 real tokens, row 1 has 1; hidden size 2.
TOKENS = np.array(
    [
        [[1.0, 2.0], [3.0, 4.0], [5.0, -6.0], [100.0, 100.0]],
        [[7.0, 8.0], [100.0, 100.0], [100.0, 100.0], [100.0, 100.0]],
    ],
    dtype=np.float32,
)
RIGHT = np.array([[1, 1, 1, 0], [1, 0, 0, 0]])


def left_padded(tokens: np.ndarray, mask: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Move each row's real tokens to the end (what a left-padding tokenizer produces)."""
    out_tokens = np.full_like(tokens, 100.0)
    out_mask = np.zeros_like(mask)
    for row in range(tokens.shape[0]):
        n = int(mask[row].sum())
        out_tokens[row, -n:] = tokens[row, :n]
        out_mask[row, -n:] = 1
    return out_tokens, out_mask


@pytest.fixture(params=["right", "left"])
def batch(request):
    return (TOKENS, RIGHT) if request.param == "right" else left_padded(TOKENS, RIGHT)


def test_mean_ignores_padding(batch):
    tokens, mask = batch
    np.testing.assert_allclose(mean_pool(tokens, mask), [[3.0, 0.0], [7.0, 8.0]])


def test_cls_takes_first_real_token(batch):
    tokens, mask = batch
    np.testing.assert_allclose(cls_pool(tokens, mask), [[1.0, 2.0], [7.0, 8.0]])


def test_last_token_takes_last_real_token(batch):
    tokens, mask = batch
    np.testing.assert_allclose(last_token_pool(tokens, mask), [[5.0, -6.0], [7.0, 8.0]])


def test_max_ignores_padding(batch):
    tokens, mask = batch
    np.testing.assert_allclose(max_pool(tokens, mask), [[5.0, 4.0], [7.0, 8.0]])


def test_mean_sqrt_len(batch):
    tokens, mask = batch
    np.testing.assert_allclose(mean_sqrt_len_pool(tokens, mask), [[9.0 / np.sqrt(3), 0.0], [7.0, 8.0]], rtol=1e-6)


def test_weighted_mean_right_padding():
    # weights are positions 1..seq over real tokens: (1*t0 + 2*t1 + 3*t2) / 6
    expected = (1 * TOKENS[0, 0] + 2 * TOKENS[0, 1] + 3 * TOKENS[0, 2]) / 6
    np.testing.assert_allclose(weighted_mean_pool(TOKENS, RIGHT)[0], expected, rtol=1e-6)


def test_several_modes_concatenate_in_given_order():
    out = pool(TOKENS, RIGHT, ("cls", "mean"))
    assert out.shape == (2, 4)
    np.testing.assert_allclose(out[0], [1.0, 2.0, 3.0, 0.0])


def test_unknown_mode_lists_choices():
    with pytest.raises(ValueError) as info:
        pool(TOKENS, RIGHT, ("avg",))
    for mode in POOLING_MODES:
        assert mode in str(info.value)


def test_all_masked_row_does_not_divide_by_zero():
    mask = np.array([[0, 0, 0, 0], [1, 0, 0, 0]])
    out = mean_pool(TOKENS, mask)
    assert np.isfinite(out).all()
    np.testing.assert_allclose(out[0], [0.0, 0.0])


def test_exclude_prompt_right_and_left(batch):
    tokens, mask = batch
    cut = exclude_prompt(mask, 1)
    # row 0 keeps its 2nd and 3rd real tokens
    np.testing.assert_allclose(mean_pool(tokens, cut)[0], [4.0, -1.0])
    per_row = exclude_prompt(mask, np.array([2, 0]))
    np.testing.assert_allclose(mean_pool(tokens, per_row), [[5.0, -6.0], [7.0, 8.0]])


def test_l2_normalize_and_zero_vector():
    out = l2_normalize(np.array([[3.0, 4.0], [0.0, 0.0]], dtype=np.float32))
    np.testing.assert_allclose(out, [[0.6, 0.8], [0.0, 0.0]])


def test_truncate_dimensions_renormalises_only_when_asked():
    v = l2_normalize(np.array([[1.0, 2.0, 3.0, 4.0]], dtype=np.float32))
    cut = truncate_dimensions(v, 2, normalize=True)
    np.testing.assert_allclose(np.linalg.norm(cut), 1.0, rtol=1e-6)
    np.testing.assert_allclose(cut, l2_normalize(np.array([[1.0, 2.0]])), rtol=1e-6)
    raw = truncate_dimensions(v, 2, normalize=False)
    np.testing.assert_allclose(raw, v[:, :2])
    assert truncate_dimensions(v, None, normalize=True) is v
    assert raw.flags["C_CONTIGUOUS"] and cut.flags["C_CONTIGUOUS"]  # orjson writes only contiguous arrays
