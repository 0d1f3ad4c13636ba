"""Fast tokenization with the artifact's ``tokenizer.json``: truncate at max_seq_length, pad per batch.

Texts are tokenized once, without padding; the batcher sorts them by token count and :func:`pad_batch` pads each
batch to its own longest member. ``tokenizers`` is the only dependency (no transformers, no torch).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from tokenizers import Tokenizer

from embedserve.errors import ArtifactError, InputTooLongError


@dataclass(frozen=True, slots=True)
class Encoded:
    """One tokenized text.

    Attributes:
        ids: token ids, special tokens included, truncated to max_seq_length.
        type_ids: token type ids, same length.
        truncated: True if tokens were cut off.
        prompt_length: number of leading prompt tokens (excluded from pooling when the model asks).
    """

    ids: np.ndarray
    type_ids: np.ndarray
    truncated: bool
    prompt_length: int = 0

    @property
    def n_tokens(self) -> int:
        return int(self.ids.shape[0])


class TextTokenizer:
    """Wraps a ``tokenizers.Tokenizer`` with sentence-transformers' truncation and our padding.

    Args:
        tokenizer_file: path to ``tokenizer.json`` (as sentence-transformers ran it, lower-casing included).
        max_seq_length: tokens kept per text, special tokens included.
        pad_id: id used for padding positions.
        padding_side: ``"right"`` or ``"left"``, as the source tokenizer pads.
    """

    def __init__(self, tokenizer_file: Path, *, max_seq_length: int, pad_id: int, padding_side: str = "right"):
        if not Path(tokenizer_file).is_file():
            raise ArtifactError(f"tokenizer file {tokenizer_file} is missing")
        if padding_side not in ("right", "left"):
            raise ArtifactError(f"padding_side must be 'right' or 'left', not {padding_side!r}")
        self.max_seq_length = int(max_seq_length)
        self.pad_id = int(pad_id)
        self.padding_side = padding_side
        self._by_direction: dict[str, Tokenizer] = {}
        for direction in ("right", "left"):
            tok = Tokenizer.from_file(str(tokenizer_file))
            tok.no_padding()
            tok.enable_truncation(max_length=self.max_seq_length, strategy="longest_first", direction=direction)
            self._by_direction[direction] = tok
        self._prompt_lengths: dict[str, int] = {}

    def prompt_length(self, prompt: str) -> int:
        """Tokens of ``prompt`` as a prefix: its encoding minus a trailing special token."""
        if prompt not in self._prompt_lengths:
            enc = self._by_direction["right"].encode(prompt)
            length = len(enc.ids)
            if length and enc.special_tokens_mask[-1]:
                length -= 1
            self._prompt_lengths[prompt] = length
        return self._prompt_lengths[prompt]

    def encode(
        self,
        texts: Sequence[str],
        *,
        truncate: bool = True,
        direction: str = "right",
        prompt: str | None = None,
    ) -> list[Encoded]:
        """Tokenize texts (no padding).

        Args:
            texts: the texts.
            truncate: if False, a text longer than max_seq_length raises :class:`InputTooLongError`.
            direction: which end to cut when truncating, ``"right"`` or ``"left"``.
            prompt: a prompt prepended to every text, as sentence-transformers does.

        Raises:
            InputTooLongError: ``truncate`` is False and a text is too long; the message names the limit.
        """
        tokenizer = self._by_direction[direction]
        prompt_length = self.prompt_length(prompt) if prompt else 0
        full = [prompt + t for t in texts] if prompt else list(texts)
        encodings = tokenizer.encode_batch(full)
        out = []
        for i, enc in enumerate(encodings):
            truncated = bool(enc.overflowing)
            if truncated and not truncate:
                total = len(enc.ids) + sum(len(o.ids) for o in enc.overflowing)
                raise InputTooLongError(
                    f"input {i} has more than {self.max_seq_length} tokens (max_input_tokens={self.max_seq_length}, "
                    f"about {total} before truncation) and truncate is false",
                    param="input",
                    limit_name="max_input_tokens",
                    limit=self.max_seq_length,
                )
            out.append(
                Encoded(
                    ids=np.asarray(enc.ids, dtype=np.int64),
                    type_ids=np.asarray(enc.type_ids, dtype=np.int64),
                    truncated=truncated,
                    prompt_length=prompt_length,
                )
            )
        return out


def pad_batch(batch: Sequence[Encoded], *, pad_id: int, padding_side: str = "right") -> dict[str, np.ndarray]:
    """Pad a batch to its longest member.

    Returns:
        ``input_ids``, ``attention_mask`` and ``token_type_ids`` as int64 arrays of shape ``(batch, longest)``.
    """
    width = max(e.n_tokens for e in batch)
    n = len(batch)
    ids = np.full((n, width), pad_id, dtype=np.int64)
    type_ids = np.zeros((n, width), dtype=np.int64)
    mask = np.zeros((n, width), dtype=np.int64)
    for row, enc in enumerate(batch):
        length = enc.n_tokens
        cols = slice(0, length) if padding_side == "right" else slice(width - length, width)
        ids[row, cols] = enc.ids
        type_ids[row, cols] = enc.type_ids
        mask[row, cols] = 1
    return {"input_ids": ids, "attention_mask": mask, "token_type_ids": type_ids}
