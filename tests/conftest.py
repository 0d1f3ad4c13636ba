"""Shared fixtures. Tiers: unit (no weights) -> export (tiny local models) -> runtime (MiniLM) -> service (HTTP).

BENTOML_HOME is pointed at a temporary store before anything imports bentoml, so tests never touch ~/bentoml.
"""

from __future__ import annotations

import os
import sys
import tempfile
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
TESTS = Path(__file__).resolve().parent
os.environ.setdefault("BENTOML_HOME", tempfile.mkdtemp(prefix="embedserve-test-bentoml-"))
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
os.environ.setdefault("BENTOML_DO_NOT_TRACK", "true")
for path in (str(ROOT), str(TESTS)):
    if path not in sys.path:
        sys.path.insert(0, path)

import pytest  # noqa: E402

MINILM_NAME = "embedserve-test-minilm"


@pytest.fixture(scope="session")
def bentoml_home() -> Path:
    return Path(os.environ["BENTOML_HOME"])


@pytest.fixture(scope="session")
def minilm_dir() -> Path:
    from tiny_models import minilm_dir as locate

    return locate()


@pytest.fixture(scope="session")
def minilm_export(tmp_path_factory: pytest.TempPathFactory):
    """The packaged all-MiniLM-L6-v2 exported end to end (parity gate included) and registered in the store.

    Its GPU graph is the fp32 one (the default is fp16): the runtime tests compare that graph with golden vectors
    at fp32 tolerances; the fp16 export is tested on the tiny models and measured on a GPU by bench_gpu. Its CPU
    graph is the per-token int8 one by name (``auto`` keeps whichever of it and fp32 measures faster on the machine
    at hand; the tests below are about the int8 graph, and the tiny exports test ``auto``'s choice).

    ``EMBEDSERVE_TEST_MINILM_TAG=name:version`` (with ``BENTOML_HOME`` set to the store that holds it) reuses a model
    exported the same way by an earlier run instead of exporting again (4 minutes on 2 cores): for iterating
    locally; CI exports afresh.
    """
    from export.config import ExportConfig
    from export.pipeline import ExportResult, export_model

    reuse = os.environ.get("EMBEDSERVE_TEST_MINILM_TAG")
    if reuse:  # local iteration only (CI never sets it): a MiniLM exported earlier into this BENTOML_HOME
        import json

        import bentoml

        model = bentoml.models.get(reuse)
        path = Path(model.path)
        manifest = json.loads((path / "manifest.json").read_text())
        return ExportResult(artifact_dir=path, tag=str(model.tag), manifest=manifest, seconds=0.0)
    output = tmp_path_factory.mktemp("minilm") / "artifact"
    return export_model(
        ExportConfig(name=MINILM_NAME, output=output, register=True, gpu_precision="fp32", cpu_graph="per-token")
    )


@pytest.fixture(scope="session")
def minilm_artifact(minilm_export) -> Path:
    return minilm_export.artifact_dir


@pytest.fixture(scope="session")
def st_minilm(minilm_dir: Path):
    from sentence_transformers import SentenceTransformer

    return SentenceTransformer(str(minilm_dir), device="cpu")
