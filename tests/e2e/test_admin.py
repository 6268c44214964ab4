"""The model repository over HTTP, on the real server with real bundles: the whole cycle
(register, deploy, embed, swap under 32 clients, undeploy, delete), hostile uploads, keys, a
restart, and two servers on one repository."""

from __future__ import annotations

import asyncio
import json
import re
import shutil
import socket
import time
import zipfile
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import httpx
import numpy as np
import pytest
from fastapi.testclient import TestClient

from app.backends.onnx.bundle import load_bundle
from app.backends.onnx.model import OnnxModel
from app.bundle import write_archive
from app.config import Settings
from app.core.engine import Engine
from app.core.vectors import encode_now
from app.main import create_app
from app.repository import INCOMING
from tests.conftest import error_of
from tests.e2e.conftest import Server, serving
from tests.model.test_bundle_check import ARCHIVES, BUNDLES, INT8, bundle_archive, edited

ROOT = Path(__file__).resolve().parents[2]
INT8_ARCHIVE = ROOT / "models" / "all-MiniLM-L6-v2-int8.zip"  # make test exports it --archive
TINY = ROOT / "models" / ".tiny" / "tiny-bert"
ADMIN_KEYS = ["admin-one", "admin-two"]
ADMIN = {"Authorization": "Bearer admin-two"}  # the second key: the log names it #2
USER = {"Authorization": "Bearer user-key"}
INVALID = "invalid_request_error"


def admin_env(repository: Path, **extra: str) -> dict[str, str]:
    return {
        "EMBED_ADMIN_KEYS": ",".join(ADMIN_KEYS),
        "EMBED_API_KEYS": "user-key",
        "EMBED_REPOSITORY": str(repository),
        "EMBED_REPOSITORY_POLL_S": "0.5",
        **extra,
    }


