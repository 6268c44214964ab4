"""Responses serialised with orjson, and the one way a model's outcome becomes a response.

On two cores, serialisation sits on the hot path: FastAPI's default path validates the return
value against the response model and encodes it with ``json``; routes here build the payload
themselves (its schema is still declared with ``response_model``) and orjson encodes float32
arrays natively.

``outcome_response`` is where a route turns an engine's ``Outcome`` into everything around the
body: the ``x-queue-time`` and ``x-inference-time`` headers (ms), the per-model input and token
counters, and the access-log fields, which travel up with the response itself.
"""

from __future__ import annotations

from collections.abc import Iterable
from functools import cache
from typing import Any

import orjson
from starlette.responses import JSONResponse
from starlette.types import Receive, Scope, Send

from app.core.model import Outcome
from app.metrics import INPUTS, TOKENS
from app.transport.context import ACCESS_FIELDS


class FastJSONResponse(JSONResponse):
    """A JSON response that encodes NumPy arrays without a Python-list round trip."""

    def render(self, content: Any) -> bytes:
        return orjson.dumps(content, option=orjson.OPT_SERIALIZE_NUMPY)


class OutcomeResponse(FastJSONResponse):
    """A JSON response, or one whose ``body`` is given whole, that carries its access-log fields
    up to the request context, in its ``http.response.start`` message."""

    def __init__(
        self,
        content: Any,
        headers: dict[str, str],
        fields: dict[str, Any],
        *,
        body: bytes | None = None,
        media_type: str | None = None,
    ) -> None:
        self._given = body
        super().__init__(content, headers=headers, media_type=media_type)
        self.fields = fields

    def render(self, content: Any) -> bytes:
        return self._given if self._given is not None else super().render(content)

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        await send(
            {
                "type": "http.response.start",
                "status": self.status_code,
                "headers": self.raw_headers,
                ACCESS_FIELDS: self.fields,
            }
        )
        await send({"type": "http.response.body", "body": self.body})


def outcome_response(
    content: dict[str, Any] | list[Any],
    outcome: Outcome[Any],
    *,
    body: bytes | None = None,
    media_type: str | None = None,
    headers: dict[str, str] | None = None,
) -> OutcomeResponse:
    """The response for ``content``, which ``outcome`` produced: timing headers, metrics and the
    access-log fields all come from that one value. ``body``, when given, is sent instead of
    ``content`` as JSON (a binary answer), with ``media_type`` and extra ``headers``."""
    fields = counted(outcome)
    timing = {
        "x-queue-time": f"{fields['queue_ms']:.2f}",
        "x-inference-time": f"{fields['inference_ms']:.2f}",
    }
    return OutcomeResponse(
        content, {**timing, **(headers or {})}, fields, body=body, media_type=media_type
    )


def counted(outcome: Outcome[Any]) -> dict[str, Any]:
    """Count ``outcome``'s inputs and tokens under its model; its access-log fields."""
    inputs, tokens = len(outcome.token_counts), outcome.tokens
    inputs_total, tokens_total = _counters(outcome.model)
    inputs_total.inc(inputs)
    tokens_total.inc(tokens)
    return {
        "model": outcome.model,
        "inputs": inputs,
        "tokens": tokens,
        "queue_ms": round(outcome.queue_s * 1000, 2),
        "inference_ms": round(outcome.inference_s * 1000, 2),
    }


@cache
def _counters(model: str) -> tuple[Any, Any]:
    """The model's input and token counters, looked up once rather than on every request."""
    return INPUTS.labels(model), TOKENS.labels(model)


def open_series(models: Iterable[str]) -> None:
    """Create each model's counters at 0, so that a dashboard sees every served model before its
    first request."""
    for model in models:
        _counters(model)


def usage(outcome: Outcome[Any]) -> dict[str, int]:
    """OpenAI's ``usage`` object: every token fed to the model counts as a prompt token."""
    return {"prompt_tokens": outcome.tokens, "total_tokens": outcome.tokens}
