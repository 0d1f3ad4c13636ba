"""Step 4b: pooling inside the ONNX graph, so that a GPU session copies ``(batch, D)`` floats to the host, not
``(batch, seq, hidden)``.

:func:`add_pooled_output` appends nodes to an exported graph (plain, O1-O4 optimized, int8 or fp16) that compute
the pooled vectors from its hidden-state output and its ``attention_mask`` input, with the arithmetic of
:mod:`embedserve.pooling`, and adds them as a new float32 output ``pooled_embedding`` of shape ``(batch, D)``.
The existing outputs are kept. Dense layers and Normalize stay in numpy (cheap on ``(batch, D)``, and they keep
``normalize=false`` and Matryoshka cuts exact).

Two choices differ from the obvious graph, on purpose:

- Masked sums (``mean``, ``mean_sqrt_len_tokens``, ``weightedmean``) are one batched MatMul of the mask row
  ``(batch, 1, seq)`` with the hidden states ``(batch, seq, hidden)``: no ``(batch, seq, hidden)`` temporary.
- First / last real token: ArgMax over scores that have no ties (``mask * seq - position`` for the first,
  ``mask * seq + position`` for the last), not over the 0/1 mask. The CUDA execution provider runs ArgMax through
  cuDNN, which ignores ``select_last_index`` and does not promise which of equal values wins; with distinct
  scores every provider returns the index numpy's ``argmax`` gives (index 0, or ``seq - 1`` for the last token,
  when a row has no real token).
"""

from __future__ import annotations

import json
import os
import shutil
import tempfile
from collections.abc import Callable, Sequence
from pathlib import Path

import numpy as np
import onnx
from onnx import TensorProto, helper, numpy_helper

from embedserve.pooling import POOLING_MODES
from embedserve.session import POOLED_METADATA_KEY, POOLED_OUTPUT  # what the library looks for: defined there

#: Hidden-state outputs looked for, in this order, when none is named.
HIDDEN_OUTPUTS = ("last_hidden_state", "token_embeddings")
#: Graph input holding the 0/1 attention mask.
MASK_INPUT = "attention_mask"
#: Every node, initializer and intermediate value added here starts with this.
PREFIX = "embedserve_pool_"
#: ``metadata_props`` key recording what was added (JSON: output, hidden output, pooling modes, padding side); the
#: library reads it to check that the graph pools as the manifest says.
METADATA_KEY = POOLED_METADATA_KEY
#: Above this serialized size the graph is saved with its weights in one external data file.
EXTERNAL_DATA_BYTES = 1_800_000_000
#: Lowest default-domain opset handled (Squeeze/Unsqueeze/ReduceSum take their axes as inputs from 13 on).
MIN_OPSET = 13
PADDING_SIDES = ("right", "left")

_FLOAT_TYPES = (TensorProto.FLOAT, TensorProto.FLOAT16, TensorProto.BFLOAT16, TensorProto.DOUBLE)


