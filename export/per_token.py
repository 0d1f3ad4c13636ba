"""int8 with per-token activation scales: batch-invariant by construction.

Dynamic int8 (``quantize_dynamic``) scales a MatMul's whole input tensor by one number computed per call, so a
text's vector depends on which texts share its batch and how they are padded. Here every token row gets its own
scale, computed from that row alone: a text's tokens are quantized the same way whatever else is in the batch, and
the vectors are bitwise equal whatever the batch (the integer product is exact; only the row itself is read).

For each MatMul whose second input is a constant weight ``W`` (``K x N``):

* smoothing (SmoothQuant, optional): the input's channels are divided by ``s = peak^alpha / max|W_row|^(1-alpha)``
  (``peak``: the channel's largest ``|x|`` on a calibration corpus) and ``W``'s rows multiplied by it, so that a
  few outlier channels no longer set every row's scale;
* ``W`` is quantized once, symmetric int8 per output column (scale ``w_scale[N]``);
* the input is quantized per row: divided by its own ``max|x|`` (symmetric, zero point 128) or mapped onto [0, 1]
  by its own minimum and range (``asymmetric``: for inputs that are almost never negative, such as GELU outputs,
  this doubles the resolution), then ``QuantizeLinear`` with a fixed scale;
* ``MatMulIntegerToFloat`` (ONNX Runtime's fused u8 x s8 product with per-column dequantization) and one ``Mul``
  by the row's scale (plus, when asymmetric, the row minimum times the weight's column sums).

Fused ``Attention`` nodes (query/key/value projections) stay in float, as do the pooling nodes the export adds.
Precision can be kept per MatMul (``keep_float``) when measurement says a node is too sensitive.
"""

from __future__ import annotations

import os
import tempfile
from collections.abc import Iterable
from pathlib import Path
from typing import Any

import numpy as np
import onnx
from onnx import TensorProto, helper, numpy_helper

#: Bits of the int8 weights. x86 CPUs without VNNI (AVX2, AVX-512 without VNNI) multiply u8 x s8 with
#: ``vpmaddubsw``, whose int16 sums of two products saturate beyond 32,767 (255 x 127 x 2 does; 255 x 63 x 2 does
#: not; ONNX Runtime's quantizer calls 7-bit weights ``reduce_range``). On uniformly spread synthetic inputs 8-bit
#: weights then err several times more than 7-bit ones (tests/unit/test_per_token.py), but on MiniLM's real
#: activations, measured on an AVX2-only CPU where the saturation happens, 8-bit weights were closer to the model
#: (min cosine 0.9918 vs 0.9883 on the probe corpus): real rows rarely put two large products side by side, and the
#: extra weight bit counts more. The export's quality measurement runs on the exporting CPU and catches the rest.
WEIGHT_BITS = 8
#: Prefix of every node and tensor added here.
PREFIX = "embedserve_ptq_"
#: Nodes the export stage adds for pooling: never quantized.
POOLING_PREFIX = "embedserve_pool_"


def quantizable_matmuls(model: onnx.ModelProto) -> list[str]:
    """Names of the MatMul nodes with a constant 2-D float weight as second input (pooling nodes excluded)."""
    weights = {i.name: i for i in model.graph.initializer}
    names = []
    for node in model.graph.node:
        if node.op_type != "MatMul" or node.name.startswith(POOLING_PREFIX):
            continue
        weight = weights.get(node.input[1])
        if weight is not None and len(weight.dims) == 2 and weight.data_type == TensorProto.FLOAT:
            names.append(node.name)
    return names


#: Producers whose outputs are (almost) never negative: their consumers are quantized asymmetrically.
ONE_SIDED = ("BiasGelu", "Gelu", "FastGelu", "QuickGelu", "Relu")


def one_sided_inputs(model: onnx.ModelProto) -> list[str]:
    """The quantizable MatMuls whose input comes from a GELU or ReLU (asymmetric quantization suits them)."""
    producer = {o: n for n in model.graph.node for o in n.output}
    nodes = {n.name: n for n in model.graph.node}
    out = []
    for name in quantizable_matmuls(model):
        source = producer.get(nodes[name].input[0])
        if source is not None and source.op_type in ONE_SIDED:
            out.append(name)
    return out


def activation_absmax(source: Path, feeds: Iterable[dict[str, np.ndarray]]) -> dict[str, np.ndarray]:
    """Per input channel, the largest ``|x|`` each quantizable MatMul's input reaches over ``feeds`` (calibration for
    smoothing: texts one at a time, so that padding rows do not count)."""
    import onnxruntime as ort

    model = onnx.load(str(source))
    nodes = {n.name: n for n in model.graph.node}
    names = quantizable_matmuls(model)
    for name in names:
        model.graph.output.append(helper.make_tensor_value_info(nodes[name].input[0], TensorProto.FLOAT, None))
    options = ort.SessionOptions()
    options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_DISABLE_ALL
    session = ort.InferenceSession(model.SerializeToString(), options, providers=["CPUExecutionProvider"])
    outputs = [nodes[name].input[0] for name in names]
    wanted = {i.name for i in session.get_inputs()}
    peak: dict[str, np.ndarray] = {}
    for feed in feeds:
        values = session.run(outputs, {k: v for k, v in feed.items() if k in wanted})
        for name, value in zip(names, values, strict=True):
            m = np.abs(value.reshape(-1, value.shape[-1])).max(axis=0)
            peak[name] = m if name not in peak else np.maximum(peak[name], m)
    return peak


