"""The part of a sentence-transformers pipeline that runs after the transformer: pooling, Dense, Normalize.

It is described by the ``model`` section of an artifact's ``manifest.json`` plus one ``dense_<i>.npz`` per
Dense layer, and runs in numpy so that ``normalize=false`` and Matryoshka truncation are exact.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from embedserve.errors import ArtifactError, UnsupportedModelError
from embedserve.pooling import exclude_prompt, l2_normalize, pool, validate_modes


def _erf(x: np.ndarray) -> np.ndarray:
    # numpy has no erf; math.erf is exact and the head is small (batch x dim), so vectorize it.
    return np.vectorize(math.erf, otypes=[np.float64])(x).astype(x.dtype)


#: Activation functions a Dense layer may use, by the names sentence-transformers saves.
ACTIVATIONS = {
    "torch.nn.modules.linear.Identity": lambda x: x,
    "torch.nn.modules.activation.Tanh": np.tanh,
    "torch.nn.modules.activation.ReLU": lambda x: np.maximum(x, 0),
    "torch.nn.modules.activation.Sigmoid": lambda x: 1.0 / (1.0 + np.exp(-x)),
    "torch.nn.modules.activation.SiLU": lambda x: x / (1.0 + np.exp(-x)),
    "torch.nn.modules.activation.GELU": lambda x: 0.5 * x * (1.0 + _erf(x / np.sqrt(2.0).astype(x.dtype))),
}


def check_activation(name: str) -> str:
    """Return ``name`` if a Dense activation of that name can be reproduced, else raise."""
    if name not in ACTIVATIONS:
        raise UnsupportedModelError(
            f"Dense activation {name!r} is not supported; supported: {', '.join(sorted(ACTIVATIONS))}"
        )
    return name


@dataclass(frozen=True)
class DenseLayer:
    """``activation(x @ weight.T + bias)``, as sentence-transformers' ``Dense``."""

    weight: np.ndarray  # (out_features, in_features)
    bias: np.ndarray | None
    activation: str

    def __post_init__(self) -> None:
        check_activation(self.activation)

    def __call__(self, x: np.ndarray) -> np.ndarray:
        y = x @ self.weight.T
        if self.bias is not None:
            y = y + self.bias
        return ACTIVATIONS[self.activation](y).astype(np.float32, copy=False)