class _GraphBuilder:
    """Appends uniquely named nodes and initializers (all prefixed with :data:`PREFIX`) to a graph."""

    def __init__(self, graph: onnx.GraphProto, opset: int) -> None:
        self.graph = graph
        self.opset = opset
        self._taken: set[str] = {n.name for n in graph.node}
        self._taken.update(o for n in graph.node for o in (*n.input, *n.output))
        self._taken.update(t.name for t in graph.initializer)
        self._taken.update(v.name for v in (*graph.input, *graph.output, *graph.value_info))
        self.nodes: list[onnx.NodeProto] = []
        self.initializers: list[onnx.TensorProto] = []
        self._constants: dict[tuple[str, bytes, tuple[int, ...]], str] = {}

    def name(self, stem: str) -> str:
        candidate, i = f"{PREFIX}{stem}", 0
        while candidate in self._taken:
            i += 1
            candidate = f"{PREFIX}{stem}_{i}"
        self._taken.add(candidate)
        return candidate

    def const(self, stem: str, value: np.ndarray) -> str:
        """An initializer holding ``value`` (identical constants are shared)."""
        key = (value.dtype.str, value.tobytes(), value.shape)
        if key not in self._constants:
            name = self.name(stem)
            self.initializers.append(numpy_helper.from_array(value, name))
            self._constants[key] = name
        return self._constants[key]

    def op(self, op_type: str, inputs: Sequence[str], stem: str, **attrs: object) -> str:
        """Append one single-output node; return its output's name."""
        output = self.name(stem)
        self.nodes.append(helper.make_node(op_type, list(inputs), [output], name=self.name(f"{stem}_node"), **attrs))
        return output

    # -- small helpers over ops whose signature changed between opsets ---------------------------------------

    def axes(self, values: Sequence[int]) -> str:
        return self.const("axes_" + "_".join(str(v).replace("-", "m") for v in values), np.array(values, np.int64))

    def unsqueeze(self, x: str, axis: int, stem: str) -> str:
        return self.op("Unsqueeze", [x, self.axes([axis])], stem)

    def squeeze(self, x: str, axis: int, stem: str) -> str:
        return self.op("Squeeze", [x, self.axes([axis])], stem)

    def reduce_sum(self, x: str, axis: int, stem: str, *, keepdims: int) -> str:
        return self.op("ReduceSum", [x, self.axes([axis])], stem, keepdims=keepdims)

    def reduce_max(self, x: str, axis: int, stem: str, *, keepdims: int) -> str:
        if self.opset >= 18:
            return self.op("ReduceMax", [x, self.axes([axis])], stem, keepdims=keepdims)
        return self.op("ReduceMax", [x], stem, axes=[axis], keepdims=keepdims)

    def finish(self) -> None:
        self.graph.node.extend(self.nodes)
        self.graph.initializer.extend(self.initializers)


