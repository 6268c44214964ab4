"""Pooling: one vector per row from the graph's token vectors, in pure NumPy, as
sentence-transformers' ``Pooling`` module does it.

A row may leave its first tokens out (``skips``): a prompt that the model's pooling excludes
(``include_prompt: false``). CLS pooling then takes the first token left in, as
sentence-transformers does. Normalisation is not done here but in the core
(``app.core.vectors``), once per request."""

from __future__ import annotations

from typing import Literal

import numpy as np
from numpy.typing import NDArray

PoolingMode = Literal["mean", "cls", "max"]
SUPPORTED_POOLING: tuple[PoolingMode, ...] = ("mean", "cls", "max")

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
    """Take each row's first token in the mask (the [CLS] position unless a prompt is left
    out)."""
    first = mask.argmax(axis=1)
    return np.ascontiguousarray(hidden[np.arange(len(hidden)), first], dtype=np.float32)


def max_pool(hidden: Floats, mask: Ints) -> Floats:
    """The largest value of each dimension over the row's tokens in the mask."""
    masked = np.where(mask[:, :, None] > 0, hidden, -np.inf)
    return np.ascontiguousarray(masked.max(axis=1), dtype=np.float32)


POOLS = {"mean": mean_pool, "cls": cls_pool, "max": max_pool}


def pool(mode: PoolingMode, hidden: Floats, mask: Ints, skips: Ints | None = None) -> Floats:
    """Pool ``hidden`` (batch, sequence, dim) into (batch, dim) as the model's pooling says,
    each row's first ``skips`` tokens left out."""
    if skips is not None:
        mask = np.where(np.arange(mask.shape[1]) < skips[:, None], 0, mask)
    return POOLS[mode](hidden, mask)
