"""Architecture rules: the library imports neither torch nor the export/serving frameworks."""

from __future__ import annotations

import ast
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
FORBIDDEN_IN_LIBRARY = {"torch", "bentoml", "optimum", "sentence_transformers", "transformers", "export", "service"}


def _imports(path: Path) -> set[str]:
    tree = ast.parse(path.read_text())
    names = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            names.update(alias.name.split(".")[0] for alias in node.names)
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            names.add(node.module.split(".")[0])
    return names


def test_library_does_not_import_frameworks():
    for path in (ROOT / "src" / "embedserve").glob("*.py"):
        bad = _imports(path) & FORBIDDEN_IN_LIBRARY
        assert not bad, f"{path.name} imports {bad}"


def test_service_does_not_import_export_or_torch():
    bad = _imports(ROOT / "service.py") & {"torch", "export", "optimum", "sentence_transformers", "transformers"}
    assert not bad


def test_serving_path_does_not_load_torch():
    code = (
        "import sys, service, embedserve.engine, embedserve.session;"
        "bad = [m for m in ('torch', 'optimum', 'sentence_transformers', 'transformers') if m in sys.modules];"
        "print(bad); sys.exit(1 if bad else 0)"
    )
    result = subprocess.run([sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True, timeout=120)
    assert result.returncode == 0, result.stdout + result.stderr
