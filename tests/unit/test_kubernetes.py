"""The Kubernetes manifests (docs/kubernetes/) validate against the Kubernetes schemas and agree with the service:
probe paths, port, the autoscaling metric's name, the shutdown deadline, the image of each kind (issue 11)."""

from __future__ import annotations

import copy
import re
from pathlib import Path

import kubernetes_validate
import pytest
import yaml

ROOT = Path(__file__).resolve().parents[2]
MANIFESTS = sorted((ROOT / "docs" / "kubernetes").glob("*.yaml"))
KUBERNETES = [f for f in MANIFESTS if f.name in ("cpu.yaml", "gpu.yaml")]
#: The oldest Kubernetes version the manifests target (the sleep preStop action is GA in 1.30) and the newest known.
VERSIONS = ("1.30.0", kubernetes_validate.latest_version())


def documents(path: Path) -> dict[str, dict]:
    return {doc["kind"]: doc for doc in yaml.safe_load_all(path.read_text())}


@pytest.mark.parametrize("path", KUBERNETES, ids=lambda p: p.name)
@pytest.mark.parametrize("version", VERSIONS)
def test_manifests_validate_against_the_kubernetes_schemas(path, version):
    docs = list(yaml.safe_load_all(path.read_text()))
    assert {d["kind"] for d in docs} == {"Deployment", "Service", "HorizontalPodAutoscaler", "PodDisruptionBudget"}
    for doc in docs:
        kubernetes_validate.validate(doc, version, strict=True)


def test_the_validator_catches_a_broken_manifest():
    broken = copy.deepcopy(documents(KUBERNETES[0])["Deployment"])
    broken["spec"]["template"]["spec"]["containers"][0]["ports"][0]["containerPort"] = "3000"
    with pytest.raises(kubernetes_validate.ValidationError):
        kubernetes_validate.validate(broken, VERSIONS[-1], strict=True)
    broken = copy.deepcopy(documents(KUBERNETES[0])["Deployment"])
    broken["spec"]["template"]["spec"]["containers"][0]["readinessProbe"]["httpGet"]["pathh"] = "/readyz"
    with pytest.raises(kubernetes_validate.ValidationError):
        kubernetes_validate.validate(broken, VERSIONS[-1], strict=True)


@pytest.mark.parametrize("path", KUBERNETES, ids=lambda p: p.name)
def test_manifests_agree_with_the_service(path):
    docs = documents(path)
    pod = docs["Deployment"]["spec"]["template"]["spec"]
    container = pod["containers"][0]
    env = {e["name"]: e.get("value") for e in container["env"]}
    assert container["ports"][0]["containerPort"] == 3000
    assert container["readinessProbe"]["httpGet"]["path"] == "/readyz"
    assert container["startupProbe"]["httpGet"]["path"] == "/readyz"
    assert container["livenessProbe"]["httpGet"]["path"] == "/livez"
    # the grace period covers the preStop pause and the server's own drain deadline
    drain = float(env["EMBEDSERVE_SHUTDOWN_TIMEOUT_S"]) + container["lifecycle"]["preStop"]["sleep"]["seconds"]
    assert pod["terminationGracePeriodSeconds"] > drain
    hpa = docs["HorizontalPodAutoscaler"]["spec"]
    assert hpa["scaleTargetRef"]["name"] == docs["Deployment"]["metadata"]["name"]
    metric = next(m["pods"]["metric"]["name"] for m in hpa["metrics"] if m["type"] == "Pods")
    assert f'"{metric}"' in (ROOT / "service.py").read_text(), "the HPA reads a series the service exports"
    adapter = yaml.safe_load((ROOT / "docs" / "kubernetes" / "prometheus-adapter-values.yaml").read_text())
    assert metric in [rule["name"]["as"] for rule in adapter["rules"]["custom"]]
    assert any(m["type"] == "Resource" for m in hpa["metrics"]), "a CPU fallback when the adapter is missing"
    image = container["image"].rsplit("/", 1)[1].split(":")[0]
    kind = "gpu" if path.name == "gpu.yaml" else "cpu"
    bentofile = yaml.safe_load((ROOT / ("bentofile.yaml" if kind == "gpu" else "bentofile.cpu.yaml")).read_text())
    assert image == bentofile["name"]
    if kind == "gpu":
        assert container["resources"]["limits"]["nvidia.com/gpu"] == 1 and env["EMBEDSERVE_REQUIRE_GPU"] == "true"
    else:
        assert env["EMBEDSERVE_PROVIDERS"] == "cpu" and "nvidia.com/gpu" not in container["resources"]["limits"]
        assert int(env["EMBEDSERVE_WORKERS"]) == int(re.sub(r"\D", "", str(container["resources"]["requests"]["cpu"])))
