"""An exported artifact directory: ``manifest.json``, the ONNX graphs, the tokenizer and the head weights.

The export stage writes it; the embedder and the service read it through :class:`Artifact`, which checks the
manifest and (optionally) every file's SHA-256 so that a corrupt file is a clear error at start-up.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from embedserve.errors import ArtifactError
from embedserve.head import Head

MANIFEST_NAME = "manifest.json"
FORMAT_VERSION = 1
ROLES = ("cpu", "gpu")


def sha256_file(path: Path, chunk: int = 1 << 20) -> str:
    """Hex SHA-256 of a file."""
    digest = hashlib.sha256()
    with open(path, "rb") as handle:
        while block := handle.read(chunk):
            digest.update(block)
    return digest.hexdigest()


@dataclass(frozen=True)
class GraphInfo:
    """One ONNX graph of the artifact (the ``artifacts.<role>`` entry of the manifest)."""

    role: str
    file: str
    precision: str
    sha256: str
    details: Mapping[str, Any]


class Artifact:
    """A validated artifact directory.

    Args:
        directory: the directory holding ``manifest.json``.
        manifest: the parsed manifest.
    """

    def __init__(self, directory: Path, manifest: Mapping[str, Any]) -> None:
        self.directory = Path(directory)
        self.manifest = manifest
        try:
            model = manifest["model"]
            tokenizer = manifest["tokenizer"]
            self.dimension = int(model["dimension"])
            self.max_seq_length = int(tokenizer["max_seq_length"])
            self.tokenizer_file = self.directory / tokenizer["file"]
            self.pad_id = int(tokenizer["pad_id"])
            self.padding_side = str(tokenizer.get("padding_side", "right"))
            self.graphs = {
                role: GraphInfo(
                    role=role,
                    file=entry["file"],
                    precision=entry["precision"],
                    sha256=entry["sha256"],
                    details=entry,
                )
                for role, entry in manifest["artifacts"].items()
            }
        except (KeyError, TypeError, ValueError) as exc:
            raise ArtifactError(f"{self.directory / MANIFEST_NAME} is incomplete or malformed: {exc!r}") from exc
        unknown = set(self.graphs) - set(ROLES)
        if unknown or not self.graphs:
            raise ArtifactError(f"manifest artifacts must be among {ROLES}, got {sorted(self.graphs)}")
        self.head = Head.from_manifest(model, self.directory)

    @classmethod
    def open(cls, directory: Path | str) -> Artifact:
        """Read and check ``manifest.json`` in ``directory``.

        Raises:
            ArtifactError: missing directory or manifest, unreadable JSON, unknown format version.
        """
        directory = Path(directory)
        path = directory / MANIFEST_NAME
        if not path.is_file():
            raise ArtifactError(f"no {MANIFEST_NAME} in {directory}: not an embedserve artifact (run `make export`)")
        try:
            manifest = json.loads(path.read_text(encoding="utf-8"))
        except (OSError, json.JSONDecodeError) as exc:
            raise ArtifactError(f"cannot read {path}: {exc}") from exc
        version = manifest.get("format_version")
        if version != FORMAT_VERSION:
            raise ArtifactError(f"{path}: format_version {version!r} is not supported (expected {FORMAT_VERSION})")
        return cls(directory, manifest)

    @property
    def name(self) -> str:
        return str(self.manifest.get("name", self.directory.name))

    @property
    def source(self) -> Mapping[str, Any]:
        return self.manifest.get("source", {})

    @property
    def parity(self) -> Mapping[str, Any] | None:
        return self.manifest.get("parity")

    def graph(self, role: str) -> GraphInfo:
        """The graph for ``role`` (``cpu``/``gpu``), falling back to the other one if only one was exported."""
        if role in self.graphs:
            return self.graphs[role]
        return next(iter(self.graphs.values()))

    def graph_path(self, role: str) -> Path:
        return self.directory / self.graph(role).file

    def verify(self, files: Iterable[str] | None = None) -> None:
        """Compare files' SHA-256 with the manifest (all listed files by default).

        Raises:
            ArtifactError: a file is missing or its hash differs, naming the file and both hashes.
        """
        expected: Mapping[str, str] = self.manifest.get("files", {})
        names = list(expected) if files is None else list(files)
        for name in names:
            if name not in expected:
                raise ArtifactError(f"{name} is not listed in the manifest's files")
            path = self.directory / name
            if not path.is_file():
                raise ArtifactError(f"{path} is missing (the artifact is incomplete)")
            actual = sha256_file(path)
            if actual != expected[name]:
                raise ArtifactError(
                    f"{path} is corrupt: sha256 {actual[:16]}... does not match the manifest's {expected[name][:16]}..."
                )

    def files_for(self, role: str) -> list[str]:
        """Files a session of ``role`` reads: its graph, the tokenizer, the Dense weights."""
        dense = [spec["file"] for spec in self.manifest["model"].get("dense", [])]
        return [self.graph(role).file, self.tokenizer_file.name, *dense]
