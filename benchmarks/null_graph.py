"""A "null-compute" copy of an artifact: the same files, inputs and outputs, but graphs that do almost nothing.

Each graph is replaced by ``hidden = table[input_ids % vocab_rows]`` (a random float32 table) plus the pooled
output of :func:`export.pooling_graph.add_pooled_output`, so that a benchmark run on it measures the host
pipeline's own ceiling (tokenize, plan, pad, run, pool, normalise) without the model's compute. The manifest's
hashes are updated, so the library opens it like any artifact; ``manifest["null_graph"]`` is ``true`` and the
parity report is dropped (these vectors mean nothing).

    python -m benchmarks.null_graph SOURCE_ARTIFACT TARGET [--vocab-rows 1024]
"""

from __future__ import annotations

import argparse
import json
import shutil
import tempfile
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
import onnx
from onnx import TensorProto, helper, numpy_helper

from embedserve.artifact import MANIFEST_NAME, sha256_file
from export.pooling_graph import POOLED_OUTPUT, add_pooled_output, default_opset, find_hidden_output

#: Inputs the engine may feed, in the order exported graphs declare them.
INPUTS = ("input_ids", "attention_mask", "token_type_ids")
SEED = 20261127


def null_graph_model(
    *,
    hidden_size: int,
    vocab_rows: int = 1024,
    inputs: Sequence[str] = INPUTS,
    opset: int = 18,
    ir_version: int = 8,
    seed: int = SEED,
) -> onnx.ModelProto:
    """A graph with int64 ``(batch, seq)`` inputs and ``last_hidden_state = table[input_ids % vocab_rows]``.

    Inputs other than ``input_ids`` are declared but unused (ONNX Runtime accepts unused inputs).

    Args:
        hidden_size: width of the hidden state.
        vocab_rows: rows of the random table.
        inputs: input names; must include ``input_ids``.
        opset: default-domain opset.
        ir_version: ONNX IR version (kept at what the installed ONNX Runtime reads).
        seed: seed of the table.
    """
    if "input_ids" not in inputs:
        raise ValueError(f"a null graph needs an input_ids input, got {list(inputs)}")
    table = np.random.default_rng(seed).standard_normal((vocab_rows, hidden_size)).astype(np.float32)
    graph = helper.make_graph(
        [
            helper.make_node("Mod", ["input_ids", "null_rows"], ["null_ids"], name="null_mod"),
            helper.make_node("Gather", ["null_table", "null_ids"], ["last_hidden_state"], name="null_gather", axis=0),
        ],
        "embedserve_null_graph",
        [helper.make_tensor_value_info(n, TensorProto.INT64, ["batch_size", "sequence_length"]) for n in inputs],
        [
            helper.make_tensor_value_info(
                "last_hidden_state", TensorProto.FLOAT, ["batch_size", "sequence_length", hidden_size]
            )
        ],
        [
            numpy_helper.from_array(table, "null_table"),
            numpy_helper.from_array(np.array(vocab_rows, np.int64), "null_rows"),
        ],
    )
    return helper.make_model(
        graph, opset_imports=[helper.make_opsetid("", opset)], ir_version=ir_version, producer_name="embedserve"
    )


def build_null_artifact(source_artifact: Path, target: Path, *, vocab_rows: int = 1024) -> Path:
    """Copy an artifact with every ONNX graph replaced by a null-compute graph of the same signature.

    The tokenizer, Dense weights and manifest are copied; each graph gets the source graph's inputs, hidden size
    and opset, ``last_hidden_state`` and ``pooled_embedding`` (the manifest's pooling modes and padding side);
    the manifest's ``files`` and ``artifacts.<role>`` hashes and sizes are updated.

    Args:
        source_artifact: an exported artifact directory.
        target: where to write the copy: must not exist, or be an empty directory.
        vocab_rows: rows of the random embedding table.

    Returns:
        ``target``.

    Raises:
        FileExistsError: ``target`` exists and is not an empty directory.
    """
    source_artifact, target = Path(source_artifact), Path(target)
    if target.exists() and (not target.is_dir() or any(target.iterdir())):
        raise FileExistsError(f"{target} exists and is not an empty directory")
    manifest: dict[str, Any] = json.loads((source_artifact / MANIFEST_NAME).read_text(encoding="utf-8"))
    graphs = {entry["file"] for entry in manifest["artifacts"].values()}
    target.parent.mkdir(parents=True, exist_ok=True)
    work = Path(tempfile.mkdtemp(prefix=f".{target.name}.tmp-", dir=target.parent))
    try:
        for path in sorted(source_artifact.iterdir()):
            if path.is_file() and path.name != MANIFEST_NAME and path.name not in graphs:
                shutil.copy2(path, work / path.name)
        for name in sorted(graphs):
            _write_null_graph(source_artifact / name, work / name, manifest, vocab_rows)
            manifest.setdefault("files", {})[name] = sha256_file(work / name)
        for entry in manifest["artifacts"].values():
            path = work / entry["file"]
            entry.update(sha256=manifest["files"][entry["file"]], bytes=path.stat().st_size)
            entry.update(pooled_output=POOLED_OUTPUT, null_graph=True)
        manifest["null_graph"] = True
        manifest["null_graph_settings"] = {"source": str(source_artifact.resolve()), "vocab_rows": vocab_rows}
        manifest["parity"] = None
        (work / MANIFEST_NAME).write_text(json.dumps(manifest, indent=2, ensure_ascii=False) + "\n", encoding="utf-8")
        if target.exists():
            target.rmdir()
        work.rename(target)
    finally:
        shutil.rmtree(work, ignore_errors=True)
    return target


def _write_null_graph(source: Path, target: Path, manifest: dict[str, Any], vocab_rows: int) -> None:
    real = onnx.load(str(source), load_external_data=False)
    dims = find_hidden_output(real).type.tensor_type.shape.dim
    hidden_size = dims[2].dim_value if len(dims) == 3 and dims[2].dim_value else int(manifest["model"]["hidden_size"])
    model = null_graph_model(
        hidden_size=hidden_size,
        vocab_rows=vocab_rows,
        inputs=[i.name for i in real.graph.input],
        opset=default_opset(real),
        ir_version=real.ir_version,
    )
    onnx.save_model(model, str(target))
    add_pooled_output(
        target,
        pooling=manifest["model"]["pooling"],
        padding_side=manifest.get("tokenizer", {}).get("padding_side", "right"),
    )


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m benchmarks.null_graph", description=__doc__.split("\n\n")[0])
    parser.add_argument("source", type=Path, help="an exported artifact directory")
    parser.add_argument("target", type=Path, help="where to write the null-compute copy (must not exist)")
    parser.add_argument("--vocab-rows", type=int, default=1024, help="rows of the random embedding table")
    args = parser.parse_args(argv)
    print(build_null_artifact(args.source, args.target, vocab_rows=args.vocab_rows))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
