"""The one module that owns ONNX Runtime sessions.

A session is asked for providers explicitly, then checked: ONNX Runtime silently drops a provider whose
libraries do not load (CUDA asked, CPU obtained, nothing raised). :func:`create_session` compares
``session.get_providers()`` with the request, keeps the reason ONNX Runtime printed, and reports it.
"""

from __future__ import annotations

import contextlib
import dataclasses
import logging
import os
import re
import sys
import tempfile
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import onnxruntime as ort

from embedserve import providers as prov
from embedserve.artifact import Artifact
from embedserve.config import RuntimeConfig
from embedserve.errors import ArtifactError, ProviderUnavailableError

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class ProviderReport:
    """What was asked of ONNX Runtime and what it gave.

    Attributes:
        preference: the configured preference.
        requested: the preference filtered by ``onnxruntime.get_available_providers()``.
        active: ``session.get_providers()`` after creation.
        skipped: preferred providers not offered by this build, with the reason.
        dropped: requested providers the session did not enable, with ONNX Runtime's reason.
    """

    preference: tuple[str, ...]
    requested: tuple[str, ...]
    active: tuple[str, ...]
    skipped: Mapping[str, str] = field(default_factory=dict)
    dropped: Mapping[str, str] = field(default_factory=dict)

    @property
    def primary(self) -> str:
        return prov.primary(self.active)

    @property
    def fell_back(self) -> bool:
        """True when the first preferred provider is not the one running the graph."""
        return prov.primary(self.preference) != self.primary

    def as_dict(self) -> dict[str, Any]:
        return {
            "preference": list(self.preference),
            "requested": list(self.requested),
            "active": list(self.active),
            "primary": self.primary,
            "fell_back": self.fell_back,
            "skipped": dict(self.skipped),
            "dropped": dict(self.dropped),
        }


@contextlib.contextmanager
def _captured_native_output() -> Iterator[list[str]]:
    """Capture what native code (and Python) writes to fds 1 and 2; the text is appended to the yielded list."""
    lines: list[str] = []
    sys.stdout.flush()
    sys.stderr.flush()
    with tempfile.TemporaryFile(mode="w+b") as sink:
        saved = {fd: os.dup(fd) for fd in (1, 2)}
        try:
            for fd in (1, 2):
                os.dup2(sink.fileno(), fd)
            yield lines
        finally:
            sys.stdout.flush()
            sys.stderr.flush()
            for fd, copy in saved.items():
                os.dup2(copy, fd)
                os.close(copy)
            sink.seek(0)
            text = sink.read().decode("utf-8", errors="replace")
            lines.extend(_ANSI.sub("", text).splitlines())


_ANSI = re.compile(r"\x1b\[[0-9;]*m")
_PROVIDER_WORDS = {prov.TENSORRT: ("tensorrt",), prov.CUDA: ("cuda", "cublas", "cudnn", "curand", "cufft")}


def _reason_for(provider: str, lines: Sequence[str]) -> str:
    """The lines ONNX Runtime printed about ``provider``, condensed; a generic reason if it printed none."""
    words = _PROVIDER_WORDS.get(provider, (prov.short_name(provider),))
    relevant = []
    for line in lines:
        lowered = line.lower()
        if any(w in lowered for w in words) and ("fail" in lowered or "error" in lowered or "require" in lowered):
            text = line.strip()
            if "with error:" in text:
                text = text.split("with error:", 1)[1].strip()
            elif "] " in text and text.startswith("20"):
                text = text.split("] ", 1)[1].strip()
            if text not in relevant:
                relevant.append(text[:300])
    if relevant:
        return " | ".join(relevant[:3])
    return "onnxruntime did not enable it (its libraries or the device are missing)"


#: Libraries ONNX Runtime's TensorRT provider loads (TensorRT 10).
TENSORRT_LIBRARIES = ("libnvinfer.so.10", "libnvinfer_plugin.so.10", "libnvonnxparser.so.10")


def tensorrt_missing() -> str | None:
    """Why TensorRT cannot run here (a library does not load), or ``None`` when it can.

    Checked before a session is asked for TensorRT, so that a machine without TensorRT skips the provider with
    this reason instead of logging a failed load on every start.
    """
    import ctypes

    for name in TENSORRT_LIBRARIES:
        try:
            ctypes.CDLL(name)
        except OSError as exc:
            return f"TensorRT is not installed ({exc}); install the TensorRT 10 libraries to use it"
    return None


