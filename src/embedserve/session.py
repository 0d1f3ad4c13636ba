"""The one module that owns ONNX Runtime sessions.

A session is asked for providers explicitly, then checked: ONNX Runtime silently drops a provider whose
libraries do not load (CUDA asked, CPU obtained, nothing raised). :func:`create_session` compares
``session.get_providers()`` with the request, keeps the reason ONNX Runtime printed, and reports it.
"""

from __future__ import annotations

import contextlib
import logging
import os
import re
import sys
import tempfile
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import onnxruntime as ort

from embedserve import providers as prov
from embedserve.errors import ArtifactError

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


def _provider_options(provider: str) -> dict[str, Any]:
    if provider == prov.TENSORRT:
        cache = Path(tempfile.gettempdir()) / "embedserve-trt-cache"
        return {"trt_engine_cache_enable": True, "trt_engine_cache_path": str(cache)}
    return {}


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
) -> tuple[ort.InferenceSession, ProviderReport]:
    """Create an inference session and report which providers it really uses.

    Args:
        model_path: the ``.onnx`` file.
        preference: providers in order of preference.
        intra_op_threads: threads per operator.
        inter_op_threads: threads across operators.
        allow_spinning: let idle ONNX Runtime threads busy-wait.

    Raises:
        ArtifactError: the file is missing or ONNX Runtime cannot load it (corrupt, truncated, wrong format).
    """
    model_path = Path(model_path)
    if not model_path.is_file():
        raise ArtifactError(f"ONNX model {model_path} is missing")
    requested, skipped = prov.resolve(preference, ort.get_available_providers())
    options = session_options(
        intra_op_threads=intra_op_threads, inter_op_threads=inter_op_threads, allow_spinning=allow_spinning
    )
    provider_args = [(name, _provider_options(name)) for name in requested]
    with _captured_native_output() as lines:
        if any(prov.is_gpu(p) for p in requested) and hasattr(ort, "preload_dlls"):
            # Loads CUDA/cuDNN from the nvidia-* pip packages when present (the bento image ships them).
            with contextlib.suppress(Exception):
                ort.preload_dlls()
        try:
            session = ort.InferenceSession(str(model_path), sess_options=options, providers=provider_args)
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
