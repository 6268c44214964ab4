"""``DirectRoute``: a well-formed ``POST /embed`` is answered without FastAPI, by the same
function as the FastAPI route; anything else, an invalid body included, reaches FastAPI exactly
as it arrived."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Iterator
from typing import Any

import httpx
import numpy as np
import pytest
from starlette.types import Receive, Scope, Send

from app.api.routes.embeddings import answer_embed
from app.api.schemas import EmbedRequest
from app.core.engine import Engine
from app.core.registry import ModelRegistry
from app.transport.direct import DirectRoute
from tests.fakes import FakeModel


@pytest.fixture
def engine() -> Iterator[Engine]:
    served = Engine(FakeModel())
    yield served
    served.close()


class Inner:
    """Stands in for FastAPI: records what reached it and answers 299."""

    def __init__(self) -> None:
        self.bodies: list[bytes] = []

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        body = b""
        while True:
            message = await receive()
            body += message.get("body", b"")
            if not message.get("more_body", False):
                break
        self.bodies.append(body)
        await send({"type": "http.response.start", "status": 299, "headers": []})
        await send({"type": "http.response.body", "body": b""})


def harness(engine: Engine) -> tuple[Inner, httpx.AsyncClient]:
    inner = Inner()
    fast = DirectRoute(
        inner, method="POST", path="/embed", schema=EmbedRequest, answer=answer_embed
    )
    models = ModelRegistry([engine])

    async def with_state(scope: Scope, receive: Receive, send: Send) -> None:
        scope["state"] = {"models": models}  # what the lifespan gives every request
        await fast(scope, receive, send)

    transport = httpx.ASGITransport(app=with_state)
    return inner, httpx.AsyncClient(transport=transport, base_url="http://test")


def run(coroutine: Any) -> Any:
    return asyncio.run(coroutine)


def test_a_valid_embed_is_answered_without_fastapi(engine: Engine) -> None:
    inner, client = harness(engine)

    async def go() -> httpx.Response:
        async with client:
            return await client.post("/embed", json={"inputs": ["a cat", "a dog"]})

    response = run(go())
    assert response.status_code == 200 and inner.bodies == []
    assert isinstance(engine.model, FakeModel)
    expected = engine.model.expected(["a cat", "a dog"])
    assert np.allclose(response.json()["embeddings"], expected, atol=1e-5)
    assert float(response.headers["x-inference-time"]) > 0


async def chunks(*parts: bytes) -> AsyncIterator[bytes]:
    for part in parts:
        yield part


@pytest.mark.parametrize(
    ("path", "headers", "body"),
    [
        ("/embed", {"content-type": "application/json"}, b'{"inputs": 42}'),
        ("/embed", {"content-type": "application/json"}, b'{"inputs": "\\ud800"}'),
        ("/embed", {"content-type": "application/json"}, b"[" * 1000),
        ("/embed", {"content-type": "text/plain"}, b'{"inputs": "a"}'),
        ("/similarity", {"content-type": "application/json"}, b'{"inputs": "a"}'),
    ],
)
def test_everything_else_reaches_fastapi_unchanged(
    engine: Engine, path: str, headers: dict[str, str], body: bytes
) -> None:
    inner, client = harness(engine)

    async def go() -> httpx.Response:
        async with client:
            return await client.post(path, content=body, headers=headers)

    assert run(go()).status_code == 299
    assert inner.bodies == [body]


def test_a_body_in_several_chunks(engine: Engine) -> None:
    inner, client = harness(engine)
    headers = {"content-type": "application/json"}

    async def go() -> tuple[httpx.Response, httpx.Response]:
        async with client:
            good = await client.post(
                "/embed", content=chunks(b'{"inputs": ', b'"a cat"}'), headers=headers
            )
            bad = await client.post(
                "/embed", content=chunks(b'{"inputs"', b": 1}"), headers=headers
            )
            return good, bad

    good, bad = run(go())
    assert good.status_code == 200 and len(good.json()["embeddings"]) == 1
    assert bad.status_code == 299 and inner.bodies == [b'{"inputs": 1}']


def test_service_errors_keep_their_shape(engine: Engine) -> None:
    _, client = harness(engine)

    async def go() -> httpx.Response:
        async with client:
            return await client.post("/embed", json={"inputs": "a", "model": "nope"})

    response = run(go())
    assert response.status_code == 404
    assert response.json()["error"]["code"] == "model_not_found"
