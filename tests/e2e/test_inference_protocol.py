"""The Open Inference Protocol on the real server, from the server's own environment: every bad
tensor refused with its status over HTTP and gRPC, the protocol's error shape, keys, health
without a key, gRPC health while draining, metrics, and a gRPC port in use. tritonclient itself
is tested from its own environment (tests/triton)."""

from __future__ import annotations

import gzip
import json
import signal
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import grpc
import httpx
import numpy as np
import pytest
from grpc_health.v1 import health_pb2, health_pb2_grpc

from app.config import Settings
from app.v2.inference import encode_bytes
from app.v2.stubs import grpc_service_pb2 as pb
from app.v2.stubs import grpc_service_pb2_grpc as pb_grpc
from tests.e2e.conftest import ROOT, Server, free_port, serving, start

pytestmark = pytest.mark.e2e
MODEL = "all-MiniLM-L6-v2"
USER = {"Authorization": "Bearer user-key"}
GRPC_USER = (("authorization", "Bearer user-key"),)
GRPC_ADMIN = (("authorization", "Bearer admin-key"),)


@pytest.fixture(scope="module")
def server(settings: Settings, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Server]:
    folder = tmp_path_factory.mktemp("v2")
    models = ",".join(str(ROOT / "models" / name) for name in (MODEL, "splade-tiny"))
    with serving(
        settings,
        folder,
        EMBED_MODELS=models,
        EMBED_API_KEYS="user-key",
        EMBED_ADMIN_KEYS="admin-key",
        EMBED_REPOSITORY=str(folder / "repository"),
        EMBED_GRPC_PORT=str(free_port()),
    ) as running:
        yield running


def grpc_port(server: Server) -> int:
    environ = Path(f"/proc/{server.process.pid}/environ").read_bytes().split(b"\0")
    (port,) = [e.split(b"=", 1)[1] for e in environ if e.startswith(b"EMBED_GRPC_PORT=")]
    return int(port)


@pytest.fixture(scope="module")
def stub(server: Server) -> Iterator[Any]:
    with grpc.insecure_channel(f"127.0.0.1:{grpc_port(server)}") as channel:
        yield pb_grpc.GRPCInferenceServiceStub(channel)  # type: ignore[no-untyped-call]


def infer(
    server: Server,
    body: dict[str, Any] | bytes,
    headers: dict[str, str] | None = None,
    model: str = MODEL,
) -> httpx.Response:
    content = body if isinstance(body, bytes) else json.dumps(body).encode()
    return httpx.post(
        f"{server.url}/v2/models/{model}/infer",
        content=content,
        headers={**USER, "content-type": "application/json", **(headers or {})},
        timeout=30,
    )


def texts_input(data: Any, shape: list[int], datatype: str = "BYTES") -> dict[str, Any]:
    return {"inputs": [{"name": "TEXT", "datatype": datatype, "shape": shape, "data": data}]}


def refused(answer: httpx.Response, status: int, words: str) -> None:
    """A refusal in the protocol's shape, ``{"error": "..."}``, saying ``words``."""
    assert answer.status_code == status, answer.text
    assert list(answer.json()) == ["error"] and words in answer.json()["error"], answer.text


def binary_request(texts: list[str], sizes: list[int] | None = None) -> tuple[bytes, int]:
    """Texts in the binary form, asking for the outputs in it too."""
    data = encode_bytes(texts)
    header = {
        "parameters": {"binary_data_output": True},
        "inputs": [
            {
                "name": "TEXT",
                "datatype": "BYTES",
                "shape": [len(texts)],
                "parameters": {"binary_data_size": (sizes or [len(data)])[0]},
            }
        ],
    }
    head = json.dumps(header).encode()
    return head + data, len(head)


