"""The container, compose and Kubernetes files: linted and validated with the real tools, and
checked for what this service needs of them. (No Docker engine runs here; the image's install
steps are run outside Docker by ``tests/e2e/test_image_steps.py``.)"""

from __future__ import annotations

import re
import shutil
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest
import yaml

from tests.e2e.test_admission import PEAK_MB

ROOT = Path(__file__).resolve().parents[2]
BIN = Path(sys.executable).parent


def tool(name: str) -> str:
    """A command-line tool from this environment (the test requirements install them)."""
    found = shutil.which(name, path=str(BIN)) or shutil.which(name)
    if found is None:
        pytest.fail(f"{name} is not installed: run the tests with `make test`")
    return found


def stages() -> dict[str, str]:
    """The Dockerfile's stages by name, each with its instructions (comments dropped)."""
    text = (ROOT / "Dockerfile").read_text()
    lines = [line for line in text.splitlines() if not line.lstrip().startswith("#")]
    found: dict[str, str] = {}
    for chunk in re.split(r"(?m)^FROM ", "\n".join(lines))[1:]:
        name = chunk.splitlines()[0].split(" AS ")[-1].strip()
        found[name] = chunk
    return found


@pytest.mark.parametrize("dockerfile", ["Dockerfile", "deploy/ray/Dockerfile"])
def test_hadolint_passes(dockerfile: str) -> None:
    result = subprocess.run(
        [tool("hadolint"), "--failure-threshold", "info", dockerfile],
        cwd=ROOT,
        capture_output=True,
        text=True,
    )
    assert result.returncode == 0, result.stdout + result.stderr


def test_the_rayjob_runs_the_bulk_job_on_its_cluster_with_the_bulk_image() -> None:
    """A KubeRay custom resource, which kubernetes-validate cannot check: its shape here."""
    job, claim = yaml.safe_load_all((ROOT / "deploy" / "ray" / "rayjob.yaml").read_text())
    assert (job["apiVersion"], job["kind"]) == ("ray.io/v1", "RayJob")
    assert job["spec"]["entrypoint"].startswith("python -m app.bulk ")
    assert "--ray auto" in job["spec"]["entrypoint"]
    cluster = job["spec"]["rayClusterSpec"]
    assert cluster["rayVersion"] == "2.60.0"  # the Ray of requirements/bulk.txt
    assert "ray==2.60.0" in (ROOT / "requirements" / "bulk.txt").read_text().splitlines()
    pods = [cluster["headGroupSpec"], *cluster["workerGroupSpecs"]]
    for pod in pods:
        (container,) = pod["template"]["spec"]["containers"]
        assert container["image"].startswith("embed-service-bulk")
        assert container["resources"]["limits"]["memory"]
    assert claim["spec"]["accessModes"] == ["ReadWriteMany"]


def test_the_image_stages() -> None:
    found = stages()
    assert list(found) == [
        "export",
        "stubs",
        "base-cpu",
        "base-cuda",
        "runtime",
    ]  # the default: last
    assert "python scripts/grpc_stubs.py app/v2/stubs" in found["stubs"]
    assert "-c requirements/runtime.txt" in found["stubs"]  # grpcio, protobuf: the runtime's pins
    assert "--index-url https://download.pytorch.org/whl/cpu torch==2.13.0" in found["export"]
    assert "install-runtime.sh /opt/venv cpu" in found["base-cpu"]
    assert "install-runtime.sh /opt/venv cuda" in found["base-cuda"]
    assert "EMBED_DEVICE=cuda" in found["base-cuda"] and "EMBED_DEVICE=cpu" in found["base-cpu"]
    text = (ROOT / "Dockerfile").read_text()
    assert "ARG FLAVOUR=cpu" in text and found["runtime"].startswith("base-${FLAVOUR} AS runtime")
    for name in ("base-cpu", "base-cuda", "runtime"):  # what the image holds: no torch
        assert "torch" not in found[name]
    runtime = found["runtime"]
    assert re.search(r"(?m)^USER 10001$", runtime)  # not root
    assert "EMBED_HOST=0.0.0.0" in runtime and re.search(r"(?m)^EXPOSE 8000 8001$", runtime)
    assert "COPY --from=stubs /src/app/v2/stubs app/v2/stubs" in runtime
    assert 'CMD ["python", "-m", "app.healthcheck"]' in runtime
    assert "COPY --from=export /src/models/all-MiniLM-L6-v2" in runtime


def test_dockerignore_sends_only_what_the_stages_copy() -> None:
    lines = (ROOT / ".dockerignore").read_text().splitlines()
    rules = [line.strip() for line in lines if line.strip() and not line.startswith("#")]
    assert rules[0] == "*"
    assert {"!app/", "!scripts/", "!requirements/"} <= set(rules)
    copied = set(re.findall(r"(?m)^COPY (?!--from)(\S+)", (ROOT / "Dockerfile").read_text()))
    for source in copied:
        assert any(
            source.startswith(rule[1:].rstrip("/")) for rule in rules if rule.startswith("!")
        )


SHARED = ROOT / "deploy" / "k8s-shared-repository"  # the overlay: one repository for all


def manifests_in(folder: Path) -> list[Path]:
    return sorted(p for p in folder.glob("*.yaml") if p.name != "kustomization.yaml")


