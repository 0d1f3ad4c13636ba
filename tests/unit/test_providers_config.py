"""Provider preference, artifact choice and configuration from the environment."""

from __future__ import annotations

import pytest

from embedserve import providers as prov
from embedserve.config import Limits, RuntimeConfig, Settings
from embedserve.errors import ConfigError


def test_resolve_filters_by_available_and_keeps_cpu_last():
    preference = ("TensorrtExecutionProvider", "CUDAExecutionProvider", "CPUExecutionProvider")
    requested, skipped = prov.resolve(preference, ["CUDAExecutionProvider", "CPUExecutionProvider"])
    assert requested == ("CUDAExecutionProvider", "CPUExecutionProvider")
    assert "TensorrtExecutionProvider" in skipped
    assert "get_available_providers" in skipped["TensorrtExecutionProvider"]
    requested, _ = prov.resolve(("CUDAExecutionProvider",), ["CPUExecutionProvider"])
    assert requested == ("CPUExecutionProvider",)


def test_tensorrt_is_opt_in_and_skipped_with_a_reason_when_its_libraries_are_missing():
    assert prov.TENSORRT not in prov.DEFAULT_PREFERENCE
    assert prov.DEFAULT_PREFERENCE == ("CUDAExecutionProvider", "CPUExecutionProvider")
    offered = ["TensorrtExecutionProvider", "CUDAExecutionProvider", "CPUExecutionProvider"]
    requested, skipped = prov.resolve(
        ("TensorrtExecutionProvider", "CUDAExecutionProvider"), offered, unusable={"TensorrtExecutionProvider": "no"}
    )
    assert requested == ("CUDAExecutionProvider", "CPUExecutionProvider")
    assert skipped == {"TensorrtExecutionProvider": "no"}


def test_tensorrt_library_check_names_the_library():
    from embedserve.session import tensorrt_missing

    reason = tensorrt_missing()  # no TensorRT on the test machines
    assert reason is not None and "libnvinfer" in reason


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
            "EMBEDSERVE_WORKERS": "2",
            "EMBEDSERVE_IO_BINDING": "auto",
            "EMBEDSERVE_CUDA_SDPA_KERNEL": "1",
            "EMBEDSERVE_MAX_QUEUE_WAIT_S": "0.5",
            "EMBEDSERVE_REQUEST_DEADLINE_S": "4",
            "EMBEDSERVE_MAX_JOB_TOKENS": "1000",
            "EMBEDSERVE_STAGE_NICE": "3",
            "MAX_INPUTS": "999",
        }
    )
    assert settings.runtime.providers == ("CPUExecutionProvider",)
    assert settings.runtime.require_gpu is True
    assert settings.runtime.intra_op_threads == 3
    assert settings.limits.max_inputs == 7
    assert settings.runtime.batch_wait_ms == 0.5
    assert settings.workers == 2
    assert settings.runtime.io_binding is None and settings.runtime.cuda_sdpa_kernel == 1
    assert (settings.runtime.max_queue_wait_s, settings.runtime.request_deadline_s) == (0.5, 4.0)
    assert settings.runtime.max_job_tokens == 1000
    assert settings.runtime.stage_nice == 3
    assert Settings.from_env({}).runtime.stage_nice == 10 and RuntimeConfig().stage_nice == 0


def test_threads_follow_workers_and_batch_shape_follows_the_provider(monkeypatch):
    import embedserve.config as config

    monkeypatch.setattr(config, "available_cores", lambda: 16)
    monkeypatch.setattr(config, "gpu_present", lambda: False)
    cpu_host = Settings.from_env({})
    assert cpu_host.workers == 16 and cpu_host.runtime.sessions == config.CPU_SESSIONS  # a worker per core
    assert cpu_host.runtime.intra_op_threads == 1
    assert cpu_host.runtime.express_sessions == 1  # a lane for small requests beside the big ones' jobs
    assert Settings.from_env({"EMBEDSERVE_EXPRESS_SESSIONS": "0"}).runtime.express_sessions == 0
    assert RuntimeConfig().express_sessions == 0  # code (bulk jobs, the gate, benchmarks) has no small requests
    one = Settings.from_env({"EMBEDSERVE_WORKERS": "1", "EMBEDSERVE_SESSIONS": "4"}).runtime
    assert (one.sessions, one.intra_op_threads) == (4, 4)
    monkeypatch.setattr(config, "gpu_present", lambda: True)
    gpu_host = Settings.from_env({})
    assert gpu_host.workers == config.GPU_WORKERS and gpu_host.runtime.sessions == 1
    assert gpu_host.runtime.express_sessions == 0
    assert gpu_host.runtime.intra_op_threads == 16 // config.GPU_WORKERS
    assert gpu_host.runtime.tokenizer_pool_size(gpu=True) == 16 // config.GPU_WORKERS
    assert Settings.from_env({"EMBEDSERVE_WORKERS": "4"}).runtime.intra_op_threads == 4  # GPU host: 1 session
    runtime = RuntimeConfig(max_batch_size=64)
    assert runtime.batch_shape(gpu=False) == config.BatchShape(
        max_batch_size=64, max_batch_tokens=8192, max_job_texts=32, max_job_tokens=2048, overhead_tokens=32
    )
    assert RuntimeConfig(max_job_tokens=512).batch_shape(gpu=True).max_job_tokens == 512
    assert runtime.batch_shape(gpu=True).max_batch_tokens == config.GPU_BATCH.max_batch_tokens
    assert RuntimeConfig().tokenizer_pool_size(gpu=False) == 1
    assert RuntimeConfig(intra_op_threads=16).tokenizer_pool_size(gpu=True) == config.GPU_TOKENIZER_THREADS


