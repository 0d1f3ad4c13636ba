"""Tokenization with the packaged MiniLM tokenizer: truncation at max_seq_length, padding per batch."""

from __future__ import annotations

import numpy as np
import pytest

from embedserve.errors import ArtifactError, InputTooLongError
from embedserve.tokenization import TextTokenizer, pad_batch


@pytest.fixture(scope="module")
def tokenizer(minilm_dir):
    # The shipped tokenizer.json pads to 128 and truncates at 128: both settings must be overridden.
    return TextTokenizer(minilm_dir / "tokenizer.json", max_seq_length=256, pad_id=0)


def test_no_fixed_padding_and_truncation_at_max_seq_length(tokenizer):
    short, long = tokenizer.encode(["hello", "word " * 1000])
    assert short.n_tokens == 3  # [CLS] hello [SEP]
    assert not short.truncated
    assert long.n_tokens == 256
    assert long.truncated


def test_truncate_false_names_the_limit(tokenizer):
    with pytest.raises(InputTooLongError) as info:
        tokenizer.encode(["fine", "word " * 300], truncate=False)
    assert "input 1" in str(info.value)
    assert "max_input_tokens=256" in str(info.value)
    assert info.value.limit == 256


def test_left_truncation_keeps_the_end(tokenizer):
    text = "alpha " * 300 + "omega"
    right, left = tokenizer.encode([text])[0], tokenizer.encode([text], direction="left")[0]
    assert left.ids[-2] != right.ids[-2]  # the token before [SEP] is "omega" only when cutting on the left
    assert left.n_tokens == right.n_tokens == 256


def test_pad_batch_right_and_left(tokenizer):
    batch = tokenizer.encode(["a b c d", "x"])
    right = pad_batch(batch, pad_id=0)
    assert right["input_ids"].shape == (2, 6)
    np.testing.assert_array_equal(right["attention_mask"][1], [1, 1, 1, 0, 0, 0])
    left = pad_batch(batch, pad_id=0, padding_side="left")
    np.testing.assert_array_equal(left["attention_mask"][1], [0, 0, 0, 1, 1, 1])
    np.testing.assert_array_equal(left["input_ids"][1, 3:], batch[1].ids)
    assert right["input_ids"].dtype == np.int64


def test_prompt_is_prepended_and_measured(tokenizer):
    plain = tokenizer.encode(["cats"])[0]
    prompted = tokenizer.encode(["cats"], prompt="query: ")[0]
    # "query: " is 2 tokens plus [CLS]; its trailing [SEP] does not count
    assert prompted.prompt_length == 3
    assert prompted.n_tokens == plain.n_tokens + 2


def test_missing_tokenizer_file(tmp_path):
    with pytest.raises(ArtifactError, match="tokenizer"):
        TextTokenizer(tmp_path / "tokenizer.json", max_seq_length=8, pad_id=0)