def test_json_and_binary_inference_equal_embed(server: Server) -> None:
    texts = ["What is the capital of France?", "Paris is the capital of France."]
    expected = httpx.post(f"{server.url}/embed", headers=USER, json={"inputs": texts}).json()
    as_json = infer(server, {**texts_input(texts, [2]), "id": "r-1"})
    assert as_json.status_code == 200, as_json.text
    answer = as_json.json()
    assert (
        answer["model_name"] == MODEL and answer["model_version"] == "1" and answer["id"] == "r-1"
    )
    (output,) = answer["outputs"]
    assert (output["name"], output["datatype"], output["shape"]) == ("embedding", "FP32", [2, 384])
    vectors = np.asarray(output["data"], dtype=np.float32).reshape(2, 384)
    assert np.abs(vectors - np.asarray(expected["embeddings"])).max() < 1e-6

    body, length = binary_request(texts)
    binary = infer(
        server,
        body,
        {"Inference-Header-Content-Length": str(length)},
    )
    assert binary.status_code == 200
    assert binary.headers["content-type"] == "application/octet-stream"
    head = int(binary.headers["inference-header-content-length"])
    described = json.loads(binary.content[:head])
    assert described["outputs"][0]["parameters"] == {"binary_data_size": 2 * 384 * 4}
    raw = np.frombuffer(binary.content[head:], dtype="<f4").reshape(2, 384)
    assert np.abs(raw - vectors).max() == 0

    nested = infer(server, texts_input([[t] for t in texts], [2, 1]))  # a migrated ensemble's
    assert np.asarray(nested.json()["outputs"][0]["data"]).shape == (768,)
    raw_vectors = infer(server, {**texts_input(texts, [2]), "parameters": {"normalize": False}})
    norms = np.linalg.norm(
        np.asarray(raw_vectors.json()["outputs"][0]["data"]).reshape(2, 384), axis=1
    )
    assert (norms > 1.5).all()  # mean pooling before the unit-length step
    squeezed = gzip.compress(json.dumps(texts_input(texts, [2])).encode())
    inflated = infer(server, squeezed, {"content-encoding": "gzip"})
    assert inflated.json()["outputs"] == answer["outputs"]


BAD_TENSORS: dict[str, tuple[Any, str]] = {
    "a datatype other than BYTES": (texts_input([1.0, 2.0], [2], "FP32"), "datatype 'FP32'"),
    "a shape that does not match the data": (texts_input(["a", "b"], [3]), "shape says 3"),
    "a shape of more columns": (texts_input(["a", "b", "c", "d"], [2, 2]), "[N] or [N, 1]"),
    "no inputs": ({"inputs": []}, "exactly one input"),
    "two inputs": ({"inputs": [texts_input(["a"], [1])["inputs"][0]] * 2}, "exactly one input"),
    "a number among the texts": (texts_input(["a", 7], [2]), "element 1 is not a string"),
    "an unknown output": (
        {**texts_input(["a"], [1]), "outputs": [{"name": "logits"}]},
        "one output, 'embedding'",
    ),
    "a parameter of the wrong type": (
        {**texts_input(["a"], [1]), "parameters": {"normalize": "no"}},
        "'normalize' must be a boolean",
    ),
}


@pytest.mark.parametrize("case", BAD_TENSORS)
def test_a_bad_tensor_is_a_400_in_the_protocols_shape(case: str, server: Server) -> None:
    body, words = BAD_TENSORS[case]
    refused(infer(server, body), 400, words)


def test_binary_tensors_that_do_not_add_up_are_400s(server: Server) -> None:
    body, length = binary_request(["one", "two"])
    header = {"Inference-Header-Content-Length": str(length)}
    refused(infer(server, body + b"extra", header), 400, "after its JSON")
    refused(infer(server, body[:-2], header), 400, "bytes follow the JSON")
    head = body[:length].replace(b'"binary_data_size": 14', b'"binary_data_size": 12')
    refused(infer(server, head + body[length:-2], header), 400, "remain")  # an element cut short
    refused(infer(server, body, {"Inference-Header-Content-Length": "99999"}), 400, "a length")
    not_utf8, length = binary_request(["ok"])
    broken = not_utf8[:length] + encode_bytes(["ok"])[:4] + b"\xff\xfe"
    refused(infer(server, broken, {"Inference-Header-Content-Length": str(length)}), 400, "UTF-8")
    refused(infer(server, b"{not json"), 400, "not valid JSON")


