"""Dropping the work of a client that has gone away.

Once a request's body is read, the ASGI ``receive`` channel yields only ``http.disconnect``,
when the client closes the connection. Racing that against the engine lets a departed client's
rows leave the queue before inference, instead of costing a forward pass nobody reads.
"""

from __future__ import annotations

import asyncio
from collections.abc import Coroutine
from typing import Any, TypeVar

from starlette.types import Receive

from app.errors import ClientClosed

T = TypeVar("T")


async def unless_disconnected(receive: Receive, work: Coroutine[Any, Any, T]) -> T:
    """Await ``work``; if the client disconnects first (``receive`` is the request's ASGI
    channel, its body already read), cancel it and raise ``ClientClosed``."""
    task = asyncio.ensure_future(work)
    watcher = asyncio.ensure_future(_disconnected(receive))
    try:
        await asyncio.wait((task, watcher), return_when=asyncio.FIRST_COMPLETED)
    finally:
        watcher.cancel()
    if task.done():
        return task.result()
    task.cancel()
    raise ClientClosed("the client closed the connection before the answer was ready")


async def _disconnected(receive: Receive) -> None:
    while (await receive())["type"] != "http.disconnect":
        pass