@dataclass(frozen=True)
class Head:
    """Pooling modes, Dense layers and the Normalize flag of a model, plus its prompts.

    Attributes:
        pooling: pooling modes, concatenated in this order.
        include_prompt: if False, prompt tokens are excluded from pooling.
        dense: Dense layers applied after pooling.
        normalize: whether the model ends with a Normalize module.
        prompts: named prompts prepended to the text (sentence-transformers ``prompts``).
        default_prompt_name: the prompt used when none is asked for, or ``None``.
    """

    pooling: tuple[str, ...]
    include_prompt: bool = True
    dense: tuple[DenseLayer, ...] = ()
    normalize: bool = False
    prompts: Mapping[str, str] = field(default_factory=dict)
    default_prompt_name: str | None = None

    def __post_init__(self) -> None:
        try:
            validate_modes(self.pooling)
        except ValueError as exc:
            raise UnsupportedModelError(str(exc)) from exc
        if self.default_prompt_name is not None and self.default_prompt_name not in self.prompts:
            raise ArtifactError(f"default prompt {self.default_prompt_name!r} is not among {sorted(self.prompts)}")

    def prompt_text(self, prompt_name: str | None) -> str | None:
        """The prompt to prepend for ``prompt_name`` (or the default one); ``KeyError`` if unknown."""
        name = prompt_name if prompt_name is not None else self.default_prompt_name
        if name is None:
            return None
        return self.prompts[name]

    def __call__(
        self,
        token_embeddings: np.ndarray,
        attention_mask: np.ndarray,
        *,
        prompt_lengths: np.ndarray | None = None,
    ) -> np.ndarray:
        """Pool and project a batch; returns vectors *before* the final normalisation.

        Args:
            token_embeddings: ``(batch, seq, hidden)`` transformer output.
            attention_mask: ``(batch, seq)`` mask.
            prompt_lengths: per-row count of leading prompt tokens, excluded when ``include_prompt`` is False.
        """
        if self.excludes_prompt(prompt_lengths):
            attention_mask = exclude_prompt(attention_mask, prompt_lengths)
        return self.project(pool(token_embeddings, attention_mask, self.pooling))

    def excludes_prompt(self, prompt_lengths: np.ndarray | None) -> bool:
        """True when pooling must leave out prompt tokens that these rows have (the graph's own pooling can't)."""
        return prompt_lengths is not None and not self.include_prompt and bool(np.any(prompt_lengths))

    def project(self, pooled: np.ndarray) -> np.ndarray:
        """The Dense layers on pooled vectors (from the numpy pooling or from the graph's pooled output)."""
        vectors = pooled.astype(np.float32, copy=False)
        for layer in self.dense:
            vectors = layer(vectors)
        return vectors

    def finish(self, vectors: np.ndarray, *, normalize: bool | None = None) -> np.ndarray:
        """Apply the model's Normalize (or the caller's choice) to pooled vectors."""
        return l2_normalize(vectors) if (self.normalize if normalize is None else normalize) else vectors

    # -- persistence --------------------------------------------------------------------------------------

    def to_manifest(self) -> dict[str, Any]:
        """The JSON-friendly description written into ``manifest.json`` (weights go to npz files)."""
        return {
            "pooling": list(self.pooling),
            "include_prompt": self.include_prompt,
            "dense": [
                {
                    "file": f"dense_{i}.npz",
                    "in_features": int(layer.weight.shape[1]),
                    "out_features": int(layer.weight.shape[0]),
                    "bias": layer.bias is not None,
                    "activation": layer.activation,
                }
                for i, layer in enumerate(self.dense)
            ],
            "normalize": self.normalize,
            "prompts": dict(self.prompts),
            "default_prompt_name": self.default_prompt_name,
        }

    def save_weights(self, directory: Path) -> list[Path]:
        """Write one ``dense_<i>.npz`` per Dense layer into ``directory``; return the paths."""
        paths = []
        for i, layer in enumerate(self.dense):
            path = directory / f"dense_{i}.npz"
            arrays = {"weight": layer.weight} if layer.bias is None else {"weight": layer.weight, "bias": layer.bias}
            np.savez(path, **arrays)
            paths.append(path)
        return paths

    @classmethod
    def from_manifest(cls, section: Mapping[str, Any], directory: Path) -> Head:
        """Rebuild a head from a manifest's ``model`` section and the npz files next to it."""
        dense: list[DenseLayer] = []
        for spec in section.get("dense", []):
            path = directory / spec["file"]
            if not path.is_file():
                raise ArtifactError(f"Dense weights {path} are missing")
            with np.load(path) as data:
                weight = data["weight"].astype(np.float32)
                bias = data["bias"].astype(np.float32) if "bias" in data else None
            if weight.shape != (spec["out_features"], spec["in_features"]):
                raise ArtifactError(
                    f"{path.name}: weight shape {weight.shape} does not match the manifest "
                    f"({spec['out_features']}, {spec['in_features']})"
                )
            dense.append(DenseLayer(weight=weight, bias=bias, activation=spec["activation"]))
        return cls(
            pooling=tuple(section["pooling"]),
            include_prompt=bool(section.get("include_prompt", True)),
            dense=tuple(dense),
            normalize=bool(section.get("normalize", False)),
            prompts=dict(section.get("prompts") or {}),
            default_prompt_name=section.get("default_prompt_name"),
        )


def pooled_dimension(hidden_size: int, pooling: Sequence[str], dense: Sequence[DenseLayer]) -> int:
    """Output dimension of a head on a transformer of width ``hidden_size``."""
    return int(dense[-1].weight.shape[0]) if dense else hidden_size * len(tuple(pooling))
