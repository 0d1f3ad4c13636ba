"""Peer servers for the HTTP benchmarks: infinity-emb 0.0.78 (michaelfeil/infinity) with its optimum engine (ONNX
Runtime), on the same all-MiniLM-L6-v2, started and stopped like ``bentoml serve`` in ``bench_http``.

``benchmarks/peers/setup_infinity.sh`` builds what this needs: infinity's own venv and two model directories, one
ONNX file each (infinity neither exports nor quantizes; it serves the ``*.onnx`` it finds in the model directory and
on CPU prefers a file named ``*quantize*``):

* ``int8``: ``model_quantized.onnx``, Optimum's dynamic quantization (per-channel, the preset embedserve's export
  picks for this CPU, so the same weight and activation types as embedserve's int8 graph) of the plain export;
* ``fp32``: ``model.onnx``, the plain Optimum export.

What infinity 0.0.78 does with them, and what :class:`Infinity` sets because of it:

* ``--pooling-method mean``: with ``auto`` the optimum engine uses CLS pooling (only the torch engine reads the
  sentence-transformers pooling config); the vectors would then not be all-MiniLM-L6-v2's.
* The model directory is the working directory and ``--model-id .``: infinity hands the ONNX path it found by globbing
  the model directory to Optimum's ``from_pretrained(file_name=...)``, which (Optimum 2) compares it with bare file
  names, so an absolute model directory fails to load.
* Its own graph optimization (``ORTOptimizer``, level 99, fp32) fails under Optimum 2 (``OptimizationConfig`` lost the
  ``optimize_with_onnxruntime_only`` argument it passes); it logs a warning and serves the file as it is, with ONNX
  Runtime's default session optimizations (``ORT_ENABLE_ALL``). :meth:`Infinity.describe` reports what the log says.
* ``HF_HOME`` / ``INFINITY_HOME`` point to a per-model directory under ``build/peers/`` (its caches stay out of the
  model directory, where it globs ``**/*.onnx``, and out of ``~/.cache``); ``HF_HUB_OFFLINE=1`` and ``DO_NOT_TRACK=1``
  (no hub, no telemetry).
"""

from __future__ import annotations

import json
import os
import re
import subprocess
from pathlib import Path
from typing import Any

from benchmarks.bench_http import Server, http_get_json
from benchmarks.common import REPO_ROOT

DEFAULT_VENV = REPO_ROOT / "build" / "peers" / "infinity-venv"
DEFAULT_MODELS = REPO_ROOT / "build" / "peers" / "models"
MODEL_DIRS = {"int8": "all-MiniLM-L6-v2-int8", "fp32": "all-MiniLM-L6-v2-fp32"}
#: Distributions whose versions in infinity's venv are recorded.
PEER_PACKAGES = (
    "infinity-emb",
    "optimum",
    "optimum-onnx",
    "onnxruntime",
    "onnxruntime-gpu",
    "transformers",
    "tokenizers",
    "torch",
    "numpy",
    "fastapi",
    "starlette",
    "uvicorn",
    "uvloop",
    "httptools",
    "orjson",
    "pydantic",
)
#: infinity's log lines that say which graph it serves (rich wraps lines; COLUMNS keeps each message on one line).
LOG_FACTS = {
    "optimization_failed": r"Optimization failed with (.+?)\. Going to use the unoptimized model",
    "optimized_found": r"Optimized model found at (\S+)",
    "optimized_now": r"(Optimizing model)",
    "onnx_file_chosen": r"Using (\S+) as the model",
    "warmup_short": r"embeddings/sec: ([\d.]+)",
}


