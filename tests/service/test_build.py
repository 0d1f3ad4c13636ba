"""`make build` (python -m export build): the parity gate first, then `bentoml build`; the Dockerfile is checked
here because this machine has no Docker engine for `bentoml containerize`."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

pytestmark = [pytest.mark.service, pytest.mark.slow]
ROOT = Path(__file__).resolve().parents[2]
SERVING_ONLY_FORBIDDEN = ("torch", "optimum", "sentence-transformers", "sentence_transformers", "transformers")


def run_build(name: str, *args: str) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, "-m", "export", "build", "--name", name, *args],
        cwd=ROOT,
        env={**os.environ, "PYTHONPATH": os.pathsep.join([str(ROOT), str(ROOT / "src")])},  # this checkout's library
        capture_output=True,
        text=True,
        timeout=900,
    )


def bentos(home: Path) -> set[str]:
    root = home / "bentos" / "embedserve"
    return {p.name for p in root.iterdir() if p.is_dir()} if root.is_dir() else set()


def test_build_refuses_when_parity_fails(minilm_export, bentoml_home):
    before = bentos(bentoml_home)
    result = run_build(minilm_export.tag.split(":")[0], "--threshold", "int8.cosine_min=0.9999")
    assert result.returncode == 3, result.stdout + result.stderr
    assert "refusing to build" in result.stderr and "cosine_min" in result.stderr
    assert bentos(bentoml_home) == before


def bento_dir(home: Path, tag: str) -> Path:
    name, version = tag.split(":")
    return home / "bentos" / name / version


def requirement_names(bento: Path) -> list[str]:
    text = (bento / "env" / "python" / "requirements.txt").read_text().lower()
    return [
        line.split("==")[0].split("~=")[0].split("[")[0].strip() for line in text.splitlines() if line[:1].isalpha()
    ]


def test_build_bundles_the_checked_model_in_a_gpu_and_a_cpu_image(minilm_export, bentoml_home):
    """Issue 11: `make build` builds both images from one parity check; neither carries torch, the CPU one no
    CUDA at all (checked in its requirements and Dockerfile, as this machine cannot run `bentoml containerize`)."""
    result = run_build(minilm_export.tag.split(":")[0])
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
    assert result.stdout.count("parity gate on") == 1 and "cpu int8" in result.stdout
    tags = {
        line.split()[2].strip("("): line.split()[1] for line in result.stdout.splitlines() if line.startswith("bento: ")
    }
    assert set(tags) == {"gpu", "cpu"} and tags["gpu"].startswith("embedserve:"), result.stdout
    assert tags["cpu"].startswith("embedserve-cpu:")

    for image, tag in tags.items():
        bento = bento_dir(bentoml_home, tag)
        info = yaml.safe_load((bento / "bento.yaml").read_text())
        assert [m["tag"] for m in info["services"][0]["models"]] == [minilm_export.tag]
        assert info["labels"]["image"] == image
        names = requirement_names(bento)
        assert "bentoml" in names and "tokenizers" in names and "pydantic" in names
        for package in SERVING_ONLY_FORBIDDEN:
            assert package not in names, f"{package} must not be in the {image} image"
        sources = {p.relative_to(bento / "src").as_posix() for p in (bento / "src").rglob("*") if p.is_file()}
        assert "service.py" in sources and "src/embedserve/engine.py" in sources
        assert not any(s.startswith(("tests/", "export/", "benchmarks/", ".venv")) for s in sources), sources
        dockerfile = (bento / "env" / "docker" / "Dockerfile").read_text()
        assert "FROM python:3.11" in dockerfile and "requirements.txt" in dockerfile and "ENTRYPOINT" in dockerfile
        assert "EMBEDSERVE_PROVIDERS" in dockerfile

    gpu, cpu = bento_dir(bentoml_home, tags["gpu"]), bento_dir(bentoml_home, tags["cpu"])
    gpu_requirements = (gpu / "env" / "python" / "requirements.txt").read_text().lower()
    assert "onnxruntime-gpu[cuda,cudnn]==" in gpu_requirements and "onnxruntime-gpu" in requirement_names(gpu)
    names = requirement_names(cpu)
    assert "onnxruntime" in names and "onnxruntime-gpu" not in names
    assert not [n for n in names if n.startswith("nvidia") or "cuda" in n], names
    assert "cuda" not in (cpu / "env" / "docker" / "Dockerfile").read_text().lower()
    cpu_env = yaml.safe_load((cpu / "bento.yaml").read_text())["envs"]
    assert {e["name"]: e["value"] for e in cpu_env}["EMBEDSERVE_PROVIDERS"] == "cpu"
    size = sum(p.stat().st_size for p in cpu.rglob("*") if p.is_file())
    assert size < 2 * 1024 * 1024, f"the CPU bento (sources, env, bento.yaml; the model is referenced) is {size} bytes"
