"""A direct path for the hottest route: a ``POST`` with a JSON body, answered without FastAPI.

FastAPI's request handling (routing, dependency resolution, its exception layers, parsing with
``json`` and then validating Python objects) costs about as much CPU per request as the rest of
the server together, on the cores that inference also needs (docs/design.md has the figures).
``DirectRoute`` stands in front of FastAPI for one method and path: pydantic parses and
validates the body's bytes in one step, and the route's own answer function, the one that the
FastAPI route calls too, makes the response.

Anything else goes on to FastAPI unchanged: other routes, another content type, a server that
is not ready, and any body that does not validate, which FastAPI then answers with its usual
error (the body is handed on as it arrived). It sits inside the request context, CORS, the
error guard, the API-key and body-limit guards, so all of those apply to it as to every route.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from typing import Any

from pydantic import BaseModel, ValidationError
from starlette.responses import Response
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from app.api.errors import render_error
from app.errors import ServiceError

Answer = Callable[[Any, Any, Scope, Receive], Awaitable[Response]]
"""``answer(models, body, scope, receive)``: the route's response for a validated body."""


def replay(messages: list[Message], then: Receive | None = None) -> Receive:
    """A ``receive`` that hands out ``messages`` first, then defers to ``then``."""
    pending = list(messages)

    async def receive() -> Message:
        if pending:
            return pending.pop(0)
        if then is not None:
            return await then()
        return {"type": "http.disconnect"}

    return receive


class DirectRoute:
    """Answers ``method path`` with ``answer`` when the body is JSON that ``schema`` accepts.

    ``path`` is also the route template that the request metrics and the access log see, the
    same as FastAPI's route for the same path gives them."""

    def __init__(
        self,
        app: ASGIApp,
        *,
        method: str,
        path: str,
        schema: type[BaseModel],
        answer: Answer,
    ) -> None:
        self.app = app
        self.method = method
        self.path = path
        self.schema = schema
        self.answer = answer

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http" or scope["path"] != self.path or scope["method"] != self.method:
            await self.app(scope, receive, send)
            return
        models = scope.get("state", {}).get("models")
        if models is None or not _is_json(scope):
            await self.app(scope, receive, send)
            return
        body, messages = await _read_body(receive)
        if body is None:  # the client left mid-body
            await self.app(scope, replay(messages, then=receive), send)
            return
        try:
            request = self.schema.model_validate_json(body)
        except ValidationError:
            await self.app(scope, replay(messages, then=receive), send)
            return
        scope["route"] = self  # labels the metrics and the access log with self.path
        response: Response
        try:
            response = await self.answer(models, request, scope, receive)
        except ServiceError as exc:
            response = render_error(exc, path=self.path)
        await response(scope, receive, send)


def _is_json(scope: Scope) -> bool:
    for name, value in scope["headers"]:
        if name == b"content-type":
            return bytes(value).split(b";")[0].strip().lower() == b"application/json"
    return False


async def _read_body(receive: Receive) -> tuple[bytes | None, list[Message]]:
    """The whole body, and the messages it came in (to hand on unchanged); ``None`` if the
    client disconnected first."""
    messages: list[Message] = []
    while True:
        message = await receive()
        messages.append(message)
        if message["type"] != "http.request":
            return None, messages
        if not message.get("more_body", False):
            break
    if len(messages) == 1:
        return message.get("body", b""), messages
    return b"".join(m.get("body", b"") for m in messages), messages
