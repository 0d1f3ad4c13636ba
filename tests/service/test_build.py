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


def test_build_bundles_the_checked_model_and_a_gpu_capable_image(minilm_export, bentoml_home):
    result = run_build(minilm_export.tag.split(":")[0])
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
    assert "parity gate on" in result.stdout and "cpu int8" in result.stdout
    bento_tag = next(line.split()[1] for line in result.stdout.splitlines() if line.startswith("bento: "))
    bento = bentoml_home / "bentos" / "embedserve" / bento_tag.split(":")[1]

    info = yaml.safe_load((bento / "bento.yaml").read_text())
    assert [m["tag"] for m in info["services"][0]["models"]] == [minilm_export.tag]

    requirements = (bento / "env" / "python" / "requirements.txt").read_text().lower()
    assert "onnxruntime-gpu[cuda,cudnn]==" in requirements
    assert "bentoml==" in requirements and "tokenizers==" in requirements
    lines = [line.split("==")[0].split("[")[0].strip() for line in requirements.splitlines() if line and line[0] != "#"]
    for package in SERVING_ONLY_FORBIDDEN:
        assert package not in lines, f"{package} must not be in the serving image"

    sources = {p.relative_to(bento / "src").as_posix() for p in (bento / "src").rglob("*") if p.is_file()}
    assert "service.py" in sources and "src/embedserve/engine.py" in sources
    assert not any(s.startswith(("tests/", "export/", "benchmarks/", ".venv")) for s in sources), sources

    dockerfile = (bento / "env" / "docker" / "Dockerfile").read_text()
    assert "FROM python:3.11" in dockerfile
    assert "requirements.txt" in dockerfile and "ENTRYPOINT" in dockerfile
    assert "EMBEDSERVE_PROVIDERS" in dockerfile
