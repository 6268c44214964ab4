"""Pooling: one vector per row from the graph's token vectors, in pure NumPy.

Normalisation is not done here but in the core (``app.core.vectors``), once per request."""

from __future__ import annotations

from typing import Literal

import numpy as np
from numpy.typing import NDArray

PoolingMode = Literal["mean", "cls"]
SUPPORTED_POOLING: tuple[PoolingMode, ...] = ("mean", "cls")

Floats = NDArray[np.float32]
Ints = NDArray[np.int64]


def mean_pool(hidden: Floats, mask: Ints) -> Floats:
    """Average the token vectors of each row over its attention mask (padding left out)."""
    m = mask.astype(hidden.dtype)
    summed = np.einsum("bs,bsh->bh", m, hidden)
    counts = np.maximum(m.sum(axis=1, keepdims=True), 1e-9)
    pooled: Floats = (summed / counts).astype(np.float32, copy=False)
    return pooled


def cls_pool(hidden: Floats, mask: Ints) -> Floats:
    """Take the first token's vector of each row (the [CLS] position)."""
    del mask
    return np.ascontiguousarray(hidden[:, 0, :], dtype=np.float32)


def pool(mode: PoolingMode, hidden: Floats, mask: Ints) -> Floats:
    """Pool ``hidden`` (batch, sequence, dim) into (batch, dim) as the model's pooling says."""
    if mode == "mean":
        return mean_pool(hidden, mask)
    if mode == "cls":
        return cls_pool(hidden, mask)
    raise ValueError(f"unsupported pooling mode {mode!r}")
