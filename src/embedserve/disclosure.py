"""What the public ``/info`` may tell any caller about the server: no filesystem paths, no library load errors.

``/info`` is open to every client that may call the API (and to everyone when no API key is set). The manifest and
the provider report hold the source model's absolute directory, and ONNX Runtime's reasons for a dropped provider
name the libraries and paths it tried; those stay in the server log (``embedserve.session`` logs each reason at
start-up) and ``/info`` shows file names and provider names only.
"""

from __future__ import annotations

import os
from collections.abc import Mapping
from typing import Any

#: What /info says instead of a provider's load error.
REASON_IN_LOG = "not available on this host (the reason is in the server log)"


def file_name(value: Any) -> Any:
    """The last component of a path-like string (``None`` and non-strings as they are)."""
    if not isinstance(value, str):
        return value
    return os.path.basename(value.rstrip("/\\").replace("\\", "/")) or value


def public_model_id(source: Mapping[str, Any], fallback: str) -> str:
    """The model id clients see: the hub id or package label; for a model exported from a local directory, that
    directory's name rather than the path it was given as."""
    label = source.get("model")
    if not label:
        return fallback
    return str(file_name(label)) if source.get("kind") == "local" else str(label)


def public_source(source: Mapping[str, Any], model_id: str) -> dict[str, Any]:
    """The manifest's source section without its local directory (``path``)."""
    return {**{k: v for k, v in source.items() if k != "path"}, "model": model_id}


def public_providers(report: Mapping[str, Any]) -> dict[str, Any]:
    """A provider report (``ProviderReport.as_dict()``) with each skipped or dropped provider's reason replaced by
    :data:`REASON_IN_LOG`: which provider is missing stays visible, why (library names and paths) does not."""
    public = dict(report)
    for key in ("skipped", "dropped"):
        if isinstance(report.get(key), Mapping):
            public[key] = dict.fromkeys(report[key], REASON_IN_LOG)
    return public
