"""The real server: ``python -m app`` in its own process on a free loopback port."""

from __future__ import annotations

import asyncio
import json
import shutil
import signal
from pathlib import Path
from typing import Any

import httpx
import numpy as np
import pytest

from app.backends.onnx.runtimes import native_bf16
from app.config import Settings
from app.core.engine import Engine
from app.core.vectors import encode_now
from tests.api.test_metrics import sample
from tests.e2e.conftest import Server, serving, start

pytestmark = pytest.mark.e2e


def test_embed_over_real_http(server: Server, reference: dict[str, Any]) -> None:
    url = server.url
    response = httpx.post(f"{url}/embed", json={"inputs": reference["sentences"]}, timeout=30)
    assert response.status_code == 200
    assert response.headers["content-type"] == "application/json"
    got = np.array(response.json()["embeddings"])
    expected = np.array(reference["embeddings"])
    expected /= np.linalg.norm(expected, axis=1, keepdims=True)
    assert (got * expected).sum(axis=1).min() >= 0.9999


def test_errors_and_metrics_over_real_http(server: Server) -> None:
    url = server.url
    bad = httpx.post(f"{url}/embed", content=b"{oops", headers={"content-type": "application/json"})
    assert bad.status_code == 400 and bad.json()["error"]["code"] == "invalid_json"
    ok = httpx.post(f"{url}/similarity", json={"source": "a cat", "targets": ["a kitten"]})
    assert ok.status_code == 200 and ok.json()["scores"][0] > 0.5
    metrics = httpx.get(f"{url}/metrics").text
    assert 'embed_requests_total{route="/embed",status="400"} 1.0' in metrics
    assert 'embed_requests_total{route="/similarity",status="200"} 1.0' in metrics


def test_one_json_access_line_per_request_and_timing_headers(server: Server) -> None:
    response = httpx.post(
        f"{server.url}/embed",
        json={"inputs": ["A man is playing a guitar.", "Short."]},
        headers={"X-Request-ID": "trace-abc-123"},
    )
    assert response.headers["x-request-id"] == "trace-abc-123"
    queue, inference, total = (
        float(response.headers[h]) for h in ("x-queue-time", "x-inference-time", "x-total-time")
    )
    assert queue >= 0 and 0 < inference <= total
    entry = server.access_line("trace-abc-123")
    assert entry["level"] == "info" and entry["message"] == "POST /embed 200"
    assert entry["route"] == "/embed" and entry["status"] == 200
    assert entry["model"] == "all-MiniLM-L6-v2"
    assert entry["inputs"] == 2 and entry["tokens"] == response.json()["usage"]["total_tokens"]
    assert entry["queue_ms"] == round(queue, 2) and entry["inference_ms"] == round(inference, 2)
    assert entry["total_ms"] >= total
    # Other requests get a line too, without the embedding fields; errors say their status.
    bad_headers = {"X-Request-ID": "trace-bad", "Content-Type": "application/json"}
    httpx.post(f"{server.url}/embed", content=b"{", headers=bad_headers)
    bad = server.access_line("trace-bad")
    assert bad["status"] == 400 and bad["route"] == "/embed" and "model" not in bad
    # Every line the server wrote is JSON.
    for line in server.log.read_text().splitlines():
        json.loads(line)


def test_a_client_that_leaves_costs_no_forward_pass(server: Server) -> None:
    """A client that sends a request while both workers are busy, then closes its connection:
    the server notices (its protocol's ClientWatch), drops the request's row before any pass
    takes it, and counts the request as 499. Every token that passes fed the model belongs to
    the requests that stayed: two long ones, each on one worker, whose older rows go first."""
    url = server.url
    before = httpx.get(f"{url}/metrics").text
    long_texts = [f"row {i} " + "word " * 240 for i in range(64)]  # 16 passes of 4 rows each

    async def stay(client: httpx.AsyncClient, i: int) -> httpx.Response:
        texts = [f"{i} {text}" for text in long_texts]
        return await client.post("/embed", json={"inputs": texts})

    async def scenario() -> list[httpx.Response]:
        async with httpx.AsyncClient(base_url=url, timeout=120) as client:
            staying = asyncio.gather(stay(client, 0), stay(client, 1))
            await asyncio.sleep(0.3)  # their passes are running (seconds of them here)
            _, writer = await asyncio.open_connection("127.0.0.1", int(url.rsplit(":", 1)[1]))
            body = b'{"inputs": "a client that does not wait"}'
            writer.write(
                b"POST /embed HTTP/1.1\r\nhost: test\r\ncontent-type: application/json\r\n"
                b"content-length: %d\r\n\r\n%s" % (len(body), body)
            )
            await writer.drain()
            writer.close()
            await writer.wait_closed()
            return list(await staying)

    stayed = asyncio.run(scenario())
    assert [r.status_code for r in stayed] == [200, 200]
    after = httpx.get(f"{url}/metrics").text

    def delta(name: str, **labels: str) -> float:
        return sample(after, name, **labels) - sample(before, name, **labels)

    assert delta("embed_requests_total", route="/embed", status="499") == 1
    fed = delta("embed_batch_tokens_sum", model="all-MiniLM-L6-v2", kind="real")
    assert fed == sum(r.json()["usage"]["total_tokens"] for r in stayed)


