"""Execution-provider choice, as pure functions: what to ask ONNX Runtime for, and which artifact goes with it.

The default preference is CUDA first with CPU last, filtered by what the installed ONNX Runtime offers.
TensorRT is opt-in (``EMBEDSERVE_PROVIDERS=tensorrt,cuda,cpu``) and used only when its libraries load.
What the session really got is checked afterwards by :mod:`embedserve.session`.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping, Sequence

TENSORRT = "TensorrtExecutionProvider"
CUDA = "CUDAExecutionProvider"
CPU = "CPUExecutionProvider"

#: Default preference: GPU first, CPU as the last resort. TensorRT is opt-in: neither the project nor the bento
#: installs its libraries, and a first choice that fails to load on every start is noise, not a default.
DEFAULT_PREFERENCE = (CUDA, CPU)

#: Providers that run the GPU artifact (optimized fp32/fp16). Everything else runs the CPU (int8) artifact.
GPU_PROVIDERS = frozenset({TENSORRT, CUDA})

_ALIASES = {
    "tensorrt": TENSORRT,
    "trt": TENSORRT,
    "cuda": CUDA,
    "gpu": CUDA,
    "cpu": CPU,
}


def parse_preference(text: str) -> tuple[str, ...]:
    """Parse a comma-separated provider list (``"cuda,cpu"`` or full ONNX Runtime names).

    Raises:
        ValueError: an empty list or an unknown name; the message lists the choices.
    """
    names = []
    for raw in text.split(","):
        item = raw.strip()
        if not item:
            continue
        name = _ALIASES.get(item.lower(), item)
        if not name.endswith("ExecutionProvider"):
            raise ValueError(
                f"unknown execution provider {item!r}; use {', '.join(sorted(_ALIASES))} or a full ONNX Runtime "
                "provider name such as CUDAExecutionProvider"
            )
        if name not in names:
            names.append(name)
    if not names:
        raise ValueError("the execution provider list is empty")
    return tuple(names)


def resolve(
    preference: Sequence[str], available: Iterable[str], *, unusable: Mapping[str, str] | None = None
) -> tuple[tuple[str, ...], dict[str, str]]:
    """Filter a preference by the providers this ONNX Runtime build offers.

    CPU is always appended last (ONNX Runtime needs it for the operators other providers do not take).

    Args:
        preference: providers in order of preference.
        available: ``onnxruntime.get_available_providers()``.
        unusable: offered providers known not to work here, with the reason (TensorRT without its libraries).

    Returns:
        The providers to request, and ``{provider: reason}`` for each preferred one left out.
    """
    offered = set(available)
    requested: list[str] = []
    skipped: dict[str, str] = {}
    for name in preference:
        if unusable and name in unusable:
            skipped[name] = unusable[name]
        elif name in offered:
            requested.append(name)
        else:
            skipped[name] = "not offered by this onnxruntime build (onnxruntime.get_available_providers())"
    if CPU not in requested:
        requested.append(CPU)
    return tuple(requested), skipped


def primary(providers: Sequence[str]) -> str:
    """The provider that runs most of the graph: the first one."""
    return providers[0] if providers else CPU


def is_gpu(provider: str) -> bool:
    return provider in GPU_PROVIDERS


def artifact_role(provider: str) -> str:
    """``"gpu"`` for GPU providers (optimized fp32/fp16 graph), ``"cpu"`` otherwise (int8 graph).

    Dynamic int8 is fast on CPU, but its integer MatMuls have no real CUDA kernels, so a GPU session loads the
    floating-point graph.
    """
    return "gpu" if is_gpu(provider) else "cpu"


def short_name(provider: str) -> str:
    """``CUDAExecutionProvider`` -> ``cuda`` (for metric labels and logs)."""
    return provider.removesuffix("ExecutionProvider").lower()