def session_options(*, intra_op_threads: int, inter_op_threads: int, allow_spinning: bool) -> ort.SessionOptions:
    """Session options with explicit thread counts (never ONNX Runtime's 'all cores' default)."""
    options = ort.SessionOptions()
    options.intra_op_num_threads = intra_op_threads
    options.inter_op_num_threads = inter_op_threads
    options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
    options.execution_mode = ort.ExecutionMode.ORT_SEQUENTIAL
    spin = "1" if allow_spinning else "0"
    options.add_session_config_entry("session.intra_op.allow_spinning", spin)
    options.add_session_config_entry("session.inter_op.allow_spinning", spin)
    return options


def create_session(
    model_path: Path,
    preference: Sequence[str],
    *,
    intra_op_threads: int,
    inter_op_threads: int = 1,
    allow_spinning: bool = False,
    options: Mapping[str, Mapping[str, Any]] | None = None,
) -> tuple[ort.InferenceSession, ProviderReport]:
    """Create an inference session and report which providers it really uses.

    Args:
        model_path: the ``.onnx`` file.
        preference: providers in order of preference.
        intra_op_threads: threads per operator.
        inter_op_threads: threads across operators.
        allow_spinning: let idle ONNX Runtime threads busy-wait.
        options: provider options by provider name.

    Raises:
        ArtifactError: the file is missing or ONNX Runtime cannot load it (corrupt, truncated, wrong format).
    """
    model_path = Path(model_path)
    if not model_path.is_file():
        raise ArtifactError(f"ONNX model {model_path} is missing")
    unusable = {}
    if prov.TENSORRT in preference and prov.TENSORRT in ort.get_available_providers():
        reason = tensorrt_missing()
        if reason:
            unusable[prov.TENSORRT] = reason
    requested, skipped = prov.resolve(preference, ort.get_available_providers(), unusable=unusable)
    session_opts = session_options(
        intra_op_threads=intra_op_threads, inter_op_threads=inter_op_threads, allow_spinning=allow_spinning
    )
    provider_args = [(name, {k: str(v) for k, v in (options or {}).get(name, {}).items()}) for name in requested]
    with _captured_native_output() as lines:
        if any(prov.is_gpu(p) for p in requested) and hasattr(ort, "preload_dlls"):
            # Loads CUDA/cuDNN from the nvidia-* pip packages when present (the bento image ships them).
            with contextlib.suppress(Exception):
                ort.preload_dlls()
        try:
            session = ort.InferenceSession(str(model_path), sess_options=session_opts, providers=provider_args)
            error = None
        except Exception as exc:  # onnxruntime raises its own exception types
            session, error = None, exc
    for line in lines:
        if line.strip():
            log.debug("onnxruntime: %s", line)
    if session is None:
        raise ArtifactError(f"onnxruntime cannot load {model_path}: {error}") from error
    active = tuple(session.get_providers())
    dropped = {p: _reason_for(p, lines) for p in requested if p not in active}
    report = ProviderReport(
        preference=tuple(preference), requested=requested, active=active, skipped=skipped, dropped=dropped
    )
    for name, reason in {**skipped, **dropped}.items():
        if prov.is_gpu(name):
            log.warning("execution provider %s is not active: %s", name, reason)
    return session, report


# -- the model a worker runs ------------------------------------------------------------------------------------

_KNOWN_INPUTS = ("input_ids", "attention_mask", "token_type_ids")
_HIDDEN_OUTPUTS = ("last_hidden_state", "token_embeddings")
#: The graph output the export stage adds: pooled vectors (before Dense and Normalize), ``(batch, dimension)``.
POOLED_OUTPUT = "pooled_embedding"
#: The graph's metadata entry that records how the export stage pooled (JSON with ``pooling`` and ``padding_side``).
POOLED_METADATA_KEY = "embedserve.pooled_output"


