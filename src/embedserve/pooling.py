"""Pooling and normalisation: plain numpy, the same arithmetic as sentence-transformers' ``Pooling``.

Every function takes token embeddings ``(batch, seq, hidden)`` and an attention mask ``(batch, seq)`` of 0/1,
with padding on either side, and returns ``(batch, hidden)`` float32 arrays.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np

#: Pooling modes in the order sentence-transformers concatenates them when several are configured.
POOLING_MODES = ("cls", "max", "mean", "mean_sqrt_len_tokens", "weightedmean", "lasttoken")


def _float_mask(token_embeddings: np.ndarray, attention_mask: np.ndarray) -> np.ndarray:
    return attention_mask.astype(token_embeddings.dtype)[:, :, None]


def cls_pool(token_embeddings: np.ndarray, attention_mask: np.ndarray) -> np.ndarray:
    """The first real token of each row (index 0 with right padding, the first unmasked with left padding)."""
    first = np.argmax(attention_mask, axis=1)
    return token_embeddings[np.arange(token_embeddings.shape[0]), first]


def max_pool(token_embeddings: np.ndarray, attention_mask: np.ndarray) -> np.ndarray:
    """Element-wise maximum over the real tokens."""
    masked = np.where(attention_mask[:, :, None] > 0, token_embeddings, -np.inf)
    return masked.max(axis=1).astype(token_embeddings.dtype, copy=False)


def _masked_sum_and_count(token_embeddings: np.ndarray, attention_mask: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    mask = _float_mask(token_embeddings, attention_mask)
    summed = (token_embeddings * mask).sum(axis=1)
    count = np.maximum(mask.sum(axis=1), 1e-9)
    return summed, count


def mean_pool(token_embeddings: np.ndarray, attention_mask: np.ndarray) -> np.ndarray:
    """Mean of the real tokens (padding excluded)."""
    summed, count = _masked_sum_and_count(token_embeddings, attention_mask)
    return summed / count


def mean_sqrt_len_pool(token_embeddings: np.ndarray, attention_mask: np.ndarray) -> np.ndarray:
    """Sum of the real tokens divided by the square root of their number."""
    summed, count = _masked_sum_and_count(token_embeddings, attention_mask)
    return summed / np.sqrt(count)


def weighted_mean_pool(token_embeddings: np.ndarray, attention_mask: np.ndarray) -> np.ndarray:
    """Mean weighted by position (1, 2, ... over the padded sequence), as sentence-transformers does."""
    mask = _float_mask(token_embeddings, attention_mask)
    positions = np.arange(1, token_embeddings.shape[1] + 1, dtype=token_embeddings.dtype)[None, :, None]
    weights = mask * positions
    return (token_embeddings * weights).sum(axis=1) / np.maximum(weights.sum(axis=1), 1e-9)


def last_token_pool(token_embeddings: np.ndarray, attention_mask: np.ndarray) -> np.ndarray:
    """The last real token of each row, with padding on either side."""
    seq_len = attention_mask.shape[1]
    flipped = attention_mask[:, ::-1]
    last = seq_len - 1 - np.argmax(flipped, axis=1)
    last = np.where(flipped.max(axis=1) == 0, seq_len - 1, last)
    return token_embeddings[np.arange(token_embeddings.shape[0]), last] * attention_mask[
        np.arange(token_embeddings.shape[0]), last
    ][:, None].astype(token_embeddings.dtype)


_POOLERS = {
    "cls": cls_pool,
    "max": max_pool,
    "mean": mean_pool,
    "mean_sqrt_len_tokens": mean_sqrt_len_pool,
    "weightedmean": weighted_mean_pool,
    "lasttoken": last_token_pool,
}


def validate_modes(modes: Sequence[str]) -> tuple[str, ...]:
    """Check pooling mode names; raise ``ValueError`` listing the choices for an unknown one."""
    modes = tuple(modes)
    if not modes:
        raise ValueError(f"at least one pooling mode is needed; choices: {', '.join(POOLING_MODES)}")
    for mode in modes:
        if mode not in _POOLERS:
            raise ValueError(f"unknown pooling mode {mode!r}; choices: {', '.join(POOLING_MODES)}")
    return modes


def pool(token_embeddings: np.ndarray, attention_mask: np.ndarray, modes: Sequence[str]) -> np.ndarray:
    """Apply one or several pooling modes and concatenate the results in the order given.

    Args:
        token_embeddings: ``(batch, seq, hidden)`` output of the transformer.
        attention_mask: ``(batch, seq)`` with 1 for real tokens, 0 for padding (either side).
        modes: pooling mode names from :data:`POOLING_MODES`.

    Returns:
        ``(batch, hidden * len(modes))`` array.
    """
    parts = [_POOLERS[mode](token_embeddings, attention_mask) for mode in validate_modes(modes)]
    return parts[0] if len(parts) == 1 else np.concatenate(parts, axis=-1)


def exclude_prompt(attention_mask: np.ndarray, prompt_length: int | np.ndarray) -> np.ndarray:
    """Zero the first ``prompt_length`` real tokens of each row (a number, or one per row) so pooling skips them."""
    mask = attention_mask.copy()
    first = np.argmax(mask, axis=1)
    positions = np.arange(mask.shape[1])[None, :]
    mask[positions < (first + np.asarray(prompt_length))[:, None]] = 0
    return mask


def l2_normalize(vectors: np.ndarray, eps: float = 1e-12) -> np.ndarray:
    """Rows scaled to unit L2 norm (``torch.nn.functional.normalize`` semantics: norm clamped at ``eps``)."""
    norms = np.linalg.norm(vectors, axis=-1, keepdims=True)
    return vectors / np.maximum(norms, eps)


def truncate_dimensions(vectors: np.ndarray, dimensions: int | None, *, normalize: bool) -> np.ndarray:
    """Keep the first ``dimensions`` components (Matryoshka style) and renormalise if asked. The result is
    contiguous (a column slice is not; the JSON writer takes contiguous arrays only: found by the schema fuzzer)."""
    if dimensions is None or dimensions >= vectors.shape[-1]:
        return vectors
    cut = vectors[..., :dimensions]
    return l2_normalize(cut) if normalize else np.ascontiguousarray(cut)
