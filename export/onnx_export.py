"""Step 2: the transformer -> ONNX with Hugging Face Optimum (``last_hidden_state`` out; pooling stays in numpy)."""

from __future__ import annotations

import logging
from pathlib import Path

import onnx

log = logging.getLogger(__name__)


def export_onnx(transformer_dir: Path, output_dir: Path, *, trust_remote_code: bool = False) -> Path:
    """Export the Transformer module's Hugging Face model to ``output_dir/model.onnx``.

    ``library_name="transformers"`` keeps Optimum from folding sentence-transformers' pooling into the graph:
    pooling, Dense and Normalize run in :mod:`embedserve.head`, so ``normalize=false`` and Matryoshka
    truncation stay exact.

    Returns:
        The path of the exported graph.
    """
    from optimum.exporters.onnx import main_export

    output_dir.mkdir(parents=True, exist_ok=True)
    main_export(
        str(transformer_dir),
        output=str(output_dir),
        task="feature-extraction",
        library_name="transformers",
        device="cpu",
        trust_remote_code=trust_remote_code,
        do_validation=False,  # the parity gate validates the whole pipeline, more strictly
    )
    path = output_dir / "model.onnx"
    if not path.is_file():
        raise RuntimeError(f"optimum wrote no model.onnx into {output_dir}")
    return path


def opset_of(path: Path) -> int:
    """The default-domain opset of an ONNX file."""
    model = onnx.load(str(path), load_external_data=False)
    return next((o.version for o in model.opset_import if o.domain in ("", "ai.onnx")), 0)