class _Pooler:
    """The pooling nodes for one graph; shared intermediate values are built once, on first use."""

    def __init__(self, b: _GraphBuilder, hidden: str, mask: str, hidden_size: int | None) -> None:
        self.b = b
        self.hidden = hidden  # float32 (batch, seq, hidden)
        self.mask_in = mask
        self.hidden_size = hidden_size
        self._cache: dict[str, str] = {}

    def _once(self, key: str, build: Callable[[], str]) -> str:
        if key not in self._cache:
            self._cache[key] = build()
        return self._cache[key]

    # -- shared values -----------------------------------------------------------------------------------

    @property
    def mask(self) -> str:
        """The mask as float32 ``(batch, seq)``."""
        return self._once("mask", lambda: self.b.op("Cast", [self.mask_in], "mask_f32", to=TensorProto.FLOAT))

    @property
    def count(self) -> str:
        """Real tokens per row, at least 1e-9: ``(batch, 1)``."""

        def build() -> str:
            total = self.b.reduce_sum(self.mask, 1, "token_count", keepdims=1)
            return self.b.op("Max", [total, self.b.const("eps", np.array(1e-9, np.float32))], "token_count_clamped")

        return self._once("count", build)

    @property
    def masked_sum(self) -> str:
        """Sum of the real tokens' hidden states ``(batch, hidden)``: ``(batch, 1, seq) @ (batch, seq, hidden)``."""
        return self._once("masked_sum", lambda: self._weighted_sum(self.mask, "masked_sum"))

    @property
    def seq_len(self) -> str:
        """The padded length as a float32 scalar."""

        def build() -> str:
            shape = self.b.op("Shape", [self.mask_in], "mask_shape")
            length = self.b.op("Gather", [shape, self.b.const("one_i64", np.array(1, np.int64))], "seq_len", axis=0)
            return self.b.op("Cast", [length], "seq_len_f32", to=TensorProto.FLOAT)

        return self._once("seq_len", build)

    @property
    def positions(self) -> str:
        """``0, 1, ..., seq - 1`` as float32 ``(seq,)``."""

        def build() -> str:
            zero, one = (
                self.b.const("zero_f32", np.array(0, np.float32)),
                self.b.const("one_f32", np.array(1, np.float32)),
            )
            return self.b.op("Range", [zero, self.seq_len, one], "positions")

        return self._once("positions", build)

    @property
    def scaled_mask(self) -> str:
        """``mask * seq``: the base of the tie-free first / last token scores."""
        return self._once("scaled_mask", lambda: self.b.op("Mul", [self.mask, self.seq_len], "mask_times_len"))

    def _weighted_sum(self, weights: str, stem: str) -> str:
        row = self.b.unsqueeze(weights, 1, f"{stem}_weights_row")
        summed = self.b.op("MatMul", [row, self.hidden], f"{stem}_3d")
        return self.b.squeeze(summed, 1, stem)

    def _token_at(self, index: str, stem: str) -> str:
        """``hidden[row, index[row]]`` for an index ``(batch, 1)``, with GatherElements: ``(batch, hidden)``."""
        index3 = self.b.unsqueeze(index, 2, f"{stem}_index_3d")
        if self.hidden_size is not None:
            shape = self.b.const(f"gather_shape_{self.hidden_size}", np.array([1, 1, self.hidden_size], np.int64))
        else:
            hidden_shape = self.b.op("Shape", [self.hidden], "hidden_shape")
            width = self.b.op("Gather", [hidden_shape, self.b.const("two_1d", np.array([2], np.int64))], "hidden_width")
            shape = self.b.op(
                "Concat", [self.b.const("ones_1d", np.array([1, 1], np.int64)), width], "gather_shape", axis=0
            )
        expanded = self.b.op("Expand", [index3, shape], f"{stem}_index_expanded")
        gathered = self.b.op("GatherElements", [self.hidden, expanded], f"{stem}_3d", axis=1)
        return self.b.squeeze(gathered, 1, stem)

    def _argmax_of(self, scores: str, stem: str) -> str:
        return self.b.op("ArgMax", [scores], stem, axis=1, keepdims=1)

    # -- the modes -----------------------------------------------------------------------------------------

    def mean(self) -> str:
        return self.b.op("Div", [self.masked_sum, self.count], "mean")

    def mean_sqrt_len_tokens(self) -> str:
        root = self.b.op("Sqrt", [self.count], "token_count_sqrt")
        return self.b.op("Div", [self.masked_sum, root], "mean_sqrt_len_tokens")

    def cls(self) -> str:
        # mask * seq - position: real tokens score seq - p > 0, padding -p <= 0, all distinct; the maximum is the
        # first real token, or position 0 in a row without one (numpy's argmax of the mask).
        scores = self.b.op("Sub", [self.scaled_mask, self.positions], "first_token_scores")
        return self._token_at(self._argmax_of(scores, "first_token"), "cls")

    def lasttoken(self) -> str:
        # mask * seq + position: distinct, largest at the last real token, or seq - 1 in a row without one (where
        # the result is then multiplied by that position's mask, 0, as numpy's last_token_pool does).
        scores = self.b.op("Add", [self.scaled_mask, self.positions], "last_token_scores")
        index = self._argmax_of(scores, "last_token")
        token = self._token_at(index, "last_token_state")
        weight = self.b.op("GatherElements", [self.mask, index], "last_token_mask", axis=1)
        return self.b.op("Mul", [token, weight], "lasttoken")

    def max(self) -> str:
        real = self.b.op("Greater", [self.mask, self.b.const("zero_f32", np.array(0, np.float32))], "is_real")
        real3 = self.b.unsqueeze(real, 2, "is_real_3d")
        minus_inf = self.b.const("minus_inf", np.array(-np.inf, np.float32))
        masked = self.b.op("Where", [real3, self.hidden, minus_inf], "max_masked")
        return self.b.reduce_max(masked, 1, "max", keepdims=0)

    def weightedmean(self) -> str:
        one = self.b.const("one_f32", np.array(1, np.float32))
        weights = self.b.op("Mul", [self.mask, self.b.op("Add", [self.positions, one], "positions_1")], "weights")
        summed = self._weighted_sum(weights, "weighted_sum")
        total = self.b.reduce_sum(weights, 1, "weight_total", keepdims=1)
        eps = self.b.const("eps", np.array(1e-9, np.float32))
        return self.b.op("Div", [summed, self.b.op("Max", [total, eps], "weight_total_clamped")], "weightedmean")