@pytest.fixture(scope="module")
def int8_archive(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The int8 bundle as the export archived it (an older checkout: archived here alike)."""
    if INT8_ARCHIVE.is_file():
        return INT8_ARCHIVE
    return write_archive(INT8, tmp_path_factory.mktemp("int8") / "int8.zip")


@pytest.fixture(scope="module")
def admin_server(settings: Settings, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Server]:
    folder = tmp_path_factory.mktemp("admin")
    with serving(settings, folder, **admin_env(folder / "repository")) as running:
        yield running


def register(
    url: str, archive: bytes | Path, name: str = "minilm", **fields: str
) -> httpx.Response:
    content = archive.read_bytes() if isinstance(archive, Path) else archive
    return httpx.post(
        f"{url}/admin/models",
        headers=ADMIN,
        data={"name": name, **fields},
        files={"file": ("bundle.zip", content, "application/zip")},
        timeout=60,
    )


def admin(method: str, url: str, **kwargs: Any) -> httpx.Response:
    return httpx.request(method, url, headers=ADMIN, timeout=60, **kwargs)


def embed(url: str, texts: list[str], model: str) -> httpx.Response:
    return httpx.post(f"{url}/embed", headers=USER, json={"inputs": texts, "model": model})


def repository_of(server: Server) -> Path:
    return server.log.parent / "repository"  # where admin_server puts it


# --- without admin keys, and the keys ----------------------------------------------------------


def test_without_admin_keys_the_admin_routes_do_not_exist(
    settings: Settings, engine: Engine
) -> None:
    with TestClient(create_app(settings, engine)) as client:
        assert error_of(client.get("/admin/models")) == (404, INVALID, "not_found")
        assert not [p for p in client.get("/openapi.json").json()["paths"] if "admin" in p]


def test_the_admin_routes_are_documented_under_their_own_tag(
    settings: Settings, engine: Engine, tmp_path: Path
) -> None:
    keyed = Settings(
        model_dir=settings.model_dir,
        precision="fp32",
        admin_keys="k",  # type: ignore[arg-type]  # as the environment gives it
        repository=tmp_path / "repo",
    )
    with TestClient(create_app(keyed, engine)) as client:
        paths = client.get("/openapi.json", headers={"Authorization": "Bearer k"}).json()["paths"]
    admin_paths = {p: ops for p, ops in paths.items() if p.startswith("/admin/")}
    assert set(admin_paths) == {
        "/admin/models",
        "/admin/models/{name}",
        "/admin/models/{name}/versions/{version}/deploy",
        "/admin/models/{name}/versions/{version}/undeploy",
        "/admin/models/{name}/versions/{version}",
        "/admin/default-model",
    }
    assert all(op["tags"] == ["admin"] for ops in admin_paths.values() for op in ops.values())
    upload = admin_paths["/admin/models"]["post"]["requestBody"]["content"]
    assert upload["multipart/form-data"]["schema"]["required"] == ["name", "file"]


def test_admin_routes_need_an_admin_key(admin_server: Server) -> None:
    url = f"{admin_server.url}/admin/models"
    assert error_of(httpx.get(url)) == (401, "authentication_error", "invalid_api_key")
    wrong = {"Authorization": "Bearer admin-on"}
    assert error_of(httpx.get(url, headers=wrong)) == (
        401,
        "authentication_error",
        "invalid_api_key",
    )
    assert error_of(httpx.get(url, headers=USER)) == (403, "permission_error", "not_admin")
    for key in ADMIN_KEYS:
        assert httpx.get(url, headers={"Authorization": f"Bearer {key}"}).status_code == 200
    # An admin key is a user key too.
    answer = httpx.post(f"{admin_server.url}/embed", headers=ADMIN, json={"inputs": "hi"})
    assert answer.status_code == 200
    assert not any(key in admin_server.log.read_text() for key in ADMIN_KEYS)


# --- hostile uploads ---------------------------------------------------------------------------


def archive_bytes(tmp_path: Path, extra: Callable[[zipfile.ZipFile], None]) -> bytes:
    return bundle_archive(tmp_path / "hostile.zip", extra).read_bytes()


def broken_bundle(tmp_path: Path, case: str) -> bytes:
    edit, _ = BUNDLES[case]
    return write_archive(edited(tmp_path, edit), tmp_path / "broken.zip").read_bytes()


HOSTILE_ARCHIVES = ["zip-slip", "absolute path", "symbolic link", "zip bomb"]
HOSTILE_BUNDLES = [
    "corrupt ONNX file",
    "a wrong dimension",
    "inputs the graph does not have",
    "external data outside the bundle",
]


@pytest.mark.parametrize("case", HOSTILE_ARCHIVES)
def test_a_hostile_archive_is_refused_and_leaves_nothing(
    case: str, admin_server: Server, tmp_path: Path
) -> None:
    extra, message = ARCHIVES[case]
    answer = register(admin_server.url, archive_bytes(tmp_path, extra), name="hostile")
    assert error_of(answer) == (422, INVALID, "invalid_archive")
    assert re.search(message, answer.json()["error"]["message"])
    assert_nothing_stored(admin_server)


@pytest.mark.parametrize("case", HOSTILE_BUNDLES)
def test_a_broken_bundle_is_refused_and_leaves_nothing(
    case: str, admin_server: Server, tmp_path: Path
) -> None:
    answer = register(admin_server.url, broken_bundle(tmp_path, case), name="hostile")
    assert error_of(answer) == (422, INVALID, "invalid_bundle")
    assert re.search(BUNDLES[case][1], answer.json()["error"]["message"])
    assert_nothing_stored(admin_server)


def test_uploads_cut_short_misnamed_or_unkeyed_are_refused(
    admin_server: Server, int8_archive: Path
) -> None:
    url, whole = admin_server.url, int8_archive.read_bytes()
    cut = register(url, whole[: len(whole) // 2], name="hostile")
    assert error_of(cut) == (422, INVALID, "invalid_archive")  # a truncated archive
    taken = register(url, whole, name="all-MiniLM-L6-v2")  # the settings serve that name
    assert error_of(taken) == (409, INVALID, "model_exists")
    for name in ("a/b", "../up", ".hidden", "x" * 65, ""):
        assert error_of(register(url, whole, name=name)) == (422, INVALID, "validation_error")
    # A multipart body that ends before its closing boundary.
    request = httpx.Request(
        "POST",
        f"{url}/admin/models",
        headers=ADMIN,
        data={"name": "hostile"},
        files={"file": ("b.zip", whole, "application/zip")},
    )
    body = request.read()
    truncated = body[: len(body) - 200]
    headers = {**ADMIN, "content-type": request.headers["content-type"]}
    answer = httpx.post(f"{url}/admin/models", headers=headers, content=truncated)
    assert error_of(answer) == (422, INVALID, "validation_error")
    assert "truncated" in answer.json()["error"]["message"]
    not_a_form = httpx.post(f"{url}/admin/models", headers=ADMIN, json={"name": "x"})
    assert error_of(not_a_form) == (422, INVALID, "validation_error")
    unkeyed = httpx.post(f"{url}/admin/models", data={"name": "hostile"}, files={"file": whole})
    assert error_of(unkeyed) == (401, "authentication_error", "invalid_api_key")
    as_user = httpx.post(
        f"{url}/admin/models", headers=USER, data={"name": "hostile"}, files={"file": whole}
    )
    assert error_of(as_user) == (403, "permission_error", "not_admin")
    assert_nothing_stored(admin_server)


def test_an_upload_declaring_3_gb_is_refused_before_it_is_read(admin_server: Server) -> None:
    port = int(admin_server.url.rsplit(":", 1)[1])
    with socket.create_connection(("127.0.0.1", port), timeout=10) as sock:
        sock.sendall(
            b"POST /admin/models HTTP/1.1\r\nHost: x\r\nAuthorization: Bearer admin-one\r\n"
            b"Content-Type: multipart/form-data; boundary=b\r\nContent-Length: 3000000000\r\n\r\n"
            + b"--b\r\n"
            * 10
        )
        answer = sock.recv(65536).decode()
    assert answer.startswith("HTTP/1.1 413"), answer
    assert "EMBED_MAX_UPLOAD_BYTES" in answer
    assert_nothing_stored(admin_server)


def assert_nothing_stored(server: Server) -> None:
    """The server still serves, and its repository holds no model and no upload."""
    assert embed(server.url, ["still serving"], "all-MiniLM-L6-v2").status_code == 200
    root = repository_of(server)
    assert sorted(p.name for p in root.iterdir() if p.name not in {INCOMING, ".lock"}) == []
    assert list((root / INCOMING).iterdir()) == []


# --- the whole cycle ---------------------------------------------------------------------------


def test_the_whole_cycle(admin_server: Server, int8_archive: Path, tmp_path: Path) -> None:
    url = admin_server.url
    first = register(url, int8_archive, description="MiniLM, int8")
    assert first.status_code == 201, first.text
    record = first.json()
    assert list(record) == [
        "name",
        "version",
        "state",
        "reason",
        "kind",
        "dimension",
        "variant",
        "size_bytes",
        "sha256",
        "created",
        "description",
        "source",
        "rss_added_bytes",
    ]
    assert record["version"] == 1 and record["state"] == "registered"
    assert (record["variant"], record["source"], record["dimension"]) == ("int8", "uploaded", 384)
    again = register(url, int8_archive)  # identical content: that version, not a copy
    assert again.status_code == 200 and again.json()["version"] == 1

    started = time.monotonic()
    deployed = admin("POST", f"{url}/admin/models/minilm/versions/1/deploy")
    print(f"deployed the int8 bundle in {time.monotonic() - started:.2f} s")
    assert deployed.status_code == 200, deployed.text
    assert deployed.json()["state"] == "deployed" and deployed.json()["rss_added_bytes"] > 0
    noop = admin("POST", f"{url}/admin/models/minilm/versions/1/deploy")
    assert noop.status_code == 200 and noop.json()["state"] == "deployed"

    # int8 quantizes each pass's activations on the pass's own range: compared sentence by
    # sentence, in one-row passes on both sides.
    reference = json.loads((INT8 / "reference.json").read_text())
    sentences = reference["sentences"]
    served = [embed(url, [sentence], "minilm") for sentence in sentences]
    assert {answer.status_code for answer in served} == {200}
    vectors = np.vstack([answer.json()["embeddings"] for answer in served]).astype(np.float32)
    model = OnnxModel.load(load_bundle(INT8))
    in_process = np.vstack([encode_now(model, [sentence]) for sentence in sentences])
    assert np.abs(vectors - in_process).max() < 1e-5
    expected = np.asarray(reference["embeddings"], dtype=np.float32)
    expected /= np.linalg.norm(expected, axis=1, keepdims=True)
    recorded = json.loads((INT8 / "config.json").read_text())["verification"]
    assert (vectors * expected).sum(axis=1).min() >= recorded["worst_cosine_to_pytorch"] - 1e-4
    assert embed(url, ["x"], "minilm@1").status_code == 200
    absent = embed(url, ["x"], "minilm@2")
    assert error_of(absent) == (404, INVALID, "model_not_found")
    assert "minilm@1" in absent.json()["error"]["message"]

    second = register(url, write_archive(TINY, tmp_path / "tiny.zip"), description="tiny")
    assert second.status_code == 201 and second.json()["version"] == 2
    swap = asyncio.run(swap_under_load(url, clients=32))
    print(f"swap under 32 clients: {swap}")
    assert swap["statuses"] == {200}, swap
    assert swap["old_after"] == 0 and swap["new_before"] == 0, swap
    assert swap["dimensions"] == {384, 32}, swap

    listed = admin("GET", f"{url}/admin/models/minilm").json()
    assert [(v["version"], v["state"]) for v in listed] == [(1, "registered"), (2, "deployed")]
    everything = admin("GET", f"{url}/admin/models").json()
    assert [(v["name"], v["source"]) for v in everything] == [
        ("all-MiniLM-L6-v2", "static"),
        ("minilm", "uploaded"),
        ("minilm", "uploaded"),
    ]

    # Undeploying gives the memory back; the int8 version is loaded again to measure it.
    admin("POST", f"{url}/admin/models/minilm/versions/1/deploy").raise_for_status()
    added = admin("GET", f"{url}/admin/models/minilm").json()[0]["rss_added_bytes"]
    before = admin_server.memory_kb() * 1024
    gone = admin("POST", f"{url}/admin/models/minilm/versions/1/undeploy")
    assert gone.status_code == 200 and gone.json()["state"] == "registered"
    fallen = wait_for(lambda: before - admin_server.memory_kb() * 1024 >= added / 2, 10)
    after = admin_server.memory_kb() * 1024
    print(f"undeploy: rss_added_bytes {added / 1e6:.1f} MB, RSS {before / 1e6:.1f}", end="")
    print(f" -> {after / 1e6:.1f} MB")
    assert fallen, (before, after, added)
    assert error_of(embed(url, ["x"], "minilm")) == (404, INVALID, "model_not_found")

    static = admin("POST", f"{url}/admin/models/all-MiniLM-L6-v2/versions/1/undeploy")
    assert error_of(static) == (409, INVALID, "model_is_default")
    assert error_of(admin("DELETE", f"{url}/admin/models/all-MiniLM-L6-v2")) == (
        409,
        INVALID,
        "model_deployed",
    )
    removed = admin("DELETE", f"{url}/admin/models/minilm/versions/1")
    assert removed.status_code == 200 and removed.json()["state"] == "deleted"
    assert error_of(admin("POST", f"{url}/admin/models/minilm/versions/1/deploy")) == (
        404,
        INVALID,
        "version_not_found",
    )
    admin("POST", f"{url}/admin/models/minilm/versions/2/deploy").raise_for_status()
    assert error_of(admin("DELETE", f"{url}/admin/models/minilm")) == (
        409,
        INVALID,
        "model_deployed",
    )
    admin("POST", f"{url}/admin/models/minilm/versions/2/undeploy").raise_for_status()
    assert [v["version"] for v in admin("DELETE", f"{url}/admin/models/minilm").json()] == [2]
    assert error_of(admin("GET", f"{url}/admin/models/minilm")) == (404, INVALID, "model_not_found")

    metrics = httpx.get(f"{url}/metrics").text
    assert 'embed_models_deployed{model="all-MiniLM-L6-v2",version="1"} 1.0' in metrics
    assert 'model="minilm"' not in metrics.split("embed_models_deployed")[-1].split("# HELP")[0]
    assert 'embed_model_actions_total{action="deploy",outcome="ok"}' in metrics
    assert 'embed_model_actions_total{action="undeploy",outcome="refused"}' in metrics
    log = admin_server.log.read_text()
    assert re.search(r"deploy minilm@2 by admin key #2", log)
    assert not any(key in log for key in ADMIN_KEYS)


async def swap_under_load(url: str, clients: int) -> dict[str, Any]:
    """``clients`` clients embedding with "model": "minilm" while version 2 replaces version 1:
    every status, and which version (by width) answered before and after the swap."""
    seen: list[tuple[float, float, int, int]] = []  # start, end, status, width
    stop = asyncio.Event()
    limits = httpx.Limits(max_connections=clients + 1)
    async with httpx.AsyncClient(headers=USER, timeout=60, limits=limits) as client:

        async def one_client(index: int) -> None:
            while not stop.is_set():
                start = time.monotonic()
                answer = await client.post(
                    f"{url}/embed",
                    json={"inputs": [f"client {index} at {start}"], "model": "minilm"},
                )
                width = answer.json().get("dimensions", 0) if answer.status_code == 200 else 0
                seen.append((start, time.monotonic(), answer.status_code, width))

        running = [asyncio.create_task(one_client(i)) for i in range(clients)]
        await asyncio.sleep(1.5)
        sent = time.monotonic()
        deployed = await client.post(f"{url}/admin/models/minilm/versions/2/deploy", headers=ADMIN)
        done = time.monotonic()
        await asyncio.sleep(1.5)
        stop.set()
        await asyncio.gather(*running)
    assert deployed.status_code == 200, deployed.text
    return {
        "requests": len(seen),
        "statuses": {status for _, _, status, _ in seen},
        "dimensions": {width for *_, width in seen},
        "deploy_s": round(done - sent, 2),
        "old_after": sum(1 for start, _, _, w in seen if start > done and w == 384),
        "new_before": sum(1 for _, end, _, w in seen if end < sent and w == 32),
    }


def wait_for(condition: Callable[[], bool], seconds: float) -> bool:
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        if condition():
            return True
        time.sleep(0.1)
    return condition()


# --- restarts and replicas ---------------------------------------------------------------------


@contextmanager
def replica(settings: Settings, folder: Path, repository: Path) -> Iterator[Server]:
    folder.mkdir(exist_ok=True)
    with serving(settings, folder, **admin_env(repository)) as running:
        yield running


def test_two_servers_converge_and_a_restart_restores(
    settings: Settings, int8_archive: Path, tmp_path: Path
) -> None:
    repository = tmp_path / "shared"
    with replica(settings, tmp_path / "a", repository) as a:
        with replica(settings, tmp_path / "b", repository) as b:
            assert register(a.url, int8_archive).status_code == 201
            admin("POST", f"{a.url}/admin/models/minilm/versions/1/deploy").raise_for_status()
            took = time_until(lambda: embed(b.url, ["x"], "minilm").status_code == 200, 10)
            print(f"replica b served minilm {took:.2f} s after a deployed it")
            assert took < 0.5 + 5  # the interval, and a load of the int8 bundle
            deployed_on_b = admin("GET", f"{b.url}/admin/models/minilm").json()[0]
            assert deployed_on_b["state"] == "deployed"
            admin(
                "PUT", f"{a.url}/admin/default-model", json={"model": "minilm"}
            ).raise_for_status()
            assert time_until(lambda: default_of(b) == "minilm", 5) < 5
        # b is gone; a restart of b on the same repository restores what is deployed.
        with replica(settings, tmp_path / "b", repository) as b:
            assert embed(b.url, ["x"], "minilm@1").status_code == 200
            assert default_of(b) == "minilm"
            answer = httpx.post(f"{b.url}/embed", headers=USER, json={"inputs": "no model named"})
            assert answer.json()["model"] == "minilm"
            # And an undeploy through b reaches a.
            put = admin("PUT", f"{b.url}/admin/default-model", json={"model": "all-MiniLM-L6-v2"})
            put.raise_for_status()
            admin("POST", f"{b.url}/admin/models/minilm/versions/1/undeploy").raise_for_status()
            took = time_until(lambda: embed(a.url, ["x"], "minilm").status_code == 404, 10)
            print(f"replica a undeployed minilm {took:.2f} s after b did")
            assert took < 0.5 + 2
            assert default_of(a) == "all-MiniLM-L6-v2"


def default_of(server: Server) -> str:
    return str(admin("GET", f"{server.url}/admin/default-model").json()["default"])


def time_until(condition: Callable[[], bool], seconds: float) -> float:
    started = time.monotonic()
    assert wait_for(condition, seconds), f"not within {seconds} s"
    return time.monotonic() - started


def test_a_failed_deploy_keeps_the_deployed_version(
    admin_server: Server, int8_archive: Path, tmp_path: Path
) -> None:
    """A version that checks out but cannot load here (a bundle whose runtime is refused on this
    server) is a 422 deploy_failed; the version deployed before keeps serving."""
    url = admin_server.url
    assert register(url, int8_archive, name="fragile").status_code == 201
    admin("POST", f"{url}/admin/models/fragile/versions/1/deploy").raise_for_status()
    folder = tmp_path / "openvino-only"
    shutil.copytree(INT8, folder)
    manifest = json.loads((folder / "config.json").read_text())
    manifest["backends"] = ["openvino"]  # the int8 graph's com.microsoft ops: not there
    (folder / "config.json").write_text(json.dumps(manifest))
    assert (
        register(url, write_archive(folder, tmp_path / "f.zip"), name="fragile").status_code == 201
    )
    failed = admin("POST", f"{url}/admin/models/fragile/versions/2/deploy")
    assert error_of(failed) == (422, INVALID, "deploy_failed")
    assert "fragile@1 stays deployed" in failed.json()["error"]["message"]
    states = [
        (v["version"], v["state"]) for v in admin("GET", f"{url}/admin/models/fragile").json()
    ]
    assert states == [(1, "deployed"), (2, "failed")]
    assert embed(url, ["still here"], "fragile").status_code == 200
    admin("POST", f"{url}/admin/models/fragile/versions/1/undeploy").raise_for_status()
    admin("DELETE", f"{url}/admin/models/fragile").raise_for_status()
