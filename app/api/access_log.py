"""What an embedding request did, for its access-log line and its timing headers."""

from __future__ import annotations

from starlette.types import Scope

from app.engine.encoder import Embedded


def note_embedding(scope: Scope, model: str, embedded: Embedded) -> dict[str, str]:
    """Note the request's model, inputs, tokens, queue and inference time for the access log
    (in the request's state, where ``RequestContextMiddleware`` reads it); return the
    ``x-queue-time`` and ``x-inference-time`` headers (ms). The middleware adds ``x-total-time``."""
    queue_ms = embedded.queue_s * 1000
    inference_ms = embedded.inference_s * 1000
    scope.setdefault("state", {})["access"] = {
        "model": model,
        "inputs": len(embedded.token_counts),
        "tokens": sum(embedded.token_counts),
        "queue_ms": round(queue_ms, 2),
        "inference_ms": round(inference_ms, 2),
    }
    return {"x-queue-time": f"{queue_ms:.2f}", "x-inference-time": f"{inference_ms:.2f}"}
