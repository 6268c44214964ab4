"""Responses serialised with orjson: NumPy vectors go straight to JSON bytes.

On two cores, serialisation sits on the hot path: FastAPI's default path validates the return
value against the response model and encodes it with ``json``; routes here build the payload
themselves (its schema is still declared with ``response_model``) and orjson encodes float32
arrays natively.
"""

from __future__ import annotations

from typing import Any

import orjson
from starlette.responses import JSONResponse


class FastJSONResponse(JSONResponse):
    """A JSON response that encodes NumPy arrays without a Python-list round trip."""

    def render(self, content: Any) -> bytes:
        return orjson.dumps(content, option=orjson.OPT_SERIALIZE_NUMPY)