def test_sigterm_stops_the_server_cleanly(server: Server) -> None:
    url, process = server.url, server.process
    assert httpx.get(f"{url}/health").status_code == 200
    process.send_signal(signal.SIGTERM)
    assert process.wait(timeout=15) == 0


def broken_bundle(source: Path, folder: Path, fault: str) -> Path:
    """A copy of ``source`` with one fault: a corrupted model, or no tokenizer."""
    bundle = folder / "broken"
    bundle.mkdir()
    shutil.copy(source / "config.json", bundle)
    if fault == "corrupted model":
        model = (source / "model.onnx").read_bytes()
        (bundle / "model.onnx").write_bytes(model[: len(model) // 2])  # a half-copied file
        shutil.copy(source / "tokenizer.json", bundle)
    else:
        (bundle / "model.onnx").symlink_to(source / "model.onnx")
    return bundle


@pytest.mark.parametrize(
    ("fault", "message"),
    [
        ("missing bundle", "does not exist; build it with `make models`"),
        ("corrupted model", "does not match the sha256 in its manifest (corrupted or partly"),
        ("missing tokenizer", "has no tokenizer.json; re-export it"),
        ("cuda without its provider", "install the CUDA build of onnxruntime"),
        ("unknown default model", "EMBED_DEFAULT_MODEL=nope is not served"),
        ("bf16 where it cannot run", "EMBED_PRECISION=bf16 cannot serve all-MiniLM-L6-v2: "),
    ],
)
def test_startup_faults_exit_with_one_clear_line(
    settings: Settings, fault: str, message: str, tmp_path: Path
) -> None:
    import onnxruntime as ort

    env = {"EMBED_MODEL_DIR": str(settings.model_dir), "EMBED_PORT": "0"}
    if fault == "missing bundle":
        env["EMBED_MODEL_DIR"] = "/nonexistent/bundle"
    elif fault in {"corrupted model", "missing tokenizer"}:
        env["EMBED_MODEL_DIR"] = str(broken_bundle(settings.model_dir, tmp_path, fault))
    elif fault == "unknown default model":
        env["EMBED_DEFAULT_MODEL"] = "nope"
    elif fault == "bf16 where it cannot run":
        env["EMBED_PRECISION"] = "bf16"
        if native_bf16():  # this CPU could: ask for it on the runtime that has no bf16
            env["EMBED_BACKEND"] = "onnxruntime"
    else:
        if "CUDAExecutionProvider" in ort.get_available_providers():
            pytest.skip("this onnxruntime has the CUDA provider")
        env["EMBED_DEVICE"] = "cuda"
    log = tmp_path / "server.log"
    process = start(env, log)
    assert process.wait(timeout=60) == 2
    output = log.read_text()
    lines = output.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: ") and message in lines[0], output
    assert "Traceback" not in output


def test_openvino_serves_what_onnxruntime_serves(
    settings: Settings, engine: Engine, tmp_path: Path
) -> None:
    """EMBED_BACKEND=openvino in fp32: over HTTP, lone and batched, the vectors onnxruntime gives
    in process, and the runtime named in /info. (Its own server: the module's shared one may
    have been stopped by the shutdown tests.)"""
    texts = ["a lone sentence", "two of them, one longer than the other", "and a third"]
    with serving(settings, tmp_path, EMBED_BACKEND="openvino") as openvino:
        (model,) = httpx.get(f"{openvino.url}/info").json()["models"]
        assert model["provider"] == "OpenVINO CPU fp32"
        for inputs in (texts[:1], texts):
            answer = httpx.post(f"{openvino.url}/embed", json={"inputs": inputs})
            ours = np.array(answer.json()["embeddings"])
            assert np.allclose(ours, encode_now(engine.model, inputs), atol=1e-5)
