"""Runtime tier on the real packaged all-MiniLM-L6-v2: end-to-end export, golden vectors, invariance, providers."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import onnxruntime as ort
import pytest

from embedserve import ArtifactError, Engine, InputTooLongError, ProviderUnavailableError, RuntimeConfig
from embedserve.providers import CPU, CUDA

pytestmark = pytest.mark.slow
ROOT = Path(__file__).resolve().parents[2]
GOLDEN = json.loads((ROOT / "tests" / "data" / "golden_minilm.json").read_text())
CPU_ONLY = (CPU,)

# Texts written for this test, not in the probe corpus: what "unseen" means for the manifest's numbers.
UNSEEN = [
    "Which hiking boots are waterproof and still light enough for trail running?",
    "The invoice total was $1,284.50 after the 15% volume discount and 8.25% sales tax.",
    "Kubernetes pods stuck in CrashLoopBackOff after upgrading the base image to Debian trixie",
    "Mi abuela prepara la mejor paella de Valencia los domingos.",
    "東京から大阪まで新幹線で何時間かかりますか",
    "ok thx",
    "¯\\_(ツ)_/¯",
    "Photosynthesis converts light energy into chemical energy stored in glucose. " * 12,
    'fn main() { let v: Vec<u32> = (0..10).map(|x| x * x).collect(); println!("{:?}", v); }',
    "RE: RE: FW: quarterly numbers (final_v3_REALLY_final.xlsx)",
    "The patient reported mild nausea but no fever after the second dose.",
    "How many tablespoons are in a quarter cup?",
]


def cosine(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    return (a * b).sum(-1) / np.linalg.norm(a, axis=-1) / np.linalg.norm(b, axis=-1)


@pytest.fixture(scope="module")
def manifest(minilm_artifact) -> dict:
    return json.loads((minilm_artifact / "manifest.json").read_text())


@pytest.fixture(scope="module")
def int8(minilm_artifact) -> Engine:
    return Engine(minilm_artifact, RuntimeConfig(artifact="cpu", providers=CPU_ONLY))


@pytest.fixture(scope="module")
def fp32(minilm_artifact) -> Engine:
    return Engine(minilm_artifact, RuntimeConfig(artifact="gpu", providers=CPU_ONLY))


def test_end_to_end_export_of_the_packaged_model(minilm_export, manifest, bentoml_home):
    assert manifest["source"]["kind"] == "package"
    assert manifest["source"]["model"] == "sentence-transformers/all-MiniLM-L6-v2"
    assert manifest["model"]["dimension"] == 384 and manifest["model"]["max_seq_length"] == 256
    assert manifest["model"]["pooling"] == ["mean"] and manifest["model"]["normalize"] is True
    cpu = manifest["artifacts"]["cpu"]
    assert cpu["precision"] == "int8" and cpu["quantization"]["method"] == "per-token" and cpu["batch_invariant"]
    assert cpu["quantization"]["quantized"] >= 12  # most MatMuls really are int8; the rest kept with a reason
    assert not cpu["quantization"]["kept_float"] or "kept_float_because" in cpu
    assert manifest["settings"]["quantization"] in ("avx512_vnni", "avx512", "avx2", "arm64")
    # chosen on the probe corpus, verified on the verification corpus (never used for choosing)
    selection = manifest["cpu_selection"]
    assert selection["verification"]["meets_target"], selection["verification"]
    assert selection["verification"]["quality"]["cosine_min"] >= 0.99
    assert manifest["artifacts"]["gpu"]["optimization"] == "O2"
    parity = manifest["parity"]
    assert parity["passed"] and parity["corpus"]["texts"] >= 300
    int8_metrics = parity["artifacts"]["cpu"]["metrics"]
    assert 0.99 <= int8_metrics["cosine_min"] < 1.0  # int8 really costs something, within the gate
    assert int8_metrics["invariance_min"] >= 0.999999  # the same text alone, in batches, sorted or mixed
    assert parity["artifacts"]["gpu"]["metrics"]["cosine_min"] >= 0.9999
    listing = subprocess.run(
        [str(Path(sys.executable).parent / "bentoml"), "models", "list"],
        env={**os.environ, "BENTOML_HOME": str(bentoml_home)},
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert minilm_export.tag.split(":")[0] in listing.stdout, listing.stdout + listing.stderr


def test_source_model_still_matches_golden(st_minilm):
    vectors = st_minilm.encode(GOLDEN["texts"])
    np.testing.assert_allclose(vectors, np.array(GOLDEN["vectors"]), atol=2e-6)


def test_golden_vectors(fp32, int8, manifest):
    golden = np.array(GOLDEN["vectors"], dtype=np.float32)
    np.testing.assert_allclose(fp32.embed(GOLDEN["texts"]), golden, atol=1e-4)
    floor = manifest["parity"]["thresholds"]["int8"]["cosine_min"]
    assert cosine(int8.embed(GOLDEN["texts"]), golden).min() >= floor


def test_unseen_texts_within_the_manifest_numbers(fp32, int8, st_minilm, manifest):
    reference = st_minilm.encode(UNSEEN)
    assert cosine(fp32.embed(UNSEEN), reference).min() >= 0.9999
    thresholds = manifest["parity"]["thresholds"]["int8"]
    cos = cosine(int8.embed(UNSEEN), reference)
    assert cos.min() >= thresholds["cosine_min"], cos
    assert cos.mean() >= thresholds["cosine_mean"], cos


def test_batch_size_invariance(fp32, int8):
    rng = np.random.default_rng(0)
    mates = [" ".join(rng.choice(UNSEEN[i % len(UNSEEN)].split(), size=5 + i)) for i in range(40)]
    for embedder, floor in ((fp32, 0.99999), (int8, 0.999999)):
        alone = np.concatenate([embedder.embed([t]) for t in UNSEEN])
        together = embedder.embed(mates + UNSEEN + mates)[len(mates) : len(mates) + len(UNSEEN)]
        assert cosine(alone, together).min() >= floor


def test_normalize_dimensions_and_truncate(fp32):
    normalized = fp32.embed(["hello there"])
    raw = fp32.embed(["hello there"], normalize=False)
    assert np.linalg.norm(normalized) == pytest.approx(1.0, abs=1e-5)
    assert abs(np.linalg.norm(raw) - 1.0) > 1e-3
    np.testing.assert_allclose(normalized, raw / np.linalg.norm(raw), atol=1e-6)
    cut = fp32.embed(["hello there"], dimensions=64)
    assert cut.shape == (1, 64) and np.linalg.norm(cut) == pytest.approx(1.0, abs=1e-5)
    with pytest.raises(InputTooLongError, match="max_input_tokens=256"):
        fp32.embed(["word " * 300], truncate=False)
    assert fp32.embed([]).shape == (0, 384)


def test_gpu_package_falls_back_to_cpu_and_says_why(minilm_artifact):
    assert CUDA in ort.get_available_providers(), "onnxruntime-gpu is the serving dependency on Linux x86_64"
    embedder = Engine(minilm_artifact, RuntimeConfig())
    report = embedder.providers
    assert CUDA in report.requested
    assert report.active == (CPU,)
    assert report.fell_back and CUDA in report.dropped
    assert report.dropped[CUDA]  # ONNX Runtime's reason, e.g. a missing libcublas
    assert embedder.role == "cpu"  # the artifact followed the provider actually obtained
    assert embedder.describe()["precision"] == "int8"


def test_require_gpu_is_fatal(minilm_artifact):
    with pytest.raises(ProviderUnavailableError, match="EMBEDSERVE_REQUIRE_GPU"):
        Engine(minilm_artifact, RuntimeConfig(require_gpu=True))


def test_corrupt_graph_is_a_clear_error(minilm_artifact, tmp_path):
    broken = tmp_path / "broken"
    shutil.copytree(minilm_artifact, broken)
    graph = broken / "model_cpu_int8.onnx"
    data = bytearray(graph.read_bytes())
    data[1000:3000] = b"\xff" * 2000
    graph.write_bytes(bytes(data))
    with pytest.raises(ArtifactError, match=r"model_cpu_int8\.onnx is corrupt"):
        Engine(broken, RuntimeConfig(artifact="cpu", providers=CPU_ONLY))
    graph.write_bytes(b"not an onnx file")
    with pytest.raises(ArtifactError, match="onnxruntime cannot load"):
        Engine(broken, RuntimeConfig(artifact="cpu", providers=CPU_ONLY, verify_hashes=False))
    with pytest.raises(ArtifactError, match=r"manifest\.json"):
        Engine(tmp_path, RuntimeConfig())


def test_serving_path_never_imports_torch(minilm_artifact):
    code = (
        "import sys; from embedserve import Engine, RuntimeConfig;"
        f"e = Engine({str(minilm_artifact)!r}, RuntimeConfig());"
        "v = e.embed(['hello']); assert v.shape == (1, 384);"
        "bad = [m for m in ('torch', 'sentence_transformers', 'transformers', 'optimum') if m in sys.modules];"
        "print(bad); sys.exit(1 if bad else 0)"
    )
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert result.returncode == 0, result.stdout + result.stderr[-2000:]
