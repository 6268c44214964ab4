"""A client that leaves while its request waits: its rows are dropped before inference."""

from __future__ import annotations

import asyncio
import threading
from collections.abc import Sequence
from typing import Any

import pytest
from starlette.requests import Request
from starlette.types import Message
from tokenizers import Encoding

from app.api.disconnect import unless_disconnected
from app.engine.engine import EmbeddingEngine
from app.errors import ClientClosed


def test_a_departed_clients_rows_never_reach_the_model(
    engine: EmbeddingEngine, monkeypatch: pytest.MonkeyPatch
) -> None:
    release, entered = threading.Event(), threading.Event()
    seen: list[str] = []
    forward = engine.encoder.forward

    def blocking(encodings: Sequence[Encoding]) -> Any:
        seen.extend(e.tokens[1] for e in encodings)
        entered.set()
        release.wait(5)
        return forward(encodings)

    monkeypatch.setattr(engine.encoder, "forward", blocking)

    async def leaves_soon() -> Message:
        await asyncio.sleep(0.05)
        return {"type": "http.disconnect"}

    async def run() -> None:
        first = asyncio.ensure_future(engine.embed(["first"]))
        await asyncio.to_thread(entered.wait, 5)  # the first request holds the model
        request = Request({"type": "http", "method": "POST", "headers": []}, leaves_soon)
        try:
            with pytest.raises(ClientClosed):
                await unless_disconnected(request, engine.embed(["gone"]))
        finally:
            release.set()
        await first
        await engine.embed(["after"])

    asyncio.run(run())
    assert seen == ["first", "after"]