class ModelRunner:
    """One ONNX Runtime session of an artifact graph, and how to feed it.

    Graphs exported with pooling inside (output ``pooled_embedding``) return ``(batch, dimension)`` vectors, so a
    GPU never copies ``batch x seq x hidden`` token states to the host; older graphs, and batches whose prompt
    tokens must be left out of pooling, use the token-state output and the numpy head.

    Attributes:
        role: the artifact graph it runs (``cpu`` or ``gpu``).
        precision: that graph's precision (``int8``, ``fp32``, ``fp16``).
        providers: what was asked and what the session got.
        io_binding: True when inputs and outputs are bound explicitly (CUDA).
    """

    def __init__(
        self,
        session: ort.InferenceSession,
        providers: ProviderReport,
        *,
        role: str,
        precision: str,
        io_binding: bool,
        pooling: Sequence[str] = (),
    ) -> None:
        self.session = session
        self.providers = providers
        self.role = role
        self.precision = precision
        self.input_names = [i.name for i in session.get_inputs()]
        unknown = [name for name in self.input_names if name not in _KNOWN_INPUTS]
        if unknown:
            raise ArtifactError(f"the {role} graph has inputs embedserve cannot feed: {unknown}")
        outputs = [o.name for o in session.get_outputs()]
        self.hidden_output = next((n for n in _HIDDEN_OUTPUTS if n in outputs), outputs[0])
        self.pooled_output = POOLED_OUTPUT if POOLED_OUTPUT in outputs else None
        self.pooling_mismatch: str | None = None
        if self.pooled_output is not None:
            self.pooling_mismatch = _pooling_mismatch(session, pooling)
            if self.pooling_mismatch:  # the manifest is the truth: pool in numpy as it says
                log.warning("not using the %s graph's pooled output: %s", role, self.pooling_mismatch)
                self.pooled_output = None
        self.io_binding = io_binding
        self._binding = session.io_binding() if io_binding else None

    @property
    def primary(self) -> str:
        return self.providers.primary

    def run(self, feed: Mapping[str, np.ndarray], *, pooled: bool) -> np.ndarray:
        """Run one padded batch; the pooled output when asked and present, else the token states."""
        output = self.pooled_output if pooled and self.pooled_output else self.hidden_output
        if self._binding is None:
            (result,) = self.session.run([output], {name: feed[name] for name in self.input_names})
            return result
        binding = self._binding
        binding.clear_binding_inputs()
        binding.clear_binding_outputs()
        for name in self.input_names:
            binding.bind_cpu_input(name, feed[name])
        binding.bind_output(output, "cpu")
        self.session.run_with_iobinding(binding)
        return binding.copy_outputs_to_cpu()[0]


def _pooling_mismatch(session: ort.InferenceSession, pooling: Sequence[str]) -> str | None:
    """Why the graph's pooled output does not follow the manifest's pooling (``None`` when it does)."""
    import json

    recorded = session.get_modelmeta().custom_metadata_map.get(POOLED_METADATA_KEY)
    if recorded is None:
        return f"the graph does not record how it pools ({POOLED_METADATA_KEY} is missing)"
    try:
        modes = tuple(json.loads(recorded)["pooling"])
    except (ValueError, KeyError, TypeError):
        return f"unreadable {POOLED_METADATA_KEY}: {recorded[:200]!r}"
    if modes != tuple(pooling):
        return f"the graph pools {list(modes)} but the manifest says {list(pooling)}"
    return None


def _cuda_options(config: RuntimeConfig, precision: str) -> dict[str, Any]:
    kernel = config.cuda_sdpa_kernel
    if kernel is None:  # auto: the fp16 graph's fused Attention rebuilds its default kernel for every new length
        kernel = FP16_SDPA_KERNEL if precision == "fp16" else 0
    return {"sdpa_kernel": kernel} if kernel else {}