def load_k8s() -> dict[str, dict[str, Any]]:
    return {
        doc["kind"]: doc
        for path in manifests_in(ROOT / "deploy" / "k8s")
        for doc in yaml.safe_load_all(path.read_text())
    }


def test_kubernetes_manifests_validate() -> None:
    paths = [str(p) for p in manifests_in(ROOT / "deploy" / "k8s") + manifests_in(SHARED)]
    result = subprocess.run(
        [tool("kubernetes-validate"), "--strict", *paths], capture_output=True, text=True
    )
    assert result.returncode == 0, result.stdout + result.stderr
    assert set(load_k8s()) == {"Deployment", "Service", "HorizontalPodAutoscaler"}
    base = yaml.safe_load((ROOT / "deploy" / "k8s" / "kustomization.yaml").read_text())
    assert sorted(base["resources"]) == sorted(p.name for p in manifests_in(ROOT / "deploy/k8s"))


def test_the_shared_repository_overlay_puts_every_replica_on_one_volume() -> None:
    """The overlay swaps each pod's own repository (an emptyDir) for one ReadWriteMany claim;
    built with kustomize where kubectl is installed, else read as it is."""
    pod = load_k8s()["Deployment"]["spec"]["template"]["spec"]
    (container,) = pod["containers"]
    env = {item["name"]: item.get("value") for item in container["env"]}
    mounts = {m["name"]: m["mountPath"] for m in container["volumeMounts"]}
    assert mounts["repository"] == env["EMBED_REPOSITORY"]
    assert pod["volumes"][0] == {"name": "repository", "emptyDir": {}}
    (claim,) = yaml.safe_load_all((SHARED / "pvc.yaml").read_text())
    assert claim["spec"]["accessModes"] == ["ReadWriteMany"]
    kubectl = shutil.which("kubectl")
    if kubectl is None:
        overlay = yaml.safe_load((SHARED / "kustomization.yaml").read_text())
        (patch,) = yaml.safe_load(overlay["patches"][0]["patch"])
        assert patch["path"] == "/spec/template/spec/volumes/0"
        volume = patch["value"]
    else:
        built = subprocess.run(
            [kubectl, "kustomize", str(SHARED)], capture_output=True, text=True, check=True
        ).stdout
        kinds = {doc["kind"]: doc for doc in yaml.safe_load_all(built)}
        assert set(kinds) == {
            "Deployment",
            "Service",
            "HorizontalPodAutoscaler",
            "PersistentVolumeClaim",
        }
        (volume,) = kinds["Deployment"]["spec"]["template"]["spec"]["volumes"]
    assert volume == {
        "name": "repository",
        "persistentVolumeClaim": {"claimName": claim["metadata"]["name"]},
    }


def test_the_deployment_probes_resources_and_threads() -> None:
    manifests = load_k8s()
    pod = manifests["Deployment"]["spec"]["template"]["spec"]
    (container,) = pod["containers"]
    assert container["readinessProbe"]["httpGet"]["path"] == "/health"
    assert container["livenessProbe"]["httpGet"]["path"] == "/health/live"
    env = {item["name"]: item.get("value") for item in container["env"]}
    limits = container["resources"]["limits"]
    assert env["EMBED_INFERENCE_WORKERS"] == limits["cpu"]  # one pass per core
    assert "EMBED_INTRA_OP_THREADS" not in env  # so each pass gets cores / workers = 1 thread
    assert container["resources"]["requests"]["cpu"] == limits["cpu"]  # whole cores, no sharing
    memory_mib = int(limits["memory"].removesuffix("Mi"))
    assert memory_mib >= 1.25 * PEAK_MB  # the documented peak under the worst allowed requests
    grace = int(env["EMBED_SHUTDOWN_GRACE_S"])
    prestop = container["lifecycle"]["preStop"]["sleep"]["seconds"]
    assert pod["terminationGracePeriodSeconds"] > grace + prestop
    hpa = manifests["HorizontalPodAutoscaler"]["spec"]
    assert hpa["scaleTargetRef"]["name"] == manifests["Deployment"]["metadata"]["name"]
    assert manifests["Service"]["spec"]["selector"] == pod.get(
        "labels", manifests["Deployment"]["spec"]["selector"]["matchLabels"]
    )


def test_compose_wires_the_service_prometheus_models_and_a_gpu_profile() -> None:
    compose = yaml.safe_load((ROOT / "docker-compose.yml").read_text())
    services = compose["services"]
    assert {"embed", "embed-gpu", "prometheus"} <= set(services)
    assert "args" not in services["embed"]["build"]  # the default flavour: CPU
    assert "models:/srv/models" in services["embed"]["volumes"] and "models" in compose["volumes"]
    gpu = services["embed-gpu"]
    assert gpu["profiles"] == ["gpu"] and gpu["build"]["args"] == {"FLAVOUR": "cuda"}
    assert gpu["deploy"]["resources"]["reservations"]["devices"][0]["driver"] == "nvidia"
    prometheus = services["prometheus"]
    assert "./deploy/prometheus.yml:/etc/prometheus/prometheus.yml:ro" in prometheus["volumes"]
    scrape = yaml.safe_load((ROOT / "deploy" / "prometheus.yml").read_text())["scrape_configs"]
    targets = scrape[0]["static_configs"][0]["targets"]
    assert targets == ["embed:8000"] and scrape[0]["metrics_path"] == "/metrics"
