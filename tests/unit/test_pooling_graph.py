"""Pooling inside the ONNX graph (export/pooling_graph.py) against the numpy pooling, on tiny hand-built graphs.

The graphs' ``last_hidden_state`` is ``table[input_ids % rows]``, so padding positions hold real (non-zero)
values and a masking mistake shows; every comparison is with :func:`embedserve.pooling.pool` on the graph's own
``last_hidden_state`` output.
"""

from __future__ import annotations

import json

import numpy as np
import onnx
import onnxruntime as ort
import pytest
from onnx import TensorProto, helper, numpy_helper

from embedserve.pooling import POOLING_MODES, pool
from export.pooling_graph import (
    METADATA_KEY,
    POOLED_OUTPUT,
    PREFIX,
    add_pooled_output,
    append_pooled_output,
)

HIDDEN = 6
ROWS = 50
LENGTHS = (5, 1, 7, 3)
SEQ = 7


def tiny_graph(
    *,
    dtype: int = TensorProto.FLOAT,
    opset: int = 18,
    hidden_name: str = "last_hidden_state",
    hidden_dim: int | str = HIDDEN,
) -> onnx.ModelProto:
    """``hidden = table[input_ids % ROWS]`` (cast to ``dtype``), plus a second output that must survive."""
    table = np.random.default_rng(0).standard_normal((ROWS, HIDDEN)).astype(np.float32)
    nodes = [
        helper.make_node("Mod", ["input_ids", "rows"], ["ids"]),
        helper.make_node("Gather", ["table", "ids"], ["hidden_f32"], axis=0),
        helper.make_node("Cast", ["hidden_f32"], [hidden_name], to=dtype),
        helper.make_node("ReduceSum", ["attention_mask"], ["mask_total"], keepdims=0),
    ]
    inputs = [
        helper.make_tensor_value_info(n, TensorProto.INT64, ["batch_size", "sequence_length"])
        for n in ("input_ids", "attention_mask", "token_type_ids")
    ]
    outputs = [
        helper.make_tensor_value_info(hidden_name, dtype, ["batch_size", "sequence_length", hidden_dim]),
        helper.make_tensor_value_info("mask_total", TensorProto.INT64, []),
    ]
    initializers = [numpy_helper.from_array(table, "table"), numpy_helper.from_array(np.array(ROWS, np.int64), "rows")]
    graph = helper.make_graph(nodes, "tiny", inputs, outputs, initializers)
    return helper.make_model(graph, opset_imports=[helper.make_opsetid("", opset)], ir_version=8)


def feed(padding_side: str, lengths: tuple[int, ...] = LENGTHS, seq: int = SEQ) -> dict[str, np.ndarray]:
    rng = np.random.default_rng(len(lengths) + seq)
    ids = rng.integers(0, 10 * ROWS, size=(len(lengths), seq), dtype=np.int64)
    mask = np.zeros((len(lengths), seq), dtype=np.int64)
    for row, n in enumerate(lengths):
        if n:
            mask[row, :n] = 1 if padding_side == "right" else 0
            if padding_side == "left":
                mask[row, seq - n :] = 1
    return {"input_ids": ids, "attention_mask": mask, "token_type_ids": np.zeros_like(ids)}


def run(model: onnx.ModelProto, inputs: dict[str, np.ndarray]) -> tuple[np.ndarray, np.ndarray]:
    session = ort.InferenceSession(model.SerializeToString(), providers=["CPUExecutionProvider"])
    hidden, pooled = session.run(["last_hidden_state", POOLED_OUTPUT], inputs)
    return hidden, pooled


def pooled_model(modes, **graph_kwargs) -> onnx.ModelProto:
    model = tiny_graph(**graph_kwargs)
    assert append_pooled_output(model, pooling=modes) == POOLED_OUTPUT
    onnx.checker.check_model(model, full_check=True)
    return model


MODE_SETS = [[m] for m in POOLING_MODES] + [["mean", "max"], ["lasttoken", "cls"], list(POOLING_MODES)]


@pytest.mark.parametrize("padding_side", ["right", "left"])
@pytest.mark.parametrize("modes", MODE_SETS, ids="+".join)
def test_graph_pooling_equals_numpy_pooling(modes, padding_side):
    model = pooled_model(modes)
    for lengths, seq in ((LENGTHS, SEQ), ((2, 9, 4), 9), ((1,), 1), ((3, 0), 4)):  # 0: a row with no real token
        inputs = feed(padding_side, lengths, seq)
        hidden, pooled = run(model, inputs)
        assert pooled.dtype == np.float32 and pooled.shape == (len(lengths), HIDDEN * len(modes))
        np.testing.assert_allclose(pooled, pool(hidden, inputs["attention_mask"], modes), atol=1e-5, rtol=1e-5)


def test_padding_really_is_excluded():
    """Padded positions hold table rows, not zeros: a row with one real token pools to that token in every mode."""
    model = pooled_model(["mean", "max", "cls", "lasttoken"])
    inputs = feed("right")
    hidden, pooled = run(model, inputs)
    real = inputs["attention_mask"][1].astype(bool)  # one real token
    np.testing.assert_allclose(pooled[1].reshape(4, HIDDEN), np.tile(hidden[1, real], (4, 1)), rtol=1e-6)