def _tensorrt_options(artifact: Artifact, role: str, config: RuntimeConfig, shape: tuple[int, int]) -> dict[str, Any]:
    cache = artifact.directory / "tensorrt-cache"
    try:
        cache.mkdir(exist_ok=True)
        writable = os.access(cache, os.W_OK)
    except OSError:
        writable = False
    if not writable:  # a read-only model store: keep the engines beside the other temporary files
        cache = Path(tempfile.gettempdir()) / "embedserve-tensorrt-cache" / artifact.graph(role).sha256[:16]
        cache.mkdir(parents=True, exist_ok=True)
    batch, length = shape
    names = [n for n in _KNOWN_INPUTS if n in artifact.graph(role).details.get("inputs", _KNOWN_INPUTS)]

    def profile(b: int, n: int) -> str:
        return ",".join(f"{name}:{b}x{n}" for name in names)

    return {
        "trt_engine_cache_enable": True,
        "trt_engine_cache_path": str(cache),
        "trt_timing_cache_enable": True,
        "trt_timing_cache_path": str(cache),
        "trt_fp16_enable": artifact.graph(role).precision == "fp16",
        "trt_profile_min_shapes": profile(1, 1),
        "trt_profile_opt_shapes": profile(batch, max(16, length // 8)),
        "trt_profile_max_shapes": profile(batch, length),
    }


#: ``sdpa_kernel`` CUDA provider option for fp16 graphs: memory-efficient attention (see docs/compatibility.md).
FP16_SDPA_KERNEL = 2


def open_model(artifact: Artifact, config: RuntimeConfig) -> ModelRunner:
    """Open the artifact graph that fits the provider the session really gets.

    The GPU graph (fp32/fp16) is asked for with the configured preference; if the session falls back to the CPU,
    the CPU graph (int8) is opened instead, with a warning (``config.artifact`` forces one graph).

    Raises:
        ArtifactError: missing or corrupt files, or a graph embedserve cannot feed.
        ProviderUnavailableError: ``config.require_gpu`` and no GPU provider became active.
    """
    requested, _ = prov.resolve(config.providers, ort.get_available_providers())
    role = prov.artifact_role(prov.primary(requested)) if config.artifact == "auto" else config.artifact
    session, report = _session_for(artifact, role, config.providers, config)
    if config.require_gpu and not prov.is_gpu(report.primary):
        reasons = "; ".join(f"{k}: {v}" for k, v in {**report.skipped, **report.dropped}.items())
        raise ProviderUnavailableError(
            f"EMBEDSERVE_REQUIRE_GPU is set but the session runs on {report.primary} ({reasons or 'no GPU provider'})"
        )
    if config.artifact == "auto" and role == "gpu" and not prov.is_gpu(report.primary) and "cpu" in artifact.graphs:
        log.warning(
            "GPU requested but the session fell back to %s; loading the CPU (%s) graph instead of the GPU one",
            report.primary,
            artifact.graph("cpu").precision,
        )
        role = "cpu"
        session, cpu_report = _session_for(artifact, role, (report.primary,), config)
        report = ProviderReport(
            preference=report.preference,
            requested=report.requested,
            active=cpu_report.active,
            skipped=report.skipped,
            dropped=report.dropped,
        )
    io_binding = prov.is_gpu(report.primary) if config.io_binding is None else config.io_binding
    return ModelRunner(
        session,
        report,
        role=role,
        precision=artifact.graph(role).precision,
        io_binding=io_binding,
        pooling=artifact.head.pooling,
    )


def open_models(artifact: Artifact, config: RuntimeConfig) -> list[ModelRunner]:
    """``config.sessions`` plus ``config.express_sessions`` sessions of the same graph on the same provider (the
    first one chooses them).

    Several sessions with one thread each run several small batches at once: on 2 cores, two single-thread
    sessions embedded 1,164 short texts/s where one two-thread session did 819 (small batches do not split well
    across threads). One process serving them all has one event loop and one queue, so no worker sits idle while
    another has all the connections.
    """
    first = open_model(artifact, config)
    count = config.sessions + config.express_sessions
    if count == 1:
        return [first]
    same = dataclasses.replace(
        config, artifact=first.role, providers=first.providers.active, require_gpu=False, verify_hashes=False
    )
    others = [open_model(artifact, same) for _ in range(count - 1)]
    for runner in others:  # what was asked and dropped is the first session's story
        runner.providers = first.providers
    return [first, *others]


def _session_for(
    artifact: Artifact, role: str, preference: Sequence[str], config: RuntimeConfig
) -> tuple[ort.InferenceSession, ProviderReport]:
    if config.verify_hashes:
        artifact.verify(artifact.files_for(role))
    precision = artifact.graph(role).precision
    shape = config.batch_shape(gpu=role == "gpu")
    options = {
        prov.CUDA: _cuda_options(config, precision),
        prov.TENSORRT: _tensorrt_options(artifact, role, config, (shape.max_batch_size, artifact.max_seq_length))
        if prov.TENSORRT in preference
        else {},
    }
    return create_session(
        artifact.graph_path(role),
        preference,
        intra_op_threads=config.intra_op_threads,
        inter_op_threads=config.inter_op_threads,
        allow_spinning=config.allow_spinning,
        options=options,
    )
