"""Dropping the work of a client that has gone away.

Once a request's body is read, the ASGI ``receive`` channel yields only ``http.disconnect``,
when the client closes the connection. Watching for that lets a departed client's rows leave the
queue before inference, instead of costing a forward pass nobody reads.

ASGI's only way to learn of a disconnect is a task waiting on ``receive``: a task per request,
which with its cancellation is a measurable share of the HTTP path's CPU (docs/design.md).
``python -m app`` serves with a protocol (``app.transport.server``) that offers a cheaper way,
the scope extension
``CLIENT_WATCH``: the server calls back when the connection is lost. Any other ASGI server gets
the waiting task.
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable, Coroutine
from typing import Any, TypeVar

from starlette.types import Receive, Scope

from app.errors import ClientClosed

T = TypeVar("T")

CLIENT_WATCH = "app.client_watch"
"""The scope extension (``scope["extensions"][CLIENT_WATCH]``) holding a ``ClientWatch``."""


class ClientWatch:
    """One request's line to its server: ``start(callback)`` has the server call ``callback()``
    if the client's connection is lost before the response is complete; ``stop()`` ends that.
    ``resume_reading`` lets the server watch a connection whose reading it paused (a large
    body), as a waiting ``receive`` would."""

    __slots__ = ("callback", "resume_reading")

    def __init__(self, resume_reading: Callable[[], None]) -> None:
        self.callback: Callable[[], None] | None = None
        self.resume_reading = resume_reading

    def start(self, callback: Callable[[], None]) -> None:
        self.callback = callback
        self.resume_reading()

    def stop(self) -> None:
        self.callback = None

    def connection_lost(self) -> None:
        """Called by the server."""
        if self.callback is not None:
            self.callback()


async def unless_disconnected(scope: Scope, receive: Receive, work: Coroutine[Any, Any, T]) -> T:
    """Await ``work``; if the client disconnects first (``receive`` is the request's ASGI
    channel, its body already read), cancel it and raise ``ClientClosed``.

    ``work`` runs in the request's own task. On a disconnect that task is cancelled, which
    cancels the future ``work`` waits on (and so drops its rows). The server's ``ClientWatch``
    reports the disconnect where there is one; otherwise a watcher task waits on ``receive``.
    """
    task = asyncio.current_task()
    assert task is not None, "called outside a task"
    watch = _Watch(task)
    client = scope.get("extensions", {}).get(CLIENT_WATCH)
    watcher: asyncio.Future[None] | None = None
    if isinstance(client, ClientWatch):
        client.start(watch.client_gone)
    else:
        watcher = asyncio.ensure_future(_disconnected(receive))
        watcher.add_done_callback(watch.watcher_done)
    try:
        return await work
    except asyncio.CancelledError:
        if watch.client_left and task.uncancel() == 0:
            raise ClientClosed(
                "the client closed the connection before the answer was ready"
            ) from None
        raise  # cancelled from elsewhere (the server is stopping): let it through
    finally:
        watch.active = False
        if watcher is None:
            client.stop()
        else:
            watcher.cancel()


class _Watch:
    """Cancels the request's task when its client leaves, unless the work ended first."""

    def __init__(self, task: asyncio.Task[Any]) -> None:
        self.task = task
        self.active = True
        self.client_left = False

    def client_gone(self) -> None:
        if self.active:
            self.client_left = True
            self.task.cancel()

    def watcher_done(self, watcher: asyncio.Future[None]) -> None:
        if watcher.cancelled():
            return
        watcher.exception()  # retrieved, so asyncio does not log it; either way the client is gone
        self.client_gone()


async def _disconnected(receive: Receive) -> None:
    while (await receive())["type"] != "http.disconnect":
        pass
