"""Tokenization with the artifact's ``tokenizer.json``: truncate at max_seq_length, pad per batch, prompts.

Texts are tokenized in batches with the Rust tokenizer's batch encoding (``encode_batch_fast``: no character
offsets, which embeddings never need; on the tokenizer's own thread pool when it has threads), without padding,
into a :class:`TokenBatch`: every text's token ids in
one flat array plus offsets. The scheduler sorts texts by token count and :meth:`TokenBatch.pad` pads each
inference batch to its own longest member with a few vectorised numpy operations (no per-text Python work).
``tokenizers`` is the only dependency (no transformers, no torch).

Prompts live here, as in TEI: a prompt is prepended to the text before tokenization and the number of prompt
tokens is kept per text so that pooling can exclude them when the model asks.
"""

from __future__ import annotations

import itertools
import os
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from tokenizers import Tokenizer

from embedserve.errors import ArtifactError, InputError, InputTooLongError

DIRECTIONS = ("right", "left")


def use_tokenizer_threads(threads: int) -> None:
    """Let one batch encoding run on ``threads`` threads (the Rust tokenizer's own pool), or on the calling thread.

    Measured on 2 cores: the Rust pool encodes a batch 2x faster, while two Python threads each encoding half a
    batch were only 1.26x faster (the per-text Python objects they create take turns on the GIL). The setting is
    process-wide (``tokenizers`` reads ``TOKENIZERS_PARALLELISM`` at every call, and sizes its pool from
    ``RAYON_NUM_THREADS`` once): an explicit ``RAYON_NUM_THREADS`` from the environment is kept.
    """
    if threads > 1:
        os.environ.setdefault("RAYON_NUM_THREADS", str(threads))
        os.environ["TOKENIZERS_PARALLELISM"] = "true"
    else:
        os.environ["TOKENIZERS_PARALLELISM"] = "false"


@dataclass(frozen=True, slots=True, eq=False)
class TokenBatch:
    """Tokenized texts, unpadded, stored flat.

    Attributes:
        ids: every text's token ids, one after the other (int64).
        type_ids: token type ids, same layout, or ``None`` when all are zero (single-sentence inputs).
        offsets: ``(n + 1,)`` start of each text in ``ids``; text ``i`` is ``ids[offsets[i]:offsets[i + 1]]``.
        truncated: ``(n,)`` True where tokens were cut off at max_seq_length.
        prompt_lengths: ``(n,)`` leading prompt tokens per text (excluded from pooling when the model asks).
    """

    ids: np.ndarray
    type_ids: np.ndarray | None
    offsets: np.ndarray
    truncated: np.ndarray
    prompt_lengths: np.ndarray

    def __len__(self) -> int:
        return int(self.offsets.shape[0]) - 1

    @property
    def lengths(self) -> np.ndarray:
        """Tokens per text (special tokens included)."""
        return np.diff(self.offsets)

    @property
    def n_tokens(self) -> int:
        return int(self.offsets[-1])

    def row(self, i: int) -> np.ndarray:
        """Token ids of text ``i``."""
        return self.ids[self.offsets[i] : self.offsets[i + 1]]

    def slice(self, start: int, stop: int) -> TokenBatch:
        """Texts ``start`` to ``stop`` (views of the flat arrays, offsets rebased)."""
        first, last = int(self.offsets[start]), int(self.offsets[stop])
        return TokenBatch(
            ids=self.ids[first:last],
            type_ids=None if self.type_ids is None else self.type_ids[first:last],
            offsets=self.offsets[start : stop + 1] - first,
            truncated=self.truncated[start:stop],
            prompt_lengths=self.prompt_lengths[start:stop],
        )

    def require_untruncated(self, max_seq_length: int, *, param: str = "input") -> None:
        """Raise when a text was cut at ``max_seq_length`` (for requests that asked not to truncate).

        Raises:
            InputTooLongError: naming the first such input and the limit.
        """
        cut = np.flatnonzero(self.truncated)
        if cut.size:
            raise InputTooLongError(
                f"input {int(cut[0])} has more than {max_seq_length} tokens (max_input_tokens={max_seq_length}) "
                "and truncate is false",
                param=param,
                limit_name="max_input_tokens",
                limit=max_seq_length,
            )

    @classmethod
    def concat(cls, parts: Sequence[TokenBatch]) -> TokenBatch:
        """One batch holding ``parts`` in order."""
        if len(parts) == 1:
            return parts[0]
        starts = np.cumsum([0] + [p.n_tokens for p in parts[:-1]])
        offsets = np.concatenate([[0], *(p.offsets[1:] + s for p, s in zip(parts, starts, strict=True))])
        if all(p.type_ids is None for p in parts):
            type_ids = None
        else:
            type_ids = np.concatenate([np.zeros_like(p.ids) if p.type_ids is None else p.type_ids for p in parts])
        return cls(
            ids=np.concatenate([p.ids for p in parts]),
            type_ids=type_ids,
            offsets=offsets,
            truncated=np.concatenate([p.truncated for p in parts]),
            prompt_lengths=np.concatenate([p.prompt_lengths for p in parts]),
        )

    def pad(self, index: np.ndarray, *, pad_id: int, padding_side: str = "right") -> dict[str, np.ndarray]:
        """Pad the texts ``index`` (in that order) to the longest of them.

        Returns:
            ``input_ids``, ``attention_mask`` and ``token_type_ids``: int64 arrays of shape ``(len(index), longest)``.
        """
        lengths = self.offsets[index + 1] - self.offsets[index]
        width = int(lengths.max())
        n = len(index)
        columns = np.arange(width)
        if padding_side == "right":
            mask = columns[None, :] < lengths[:, None]
        else:
            mask = columns[None, :] >= (width - lengths)[:, None]
        # Positions in the flat arrays of every real token, row after row (the order boolean indexing fills).
        ends = np.cumsum(lengths)
        source = np.arange(int(ends[-1])) + np.repeat(self.offsets[index] - (ends - lengths), lengths)
        ids = np.full((n, width), pad_id, dtype=np.int64)
        ids[mask] = self.ids[source]
        type_ids = np.zeros((n, width), dtype=np.int64)
        if self.type_ids is not None:
            type_ids[mask] = self.type_ids[source]
        return {"input_ids": ids, "attention_mask": mask.astype(np.int64), "token_type_ids": type_ids}


