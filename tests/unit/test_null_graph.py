"""benchmarks/null_graph.py: a null-compute copy of an artifact that the production engine opens and runs."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np
import onnx
import onnxruntime as ort
import pytest

from benchmarks.null_graph import build_null_artifact, null_graph_model
from embedserve import Engine, RuntimeConfig
from embedserve.artifact import FORMAT_VERSION, Artifact, sha256_file
from embedserve.head import DenseLayer, Head
from embedserve.pooling import pool
from export.pooling_graph import POOLED_OUTPUT

HIDDEN = 16
TEXTS = ["a short text", "a somewhat longer text with more tokens in it", "x"]


def fake_artifact(directory: Path, minilm_dir: Path, *, padding_side: str = "right") -> Path:
    """An artifact whose "real" graphs are small gather graphs (with no pooled output), plus one Dense layer."""
    directory.mkdir()
    rng = np.random.default_rng(1)
    head = Head(
        pooling=("mean", "lasttoken"),
        dense=(
            DenseLayer(
                rng.standard_normal((8, 2 * HIDDEN)).astype(np.float32), None, "torch.nn.modules.linear.Identity"
            ),
        ),
        normalize=True,
    )
    head.save_weights(directory)
    shutil.copyfile(minilm_dir / "tokenizer.json", directory / "tokenizer.json")
    graphs = {"cpu": "model_cpu_int8.onnx", "gpu": "model_gpu_fp32.onnx"}
    for role, name in graphs.items():
        onnx.save_model(null_graph_model(hidden_size=HIDDEN, vocab_rows=7, seed=len(role)), str(directory / name))
    files = {p.name: sha256_file(p) for p in sorted(directory.iterdir())}
    manifest = {
        "format_version": FORMAT_VERSION,
        "name": "fake",
        "model": {**head.to_manifest(), "dimension": 8, "hidden_size": HIDDEN, "max_seq_length": 32},
        "tokenizer": {"file": "tokenizer.json", "max_seq_length": 32, "pad_id": 0, "padding_side": padding_side},
        "artifacts": {
            role: {"file": name, "precision": "int8" if role == "cpu" else "fp32", "sha256": files[name]}
            for role, name in graphs.items()
        },
        "files": files,
        "parity": {"passed": True},
    }
    (directory / "manifest.json").write_text(json.dumps(manifest))
    return directory


@pytest.mark.parametrize("padding_side", ["right", "left"])
def test_null_artifact_opens_verifies_and_runs(tmp_path, minilm_dir, padding_side):
    source = fake_artifact(tmp_path / "source", minilm_dir, padding_side=padding_side)
    target = build_null_artifact(source, tmp_path / "null", vocab_rows=64)
    assert sorted(p.name for p in target.iterdir()) == sorted(p.name for p in source.iterdir())
    assert sorted(p.name for p in tmp_path.iterdir()) == ["null", "source"]  # no temporary left behind
    manifest = json.loads((target / "manifest.json").read_text())
    assert manifest["null_graph"] is True and manifest["parity"] is None
    artifact = Artifact.open(target)
    artifact.verify()  # every hash in the manifest matches
    for role, entry in manifest["artifacts"].items():
        assert entry["pooled_output"] == POOLED_OUTPUT and entry["sha256"] == sha256_file(target / entry["file"])
        assert entry["bytes"] == (target / entry["file"]).stat().st_size
        model = onnx.load(str(target / entry["file"]))
        assert [i.name for i in model.graph.input] == ["input_ids", "attention_mask", "token_type_ids"]
        assert [o.name for o in model.graph.output] == ["last_hidden_state", POOLED_OUTPUT]
        assert model.graph.initializer[0].dims == [64, HIDDEN]

        engine = Engine(artifact, RuntimeConfig(artifact=role, providers=("CPUExecutionProvider",)))
        vectors = engine.embed(TEXTS)
        assert vectors.shape == (len(TEXTS), 8) and np.isfinite(vectors).all()
        np.testing.assert_allclose(np.linalg.norm(vectors, axis=1), 1.0, rtol=1e-5)

        tokens = engine.tokenize(TEXTS)
        batch = tokens.pad(np.arange(len(tokens)), pad_id=0, padding_side=padding_side)
        session = ort.InferenceSession(str(target / entry["file"]), providers=["CPUExecutionProvider"])
        hidden, pooled = session.run(["last_hidden_state", POOLED_OUTPUT], batch)
        np.testing.assert_allclose(pooled, pool(hidden, batch["attention_mask"], ["mean", "lasttoken"]), atol=1e-5)


def test_target_must_be_new_or_empty(tmp_path, minilm_dir):
    source = fake_artifact(tmp_path / "source", minilm_dir)
    (tmp_path / "empty").mkdir()
    assert build_null_artifact(source, tmp_path / "empty") == tmp_path / "empty"
    with pytest.raises(FileExistsError, match="not an empty directory"):
        build_null_artifact(source, tmp_path / "empty")
