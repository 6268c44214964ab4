"""Triton's own client, ``tritonclient`` from PyPI, against the real server, as a team moving off
Triton calls it: HTTP and gRPC, sync and asyncio, JSON and binary tensors, metadata, readiness,
the repository extension, errors and keys.

Runs in ``.venv-triton`` (tritonclient needs protobuf < 7; the server runs on 7), so it imports
nothing of the service: the server is ``python -m app`` from the server's environment
(``EMBED_SERVER_PYTHON``, else ``.venv/bin/python``), and ``/embed`` is the reference::

    EMBED_SERVER_PYTHON=.venv/bin/python \
        .venv-triton/bin/python -m pytest --confcutdir=tests/triton tests/triton
"""

from __future__ import annotations

import asyncio
import json
import os
import socket
import subprocess
import time
import urllib.error
import urllib.request
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import tritonclient.grpc as grpcclient
import tritonclient.grpc.aio as grpcclient_aio
import tritonclient.http as httpclient
import tritonclient.http.aio as httpclient_aio
from tritonclient.utils import InferenceServerException

ROOT = Path(__file__).resolve().parents[2]
SERVER_PYTHON = Path(os.environ.get("EMBED_SERVER_PYTHON", ROOT / ".venv" / "bin" / "python"))
MODEL = "all-MiniLM-L6-v2"
KEY, ADMIN_KEY = "user-key", "admin-key"


def user() -> dict[str, str]:
    """A fresh headers dict each call: tritonclient.http adds Inference-Header-Content-Length to
    the dict it is given (an int, which its gRPC client then refuses): a shared one goes stale."""
    return {"authorization": f"Bearer {KEY}"}


def admin() -> dict[str, str]:
    return {"authorization": f"Bearer {ADMIN_KEY}"}


TEXTS = ["What is the capital of France?", "Paris is the capital of France.", "Cats sleep."]


@dataclass(frozen=True)
class Server:
    http: str  # host:port, as tritonclient takes it
    grpc: str
    process: subprocess.Popen[bytes]

    def embed(self, texts: list[str]) -> np.ndarray:
        request = urllib.request.Request(
            f"http://{self.http}/embed",
            data=json.dumps({"inputs": texts}).encode(),
            headers={"content-type": "application/json", **user()},
        )
        with urllib.request.urlopen(request, timeout=30) as answer:
            return np.asarray(json.load(answer)["embeddings"], dtype=np.float32)


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Server]:
    folder = tmp_path_factory.mktemp("triton")
    http_port, grpc_port = free_port(), free_port()
    env = {
        **os.environ,
        "PYTHONPATH": str(ROOT),
        "EMBED_PORT": str(http_port),
        "EMBED_GRPC_PORT": str(grpc_port),
        "EMBED_PRECISION": "fp32",
        "EMBED_MODELS": ",".join(str(ROOT / "models" / m) for m in (MODEL, "splade-tiny")),
        "EMBED_API_KEYS": KEY,
        "EMBED_ADMIN_KEYS": ADMIN_KEY,
        "EMBED_REPOSITORY": str(folder / "repository"),
    }
    log = folder / "server.log"
    with log.open("wb") as out:
        process = subprocess.Popen(
            [str(SERVER_PYTHON), "-m", "app"], cwd=ROOT, env=env, stdout=out, stderr=out
        )
    running = Server(f"127.0.0.1:{http_port}", f"127.0.0.1:{grpc_port}", process)
    try:
        deadline = time.monotonic() + 60
        while True:
            assert process.poll() is None, log.read_text()
            try:
                with urllib.request.urlopen(f"http://{running.http}/v2/health/ready", timeout=1):
                    break
            except (urllib.error.URLError, ConnectionError):
                assert time.monotonic() < deadline, log.read_text()
                time.sleep(0.1)
        yield running
    finally:
        process.terminate()
        assert process.wait(timeout=30) == 0, log.read_text()