def quantize_per_token(
    source: Path,
    target: Path,
    *,
    keep_float: Iterable[str] = (),
    smoothing: dict[str, np.ndarray] | None = None,
    alpha: float = 0.5,
    asymmetric: Iterable[str] = (),
    check: bool = True,
    weight_bits: int = WEIGHT_BITS,
) -> dict[str, Any]:
    """Write ``target``: ``source`` with every quantizable MatMul (but ``keep_float``) in per-token int8.

    Args:
        smoothing: per MatMul, its input's per-channel peak ``|x|`` (:func:`activation_absmax`): the input is divided
            by ``s = peak^alpha / max|W_row|^(1-alpha)`` per channel and the weight's rows multiplied by it
            (SmoothQuant), moving outlier channels' range into the weight before the row is quantized.
        asymmetric: MatMuls whose input rows are quantized with their own minimum and maximum (a per-row zero point,
            corrected after the integer product) instead of a symmetric range: for inputs such as GELU outputs,
            which are almost never negative, this doubles the resolution.
        weight_bits: 8 (default, measured best on real models) or 7 (no saturation on any x86 CPU).
        check: run the ONNX checker on the result (skipped for the throw-away graphs of a sensitivity search).

    Returns:
        Settings for the manifest: method, granularity, quantized and kept node names.
    """
    model = onnx.load(str(source))
    keep = set(keep_float)
    asym = set(asymmetric)
    candidates = quantizable_matmuls(model)
    weights = {i.name: i for i in model.graph.initializer}
    opset = next(o.version for o in model.opset_import if o.domain in ("", "ai.onnx"))
    if weight_bits not in (7, 8):
        raise ValueError(f"weight_bits must be 7 or 8, not {weight_bits}")
    if opset < 13:
        raise ValueError(f"per-token quantization needs opset >= 13 (ReduceMax axes as input), the graph has {opset}")
    shared = _shared_constants(model)
    new_nodes: list[onnx.NodeProto] = []
    quantized: list[str] = []
    for node in model.graph.node:
        weight = weights.get(node.input[1]) if node.op_type == "MatMul" and len(node.input) == 2 else None
        if (
            weight is None
            or node.name in keep
            or node.name.startswith(POOLING_PREFIX)
            or len(weight.dims) != 2
            or weight.data_type != TensorProto.FLOAT
        ):
            new_nodes.append(node)
            continue
        w = numpy_helper.to_array(weight)
        smooth = None
        if smoothing is not None and node.name in smoothing:
            peak = np.maximum(smoothing[node.name].astype(np.float64), 1e-5)
            w_peak = np.maximum(np.abs(w).max(axis=1).astype(np.float64), 1e-5)
            smooth = (peak**alpha / w_peak ** (1 - alpha)).astype(np.float32)
        new_nodes.extend(
            _per_token_matmul(
                model, node, w, shared, smooth=smooth, asymmetric=node.name in asym, weight_bits=weight_bits
            )
        )
        quantized.append(node.name)
    del model.graph.node[:]
    model.graph.node.extend(new_nodes)
    used = {i for n in model.graph.node for i in n.input}
    kept_inits = [i for i in model.graph.initializer if i.name in used]
    del model.graph.initializer[:]
    model.graph.initializer.extend(kept_inits)
    if check:
        onnx.checker.check_model(model)
    handle, tmp = tempfile.mkstemp(dir=Path(target).parent, prefix=".per-token-", suffix=".onnx")
    os.close(handle)
    onnx.save(model, tmp)
    os.replace(tmp, target)
    return {
        "method": "per-token",
        "weights": f"int8 holding {weight_bits}-bit values (symmetric, per output channel)",
        "activations": "uint8 per token row, from that row alone (symmetric, or min/max for the asymmetric ones)",
        "quantized": len(quantized),
        "kept_float": sorted(keep & set(candidates)),
        "fused_attention": "float",
        "smoothing": None if smoothing is None else {"alpha": alpha, "smoothed": len(set(smoothing) & set(quantized))},
        "asymmetric": sorted(asym & set(quantized)),
    }


