"""A direct path for the hottest request: ``POST /embed`` with a JSON body.

FastAPI's request handling (routing, dependency resolution, its exception layers, parsing with
``json`` and then validating Python objects) costs about as much CPU per request as the rest of
the server together, on the two cores that inference also needs. This middleware answers a
well-formed ``POST /embed`` itself: pydantic parses and validates the bytes in one step, and the
answer comes from the very function the FastAPI route calls (``embed_response``).

Anything else goes on to FastAPI unchanged: other routes, another content type, a server that
is not ready, and any body that does not validate, which FastAPI then answers with its usual,
tested error (the body is handed on as it arrived). It sits inside the request-id, CORS, API-key
and body-limit middleware, so all of those apply to it as to every route.
"""

from __future__ import annotations

from pydantic import ValidationError
from starlette.responses import Response
from starlette.routing import BaseRoute
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from app.api.errors import render_error
from app.api.middleware import replay
from app.api.routes.embeddings import embed_response
from app.api.schemas import EmbedRequest
from app.errors import ServiceError

PATH = "/embed"


class EmbedFastPath:
    def __init__(self, app: ASGIApp, route: BaseRoute) -> None:
        self.app = app
        self.route = route  # the FastAPI route it stands in for: metrics label it the same

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http" or scope["path"] != PATH or scope["method"] != "POST":
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
            request = EmbedRequest.model_validate_json(body)
        except ValidationError:
            await self.app(scope, replay(messages, then=receive), send)
            return
        scope["route"] = self.route
        response: Response
        try:
            response = await embed_response(models, request, scope, receive)
        except ServiceError as exc:
            response = render_error(exc, path=PATH)
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
