"""A client that leaves while its request waits: its rows are dropped before inference.

Both ways of learning that the client left are tested here: a task waiting on ``receive`` (any
ASGI server), and the ``ClientWatch`` scope extension that ``python -m app``'s protocol offers,
called back here as the protocol calls it when a connection is lost. The e2e test
``test_a_client_that_leaves_costs_no_forward_pass`` covers the real server.
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from typing import Any

import pytest
from starlette.types import Message, Scope

from app.core.engine import Engine
from app.errors import ClientClosed
from app.transport.disconnect import CLIENT_WATCH, ClientWatch, unless_disconnected
from tests.conftest import HeldForward

LEAVES_AFTER_S = 0.05


async def never_leaves() -> Message:
    await asyncio.Event().wait()
    raise AssertionError("unreachable")


async def leaves_soon() -> Message:
    await asyncio.sleep(LEAVES_AFTER_S)
    return {"type": "http.disconnect"}


def through_receive() -> tuple[Scope, Callable[[], Any]]:
    """A plain ASGI request: the disconnect comes from ``receive``."""
    return {"type": "http"}, leaves_soon


def through_client_watch() -> tuple[Scope, Callable[[], Any]]:
    """A request with the server's ``ClientWatch``: the server calls back when the connection
    is lost; ``receive`` never says anything."""
    watch = ClientWatch(lambda: None)  # reading is never paused here
    asyncio.get_running_loop().call_later(LEAVES_AFTER_S, watch.connection_lost)
    return {"type": "http", "extensions": {CLIENT_WATCH: watch}}, never_leaves


@pytest.mark.parametrize("way", [through_receive, through_client_watch])
def test_a_departed_clients_rows_never_reach_the_model(
    engine: Engine,
    monkeypatch: pytest.MonkeyPatch,
    way: Callable[[], tuple[Scope, Callable[[], Any]]],
) -> None:
    held = HeldForward(engine.model.run)
    monkeypatch.setattr(engine.model, "run", held)

    async def run() -> None:
        first = asyncio.ensure_future(engine.embed(["first"]))
        await held.wait_until_busy()
        scope, receive = way()
        try:
            with pytest.raises(ClientClosed):  # a watch that never fires would time out here
                work = unless_disconnected(scope, receive, engine.embed(["gone"]))
                await asyncio.wait_for(work, timeout=10)
        finally:
            held.release.set()
        await first
        await engine.embed(["after"])

    asyncio.run(run())
    assert held.seen == ["first", "after"]


def test_a_watch_resumes_reading_and_ends_with_the_work(engine: Engine) -> None:
    """Starting a watch resumes reading, so that a connection paused by a large body is still
    watched; once the work is done, a lost connection cancels nothing."""
    resumed: list[bool] = []
    watch = ClientWatch(lambda: resumed.append(True))

    async def run() -> None:
        scope = {"type": "http", "extensions": {CLIENT_WATCH: watch}}
        result = await unless_disconnected(scope, never_leaves, engine.embed(["stays"]))
        assert result.values.shape == (1, engine.info.width)
        watch.connection_lost()  # after the answer: nothing to cancel
        await asyncio.sleep(0)
        assert asyncio.current_task().cancelling() == 0  # type: ignore[union-attr]

    asyncio.run(run())
    assert resumed == [True]
    assert watch.callback is None
