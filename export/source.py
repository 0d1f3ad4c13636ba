"""Step 1: find the source model (hub id, local directory or the packaged default) and describe its pipeline.

The pipeline is read from the loaded ``SentenceTransformer`` (which reads ``modules.json`` and each module's
config), so the description matches what sentence-transformers really runs. A module we cannot reproduce is an
:class:`~embedserve.errors.UnsupportedModelError` naming it, never a silently different vector.
"""

from __future__ import annotations

import hashlib
import importlib
import importlib.metadata
import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from embedserve.artifact import sha256_file
from embedserve.errors import UnsupportedModelError
from embedserve.head import DenseLayer, Head, check_activation, pooled_dimension
from export.config import DEFAULT_MODEL_LABEL, DEFAULT_MODEL_PACKAGE

_TRANSFORMER = "Transformer"
_SUPPORTED = ("Transformer", "Pooling", "Dense", "Normalize")


@dataclass(frozen=True)
class Source:
    """Where the model came from, resolved to a local directory.

    Attributes:
        label: what the user asked for (hub id, path, or the default model's hub id).
        kind: ``hub``, ``local`` or ``package``.
        path: local directory with the files.
        revision: hub commit hash, or the package version for the packaged model.
        content_sha256: hash over every file's relative path and SHA-256.
    """

    label: str
    kind: str
    path: Path
    revision: str | None
    content_sha256: str

    def as_dict(self) -> dict[str, Any]:
        return {
            "model": self.label,
            "kind": self.kind,
            "path": str(self.path),
            "revision": self.revision,
            "content_sha256": self.content_sha256,
        }


def content_hash(directory: Path) -> str:
    """SHA-256 over ``relative path + file hash`` of every file under ``directory`` (sorted, dot-files skipped)."""
    digest = hashlib.sha256()
    for path in sorted(p for p in directory.rglob("*") if p.is_file()):
        rel = path.relative_to(directory).as_posix()
        if any(part.startswith(".") for part in rel.split("/")):
            continue
        digest.update(rel.encode())
        digest.update(sha256_file(path).encode())
    return digest.hexdigest()


def resolve_source(model: str | None, revision: str | None = None) -> Source:
    """Turn a model argument into a local directory.

    ``None`` means the packaged all-MiniLM-L6-v2 (fully offline). An existing directory is used as is. Anything
    else is a Hugging Face hub id, downloaded with ``huggingface_hub.snapshot_download`` (honours
    ``HF_HUB_OFFLINE`` and the local cache).
    """
    if model is None:
        package = importlib.import_module(DEFAULT_MODEL_PACKAGE)
        path = Path(package.get_model_path())
        version = importlib.metadata.version(DEFAULT_MODEL_PACKAGE.replace("_", "-"))
        return Source(DEFAULT_MODEL_LABEL, "package", path, f"{DEFAULT_MODEL_PACKAGE}=={version}", content_hash(path))
    candidate = Path(model).expanduser()
    if candidate.is_dir():
        path = candidate.resolve()
        return Source(str(path), "local", path, None, content_hash(path))
    if candidate.exists() or model.startswith((".", "/", "~")):
        raise FileNotFoundError(f"model path {model!r} is not a directory")
    from huggingface_hub import snapshot_download

    path = Path(snapshot_download(repo_id=model, revision=revision))
    # snapshot_download returns .../snapshots/<commit hash>
    return Source(model, "hub", path, path.name, content_hash(path))


def load_sentence_transformer(source: Source, *, trust_remote_code: bool = False) -> Any:
    """Load the source model with sentence-transformers on CPU (the reference for parity)."""
    from sentence_transformers import SentenceTransformer

    return SentenceTransformer(str(source.path), device="cpu", trust_remote_code=trust_remote_code)


@dataclass(frozen=True)
class Pipeline:
    """What the export needs to know about a sentence-transformers model."""

    transformer_dir: Path
    head: Head
    max_seq_length: int
    hidden_size: int
    dimension: int
    pad_id: int
    padding_side: str
    modules: tuple[str, ...]


def _class_name(module: Any) -> str:
    return type(module).__name__