class Infinity(Server):
    """``infinity_emb v2 --engine optimum --device cpu`` on a local ONNX model directory, in its own process group.

    Args:
        port: the port to serve on (127.0.0.1 only).
        precision: ``int8`` or ``fp32``: which model directory (see the module docstring).
        venv: infinity's venv (``setup_infinity.sh``).
        models: the directory holding the model directories.
        batch_size: infinity's ``--batch-size`` (texts per inference call; embedserve's default is 32 too).
        served_model_name: the ``model`` name it answers to.
        env: extra environment variables (``INFINITY_*`` settings, ``OMP_NUM_THREADS``...).
    """

    name = "infinity_emb"
    ready_path = "/health"
    #: OpenAI-style route: POST {"model", "input"} -> {"data": [{"embedding": [...]}]} (no /v1 prefix by default).
    path = "/embeddings"

    def __init__(
        self,
        port: int,
        precision: str = "int8",
        *,
        venv: Path = DEFAULT_VENV,
        models: Path = DEFAULT_MODELS,
        batch_size: int = 32,
        served_model_name: str = "all-MiniLM-L6-v2",
        env: dict[str, str] | None = None,
    ) -> None:
        if precision not in MODEL_DIRS:
            raise ValueError(f"unknown precision {precision!r}; choose from {', '.join(MODEL_DIRS)}")
        self.precision = precision
        self.venv = Path(venv)
        self.model_dir = Path(models) / MODEL_DIRS[precision]
        self.home = Path(models).parent / "home" / MODEL_DIRS[precision]
        self.batch_size = batch_size
        self.served_model_name = served_model_name
        executable = self.venv / "bin" / "infinity_emb"
        onnx_files = sorted(self.model_dir.glob("*.onnx"))
        if not executable.exists() or len(onnx_files) != 1:
            raise FileNotFoundError(
                f"{executable} or the single ONNX file in {self.model_dir} is missing: "
                "run benchmarks/peers/setup_infinity.sh"
            )
        self.onnx_file = onnx_files[0]
        super().__init__(port, model_tag=str(self.model_dir), env=env)
        self.cwd = self.model_dir

    def command(self) -> list[str]:
        """``infinity_emb v2`` with every setting that matters spelled out (none left to its defaults)."""
        return [
            str(self.venv / "bin" / "infinity_emb"),
            "v2",
            "--model-id",
            ".",
            "--served-model-name",
            self.served_model_name,
            "--engine",
            "optimum",
            "--device",
            "cpu",
            "--batch-size",
            str(self.batch_size),
            "--pooling-method",
            "mean",
            "--model-warmup",
            "--no-onnx-disable-optimize",
            "--no-onnx-do-not-prefer-quantized",
            "--no-vector-disk-cache",
            "--no-lengths-via-tokenize",
            "--host",
            "127.0.0.1",
            "--port",
            str(self.port),
            "--log-level",
            "info",
        ]

    def environment(self) -> dict[str, str]:
        """Offline, no telemetry, caches under ``build/peers/home/<model>``, then ``env``."""
        self.home.mkdir(parents=True, exist_ok=True)
        keep = {k: v for k, v in os.environ.items() if not k.startswith(("INFINITY_", "HF_"))}
        return {
            **keep,
            "HF_HOME": str(self.home),
            "INFINITY_HOME": str(self.home),
            "HF_HUB_OFFLINE": "1",
            "HF_HUB_DISABLE_TELEMETRY": "1",
            "DO_NOT_TRACK": "1",
            "INFINITY_ANONYMOUS_USAGE_STATS": "0",
            "TOKENIZERS_PARALLELISM": "false",
            "COLUMNS": "400",
            **self.extra_env,
        }

    def log_facts(self) -> dict[str, str | None]:
        """What infinity's log says about the graph it serves (see :data:`LOG_FACTS`)."""
        try:
            text = self.log_path.read_text(errors="replace")
        except OSError:
            return {}
        facts = {}
        for key, pattern in LOG_FACTS.items():
            match = re.search(pattern, text)
            facts[key] = match.group(1) if match else None
        return facts

    def venv_versions(self) -> dict[str, Any]:
        """Package versions and ONNX Runtime's available providers in infinity's venv."""
        code = (
            "import importlib.metadata as m, json, onnxruntime as ort\n"
            f"names = {list(PEER_PACKAGES)!r}\n"
            "out = {}\n"
            "for n in names:\n"
            "    try:\n"
            "        out[n] = m.version(n)\n"
            "    except m.PackageNotFoundError:\n"
            "        out[n] = None\n"
            "out['onnxruntime_providers'] = ort.get_available_providers()\n"
            "print(json.dumps(out))\n"
        )
        done = subprocess.run(
            [str(self.venv / "bin" / "python"), "-c", code], capture_output=True, text=True, check=True
        )
        return json.loads(done.stdout)

    def describe(self) -> dict[str, Any]:
        """The peer's exact configuration, for the results (call while it runs: it reads the log and ``/models``)."""
        facts = self.log_facts()
        if facts.get("optimization_failed"):
            graph = f"infinity's optimization failed ({facts['optimization_failed']}): the file is served as it is"
        elif facts.get("optimized_found") or facts.get("optimized_now"):
            graph = "optimized by infinity (ORTOptimizer level 99, fp32)"
        else:
            graph = "not optimized by infinity"
        ort_config = self.model_dir / "ort_config.json"
        quantization = json.loads(ort_config.read_text()).get("quantization") if ort_config.exists() else None
        return {
            "server": f"infinity-emb ({self.precision})",
            "command": self.command(),
            "cwd": str(self.model_dir),
            "extra_env": self.extra_env,
            "route": self.path,
            "engine": "optimum (ONNX Runtime)",
            "device": "cpu",
            "execution_provider": "CPUExecutionProvider",
            "onnx_file": self.onnx_file.name,
            "onnx_bytes": self.onnx_file.stat().st_size,
            "precision": (
                f"dynamic int8: {quantization['activations_dtype']} activations, {quantization['weights_dtype']} "
                f"weights, {'per-channel' if quantization['per_channel'] else 'per-tensor'}"
                if quantization
                else "fp32"
            ),
            "quantization": quantization,
            "exported_by": "setup_infinity.sh (optimum-cli export onnx / onnxruntime quantize), not infinity",
            "graph_optimization": graph,
            "log_facts": facts,
            "batch_size": self.batch_size,
            "pooling": "mean, then L2 normalize",
            "max_length": "config.max_position_embeddings (512; sentence-transformers uses 256)",
            "onnxruntime_threads": "ONNX Runtime defaults (intra-op = physical cores), not set by infinity",
            "models_endpoint": http_get_json(f"{self.url}/models"),
            "versions": self.venv_versions(),
        }
