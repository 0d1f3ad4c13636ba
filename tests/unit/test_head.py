"""The numpy head (pooling -> Dense -> Normalize) and its manifest round trip."""

from __future__ import annotations

import math

import numpy as np
import pytest

from embedserve.errors import ArtifactError, UnsupportedModelError
from embedserve.head import ACTIVATIONS, DenseLayer, Head


def test_dense_layer_matches_hand_computation():
    weight = np.array([[1.0, 0.0], [0.5, -1.0], [0.0, 2.0]], dtype=np.float32)
    bias = np.array([0.0, 1.0, -1.0], dtype=np.float32)
    layer = DenseLayer(weight=weight, bias=bias, activation="torch.nn.modules.activation.Tanh")
    x = np.array([[2.0, 1.0]], dtype=np.float32)
    np.testing.assert_allclose(layer(x), np.tanh([[2.0, 1.0, 1.0]]), rtol=1e-6)


def test_gelu_is_exact_erf_gelu():
    x = np.array([-2.0, -0.5, 0.0, 0.7, 3.0], dtype=np.float32)
    expected = [0.5 * v * (1 + math.erf(v / math.sqrt(2))) for v in x]
    np.testing.assert_allclose(ACTIVATIONS["torch.nn.modules.activation.GELU"](x), expected, rtol=1e-6)


def test_unknown_activation_is_named():
    with pytest.raises(UnsupportedModelError, match="Softsign"):
        DenseLayer(weight=np.eye(2, dtype=np.float32), bias=None, activation="torch.nn.modules.activation.Softsign")


def test_head_applies_pooling_dense_and_normalize():
    tokens = np.array([[[1.0, 1.0], [3.0, 3.0], [9.0, 9.0]]], dtype=np.float32)
    mask = np.array([[1, 1, 0]])
    dense = DenseLayer(
        weight=np.array([[2.0, 0.0]], dtype=np.float32), bias=None, activation="torch.nn.modules.linear.Identity"
    )
    head = Head(pooling=("mean",), dense=(dense,), normalize=True)
    raw = head(tokens, mask)
    np.testing.assert_allclose(raw, [[4.0]])
    np.testing.assert_allclose(head.finish(raw), [[1.0]])
    np.testing.assert_allclose(head.finish(raw, normalize=False), [[4.0]])


def test_prompt_tokens_excluded_only_when_asked():
    tokens = np.array([[[10.0], [2.0], [4.0]]], dtype=np.float32)
    mask = np.array([[1, 1, 1]])
    lengths = np.array([1])
    assert Head(pooling=("mean",), include_prompt=True)(tokens, mask, prompt_lengths=lengths)[0, 0] == pytest.approx(
        16 / 3
    )
    assert Head(pooling=("mean",), include_prompt=False)(tokens, mask, prompt_lengths=lengths)[0, 0] == pytest.approx(
        3.0
    )


def test_manifest_round_trip(tmp_path):
    rng = np.random.default_rng(0)
    dense = (
        DenseLayer(
            weight=rng.normal(size=(3, 4)).astype(np.float32),
            bias=rng.normal(size=3).astype(np.float32),
            activation="torch.nn.modules.activation.Tanh",
        ),
        DenseLayer(
            weight=rng.normal(size=(2, 3)).astype(np.float32), bias=None, activation="torch.nn.modules.linear.Identity"
        ),
    )
    head = Head(
        pooling=("cls", "max"),
        include_prompt=False,
        dense=dense,
        normalize=True,
        prompts={"q": "query: "},
        default_prompt_name="q",
    )
    head.save_weights(tmp_path)
    loaded = Head.from_manifest(head.to_manifest(), tmp_path)
    x = rng.normal(size=(2, 5, 2)).astype(np.float32)
    mask = np.array([[1, 1, 1, 0, 0], [1, 1, 1, 1, 1]])
    np.testing.assert_array_equal(loaded(x, mask), head(x, mask))
    assert loaded.prompt_text(None) == "query: "
    with pytest.raises(KeyError):
        loaded.prompt_text("passage")


def test_missing_dense_file_is_an_artifact_error(tmp_path):
    section = {
        "pooling": ["mean"],
        "dense": [
            {
                "file": "dense_0.npz",
                "in_features": 2,
                "out_features": 2,
                "activation": "torch.nn.modules.linear.Identity",
            }
        ],
    }
    with pytest.raises(ArtifactError, match=r"dense_0\.npz"):
        Head.from_manifest(section, tmp_path)


def test_unknown_pooling_is_unsupported():
    with pytest.raises(UnsupportedModelError, match="avg"):
        Head(pooling=("avg",))
