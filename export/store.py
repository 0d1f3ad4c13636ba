"""Step 7: the BentoML model store (``bentoml models list`` shows what was registered)."""

from __future__ import annotations

import shutil
from collections.abc import Mapping
from pathlib import Path
from typing import Any


def _metadata(manifest: Mapping[str, Any]) -> dict[str, Any]:
    """The manifest minus bulky or None-valued parts: BentoML metadata takes plain values only."""

    def clean(value: Any) -> Any:
        if isinstance(value, Mapping):
            return {str(k): clean(v) for k, v in value.items() if v is not None}
        if isinstance(value, (list, tuple)):
            return [clean(v) for v in value if v is not None]
        return value

    parity = manifest.get("parity") or {}
    summary = {
        role: {"precision": r["precision"], "passed": r["passed"], **r["metrics"]}
        for role, r in (parity.get("artifacts") or {}).items()
    }
    return clean(
        {
            "format_version": manifest["format_version"],
            "source": manifest["source"],
            "versions": manifest["versions"],
            "model": {k: v for k, v in manifest["model"].items() if k != "dense"},
            "artifacts": {role: dict(a) for role, a in manifest["artifacts"].items()},
            "parity": {"passed": parity.get("passed"), "corpus": parity.get("corpus"), "artifacts": summary},
        }
    )


def register(artifact_dir: Path, name: str, manifest: Mapping[str, Any]) -> str:
    """Copy the artifact into a new BentoML model ``name:<version>``; return the tag."""
    import bentoml

    labels = {
        "embedserve": str(manifest["versions"].get("embedserve", "")),
        "source": str(manifest["source"].get("model", ""))[:60].replace("/", "_") or "unknown",
    }
    with bentoml.models.create(name, labels=labels, metadata=_metadata(manifest)) as model:
        for path in artifact_dir.iterdir():
            if path.is_file():
                shutil.copy2(path, Path(model.path) / path.name)
    return str(model.tag)


def lookup(tag: str) -> Path | None:
    """Directory of a stored model (``name`` or ``name:version``), or ``None`` if the store has none."""
    import bentoml
    from bentoml.exceptions import NotFound

    try:
        return Path(bentoml.models.get(tag).path)
    except NotFound:
        return None