def text_input(module: Any, texts: list[str], binary: bool | None = None) -> Any:
    """``InferInput("TEXT", [N], "BYTES")`` filled from an object array, as Triton's users do."""
    tensor = module.InferInput("TEXT", [len(texts)], "BYTES")
    data = np.array([t.encode() for t in texts], dtype=np.object_)
    if binary is None:
        tensor.set_data_from_numpy(data)  # the gRPC client has no binary_data switch
    else:
        tensor.set_data_from_numpy(data, binary_data=binary)
    return tensor


class Recorder:
    """Wraps an HTTP client's ``_post`` to keep the last raw response: its headers say whether
    the answer really is binary."""

    def __init__(self, client: httpclient.InferenceServerClient) -> None:
        self.last: Any = None
        post = client._post

        def recording(*args: Any, **kwargs: Any) -> Any:
            self.last = post(*args, **kwargs)
            return self.last

        client._post = recording


@pytest.mark.parametrize("binary_in", [True, False])
@pytest.mark.parametrize("binary_out", [True, False, None])  # None: no outputs named
def test_http_infer_equals_embed(server: Server, binary_in: bool, binary_out: bool | None) -> None:
    client = httpclient.InferenceServerClient(server.http)
    recorder = Recorder(client)
    outputs = (
        None
        if binary_out is None
        else [httpclient.InferRequestedOutput("embedding", binary_data=binary_out)]
    )
    result = client.infer(
        MODEL,
        [text_input(httpclient, TEXTS, binary_in)],
        outputs=outputs,
        headers=user(),
        request_id="r7",
    )
    vectors = result.as_numpy("embedding")
    assert vectors.dtype == np.float32 and vectors.shape == (3, 384)
    assert np.abs(vectors - server.embed(TEXTS)).max() < 1e-6
    assert result.get_response()["id"] == "r7"
    header = recorder.last.get("Inference-Header-Content-Length")
    if binary_out is False:
        assert header is None  # all JSON
    else:  # asked for binary, or no outputs named (tritonclient then asks for binary_data_output)
        assert header is not None
        assert int(recorder.last.get("Content-Length")) == int(header) + 3 * 384 * 4
    client.close()


def test_grpc_infer_equals_embed(server: Server) -> None:
    client = grpcclient.InferenceServerClient(server.grpc)
    expected = server.embed(TEXTS)
    for outputs in (None, [grpcclient.InferRequestedOutput("embedding")]):
        result = client.infer(
            MODEL, [text_input(grpcclient, TEXTS)], outputs=outputs, headers=user(), request_id="g1"
        )
        assert np.abs(result.as_numpy("embedding") - expected).max() < 1e-6
        assert result.get_response().id == "g1"
    # [N, 1], as migrated Triton ensembles send it
    tensor = grpcclient.InferInput("TEXT", [3, 1], "BYTES")
    tensor.set_data_from_numpy(np.array([[t.encode()] for t in TEXTS], dtype=np.object_))
    result = client.infer(MODEL, [tensor], headers=user())
    assert np.abs(result.as_numpy("embedding") - expected).max() < 1e-6
    client.close()


def test_asyncio_clients(server: Server) -> None:
    async def both() -> tuple[np.ndarray, np.ndarray]:
        http = httpclient_aio.InferenceServerClient(server.http)
        grpc = grpcclient_aio.InferenceServerClient(server.grpc)
        try:
            by_http = await http.infer(MODEL, [text_input(httpclient, TEXTS, True)], headers=user())
            by_grpc = await grpc.infer(MODEL, [text_input(grpcclient, TEXTS)], headers=user())
            return by_http.as_numpy("embedding"), by_grpc.as_numpy("embedding")
        finally:
            await http.close()
            await grpc.close()

    by_http, by_grpc = asyncio.run(both())
    expected = server.embed(TEXTS)
    assert np.abs(by_http - expected).max() < 1e-6 and np.abs(by_grpc - expected).max() < 1e-6


