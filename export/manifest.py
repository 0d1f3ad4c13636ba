"""Step 6: ``manifest.json``: source, versions, settings, file hashes, model description and the parity report."""

from __future__ import annotations

import importlib.metadata
import json
import platform
import time
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from embedserve.artifact import FORMAT_VERSION, MANIFEST_NAME, sha256_file

#: Distributions whose versions go into the manifest (the ones that decide what the graph computes).
TRACKED_PACKAGES = (
    "embedserve",
    "onnxruntime",
    "onnxruntime-gpu",
    "onnx",
    "optimum",
    "optimum-onnx",
    "transformers",
    "sentence-transformers",
    "tokenizers",
    "torch",
    "numpy",
    "bentoml",
)


def package_versions() -> dict[str, str]:
    """Installed versions of :data:`TRACKED_PACKAGES` (missing ones omitted) plus Python's."""
    found = {"python": platform.python_version()}
    for name in TRACKED_PACKAGES:
        try:
            found[name] = importlib.metadata.version(name)
        except importlib.metadata.PackageNotFoundError:
            continue
    return found


def file_hashes(directory: Path) -> dict[str, str]:
    """SHA-256 of every file in ``directory`` except the manifest itself."""
    return {p.name: sha256_file(p) for p in sorted(directory.iterdir()) if p.is_file() and p.name != MANIFEST_NAME}


def build_manifest(
    *,
    name: str,
    source: Mapping[str, Any],
    model: Mapping[str, Any],
    tokenizer: Mapping[str, Any],
    artifacts: Mapping[str, Mapping[str, Any]],
    settings: Mapping[str, Any],
    directory: Path,
    parity: Mapping[str, Any] | None = None,
) -> dict[str, Any]:
    """Assemble the manifest for the artifact in ``directory`` (file hashes are computed here)."""
    hashes = file_hashes(directory)
    graphs = {}
    for role, entry in artifacts.items():
        path = directory / entry["file"]
        graphs[role] = {**entry, "sha256": hashes[entry["file"]], "bytes": path.stat().st_size}
    return {
        "format_version": FORMAT_VERSION,
        "name": name,
        "created_at": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
        "source": dict(source),
        "versions": package_versions(),
        "model": dict(model),
        "tokenizer": dict(tokenizer),
        "artifacts": graphs,
        "settings": dict(settings),
        "files": hashes,
        "parity": dict(parity) if parity is not None else None,
    }


def write_manifest(directory: Path, manifest: Mapping[str, Any]) -> Path:
    path = directory / MANIFEST_NAME
    path.write_text(json.dumps(manifest, indent=2, ensure_ascii=False) + "\n", encoding="utf-8")
    return path


def read_manifest(directory: Path) -> dict[str, Any]:
    return json.loads((directory / MANIFEST_NAME).read_text(encoding="utf-8"))
