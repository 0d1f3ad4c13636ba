"""Step 3: ONNX Runtime graph optimization through Optimum's named levels (O1-O3 for CPU, O4 = fp16 for GPU)."""

from __future__ import annotations

import shutil
from pathlib import Path

LEVELS = ("O1", "O2", "O3", "O4")


def optimize(export_dir: Path, output_dir: Path, level: str) -> Path:
    """Optimize ``export_dir/model.onnx`` at ``level`` into ``output_dir``.

    O1 = basic fusions; O2 = + transformer-specific fusions (attention, LayerNorm, GELU); O3 = + approximate
    GELU; O4 = O3 + fp16 (GPU only: on CPU it runs slower than fp32).

    Raises:
        ValueError: an unknown level; the message lists the choices.

    Returns:
        The optimized graph's path.
    """
    if level not in LEVELS:
        raise ValueError(f"unknown optimization level {level!r}; choices: {', '.join(LEVELS)}")
    from optimum.onnxruntime import ORTOptimizer
    from optimum.onnxruntime.configuration import AutoOptimizationConfig

    config = AutoOptimizationConfig.with_optimization_level(level, for_gpu=level == "O4")
    output_dir.mkdir(parents=True, exist_ok=True)
    ORTOptimizer.from_pretrained(str(export_dir)).optimize(config, str(output_dir))
    produced = output_dir / "model_optimized.onnx"
    if not produced.is_file():
        raise RuntimeError(f"ORTOptimizer wrote no model_optimized.onnx into {output_dir}")
    return produced


def copy_graph(source: Path, target: Path) -> Path:
    """Copy a graph (no external data expected for models under 2 GB)."""
    shutil.copyfile(source, target)
    return target