def test_models_keys_and_health(server: Server) -> None:
    refused(infer(server, texts_input(["a"], [1]), model="nope"), 404, "not served here")
    refused(infer(server, texts_input(["a"], [1]), model="splade-tiny"), 400, "sparse model")
    refused(
        httpx.post(f"{server.url}/v2/models/{MODEL}/versions/2/infer", headers=USER, json={}),
        404,
        "the deployed version",
    )
    unkeyed = httpx.post(f"{server.url}/v2/models/{MODEL}/infer", json=texts_input(["a"], [1]))
    refused(unkeyed, 401, "API key")
    for probe in ("live", "ready"):  # no key, an empty body
        answer = httpx.get(f"{server.url}/v2/health/{probe}")
        assert answer.status_code == 200 and answer.content == b""
    metadata = httpx.get(f"{server.url}/v2/models/{MODEL}/versions/1", headers=USER).json()
    assert metadata["inputs"] == [{"name": "TEXT", "datatype": "BYTES", "shape": [-1]}]
    assert metadata["outputs"] == [{"name": "embedding", "datatype": "FP32", "shape": [-1, 384]}]
    server_metadata = httpx.get(f"{server.url}/v2", headers=USER).json()
    assert "binary_tensor_data" in server_metadata["extensions"]
    assert "model_repository" in server_metadata["extensions"]
    repository = httpx.post(f"{server.url}/v2/repository/index", headers=USER)
    refused(repository, 403, "admin key")


def grpc_request(texts: list[str], **changes: Any) -> Any:
    tensor = pb.ModelInferRequest.InferInputTensor(
        name="TEXT",
        datatype=changes.pop("datatype", "BYTES"),
        shape=changes.pop("shape", [len(texts)]),
    )
    request = pb.ModelInferRequest(model_name=changes.pop("model", MODEL), inputs=[tensor])
    request.raw_input_contents.append(changes.pop("raw", encode_bytes(texts)))
    for name in changes.pop("outputs", []):
        request.outputs.add(name=name)
    for name, value in changes.items():
        request.parameters[name].bool_param = value
    return request


GRPC_REFUSALS: dict[str, tuple[Any, grpc.StatusCode, str]] = {
    "a datatype other than BYTES": (
        grpc_request(["a"], datatype="FP32"),
        grpc.StatusCode.INVALID_ARGUMENT,
        "datatype",
    ),
    "a shape that does not match": (
        grpc_request(["a"], shape=[2]),
        grpc.StatusCode.INVALID_ARGUMENT,
        "shape says 2",
    ),
    "bytes that are not UTF-8": (
        grpc_request(["a"], raw=b"\x02\x00\x00\x00\xff\xfe"),
        grpc.StatusCode.INVALID_ARGUMENT,
        "UTF-8",
    ),
    "sizes that do not add up": (
        grpc_request(["a"], raw=b"\x09\x00\x00\x00ab"),
        grpc.StatusCode.INVALID_ARGUMENT,
        "remain",
    ),
    "an unknown output": (
        grpc_request(["a"], outputs=["logits"]),
        grpc.StatusCode.INVALID_ARGUMENT,
        "one output",
    ),
    "an unknown model": (
        grpc_request(["a"], model="nope"),
        grpc.StatusCode.NOT_FOUND,
        "not served",
    ),
    "a sparse model": (
        grpc_request(["a"], model="splade-tiny"),
        grpc.StatusCode.INVALID_ARGUMENT,
        "sparse",
    ),
}


@pytest.mark.parametrize("case", GRPC_REFUSALS)
def test_grpc_refusals_carry_the_tables_status(case: str, stub: Any) -> None:
    request, code, words = GRPC_REFUSALS[case]
    with pytest.raises(grpc.RpcError) as caught:
        stub.ModelInfer(request, metadata=GRPC_USER, timeout=30)
    assert caught.value.code() == code and words in caught.value.details()