def _shared_constants(model: onnx.ModelProto) -> dict[str, str]:
    """Scalar constants every quantized MatMul uses, added once."""
    values = {
        "eps": np.array(1e-12, dtype=np.float32),
        "sym_scale": np.array(1.0 / 127.0, dtype=np.float32),
        "zero_point": np.array(128, dtype=np.uint8),
        "asym_scale": np.array(1.0 / 255.0, dtype=np.float32),
        "asym_zero": np.array(0, dtype=np.uint8),
        "last_axis": np.array([-1], dtype=np.int64),
    }
    names = {}
    for key, value in values.items():
        name = f"{PREFIX}{key}"
        model.graph.initializer.append(numpy_helper.from_array(value, name))
        names[key] = name
    return names


def _per_token_matmul(
    model: onnx.ModelProto,
    node: onnx.NodeProto,
    weight: np.ndarray,
    shared: dict[str, str],
    *,
    smooth: np.ndarray | None = None,
    asymmetric: bool = False,
    weight_bits: int = WEIGHT_BITS,
) -> list[onnx.NodeProto]:
    """Nodes computing ``node``'s output with per-token int8 activations and per-channel int8 weights."""
    stem = PREFIX + node.name.strip("/").replace("/", "_")

    def t(name: str) -> str:
        return f"{stem}_{name}"

    nodes: list[onnx.NodeProto] = []
    x, out = node.input[0], node.output[0]
    if smooth is not None:
        weight = weight * smooth[:, None]
        model.graph.initializer.append(numpy_helper.from_array((1.0 / smooth).astype(np.float32), t("smooth")))
        nodes.append(helper.make_node("Mul", [x, t("smooth")], [t("smoothed")], name=t("smoothed")))
        x = t("smoothed")
    w_max = float(2 ** (weight_bits - 1) - 1)
    w_scale = np.maximum(np.abs(weight).max(axis=0), 1e-12) / w_max
    w_q = np.clip(np.round(weight / w_scale), -w_max, w_max).astype(np.int8)
    model.graph.initializer.extend(
        [
            numpy_helper.from_array(w_q, t("w")),
            numpy_helper.from_array(w_scale.astype(np.float32), t("w_scale")),
        ]
    )
    ms = "com.microsoft"
    if not asymmetric:
        # Each row is divided by its own max|x| (so it lies in [-1, 1]) and quantized with the fixed scale 1/127 and
        # zero point 128; the fused integer product is scaled back per column (w_scale) and per row (max|x|).
        nodes += [
            helper.make_node("Abs", [x], [t("abs")], name=t("abs")),
            helper.make_node("ReduceMax", [t("abs"), shared["last_axis"]], [t("absmax")], name=t("absmax"), keepdims=1),
            helper.make_node("Max", [t("absmax"), shared["eps"]], [t("scale")], name=t("scale")),
            helper.make_node("Div", [x, t("scale")], [t("unit")], name=t("unit")),
            helper.make_node(
                "QuantizeLinear", [t("unit"), shared["sym_scale"], shared["zero_point"]], [t("q")], name=t("q")
            ),
            helper.make_node(
                "MatMulIntegerToFloat",
                [t("q"), t("w"), shared["sym_scale"], t("w_scale"), shared["zero_point"]],
                [t("unit_out")],
                name=t("matmul"),
                domain=ms,
            ),
            helper.make_node("Mul", [t("unit_out"), t("scale")], [out], name=t("out")),
        ]
    else:
        # Each row is mapped onto [0, 1] by its own minimum and range and quantized with the fixed scale 1/255:
        # x = lo + range * u, so x @ W = range * (u @ W) + lo * colsum(W)  (the second term per row and column).
        col_sum = (w_q.astype(np.float32) * w_scale.astype(np.float32)).sum(axis=0)
        model.graph.initializer.append(numpy_helper.from_array(col_sum.astype(np.float32), t("colsum")))
        nodes += [
            helper.make_node("ReduceMax", [x, shared["last_axis"]], [t("hi")], name=t("hi"), keepdims=1),
            helper.make_node("ReduceMin", [x, shared["last_axis"]], [t("lo")], name=t("lo"), keepdims=1),
            helper.make_node("Sub", [t("hi"), t("lo")], [t("span")], name=t("span")),
            helper.make_node("Max", [t("span"), shared["eps"]], [t("scale")], name=t("scale")),
            helper.make_node("Sub", [x, t("lo")], [t("from_lo")], name=t("from_lo")),
            helper.make_node("Div", [t("from_lo"), t("scale")], [t("unit")], name=t("unit")),
            helper.make_node(
                "QuantizeLinear", [t("unit"), shared["asym_scale"], shared["asym_zero"]], [t("q")], name=t("q")
            ),
            helper.make_node(
                "MatMulIntegerToFloat",
                [t("q"), t("w"), shared["asym_scale"], t("w_scale")],
                [t("unit_out")],
                name=t("matmul"),
                domain=ms,
            ),
            helper.make_node("Mul", [t("unit_out"), t("scale")], [t("spread")], name=t("spread")),
            helper.make_node("Mul", [t("lo"), t("colsum")], [t("shift")], name=t("shift")),
            helper.make_node("Add", [t("spread"), t("shift")], [out], name=t("out")),
        ]
    return nodes