def test_defaults_are_explicit():
    settings = Settings.from_env({})
    assert settings.runtime.intra_op_threads >= 1
    assert settings.runtime.providers == prov.DEFAULT_PREFERENCE
    assert settings.limits == Limits()
    # the service bounds its queue and its requests' wait; an engine made in code (parity gate, bulk jobs) does not
    assert (settings.runtime.max_queue_wait_s, settings.runtime.request_deadline_s) == (2.0, 10.0)
    assert RuntimeConfig().max_queue_wait_s is None and RuntimeConfig().request_deadline_s is None


@pytest.mark.parametrize(
    ("env", "message"),
    [
        ({"EMBEDSERVE_MAX_INPUTS": "lots"}, "EMBEDSERVE_MAX_INPUTS"),
        ({"EMBEDSERVE_MAX_INPUTS": "0"}, "max_inputs must be >= 1"),
        ({"EMBEDSERVE_ARTIFACT": "tpu"}, "artifact must be one of auto, cpu, gpu"),
        ({"EMBEDSERVE_REQUIRE_GPU": "maybe"}, "EMBEDSERVE_REQUIRE_GPU"),
        ({"EMBEDSERVE_PROVIDERS": "quantum"}, "EMBEDSERVE_PROVIDERS"),
        ({"EMBEDSERVE_BATCH_WAIT_MS": "inf"}, "batch_wait_ms must be between 0 and 1000"),
        ({"EMBEDSERVE_BATCH_WAIT_MS": "nan"}, "batch_wait_ms must be between 0 and 1000"),
        ({"EMBEDSERVE_MAX_QUEUE_WAIT_S": "inf"}, "max_queue_wait_s must be a finite number of seconds > 0"),
        ({"EMBEDSERVE_MAX_QUEUE_WAIT_S": "0"}, "max_queue_wait_s must be a finite number of seconds > 0"),
        ({"EMBEDSERVE_MAX_QUEUE_WAIT_S": "soon"}, "EMBEDSERVE_MAX_QUEUE_WAIT_S"),
        ({"EMBEDSERVE_REQUEST_DEADLINE_S": "inf"}, "request_deadline_s must be a finite number of seconds > 0"),
        ({"EMBEDSERVE_REQUEST_DEADLINE_S": "nan"}, "request_deadline_s must be a finite number of seconds > 0"),
        ({"EMBEDSERVE_REQUEST_DEADLINE_S": "-1"}, "request_deadline_s must be a finite number of seconds > 0"),
        ({"EMBEDSERVE_REQUEST_DEADLINE_S": "1"}, "request_deadline_s=1 is below max_queue_wait_s=2"),
        ({"EMBEDSERVE_MAX_JOB_TOKENS": "0"}, "max_job_tokens must be >= 1"),
        ({"EMBEDSERVE_STAGE_NICE": "20"}, "stage_nice must be between 0 and 19"),
        ({"EMBEDSERVE_EXPRESS_SESSIONS": "-1"}, "express_sessions must be >= 0"),
        ({"EMBEDSERVE_STAGE_NICE": "-5"}, "stage_nice must be between 0 and 19"),
        ({"EMBEDSERVE_WORKERS": "0"}, "EMBEDSERVE_WORKERS"),
        ({"EMBEDSERVE_WORKERS": "many"}, "EMBEDSERVE_WORKERS"),
        ({"EMBEDSERVE_IO_BINDING": "sometimes"}, "EMBEDSERVE_IO_BINDING"),
        ({"EMBEDSERVE_MAX_INPUTS": "5000"}, "max_inputs=5000 is above max_queue_texts=4096"),
        ({"EMBEDSERVE_MAX_QUEUE_TEXTS": "100"}, "max_inputs=2048 is above max_queue_texts=100"),
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