@dataclass(frozen=True, slots=True)
class Token:
    """One token as TEI's ``/tokenize`` describes it (``start``/``stop``: UTF-8 byte offsets, ``None`` for a
    special token)."""

    id: int
    text: str
    special: bool
    start: int | None
    stop: int | None


#: Texts over ``CUT_CHARS_PER_TOKEN x max_seq_length`` characters are cut before tokenizing (English runs at about
#: 4-5 characters per token, so the cut text still holds several times the tokens the model keeps).
CUT_CHARS_PER_TOKEN = 16
_SPACES = (" ", "\n", "\t", "\r")


def _precut(text: str, limit: int, direction: str) -> str | None:
    """``text`` cut to at most ``limit`` characters at a space, keeping the end truncation keeps (the start for
    ``right``); ``None`` when no space lies in the last half of that window (a cut inside a word would change it)."""
    if direction == "right":
        at = max(text.rfind(space, limit // 2, limit) for space in _SPACES)
        return text[:at] if at > 0 else None
    start = len(text) - limit
    found = [at for space in _SPACES if (at := text.find(space, start, start + limit // 2)) >= 0]
    return text[min(found) + 1 :] if found else None


class TextTokenizer:
    """Wraps a ``tokenizers.Tokenizer`` with sentence-transformers' truncation, our padding and the prompts.

    Args:
        tokenizer_file: path to ``tokenizer.json`` (as sentence-transformers ran it, lower-casing included).
        max_seq_length: tokens kept per text, special tokens included.
        pad_id: id used for padding positions.
        padding_side: ``"right"`` or ``"left"``, as the source tokenizer pads.
    """

    def __init__(self, tokenizer_file: Path, *, max_seq_length: int, pad_id: int, padding_side: str = "right"):
        if not Path(tokenizer_file).is_file():
            raise ArtifactError(f"tokenizer file {tokenizer_file} is missing")
        if padding_side not in DIRECTIONS:
            raise ArtifactError(f"padding_side must be 'right' or 'left', not {padding_side!r}")
        self.max_seq_length = int(max_seq_length)
        self.pad_id = int(pad_id)
        self.padding_side = padding_side
        self._by_direction: dict[str, Tokenizer] = {}
        for direction in DIRECTIONS:
            tok = Tokenizer.from_file(str(tokenizer_file))
            tok.no_padding()
            tok.enable_truncation(max_length=self.max_seq_length, strategy="longest_first", direction=direction)
            self._by_direction[direction] = tok
        self._prompt_lengths: dict[str, int] = {}
        #: Texts longer than this are cut at a space near it before tokenizing (see :meth:`_precut`).
        self.cut_chars = max(1024, CUT_CHARS_PER_TOKEN * self.max_seq_length)

    def prompt_length(self, prompt: str) -> int:
        """Tokens of ``prompt`` as a prefix: its encoding minus a trailing special token."""
        if prompt not in self._prompt_lengths:
            enc = self._by_direction["right"].encode(prompt)
            length = len(enc.ids)
            if length and enc.special_tokens_mask[-1]:
                length -= 1
            self._prompt_lengths[prompt] = length
        return self._prompt_lengths[prompt]

    @property
    def vocab_size(self) -> int:
        return self._by_direction["right"].get_vocab_size(with_added_tokens=True)

    def explain(
        self, texts: Sequence[str], *, add_special_tokens: bool = True, prompt: str | None = None
    ) -> list[list[Token]]:
        """Each text's tokens as the model sees them (truncated at max_seq_length), with TEI's fields: id, the text
        it covers (the token itself for a special token), and UTF-8 byte offsets into the text (prompt included)."""
        full = [prompt + t for t in texts] if prompt else list(texts)
        encodings = self._by_direction["right"].encode_batch(full, add_special_tokens=add_special_tokens)
        explained = []
        for text, encoding in zip(full, encodings, strict=True):
            ascii_only = text.isascii()
            tokens = []
            for token_id, token, special, (start, stop) in zip(
                encoding.ids, encoding.tokens, encoding.special_tokens_mask, encoding.offsets, strict=True
            ):
                if special:
                    tokens.append(Token(id=token_id, text=token, special=True, start=None, stop=None))
                    continue
                piece = text[start:stop]
                if not ascii_only:  # character offsets -> byte offsets, as TEI reports them
                    start = len(text[:start].encode("utf-8"))
                    stop = start + len(piece.encode("utf-8"))
                tokens.append(Token(id=token_id, text=piece, special=False, start=start, stop=stop))
            explained.append(tokens)
        return explained

    def decode(self, ids: Sequence[int], *, skip_special_tokens: bool = True) -> str:
        """The text of token ids.

        Raises:
            InputError: an id outside the vocabulary (the message names it and the vocabulary size).
        """
        size = self.vocab_size
        for i, token_id in enumerate(ids):
            if not 0 <= token_id < size:
                raise InputError(
                    f"'ids[{i}]' is {token_id}, outside this model's vocabulary of {size} tokens (0..{size - 1})",
                    param="ids",
                    limit_name="vocab_size",
                    limit=size,
                )
        return self._by_direction["right"].decode(list(ids), skip_special_tokens=skip_special_tokens)

    def encode(self, texts: Sequence[str], *, direction: str = "right", prompt: str | None = None) -> TokenBatch:
        """Tokenize texts (no padding), truncating at max_seq_length.

        Args:
            texts: the texts.
            direction: which end to cut when truncating, ``"right"`` or ``"left"``.
            prompt: a prompt prepended to every text, as sentence-transformers does.
        """
        tokenizer = self._by_direction[direction]
        # A very long text is cut at a space before tokenizing (tokenizing 4 MB to keep 256 tokens costs seconds);
        # the cut text gives exactly the full text's tokens when it still overflows (its words up to the cut are
        # tokenized as in the full text, and truncation keeps only the first max_seq_length of them), else the
        # full text is tokenized after all.
        cuts = {i: _precut(t, self.cut_chars, direction) for i, t in enumerate(texts) if len(t) > self.cut_chars}
        cuts = {i: c for i, c in cuts.items() if c is not None}
        originals = texts
        if cuts:
            texts = [cuts.get(i, t) for i, t in enumerate(texts)]
        full = [prompt + t for t in texts] if prompt else texts
        encodings = tokenizer.encode_batch_fast(full)
        for i in cuts:
            if not encodings[i].overflowing:
                encodings[i] = tokenizer.encode(prompt + originals[i] if prompt else originals[i])
        id_lists = [e.ids for e in encodings]
        lengths = np.fromiter(map(len, id_lists), dtype=np.int64, count=len(id_lists))
        offsets = np.zeros(len(id_lists) + 1, dtype=np.int64)
        np.cumsum(lengths, out=offsets[1:])
        total = int(offsets[-1])
        ids = np.fromiter(itertools.chain.from_iterable(id_lists), dtype=np.int64, count=total)
        type_lists = [e.type_ids for e in encodings]
        type_ids = np.fromiter(itertools.chain.from_iterable(type_lists), dtype=np.int64, count=total)
        truncated = np.zeros(len(id_lists), dtype=bool)
        # Only a text at the limit can have been cut; asking the others for their overflow costs time.
        for i in np.flatnonzero(lengths >= self.max_seq_length):
            truncated[i] = bool(encodings[i].overflowing)
        prompt_length = self.prompt_length(prompt) if prompt else 0
        return TokenBatch(
            ids=ids,
            type_ids=type_ids if type_ids.any() else None,
            offsets=offsets,
            truncated=truncated,
            prompt_lengths=np.full(len(id_lists), prompt_length, dtype=np.int64),
        )
