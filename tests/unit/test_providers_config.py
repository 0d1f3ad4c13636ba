"""Provider preference, artifact choice and configuration from the environment."""

from __future__ import annotations

import pytest

from embedserve import providers as prov
from embedserve.config import Limits, RuntimeConfig, Settings
from embedserve.errors import ConfigError


def test_resolve_filters_by_available_and_keeps_cpu_last():
    requested, skipped = prov.resolve(prov.DEFAULT_PREFERENCE, ["CUDAExecutionProvider", "CPUExecutionProvider"])
    assert requested == ("CUDAExecutionProvider", "CPUExecutionProvider")
    assert "TensorrtExecutionProvider" in skipped
    assert "get_available_providers" in skipped["TensorrtExecutionProvider"]
    requested, _ = prov.resolve(("CUDAExecutionProvider",), ["CPUExecutionProvider"])
    assert requested == ("CPUExecutionProvider",)


def test_artifact_follows_provider():
    assert prov.artifact_role("CUDAExecutionProvider") == "gpu"
    assert prov.artifact_role("TensorrtExecutionProvider") == "gpu"
    assert prov.artifact_role("CPUExecutionProvider") == "cpu"


def test_parse_preference_aliases_and_errors():
    assert prov.parse_preference("cuda, cpu") == ("CUDAExecutionProvider", "CPUExecutionProvider")
    assert prov.parse_preference("trt,CUDAExecutionProvider,cuda") == (
        "TensorrtExecutionProvider",
        "CUDAExecutionProvider",
    )
    with pytest.raises(ValueError, match="unknown execution provider 'tpu'"):
        prov.parse_preference("tpu")
    with pytest.raises(ValueError, match="empty"):
        prov.parse_preference(" , ")


def test_settings_from_env_reads_prefixed_variables_only():
    settings = Settings.from_env(
        {
            "EMBEDSERVE_PROVIDERS": "cpu",
            "EMBEDSERVE_REQUIRE_GPU": "yes",
            "EMBEDSERVE_INTRA_OP_THREADS": "3",
            "EMBEDSERVE_MAX_INPUTS": "7",
            "EMBEDSERVE_BATCH_WAIT_MS": "0.5",
            "MAX_INPUTS": "999",
        }
    )
    assert settings.runtime.providers == ("CPUExecutionProvider",)
    assert settings.runtime.require_gpu is True
    assert settings.runtime.intra_op_threads == 3
    assert settings.limits.max_inputs == 7
    assert settings.limits.batch_wait_ms == 0.5


def test_defaults_are_explicit():
    settings = Settings.from_env({})
    assert settings.runtime.intra_op_threads >= 1
    assert settings.runtime.providers == prov.DEFAULT_PREFERENCE
    assert settings.limits == Limits()


@pytest.mark.parametrize(
    ("env", "message"),
    [
        ({"EMBEDSERVE_MAX_INPUTS": "lots"}, "EMBEDSERVE_MAX_INPUTS"),
        ({"EMBEDSERVE_MAX_INPUTS": "0"}, "max_inputs must be >= 1"),
        ({"EMBEDSERVE_ARTIFACT": "tpu"}, "artifact must be one of auto, cpu, gpu"),
        ({"EMBEDSERVE_REQUIRE_GPU": "maybe"}, "EMBEDSERVE_REQUIRE_GPU"),
        ({"EMBEDSERVE_PROVIDERS": "quantum"}, "EMBEDSERVE_PROVIDERS"),
    ],
)
def test_bad_values_name_the_variable(env, message):
    with pytest.raises(ConfigError, match=message):
        Settings.from_env(env)


def test_config_is_frozen_and_keyword_only():
    cfg = RuntimeConfig(max_batch_size=8)
    with pytest.raises(AttributeError):
        cfg.max_batch_size = 9  # type: ignore[misc]
    with pytest.raises(TypeError):
        RuntimeConfig(("CPUExecutionProvider",))  # type: ignore[misc]
