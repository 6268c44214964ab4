"""The real server: ``python -m app`` in its own process on a free loopback port."""

from __future__ import annotations

import asyncio
import os
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import numpy as np
import pytest

from app.config import Settings

pytestmark = pytest.mark.e2e
ROOT = Path(__file__).resolve().parents[2]


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def start(env: dict[str, str], log: Path) -> subprocess.Popen[bytes]:
    """Start ``python -m app`` with its output going to ``log``."""
    with log.open("wb") as out:
        return subprocess.Popen(
            [sys.executable, "-m", "app"],
            cwd=ROOT,
            env={**os.environ, "PYTHONPATH": str(ROOT), **env},
            stdout=out,
            stderr=subprocess.STDOUT,
        )


def wait_ready(url: str, process: subprocess.Popen[bytes], log: Path) -> float:
    """Seconds until ``/health`` says ok; fails if the process dies first."""
    started = time.perf_counter()
    while time.perf_counter() - started < 30:
        if process.poll() is not None:
            pytest.fail(f"server exited with {process.returncode}: {log.read_text()}")
        try:
            if httpx.get(f"{url}/health", timeout=1).status_code == 200:
                return time.perf_counter() - started
        except httpx.TransportError:
            pass
        time.sleep(0.05)
    pytest.fail("server not ready in time")


@pytest.fixture(scope="module")
def server(
    settings: Settings, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[tuple[str, subprocess.Popen[bytes]]]:
    port = free_port()
    log = tmp_path_factory.mktemp("server") / "server.log"
    process = start({"EMBED_PORT": str(port), "EMBED_MODEL_DIR": str(settings.model_dir)}, log)
    url = f"http://127.0.0.1:{port}"
    ready_after = wait_ready(url, process, log)
    print(f"server ready {ready_after:.2f} s after start")
    yield url, process
    if process.poll() is None:
        process.kill()
        process.wait()


def test_embed_over_real_http(
    server: tuple[str, subprocess.Popen[bytes]], reference: dict[str, Any]
) -> None:
    url, _ = server
    response = httpx.post(f"{url}/embed", json={"inputs": reference["sentences"]}, timeout=30)
    assert response.status_code == 200
    assert response.headers["content-type"] == "application/json"
    got = np.array(response.json()["embeddings"])
    expected = np.array(reference["embeddings"])
    expected /= np.linalg.norm(expected, axis=1, keepdims=True)
    assert (got * expected).sum(axis=1).min() >= 0.9999


def test_errors_and_metrics_over_real_http(server: tuple[str, subprocess.Popen[bytes]]) -> None:
    url, _ = server
    bad = httpx.post(f"{url}/embed", content=b"{oops", headers={"content-type": "application/json"})
    assert bad.status_code == 400 and bad.json()["error"]["code"] == "invalid_json"
    ok = httpx.post(f"{url}/similarity", json={"source": "a cat", "targets": ["a kitten"]})
    assert ok.status_code == 200 and ok.json()["scores"][0] > 0.5
    metrics = httpx.get(f"{url}/metrics").text
    assert 'embed_requests_total{route="/embed",status="400"} 1.0' in metrics
    assert 'embed_requests_total{route="/similarity",status="200"} 1.0' in metrics


def test_sigterm_stops_the_server_cleanly(server: tuple[str, subprocess.Popen[bytes]]) -> None:
    url, process = server
    assert httpx.get(f"{url}/health").status_code == 200
    process.send_signal(signal.SIGTERM)
    assert process.wait(timeout=15) == 0


@pytest.mark.parametrize(
    ("env", "message"),
    [
        ({"EMBED_MODEL_DIR": "/nonexistent/bundle"}, "does not exist; build it with `make models`"),
        ({"EMBED_DEVICE": "cuda"}, "install the CUDA build of onnxruntime"),
    ],
)
def test_startup_faults_exit_with_one_clear_line(
    settings: Settings, env: dict[str, str], message: str, tmp_path: Path
) -> None:
    import onnxruntime as ort

    if (
        env.get("EMBED_DEVICE") == "cuda"
        and "CUDAExecutionProvider" in ort.get_available_providers()
    ):
        pytest.skip("this onnxruntime has the CUDA provider")
    log = tmp_path / "server.log"
    process = start({"EMBED_MODEL_DIR": str(settings.model_dir), "EMBED_PORT": "0", **env}, log)
    assert process.wait(timeout=60) == 2
    output = log.read_text()
    lines = output.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: ") and message in lines[0], output
    assert "Traceback" not in output


def test_a_flood_beyond_the_queue_gets_fast_429s_and_the_rest_finish(
    settings: Settings, tmp_path: Path
) -> None:
    port = free_port()
    log = tmp_path / "server.log"
    env = {
        "EMBED_PORT": str(port),
        "EMBED_MODEL_DIR": str(settings.model_dir),
        "EMBED_MAX_QUEUE_TOKENS": "300",
    }
    process = start(env, log)
    url = f"http://127.0.0.1:{port}"
    try:
        wait_ready(url, process, log)
        texts = [
            [f"flood request {i}, sentence {j}, with a few more words" for j in range(8)]
            for i in range(64)
        ]

        async def flood() -> list[httpx.Response]:
            limits = httpx.Limits(max_connections=64)
            async with httpx.AsyncClient(base_url=url, timeout=60, limits=limits) as client:
                return await asyncio.gather(
                    *(client.post("/embed", json={"inputs": t}) for t in texts)
                )

        responses = asyncio.run(flood())
        statuses = [r.status_code for r in responses]
        assert set(statuses) == {200, 429}, statuses
        for response in responses:
            if response.status_code == 429:
                assert response.json()["error"]["type"] == "overloaded_error"
                assert int(response.headers["retry-after"]) >= 1
                assert response.elapsed.total_seconds() < 1.0  # refused at once
        check = statuses.index(200)
        again = httpx.post(f"{url}/embed", json={"inputs": texts[check]}, timeout=30)
        assert again.status_code == 200
        assert np.allclose(
            responses[check].json()["embeddings"], again.json()["embeddings"], atol=1e-5
        )
    finally:
        process.terminate()
        assert process.wait(timeout=15) == 0