def _check_modes(pooling: Sequence[str]) -> tuple[str, ...]:
    modes = (pooling,) if isinstance(pooling, str) else tuple(pooling)
    if not modes:
        raise ValueError(f"at least one pooling mode is needed; choices: {', '.join(POOLING_MODES)}")
    for mode in modes:
        if mode not in POOLING_MODES:
            raise ValueError(f"unknown pooling mode {mode!r}; choices: {', '.join(POOLING_MODES)}")
    return modes


def default_opset(model: onnx.ModelProto) -> int:
    """The model's default-domain (``ai.onnx``) opset version."""
    return next((o.version for o in model.opset_import if o.domain in ("", "ai.onnx")), 0)


def find_hidden_output(model: onnx.ModelProto, hidden_output: str | None = None) -> onnx.ValueInfoProto:
    """The graph output holding the token embeddings: ``hidden_output``, else the first of :data:`HIDDEN_OUTPUTS`.

    Raises:
        ValueError: no such output; the message lists the graph's outputs.
    """
    outputs = {o.name: o for o in model.graph.output}
    wanted = (hidden_output,) if hidden_output is not None else HIDDEN_OUTPUTS
    for name in wanted:
        if name in outputs:
            return outputs[name]
    raise ValueError(f"the graph has no output named {' or '.join(wanted)}; its outputs: {', '.join(outputs)}")


def append_pooled_output(
    model: onnx.ModelProto,
    *,
    pooling: Sequence[str],
    padding_side: str = "right",
    hidden_output: str | None = None,
    output_name: str = POOLED_OUTPUT,
) -> str:
    """Add the pooling nodes and the pooled output to ``model`` in memory (see :func:`add_pooled_output`).

    Returns:
        The new output's name.
    """
    modes = _check_modes(pooling)
    if padding_side not in PADDING_SIDES:
        raise ValueError(f"unknown padding side {padding_side!r}; choices: {', '.join(PADDING_SIDES)}")
    graph = model.graph
    if any(o.name == output_name for o in graph.output):
        raise ValueError(f"the graph already has an output named {output_name!r}")
    if not any(i.name == MASK_INPUT for i in graph.input):
        raise ValueError(f"the graph has no {MASK_INPUT!r} input; its inputs: {', '.join(i.name for i in graph.input)}")
    opset = default_opset(model)
    if opset < MIN_OPSET:
        raise ValueError(f"the graph's opset is {opset}; pooling in the graph needs opset {MIN_OPSET} or later")
    hidden_info = find_hidden_output(model, hidden_output)
    tensor_type = hidden_info.type.tensor_type
    if tensor_type.elem_type not in _FLOAT_TYPES:
        dtype = TensorProto.DataType.Name(tensor_type.elem_type)
        raise ValueError(f"output {hidden_info.name!r} is {dtype}; a floating-point hidden state is needed")
    dims = list(tensor_type.shape.dim) if tensor_type.HasField("shape") else []
    if dims and len(dims) != 3:
        raise ValueError(f"output {hidden_info.name!r} has rank {len(dims)}; (batch, seq, hidden) is needed")
    hidden_size = dims[2].dim_value if dims and dims[2].HasField("dim_value") else None

    b = _GraphBuilder(graph, opset)
    hidden = hidden_info.name
    if tensor_type.elem_type != TensorProto.FLOAT:  # fp16 graphs: pool in float32, as the numpy path does
        hidden = b.op("Cast", [hidden], "hidden_f32", to=TensorProto.FLOAT)
    pooler = _Pooler(b, hidden, MASK_INPUT, hidden_size)
    built: dict[str, str] = {}
    for mode in modes:
        if mode not in built:
            built[mode] = getattr(pooler, mode)()
    parts = [built[mode] for mode in modes]
    if len(parts) == 1:
        b.nodes.append(helper.make_node("Identity", parts, [output_name], name=b.name("output_node")))
    else:
        b.nodes.append(helper.make_node("Concat", parts, [output_name], name=b.name("output_node"), axis=-1))
    b.finish()

    batch = onnx.TensorShapeProto.Dimension()
    if dims:
        batch.CopyFrom(dims[0])
    else:
        batch.dim_param = "batch_size"
    width: int | str | None = hidden_size * len(modes) if hidden_size is not None else None
    output = helper.make_tensor_value_info(output_name, TensorProto.FLOAT, [None, width])
    output.type.tensor_type.shape.dim[0].CopyFrom(batch)
    graph.output.append(output)

    record = {
        "output": output_name,
        "hidden_output": hidden_info.name,
        "pooling": list(modes),
        "padding_side": padding_side,
    }
    kept = [p for p in model.metadata_props if p.key != METADATA_KEY]
    del model.metadata_props[:]
    model.metadata_props.extend(kept)
    model.metadata_props.append(onnx.StringStringEntryProto(key=METADATA_KEY, value=json.dumps(record)))
    return output_name


