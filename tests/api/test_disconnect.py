"""A client that leaves while its request waits: its rows are dropped before inference."""

from __future__ import annotations

import asyncio

import pytest
from starlette.requests import Request
from starlette.types import Message

from app.api.disconnect import unless_disconnected
from app.engine.engine import EmbeddingEngine
from app.errors import ClientClosed
from tests.conftest import HeldForward


def test_a_departed_clients_rows_never_reach_the_model(
    engine: EmbeddingEngine, monkeypatch: pytest.MonkeyPatch
) -> None:
    held = HeldForward(engine.encoder.forward)
    monkeypatch.setattr(engine.encoder, "forward", held)

    async def leaves_soon() -> Message:
        await asyncio.sleep(0.05)
        return {"type": "http.disconnect"}

    async def run() -> None:
        first = asyncio.ensure_future(engine.embed(["first"]))
        await held.wait_until_busy()
        request = Request({"type": "http", "method": "POST", "headers": []}, leaves_soon)
        try:
            with pytest.raises(ClientClosed):
                await unless_disconnected(request.receive, engine.embed(["gone"]))
        finally:
            held.release.set()
        await first
        await engine.embed(["after"])

    asyncio.run(run())
    assert held.seen == ["first", "after"]
