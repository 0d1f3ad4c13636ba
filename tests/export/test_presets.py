"""Named presets: an unknown name is a ValueError listing the choices."""

from __future__ import annotations

import pytest

from export import optimize, quantize
from export.config import ExportConfig, default_name


def test_detect_preset_from_flags():
    assert quantize.detect_preset("x86_64", {"avx2", "avx512f", "avx512_vnni"}) == "avx512_vnni"
    assert quantize.detect_preset("x86_64", {"avx2", "avx512f"}) == "avx512"
    assert quantize.detect_preset("x86_64", {"avx2"}) == "avx2"
    assert quantize.detect_preset("aarch64", set()) == "arm64"


def test_presets_map_to_optimum_configs():
    config = quantize.preset_config("avx512_vnni")
    assert config.per_channel is True and not config.is_static
    assert quantize.preset_config("avx2", per_channel=False).per_channel is False


@pytest.mark.parametrize(
    ("call", "choices"),
    [
        (lambda: quantize.preset_config("avx9000"), quantize.PRESETS),
        (lambda: optimize.optimize(None, None, "O7"), optimize.LEVELS),  # type: ignore[arg-type]
        (lambda: ExportConfig(optimization="O7"), ("O1", "O2", "O3")),
        (lambda: ExportConfig(quantization="x"), ("auto", "avx512_vnni")),
    ],
)
def test_unknown_names_list_choices(call, choices):
    with pytest.raises(ValueError) as info:
        call()
    for choice in choices:
        assert choice in str(info.value)


def test_default_names():
    assert default_name(None) == "embedserve-all-minilm-l6-v2"
    assert default_name("BAAI/bge-small-en-v1.5") == "embedserve-bge-small-en-v1.5"
    assert ExportConfig(model="/x/My Model/").model_name == "embedserve-my-model"
    with pytest.raises(ValueError, match="lower-case"):
        ExportConfig(name="Bad Name")


def test_the_gpu_artifact_is_fp16_by_default():
    # Measured on an H200: fp16 (O4, memory-efficient attention) at least as fast as fp32 in the raw session at every
    # shape, min cosine 0.99999 to sentence-transformers fp32 (benchmarks/results/bench_gpu.json).
    assert ExportConfig().gpu_precision == "fp16"