def add_pooled_output(
    model_path: Path,
    *,
    pooling: Sequence[str],
    padding_side: str = "right",
    hidden_output: str | None = None,
    output_name: str = POOLED_OUTPUT,
) -> str:
    """Add a pooled output to the ONNX graph at ``model_path``, in place.

    The nodes compute the pooling modes of :mod:`embedserve.pooling` (same names, same arithmetic; several modes
    are concatenated along the last axis in the order given) from the hidden-state output and the
    ``attention_mask`` input, in float32 (a float16 hidden state is cast first). Padding may be on either side:
    the nodes do not depend on it; ``padding_side`` is checked and recorded in the graph's metadata. The existing
    outputs are kept. The file is replaced atomically (written next to it, then renamed), with external data only
    when the graph is over 1.8 GB.

    Args:
        model_path: the ``.onnx`` file (plain, ORT-optimized, int8 or fp16).
        pooling: pooling mode names from :data:`embedserve.pooling.POOLING_MODES`.
        padding_side: ``right`` or ``left``, as the artifact's tokenizer pads.
        hidden_output: the ``(batch, seq, hidden)`` output; ``None`` looks for ``last_hidden_state`` then
            ``token_embeddings``.
        output_name: the new output's name.

    Returns:
        The new output's name.

    Raises:
        ValueError: an unknown pooling mode or padding side (the message lists the choices), no hidden-state
            output or ``attention_mask`` input, an output of that name already there, or an opset below 13.
    """
    model_path = Path(model_path)
    model = onnx.load(str(model_path))
    name = append_pooled_output(
        model, pooling=pooling, padding_side=padding_side, hidden_output=hidden_output, output_name=output_name
    )
    save_atomically(model, model_path)
    return name


def save_atomically(model: onnx.ModelProto, path: Path) -> Path:
    """Write ``model`` to ``path`` through a temporary file in the same directory and ``os.replace``.

    Graphs over :data:`EXTERNAL_DATA_BYTES` keep their weights in ``<name>.data`` next to them (protobuf cannot
    hold more than 2 GB).
    """
    path = Path(path)
    work = Path(tempfile.mkdtemp(prefix=f".{path.name}.tmp-", dir=path.parent))
    try:
        staged = work / path.name
        if model.ByteSize() > EXTERNAL_DATA_BYTES:
            data_name = f"{path.name}.data"
            onnx.save_model(
                model, str(staged), save_as_external_data=True, all_tensors_to_one_file=True, location=data_name
            )
            os.replace(work / data_name, path.parent / data_name)
        else:
            onnx.save_model(model, str(staged))
        os.replace(staged, path)
    finally:
        shutil.rmtree(work, ignore_errors=True)
    return path
