"""Tokenization with the packaged MiniLM tokenizer: truncation at max_seq_length, padding per batch, prompts."""

from __future__ import annotations

import numpy as np
import pytest

from embedserve.errors import ArtifactError, InputTooLongError
from embedserve.tokenization import TextTokenizer, TokenBatch


@pytest.fixture(scope="module")
def tokenizer(minilm_dir):
    # The shipped tokenizer.json pads to 128 and truncates at 128: both settings must be overridden.
    return TextTokenizer(minilm_dir / "tokenizer.json", max_seq_length=256, pad_id=0)


def test_no_fixed_padding_and_truncation_at_max_seq_length(tokenizer):
    batch = tokenizer.encode(["hello", "word " * 1000])
    assert batch.lengths.tolist() == [3, 256]  # [CLS] hello [SEP]; the long one cut at 256
    assert batch.truncated.tolist() == [False, True]
    assert batch.ids.dtype == np.int64 and batch.n_tokens == 259
    assert batch.row(0).tolist() == [101, 7592, 102]


def test_an_exactly_full_text_is_not_called_truncated(tokenizer):
    words = tokenizer.encode(["word " * 254])
    assert words.lengths.tolist() == [256] and not words.truncated.any()


def test_truncate_false_names_the_input_and_the_limit(tokenizer):
    batch = tokenizer.encode(["fine", "word " * 300])
    with pytest.raises(InputTooLongError) as info:
        batch.require_untruncated(256)
    assert "input 1" in str(info.value)
    assert "max_input_tokens=256" in str(info.value)
    assert info.value.limit == 256
    batch.slice(0, 1).require_untruncated(256)  # the first text alone is fine


def test_left_truncation_keeps_the_end(tokenizer):
    text = "alpha " * 300 + "omega"
    right, left = tokenizer.encode([text]).row(0), tokenizer.encode([text], direction="left").row(0)
    assert left[-2] != right[-2]  # the token before [SEP] is "omega" only when cutting on the left
    assert len(left) == len(right) == 256


def test_pad_right_and_left(tokenizer):
    batch = tokenizer.encode(["a b c d", "x"])
    right = batch.pad(np.array([0, 1]), pad_id=0)
    assert right["input_ids"].shape == (2, 6)
    np.testing.assert_array_equal(right["attention_mask"][1], [1, 1, 1, 0, 0, 0])
    np.testing.assert_array_equal(right["input_ids"][0], batch.row(0))
    left = batch.pad(np.array([1, 0]), pad_id=0, padding_side="left")  # any order of rows
    np.testing.assert_array_equal(left["attention_mask"][0], [0, 0, 0, 1, 1, 1])
    np.testing.assert_array_equal(left["input_ids"][0, 3:], batch.row(1))
    np.testing.assert_array_equal(left["input_ids"][1], batch.row(0))
    assert right["input_ids"].dtype == np.int64 and not right["token_type_ids"].any()


def test_pad_matches_a_per_row_loop_on_random_batches(tokenizer):
    rng = np.random.default_rng(0)
    words = "the quick brown fox jumps over a lazy dog while 42 cats watch".split()
    texts = [" ".join(rng.choice(words, size=int(rng.integers(1, 40)))) for _ in range(50)]
    batch = tokenizer.encode(texts)
    for side in ("right", "left"):
        index = rng.permutation(50)[:17]
        padded = batch.pad(index, pad_id=7, padding_side=side)
        width = int(batch.lengths[index].max())
        for row, i in enumerate(index):
            ids = batch.row(int(i))
            expected = np.full(width, 7)
            if side == "right":
                expected[: len(ids)] = ids
            else:
                expected[width - len(ids) :] = ids
            np.testing.assert_array_equal(padded["input_ids"][row], expected)
            assert padded["attention_mask"][row].sum() == len(ids)


def test_concat_and_slice_round_trip(tokenizer):
    a = tokenizer.encode(["one two", "three"])
    b = tokenizer.encode(["four five six"], prompt="query: ")
    both = TokenBatch.concat([a, b])
    assert len(both) == 3 and both.prompt_lengths.tolist() == [0, 0, 3]
    np.testing.assert_array_equal(both.row(2), b.row(0))
    np.testing.assert_array_equal(both.slice(1, 3).row(0), a.row(1))
    assert both.slice(1, 3).n_tokens == a.lengths[1] + b.lengths[0]


def test_prompt_is_prepended_and_measured(tokenizer):
    plain = tokenizer.encode(["cats"])
    prompted = tokenizer.encode(["cats"], prompt="query: ")
    # "query: " is 2 tokens plus [CLS]; its trailing [SEP] does not count
    assert prompted.prompt_lengths.tolist() == [3]
    assert prompted.lengths[0] == plain.lengths[0] + 2


def test_missing_tokenizer_file(tmp_path):
    with pytest.raises(ArtifactError, match="tokenizer"):
        TextTokenizer(tmp_path / "tokenizer.json", max_seq_length=8, pad_id=0)


def test_explain_gives_teis_token_fields_with_byte_offsets(tokenizer):
    (tokens,) = tokenizer.explain(["naïve café"])
    assert tokens[0].special and tokens[0].text == "[CLS]" and tokens[0].start is None
    assert tokens[-1].special and tokens[-1].text == "[SEP]"
    text = "naïve café".encode()
    for token in tokens[1:-1]:
        assert not token.special
        assert text[token.start : token.stop].decode() == token.text  # offsets index the UTF-8 bytes
    (prompted,) = tokenizer.explain(["café"], add_special_tokens=False, prompt="query: ")
    assert [(t.text, t.start, t.stop) for t in prompted] == [("query", 0, 5), (":", 5, 6), ("café", 7, 12)]
    assert tokenizer.decode([t.id for t in tokens]) == "naive cafe"


def test_decode_refuses_ids_outside_the_vocabulary(tokenizer):
    from embedserve.errors import InputError

    assert tokenizer.vocab_size == 30522
    with pytest.raises(InputError, match=r"'ids\[1\]' is 30522, outside this model's vocabulary of 30522 tokens"):
        tokenizer.decode([101, 30522])
    with pytest.raises(InputError, match="-1"):
        tokenizer.decode([-1])


def test_very_long_texts_are_cut_before_tokenizing_with_the_same_tokens(tokenizer):
    """Issue 9: long texts are cut, not refused; a text far over the model's maximum is cut at a space before it
    is tokenized (4 MB would take seconds), with exactly the tokens the full text gets, on both sides, with a
    prompt, and for a text whose cut part would not fill the model (then the full text is tokenized)."""
    rng = np.random.default_rng(0)
    words = ["alpha", "beta,", "gamma.", "delta", "unbelievable", "naïve", "東京", "x" * 40, "3.14159"]
    long = " ".join(rng.choice(words, size=20_000))  # ~180,000 characters
    sparse = "word " * 100 + " " * 8_000 + "tail end"  # the cut window is all spaces: no overflow after the cut
    unspaced = "y" * 30_000  # no space to cut at: tokenized whole
    texts = [long, sparse, unspaced, "short"]
    assert len(long) > tokenizer.cut_chars and len(sparse) > tokenizer.cut_chars
    for direction in ("right", "left"):
        for prompt in (None, "query: "):
            got = tokenizer.encode(texts, direction=direction, prompt=prompt)
            full = tokenizer._by_direction[direction].encode_batch([prompt + t if prompt else t for t in texts])
            for i, encoding in enumerate(full):
                assert got.row(i).tolist() == encoding.ids, (direction, prompt, i)
            assert got.truncated.tolist() == [True, False, False, False]