def _dense_layer(module: Any) -> DenseLayer:
    from sentence_transformers.util import fullname

    input_name = getattr(module, "module_input_name", "sentence_embedding")
    output_name = getattr(module, "module_output_name", "sentence_embedding")
    if input_name != "sentence_embedding" or output_name != "sentence_embedding":
        raise UnsupportedModelError(
            f"Dense module reading {input_name!r} / writing {output_name!r} is not supported "
            "(only Dense on the sentence embedding)"
        )
    activation = check_activation(fullname(module.activation_function))
    weight = module.linear.weight.detach().cpu().numpy().astype(np.float32)
    bias = module.linear.bias.detach().cpu().numpy().astype(np.float32) if module.linear.bias is not None else None
    return DenseLayer(weight=weight, bias=bias, activation=activation)


def describe_pipeline(model: Any, source: Source) -> Pipeline:
    """Map a loaded ``SentenceTransformer`` onto a transformer + :class:`Head`.

    Raises:
        UnsupportedModelError: a module other than Transformer -> Pooling -> Dense* -> Normalize, a pooling
            mode or activation we cannot reproduce, or a tokenizer without a fast (Rust) implementation.
    """
    modules = list(model)
    names = tuple(_class_name(m) for m in modules)
    for name, module in zip(names, modules, strict=True):
        if name not in _SUPPORTED:
            raise UnsupportedModelError(
                f"module {name} ({type(module).__module__}.{name}) is not supported by the exporter; "
                f"supported modules: {', '.join(_SUPPORTED)}"
            )
    if not names or names[0] != _TRANSFORMER or names.count(_TRANSFORMER) != 1:
        raise UnsupportedModelError(f"expected one Transformer module first, got {list(names)}")
    if "Pooling" not in names:
        raise UnsupportedModelError(f"no Pooling module in {list(names)}; token-level outputs are not served")
    transformer = modules[0]
    tokenizer = transformer.tokenizer
    if not getattr(tokenizer, "is_fast", False):
        raise UnsupportedModelError(f"tokenizer {type(tokenizer).__name__} has no fast (tokenizers) implementation")

    pooling_mode: tuple[str, ...] = ()
    include_prompt = True
    dense: list[DenseLayer] = []
    normalize = False
    seen_pooling = False
    for name, module in zip(names[1:], modules[1:], strict=True):
        if name == "Pooling":
            if seen_pooling:
                raise UnsupportedModelError("more than one Pooling module")
            mode = module.pooling_mode
            pooling_mode = (mode,) if isinstance(mode, str) else tuple(mode)
            include_prompt = bool(module.include_prompt)
            seen_pooling = True
        elif name == "Dense":
            if not seen_pooling or normalize:
                raise UnsupportedModelError("a Dense module is only supported between Pooling and Normalize")
            dense.append(_dense_layer(module))
        elif name == "Normalize":
            normalize = True
    prompts = dict(getattr(model, "prompts", {}) or {})
    prompts = {k: v for k, v in prompts.items() if v}
    default_prompt = getattr(model, "default_prompt_name", None)
    head = Head(
        pooling=pooling_mode,
        include_prompt=include_prompt,
        dense=tuple(dense),
        normalize=normalize,
        prompts=prompts,
        default_prompt_name=default_prompt if default_prompt in prompts else None,
    )
    hidden = int(transformer.auto_model.config.hidden_size)
    dimension = pooled_dimension(hidden, pooling_mode, dense)
    get_dimension = getattr(model, "get_embedding_dimension", None) or model.get_sentence_embedding_dimension
    st_dimension = get_dimension()
    if st_dimension is not None and st_dimension != dimension:
        raise UnsupportedModelError(
            f"computed dimension {dimension} differs from sentence-transformers' {st_dimension}"
        )
    pad_id = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else 0
    return Pipeline(
        transformer_dir=_transformer_dir(source.path, model),
        head=head,
        max_seq_length=int(model.max_seq_length),
        hidden_size=hidden,
        dimension=dimension,
        pad_id=int(pad_id),
        padding_side=str(getattr(tokenizer, "padding_side", "right")),
        modules=names,
    )


def _transformer_dir(root: Path, model: Any) -> Path:
    """The folder of the Transformer module (``modules.json`` ``path``; usually the root)."""
    modules_file = root / "modules.json"
    if modules_file.is_file():
        for entry in json.loads(modules_file.read_text()):
            if entry.get("type", "").endswith(_TRANSFORMER):
                return root / entry.get("path", "")
    return root


def save_tokenizer(model: Any, target: Path) -> Path:
    """Save the fast tokenizer exactly as sentence-transformers runs it (lower-casing included) to ``target``."""
    backend = model[0].tokenizer.backend_tokenizer
    backend.save(str(target))
    return target