@pytest.mark.parametrize("opset", [13, 17])
def test_older_opsets(opset):
    model = pooled_model(list(POOLING_MODES), opset=opset)
    inputs = feed("left")
    hidden, pooled = run(model, inputs)
    np.testing.assert_allclose(pooled, pool(hidden, inputs["attention_mask"], POOLING_MODES), atol=1e-5)


@pytest.mark.parametrize("hidden_dtype", [TensorProto.FLOAT16, TensorProto.DOUBLE])
def test_non_float32_hidden_is_cast_first_and_pooled_in_float32(hidden_dtype):
    model = pooled_model(["mean", "max", "weightedmean"], dtype=hidden_dtype)
    first = next(n for n in model.graph.node if n.name.startswith(PREFIX))
    assert first.op_type == "Cast" and first.input[0] == "last_hidden_state"
    out = next(o for o in model.graph.output if o.name == POOLED_OUTPUT)
    assert out.type.tensor_type.elem_type == TensorProto.FLOAT
    inputs = feed("right")
    hidden, pooled = run(model, inputs)
    assert hidden.dtype != np.float32 and pooled.dtype == np.float32
    expected = pool(hidden.astype(np.float32), inputs["attention_mask"], ["mean", "max", "weightedmean"])
    np.testing.assert_allclose(pooled, expected, atol=1e-5, rtol=1e-5)


def test_symbolic_hidden_size_and_token_embeddings_name():
    model = pooled_model(["cls", "mean"], hidden_name="token_embeddings", hidden_dim="hidden")
    out = next(o for o in model.graph.output if o.name == POOLED_OUTPUT)
    batch, width = out.type.tensor_type.shape.dim
    assert batch.dim_param == "batch_size" and not width.dim_param and not width.dim_value
    inputs = feed("left")
    session = ort.InferenceSession(model.SerializeToString(), providers=["CPUExecutionProvider"])
    hidden, pooled = session.run(["token_embeddings", POOLED_OUTPUT], inputs)
    np.testing.assert_allclose(pooled, pool(hidden, inputs["attention_mask"], ["cls", "mean"]), atol=1e-5)


def test_file_is_rewritten_in_place_with_outputs_kept_and_metadata(tmp_path):
    path = tmp_path / "model.onnx"
    onnx.save_model(tiny_graph(), str(path))
    assert add_pooled_output(path, pooling=["max", "mean"], padding_side="left") == POOLED_OUTPUT
    assert sorted(p.name for p in tmp_path.iterdir()) == ["model.onnx"]  # no temporary left behind
    model = onnx.load(str(path))
    assert [o.name for o in model.graph.output] == ["last_hidden_state", "mask_total", POOLED_OUTPUT]
    out = model.graph.output[-1]
    assert [d.dim_param or d.dim_value for d in out.type.tensor_type.shape.dim] == ["batch_size", 2 * HIDDEN]
    added = [n for n in model.graph.node if n.name.startswith(PREFIX) or PREFIX in "".join(n.output)]
    assert all(n.name.startswith(PREFIX) for n in added)
    assert all(t.name.startswith(PREFIX) for t in model.graph.initializer if t.name not in ("table", "rows"))
    meta = json.loads(next(p.value for p in model.metadata_props if p.key == METADATA_KEY))
    assert meta == {
        "output": POOLED_OUTPUT,
        "hidden_output": "last_hidden_state",
        "pooling": ["max", "mean"],
        "padding_side": "left",
    }
    with pytest.raises(ValueError, match="already has an output"):
        add_pooled_output(path, pooling=["mean"])
    assert add_pooled_output(path, pooling=["cls"], output_name="pooled_cls") == "pooled_cls"
    session = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    inputs = feed("left")
    hidden, both, cls = session.run(["last_hidden_state", POOLED_OUTPUT, "pooled_cls"], inputs)
    np.testing.assert_allclose(both, pool(hidden, inputs["attention_mask"], ["max", "mean"]), atol=1e-5)
    np.testing.assert_allclose(cls, pool(hidden, inputs["attention_mask"], ["cls"]), atol=1e-5)


def test_unknown_mode_names_the_choices():
    with pytest.raises(ValueError, match=r"unknown pooling mode 'median'; choices: cls, max, mean"):
        append_pooled_output(tiny_graph(), pooling=["mean", "median"])
    with pytest.raises(ValueError, match="at least one pooling mode"):
        append_pooled_output(tiny_graph(), pooling=[])


def test_other_bad_requests_are_named():
    with pytest.raises(ValueError, match="padding side 'middle'; choices: right, left"):
        append_pooled_output(tiny_graph(), pooling=["mean"], padding_side="middle")
    with pytest.raises(ValueError, match="no output named nope; its outputs: last_hidden_state, mask_total"):
        append_pooled_output(tiny_graph(), pooling=["mean"], hidden_output="nope")
    with pytest.raises(ValueError, match="is INT64"):
        append_pooled_output(tiny_graph(), pooling=["mean"], hidden_output="mask_total")
    with pytest.raises(ValueError, match="opset is 12"):
        append_pooled_output(tiny_graph(opset=12), pooling=["mean"])
