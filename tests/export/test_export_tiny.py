"""Export tier: tiny random-weight models built here, exported end to end, each passing the parity gate."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from tiny_models import build_tiny_model

from embedserve import Engine, RuntimeConfig, UnsupportedModelError
from embedserve.pooling import pool
from embedserve.tokenization import TextTokenizer
from export import store
from export.config import ExportConfig
from export.cpu_graph import CPU_GRAPHS
from export.parity import ParityError, ParityThresholds
from export.pipeline import GPU_GRAPHS, export_model, recheck
from export.pooling_graph import POOLED_OUTPUT

ROOT = Path(__file__).resolve().parents[2]
FRESH_TEXTS = [
    "Tiny models still need faithful exports.",
    "a",
    "Zwei Flaschen Wasser, bitte!",
    "def f(x):\n    return x * 2",
    "long " * 400,
]

VARIANTS = {
    "mean-normalize": dict(pooling="mean", normalize=True),
    "cls-raw": dict(pooling="cls", normalize=False),
    "cls-dense-tanh-normalize": dict(pooling="cls", dense=[(24, "Tanh")], normalize=True),
    "max-lasttoken-dense-gelu": dict(
        pooling=["max", "lasttoken"], dense=[(48, "GELU"), (16, "Identity")], normalize=False
    ),
    "mean-prompt-excluded": dict(
        pooling="mean",
        prompts={"query": "query: ", "passage": "passage: "},
        default_prompt_name="query",
        include_prompt=False,
    ),
}


def check_pooled_outputs(artifact_dir: Path) -> None:
    """Every graph has ``pooled_embedding`` (float32, (batch, D)), equal to the numpy pooling of its own
    ``last_hidden_state`` on padded texts of very different lengths."""
    import onnxruntime as ort

    manifest = json.loads((artifact_dir / "manifest.json").read_text())
    model, tok = manifest["model"], manifest["tokenizer"]
    tokenizer = TextTokenizer(
        artifact_dir / tok["file"],
        max_seq_length=tok["max_seq_length"],
        pad_id=tok["pad_id"],
        padding_side=tok["padding_side"],
    )
    tokens = tokenizer.encode(FRESH_TEXTS)
    feed = tokens.pad(np.arange(len(tokens)), pad_id=tok["pad_id"], padding_side=tok["padding_side"])
    assert len(set(feed["attention_mask"].sum(axis=1).tolist())) == len(FRESH_TEXTS)  # all padded differently
    for role, entry in manifest["artifacts"].items():
        assert entry["pooled_output"] == POOLED_OUTPUT, role
        session = ort.InferenceSession(str(artifact_dir / entry["file"]), providers=["CPUExecutionProvider"])
        outputs = {o.name: o for o in session.get_outputs()}
        assert list(outputs) == ["last_hidden_state", POOLED_OUTPUT], (role, list(outputs))
        assert outputs[POOLED_OUTPUT].type == "tensor(float)"
        hidden, pooled = session.run(
            ["last_hidden_state", POOLED_OUTPUT], {i.name: feed[i.name] for i in session.get_inputs()}
        )
        width = model["hidden_size"] * len(model["pooling"])
        assert pooled.dtype == np.float32 and pooled.shape == (len(FRESH_TEXTS), width), (role, pooled.shape)
        expected = pool(hidden.astype(np.float32), feed["attention_mask"], model["pooling"])
        np.testing.assert_allclose(pooled, expected, atol=1e-5, rtol=1e-5, err_msg=role)


AUTO_VARIANT = "mean-normalize"


@pytest.fixture(scope="module", params=sorted(VARIANTS))
def exported(request, tmp_path_factory):
    work = tmp_path_factory.mktemp(request.param)
    source = build_tiny_model(work / "source", seed=len(request.param), **VARIANTS[request.param])
    name = f"tiny-{request.param}"
    # One variant takes the default (auto: per-token int8 and fp32 built, measured and the fastest meeting the
    # quality target kept); the others ask for per-token int8 by name (their subject is pooling, not the choice).
    cpu_graph = "auto" if request.param == AUTO_VARIANT else "per-token"
    result = export_model(
        ExportConfig(model=str(source), name=name, output=work / "artifact", gpu_precision="fp32", cpu_graph=cpu_graph)
    )
    return request.param, source, result


def test_artifact_files_manifest_and_store(exported):
    variant, _, result = exported
    manifest = json.loads((result.artifact_dir / "manifest.json").read_text())
    assert manifest["parity"]["passed"] is True
    assert set(manifest["artifacts"]) == {"cpu", "gpu"}
    cpu = manifest["artifacts"]["cpu"]
    assert cpu["file"] == CPU_GRAPHS[cpu["precision"]] and cpu["batch_invariant"] is True
    selection = manifest["cpu_selection"]
    assert selection["verification"]["quality"]["invariance_min"] >= 0.999  # measured on the verification corpus
    if variant == AUTO_VARIANT:  # both built and measured; the fastest meeting the quality target kept
        assert {c["name"] for c in selection["candidates"]} == {"per-token", "fp32"}
        meeting = [c for c in selection["candidates"] if c["meets_target"]]
        assert selection["chosen"] == max(meeting, key=lambda c: c["texts_per_s"]["score"])["name"] == cpu["graph"]
    else:
        assert selection["chosen"] == cpu["graph"] == "per-token" and cpu["precision"] == "int8"
    assert manifest["artifacts"]["gpu"]["file"] == GPU_GRAPHS["fp32"]
    for name, digest in manifest["files"].items():
        assert (result.artifact_dir / name).is_file(), name
        assert len(digest) == 64
    assert manifest["source"]["kind"] == "local" and len(manifest["source"]["content_sha256"]) == 64
    for package in ("onnxruntime-gpu", "optimum", "transformers", "sentence-transformers", "onnx", "torch"):
        assert package in manifest["versions"], package
    assert manifest["settings"]["per_channel"] is True
    for role in ("cpu", "gpu"):
        assert manifest["parity"]["artifacts"][role]["passed"] is True
        assert manifest["artifacts"][role]["pooled_output"] == POOLED_OUTPUT
    # registered under its name, with the manifest's parity as metadata
    stored = store.lookup(result.tag)
    assert stored is not None and (stored / "manifest.json").is_file()
    import bentoml

    assert bentoml.models.get(result.tag).info.metadata["parity"]["passed"] is True


def test_vectors_match_sentence_transformers_on_fresh_texts(exported):
    variant, source, result = exported
    from sentence_transformers import SentenceTransformer

    reference = SentenceTransformer(str(source), device="cpu").encode(FRESH_TEXTS)
    for role, floor in (("gpu", 0.99999), ("cpu", 0.99)):
        engine = Engine(result.artifact_dir, RuntimeConfig(artifact=role, providers=("CPUExecutionProvider",)))
        vectors = engine.embed(FRESH_TEXTS)
        assert vectors.shape == reference.shape
        cos = (vectors * reference).sum(1) / np.linalg.norm(vectors, axis=1) / np.linalg.norm(reference, axis=1)
        assert cos.min() >= floor, (variant, role, cos)
        if role == "gpu":  # fp32: the same numbers, not just the same direction
            np.testing.assert_allclose(vectors, reference, atol=2e-4, rtol=1e-3)


def test_every_graph_has_the_pooled_output(exported):
    _, _, result = exported
    check_pooled_outputs(result.artifact_dir)


def test_null_artifact_of_an_export(exported, tmp_path):
    from benchmarks.null_graph import build_null_artifact

    _, _, result = exported
    null = build_null_artifact(result.artifact_dir, tmp_path / "null")
    check_pooled_outputs(null)
    for role in ("cpu", "gpu"):
        engine = Engine(null, RuntimeConfig(artifact=role, providers=("CPUExecutionProvider",)))
        assert engine.describe()["pooling_in_graph"] is True
        vectors = engine.embed(FRESH_TEXTS)
        assert vectors.shape == (len(FRESH_TEXTS), engine.dimension) and np.isfinite(vectors).all()


def test_recheck_passes_then_catches_a_tampered_head(exported, tmp_path):
    variant, _, result = exported
    assert recheck(result.artifact_dir)["passed"] is True
    if variant != "mean-normalize":
        return
    import shutil

    tampered = tmp_path / "tampered"
    shutil.copytree(result.artifact_dir, tampered)
    manifest = json.loads((tampered / "manifest.json").read_text())
    manifest["model"]["pooling"] = ["cls"]  # what an exporter bug misreading 1_Pooling/config.json would do
    (tampered / "manifest.json").write_text(json.dumps(manifest))
    with pytest.raises(ParityError) as info:
        recheck(tampered)  # the graph's own (mean) pooled output is refused: it disagrees with the manifest
    assert info.value.metric.startswith(("cosine", "max_abs", "top10", "spearman"))
    engine = Engine(tampered, RuntimeConfig(artifact="cpu", providers=("CPUExecutionProvider",)))
    assert engine.describe()["pooling_in_graph"] is False
    assert "the graph pools ['mean'] but the manifest says ['cls']" in engine.describe()["pooling_in_graph_refused"]


def test_parity_failure_registers_nothing(tmp_path, bentoml_home):
    import bentoml

    source = build_tiny_model(tmp_path / "source", seed=7)
    output = tmp_path / "artifact"
    impossible = ParityThresholds().with_override("int8.cosine_min=1.0000001")
    with pytest.raises(ParityError) as info:
        export_model(
            ExportConfig(
                model=str(source),
                name="tiny-must-fail",
                output=output,
                thresholds=impossible,
                gpu_precision="fp32",
                cpu_graph="per-token",
            )
        )
    err = info.value
    assert err.metric == "cosine_min" and err.threshold == 1.0000001 and err.value < 1.0
    assert err.text  # names the worst text
    assert "cpu (int8)" in str(err)
    assert not output.exists()
    assert not any(m.tag.name == "tiny-must-fail" for m in bentoml.models.list())
    assert (tmp_path / "artifact.parity-failed.json").is_file()


def test_exporter_bug_is_caught_by_the_gate(tmp_path, monkeypatch):
    """If the exporter misread the pooling config, the gate (not a user) must notice."""
    import dataclasses

    from export import source as source_step

    real = source_step.describe_pipeline

    def misread(model, src):
        pipeline = real(model, src)
        return dataclasses.replace(pipeline, head=dataclasses.replace(pipeline.head, pooling=("cls",)))

    monkeypatch.setattr(source_step, "describe_pipeline", misread)
    model_dir = build_tiny_model(tmp_path / "source", seed=3, pooling="mean")
    with pytest.raises(ParityError) as info:
        export_model(
            ExportConfig(model=str(model_dir), name="tiny-misread", output=tmp_path / "artifact", gpu_precision="fp32")
        )
    assert "gpu (fp32)" in str(info.value)  # even the fp32 graph fails: the head is wrong, not the precision
    assert not (tmp_path / "artifact").exists()


def test_unsupported_module_is_named(tmp_path):
    from sentence_transformers.sentence_transformer.modules import LayerNorm

    model_dir = build_tiny_model(tmp_path / "source", extra_modules=[LayerNorm(64)], normalize=False)
    with pytest.raises(UnsupportedModelError, match="LayerNorm"):
        export_model(ExportConfig(model=str(model_dir), name="tiny-layernorm", output=tmp_path / "artifact"))
    assert not (tmp_path / "artifact").exists()


def _cli(*args: str) -> subprocess.CompletedProcess:
    # Keep the caller's PYTHONPATH after ROOT: it may point at this checkout's src/ (a worktree sharing a venv
    # whose editable install is another checkout).
    env = {**os.environ, "PYTHONPATH": os.pathsep.join(p for p in (str(ROOT), os.environ.get("PYTHONPATH")) if p)}
    return subprocess.run(
        [sys.executable, "-m", "export", *args], cwd=ROOT, env=env, capture_output=True, text=True, timeout=600
    )


def test_cli_exit_codes(tmp_path):
    model_dir = build_tiny_model(tmp_path / "source", seed=11)
    export = ("--model", str(model_dir), "--name", "tiny-cli", "--output", str(tmp_path / "a"))
    export += ("--gpu-precision", "fp32", "--cpu-graph", "per-token")
    failed = _cli(*export, "--threshold", "fp32.cosine_min=1.1")
    assert failed.returncode == 3, failed.stderr
    assert (
        "cosine_min" in failed.stderr and "threshold 1.1" in failed.stderr and "nothing was registered" in failed.stderr
    )
    ok = _cli(*export)
    assert ok.returncode == 0, ok.stderr
    assert "bentoml model: tiny-cli:" in ok.stdout and "Export finished in" in ok.stdout
    assert "cpu int8" in ok.stdout  # the parity table
    found = _cli("find", "--tag", "tiny-cli")
    assert found.returncode == 0 and Path(found.stdout.strip()).is_dir()
    assert _cli("find", "--tag", "no-such-model").returncode == 5
    check = _cli("check", "--tag", "tiny-cli")
    assert check.returncode == 0 and "parity OK" in check.stdout
    assert _cli("--optimization", "O9").returncode == 2
    assert _cli("--model", str(tmp_path / "missing")).returncode == 1


def test_fp16_gpu_artifact(tmp_path):
    """--gpu-precision fp16: an O4 graph for GPUs, checked with the fp16 thresholds (here on the CPU provider)."""
    model_dir = build_tiny_model(tmp_path / "source", seed=5)
    result = export_model(
        ExportConfig(model=str(model_dir), output=tmp_path / "artifact", register=False, gpu_precision="fp16")
    )
    gpu = result.manifest["artifacts"]["gpu"]
    assert gpu["file"] == GPU_GRAPHS["fp16"] and gpu["precision"] == "fp16" and gpu["optimization"] == "O4"
    report = result.manifest["parity"]["artifacts"]["gpu"]
    assert report["passed"] and report["thresholds"]["cosine_min"] == 0.999
    check_pooled_outputs(result.artifact_dir)  # the O4 graph's pooling runs in float32
    assert result.tag is None


def test_dynamic_int8_by_name_keeps_its_own_bar(tmp_path):
    """``--cpu-graph dynamic``: the old batch-dependent int8 graph, for its speed; gated by ``int8_dynamic``."""
    source = build_tiny_model(tmp_path / "source", seed=5)
    result = export_model(
        ExportConfig(
            model=str(source),
            name="tiny-dynamic",
            output=tmp_path / "artifact",
            gpu_precision="fp32",
            cpu_graph="dynamic",
            register=False,
        )
    )
    manifest = json.loads((result.artifact_dir / "manifest.json").read_text())
    cpu = manifest["artifacts"]["cpu"]
    assert cpu["graph"] == "dynamic" and cpu["precision"] == "int8" and cpu["batch_invariant"] is False
    assert cpu["quantization"]["per_channel"] is True
    cpu_parity = manifest["parity"]["artifacts"]["cpu"]
    dynamic_bar = {k: v for k, v in manifest["parity"]["thresholds"]["int8_dynamic"].items() if v is not None}
    assert cpu_parity["passed"] and cpu_parity["thresholds"] == dynamic_bar
    assert manifest["cpu_selection"]["verification"] is None  # nothing was chosen, so nothing to verify