def test_grpc_keys_deadlines_and_vectors(server: Server, stub: Any) -> None:
    texts = ["What is the capital of France?", "Paris is the capital of France."]
    reply = stub.ModelInfer(grpc_request(texts, normalize=True), metadata=GRPC_USER, timeout=30)
    vectors = np.frombuffer(reply.raw_output_contents[0], dtype="<f4").reshape(2, 384)
    expected = httpx.post(f"{server.url}/embed", headers=USER, json={"inputs": texts}).json()
    assert np.abs(vectors - np.asarray(expected["embeddings"])).max() < 1e-6
    assert list(reply.outputs[0].shape) == [2, 384] and reply.model_version == "1"
    for metadata, code in (((), grpc.StatusCode.UNAUTHENTICATED), (GRPC_USER, None)):
        try:
            stub.ServerLive(pb.ServerLiveRequest(), metadata=metadata, timeout=5)
            assert code is None
        except grpc.RpcError as exc:
            assert exc.code() == code
    with pytest.raises(grpc.RpcError) as caught:
        stub.RepositoryIndex(pb.RepositoryIndexRequest(), metadata=GRPC_USER, timeout=5)
    assert caught.value.code() == grpc.StatusCode.PERMISSION_DENIED
    index = stub.RepositoryIndex(pb.RepositoryIndexRequest(), metadata=GRPC_ADMIN, timeout=5)
    assert {(m.name, m.state) for m in index.models} >= {(MODEL, "READY")}
    many = grpc_request([f"sentence number {i} " * 20 for i in range(256)])
    with pytest.raises(grpc.RpcError) as caught:
        stub.ModelInfer(many, metadata=GRPC_USER, timeout=0.005)
    assert caught.value.code() == grpc.StatusCode.DEADLINE_EXCEEDED
    with grpc.insecure_channel(f"127.0.0.1:{grpc_port(server)}") as channel:
        health = health_pb2_grpc.HealthStub(channel)
        for service in ("", "inference.GRPCInferenceService"):  # no key needed
            status = health.Check(health_pb2.HealthCheckRequest(service=service), timeout=5)
            assert status.status == health_pb2.HealthCheckResponse.SERVING
    metrics = httpx.get(f"{server.url}/metrics").text
    assert (
        'embed_requests_total{route="/inference.GRPCInferenceService/ModelInfer",status="200"}'
        in metrics
    )
    assert 'route="/inference.GRPCInferenceService/ModelInfer",status="400"' in metrics
    assert 'embed_requests_total{route="/v2/models/{name}/infer",status="200"}' in metrics


def test_grpc_health_says_not_serving_while_draining(settings: Settings, tmp_path: Path) -> None:
    port = free_port()
    with serving(settings, tmp_path, EMBED_GRPC_PORT=str(port)) as running:
        with grpc.insecure_channel(f"127.0.0.1:{port}") as channel:
            watch = health_pb2_grpc.HealthStub(channel).Watch(
                health_pb2.HealthCheckRequest(service=""), timeout=30
            )
            assert next(watch).status == health_pb2.HealthCheckResponse.SERVING
            running.process.send_signal(signal.SIGTERM)
            assert next(watch).status == health_pb2.HealthCheckResponse.NOT_SERVING
            watch.cancel()
        assert running.process.wait(timeout=30) == 0


def test_a_grpc_port_in_use_stops_the_start_with_one_line(
    settings: Settings, tmp_path: Path
) -> None:
    with serving(settings, tmp_path) as running:
        taken = grpc_port(running)
        log = tmp_path / "second.log"
        second = start(
            {
                "EMBED_PORT": str(free_port()),
                "EMBED_GRPC_PORT": str(taken),
                "EMBED_MODEL_DIR": str(settings.model_dir),
            },
            log,
        )
        assert second.wait(timeout=60) == 2
        lines = [line for line in log.read_text().splitlines() if line.startswith("error:")]
        assert len(lines) == 1 and f"EMBED_GRPC_PORT={taken}" in lines[0], log.read_text()
