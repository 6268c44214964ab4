"""The runtime image's own steps, outside Docker: ``scripts/install-runtime.sh`` into a clean
folder (as the Dockerfile's base-cpu stage runs it), then ``python -m app`` from that environment
serving the exported bundle, and the image's HEALTHCHECK command."""

from __future__ import annotations

import os
import subprocess
from collections.abc import Iterator
from pathlib import Path

import httpx
import numpy as np
import pytest

from app.backends.onnx.bundle import load_bundle
from app.backends.onnx.runtimes import BF16_GATE, choose
from app.config import Settings
from app.core.engine import Engine
from app.core.vectors import encode_now
from tests.e2e.conftest import ROOT, free_port, wait_ready

pytestmark = pytest.mark.e2e


@pytest.fixture(scope="module")
def runtime_venv(tmp_path_factory: pytest.TempPathFactory) -> Path:
    venv = tmp_path_factory.mktemp("image") / "venv"
    subprocess.run([str(ROOT / "scripts" / "install-runtime.sh"), str(venv)], check=True)
    return venv


def clean_env(**extra: str) -> dict[str, str]:
    """The environment of a container: no PYTHONPATH into this checkout's venvs."""
    keep = {k: v for k, v in os.environ.items() if k in {"PATH", "HOME", "LANG", "TMPDIR"}}
    return {**keep, "HF_HUB_OFFLINE": "1", **extra}


def test_the_runtime_environment_holds_no_torch(runtime_venv: Path) -> None:
    python = str(runtime_venv / "bin" / "python")
    found = subprocess.run(
        [python, "-c", "import importlib.util as u; print(u.find_spec('torch') is None)"],
        capture_output=True,
        text=True,
        env=clean_env(),
        check=True,
    )
    assert found.stdout.strip() == "True"
    assert not list((runtime_venv / "lib").glob("python3*/site-packages/torch*"))


@pytest.fixture(scope="module")
def image_server(
    runtime_venv: Path, settings: Settings, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[tuple[str, str]]:
    port = str(free_port())
    log = tmp_path_factory.mktemp("image-server") / "server.log"
    env = clean_env(
        EMBED_PORT=port,
        EMBED_GRPC_PORT=str(free_port()),
        EMBED_MODEL_DIR=str(settings.model_dir.resolve()),
    )
    with log.open("wb") as out:
        process = subprocess.Popen(
            [str(runtime_venv / "bin" / "python"), "-m", "app"],
            cwd=ROOT,  # the image's WORKDIR holds app/ the same way
            env=env,
            stdout=out,
            stderr=subprocess.STDOUT,
        )
    url = f"http://127.0.0.1:{port}"
    try:
        wait_ready(url, process, log)
        yield url, port
    finally:
        process.terminate()
        assert process.wait(timeout=15) == 0


def test_it_serves_the_bundle(
    image_server: tuple[str, str], engine: Engine, settings: Settings
) -> None:
    """With the image's defaults: fp32 on onnxruntime, or bf16 on OpenVINO where the CPU computes
    bf16 and the bundle's gate held (then within the gate's worst cosine to fp32)."""
    url, _ = image_server
    texts = ["A man is playing a guitar.", "Cats sleep a lot."]
    response = httpx.post(f"{url}/embed", json={"inputs": texts}, timeout=30)
    assert response.status_code == 200
    served = np.asarray(response.json()["embeddings"], dtype=np.float32)
    fp32 = encode_now(engine.model, texts)
    provider = httpx.get(f"{url}/info", timeout=30).json()["models"][0]["provider"]
    if choose("auto", "auto", load_bundle(settings.model_dir)).precision == "bf16":
        assert provider == "OpenVINO CPU bf16"
        assert (served * fp32).sum(axis=1).min() >= BF16_GATE["worst_cosine_to_fp32"]
    else:
        assert provider == "CPUExecutionProvider"
        assert np.allclose(served, fp32, atol=1e-5)


def test_the_healthcheck_command(runtime_venv: Path, image_server: tuple[str, str]) -> None:
    _, port = image_server
    command = [str(runtime_venv / "bin" / "python"), "-m", "app.healthcheck"]
    assert subprocess.run(command, cwd=ROOT, env=clean_env(EMBED_PORT=port)).returncode == 0
    elsewhere = clean_env(EMBED_PORT=str(free_port()))  # nothing listens there
    assert subprocess.run(command, cwd=ROOT, env=elsewhere).returncode == 1
