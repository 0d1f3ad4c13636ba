"""What the public /info may show: no filesystem paths, no library load errors."""

from __future__ import annotations

from embedserve.disclosure import REASON_IN_LOG, file_name, public_model_id, public_providers, public_source


def test_local_sources_show_their_directory_name_only():
    local = {"model": "/home/ops/models/my-bge/", "kind": "local", "path": "/home/ops/models/my-bge", "revision": None}
    assert public_model_id(local, "artifact") == "my-bge"
    assert public_source(local, "my-bge") == {"model": "my-bge", "kind": "local", "revision": None}
    hub = {"model": "BAAI/bge-small-en-v1.5", "kind": "hub", "path": "/root/.cache/hf/x"}
    assert public_model_id(hub, "artifact") == "BAAI/bge-small-en-v1.5"  # a hub id keeps its slash
    assert public_model_id({}, "artifact") == "artifact"
    assert file_name("C:\\models\\probe.json") == "probe.json" and file_name(None) is None


def test_provider_reasons_are_replaced_and_the_rest_kept():
    report = {
        "active": ["CPUExecutionProvider"],
        "fell_back": True,
        "dropped": {"CUDAExecutionProvider": "Failed to load /usr/lib/libcublasLt.so.13: no such file"},
        "skipped": {"TensorrtExecutionProvider": "libnvinfer.so.10 cannot be loaded"},
    }
    public = public_providers(report)
    assert public["dropped"] == {"CUDAExecutionProvider": REASON_IN_LOG}
    assert public["skipped"] == {"TensorrtExecutionProvider": REASON_IN_LOG}
    assert public["active"] == ["CPUExecutionProvider"] and public["fell_back"] is True
    assert "so.13" in report["dropped"]["CUDAExecutionProvider"]  # the input is not modified
