"""Per-token int8 (export/per_token.py) on a one-MatMul graph: close to the float product, and each row's result
independent of the other rows in the batch (bitwise)."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import onnx
import onnxruntime as ort
import pytest
from onnx import TensorProto, helper, numpy_helper

from export import per_token
from export.parity import DEFAULT_CORPUS, VERIFY_CORPUS, ProbeCorpus

K, N = 64, 48


def _graph(path: Path, *, gelu: bool) -> np.ndarray:
    rng = np.random.default_rng(3)
    weight = rng.normal(size=(K, N)).astype(np.float32)
    nodes = []
    source = "x"
    if gelu:  # a GELU in front, as in a transformer's feed-forward output
        nodes.append(helper.make_node("Gelu", ["x"], ["g"], name="gelu", domain="com.microsoft"))
        source = "g"
    nodes.append(helper.make_node("MatMul", [source, "w"], ["y"], name="dense/MatMul"))
    graph = helper.make_graph(
        nodes,
        "one",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["b", "l", K])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, ["b", "l", N])],
        [numpy_helper.from_array(weight, "w")],
    )
    model = helper.make_model(
        graph, opset_imports=[helper.make_opsetid("", 18), helper.make_opsetid("com.microsoft", 1)], ir_version=9
    )
    onnx.save(model, path)
    return weight


def _run(path: Path, x: np.ndarray) -> np.ndarray:
    session = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    return session.run(["y"], {"x": x})[0]


@pytest.mark.parametrize("gelu", [False, True])
def test_close_to_float_and_batch_invariant(tmp_path, gelu):
    source, target = tmp_path / "float.onnx", tmp_path / "int8.onnx"
    _graph(source, gelu=gelu)
    rng = np.random.default_rng(0)
    x = rng.normal(size=(3, 5, K)).astype(np.float32)
    x[1] *= 40.0  # a batch mate with a far larger range
    x[2, :, 7] *= 25.0  # an outlier channel
    feeds = [{"x": x[i : i + 1]} for i in range(3)]
    model = onnx.load(source)
    one_sided = per_token.one_sided_inputs(model)
    assert one_sided == (["dense/MatMul"] if gelu else [])
    peaks = per_token.activation_absmax(source, feeds)
    assert peaks["dense/MatMul"].shape == (K,)
    # 7-bit weights: on CPUs without VNNI, u8 x s8 products with 8-bit weights saturate on inputs spread as evenly
    # as these (see per_token.WEIGHT_BITS); the invariance below holds either way.
    settings = per_token.quantize_per_token(source, target, smoothing=peaks, asymmetric=one_sided, weight_bits=7)
    assert settings["quantized"] == 1 and settings["asymmetric"] == one_sided
    ops = {n.op_type for n in onnx.load(target).graph.node}
    assert "MatMulIntegerToFloat" in ops and "MatMul" not in ops

    expected = _run(source, x)
    together = _run(target, x)
    rel = np.linalg.norm(together - expected, axis=-1) / np.linalg.norm(expected, axis=-1)
    assert rel.max() < 0.05 and rel.mean() < 0.03, rel
    for i in range(3):  # each text alone, or next to different mates: the same bits
        np.testing.assert_array_equal(_run(target, x[i : i + 1]), together[i : i + 1])
    np.testing.assert_array_equal(_run(target, x[[2, 0]])[1], together[0])
    per_token.quantize_per_token(source, target, smoothing=peaks, asymmetric=one_sided, weight_bits=8)
    together = _run(target, x)
    for i in range(3):
        np.testing.assert_array_equal(_run(target, x[i : i + 1]), together[i : i + 1])


def test_keep_float_leaves_the_node_alone(tmp_path):
    source, target = tmp_path / "float.onnx", tmp_path / "kept.onnx"
    _graph(source, gelu=False)
    settings = per_token.quantize_per_token(source, target, keep_float=["dense/MatMul"])
    assert settings["quantized"] == 0 and settings["kept_float"] == ["dense/MatMul"]
    x = np.random.default_rng(1).normal(size=(2, 3, K)).astype(np.float32)
    np.testing.assert_allclose(_run(target, x), _run(source, x), rtol=1e-6)


def test_the_verification_corpus_is_a_different_corpus():
    probe, verify = ProbeCorpus.load(DEFAULT_CORPUS), ProbeCorpus.load(VERIFY_CORPUS)
    assert len(verify.texts) >= 500 and len(verify.pairs) >= 100
    assert not set(probe.texts) & set(verify.texts)