def test_metadata_and_readiness(server: Server) -> None:
    for client in (
        httpclient.InferenceServerClient(server.http),
        grpcclient.InferenceServerClient(server.grpc),
    ):
        assert client.is_server_live(headers=user()) and client.is_server_ready(headers=user())
        assert client.is_model_ready(MODEL, headers=user())
        assert client.is_model_ready(MODEL, "1", headers=user())
        assert not client.is_model_ready("nope", headers=user())
        metadata = client.get_model_metadata(MODEL, headers=user(), **as_json(client))
        assert metadata["platform"] == "onnxruntime_onnx" and metadata["versions"] == ["1"]
        assert metadata["inputs"][0]["datatype"] == "BYTES"
        assert metadata["outputs"][0]["name"] == "embedding"
        assert [int(d) for d in metadata["outputs"][0]["shape"]] == [-1, 384]
        server_metadata = client.get_server_metadata(headers=user(), **as_json(client))
        assert server_metadata["name"] == "embed-service"
        assert "model_repository" in server_metadata["extensions"]
        client.close()


def as_json(client: Any) -> dict[str, bool]:
    return {"as_json": True} if isinstance(client, grpcclient.InferenceServerClient) else {}


def test_the_repository_extension(server: Server) -> None:
    for client in (
        httpclient.InferenceServerClient(server.http),
        grpcclient.InferenceServerClient(server.grpc),
    ):
        index = client.get_model_repository_index(headers=admin(), **as_json(client))
        models = index if isinstance(index, list) else index.get("models", [])
        assert {(m["name"], m["state"]) for m in models} == {
            (MODEL, "READY"),
            ("splade-tiny", "READY"),
        }
        client.unload_model("splade-tiny", headers=admin())
        assert not client.is_model_ready("splade-tiny", headers=user())
        client.load_model("splade-tiny", headers=admin())
        assert client.is_model_ready("splade-tiny", headers=user())
        with pytest.raises(InferenceServerException) as caught:
            client.unload_model(MODEL, headers=admin())  # the default model
        assert "default model" in str(caught.value)
        with pytest.raises(InferenceServerException) as caught:
            client.load_model(MODEL, headers=user())
        assert "admin key" in str(caught.value)
        client.close()


def test_errors_and_keys(server: Server) -> None:
    http = httpclient.InferenceServerClient(server.http)
    grpc = grpcclient.InferenceServerClient(server.grpc)
    for client in (http, grpc):
        tensor = text_input(httpclient if client is http else grpcclient, ["a"])
        with pytest.raises(InferenceServerException) as caught:
            client.infer(MODEL, [tensor])  # no key
        assert caught.value.status() in ("401", "StatusCode.UNAUTHENTICATED")
        with pytest.raises(InferenceServerException) as caught:
            client.infer("nope", [tensor], headers=user())
        assert caught.value.status() in ("404", "StatusCode.NOT_FOUND")
        with pytest.raises(InferenceServerException) as caught:
            client.infer("splade-tiny", [tensor], headers=user())
        assert caught.value.status() in ("400", "StatusCode.INVALID_ARGUMENT")
        assert "sparse model" in caught.value.message()
        numbers = (httpclient if client is http else grpcclient).InferInput("TEXT", [2], "FP32")
        numbers.set_data_from_numpy(np.zeros(2, dtype=np.float32))
        with pytest.raises(InferenceServerException) as caught:
            client.infer(MODEL, [numbers], headers=user())
        assert "datatype BYTES" in caught.value.message()
        wrong = (httpclient if client is http else grpcclient).InferRequestedOutput("logits")
        with pytest.raises(InferenceServerException) as caught:
            client.infer(MODEL, [tensor], outputs=[wrong], headers=user())
        assert "one output, 'embedding'" in caught.value.message()
        client.close()
