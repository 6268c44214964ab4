"""The feed of a packed graph: a pass's tokens end to end, and where each one sits in its row.

``scripts/packed_graph.py`` exports the graph and draws its inputs; this builds them for a pass
of rows in NumPy (docs/packed-graph.md) and pools the graph's per-token
output back into one vector per row. Every row holds at least one token: [CLS] and [SEP] for a
text, and a token-id input is never empty.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from itertools import chain

import numpy as np

from app.backends.onnx.pooling import Floats, Ints, PoolingMode
from app.core.model import Row

PACKED_INPUTS = (
    "input_ids",
    "token_type_ids",
    "position_ids",
    "gather_index",
    "attention_mask",
    "scatter_index",
)
PACKED_INPUT = "scatter_index"  # the input that marks a graph as packed


@dataclass(frozen=True, slots=True)
class Packed:
    """One pass's packed inputs, by graph input name, and each row's start and length."""

    feed: dict[str, Ints]
    starts: Ints
    lengths: Ints


def pack(rows: Sequence[Row]) -> Packed:
    """The packed graph's inputs for ``rows``."""
    ids_of = [row.ids for row in rows]
    lengths = np.fromiter(map(len, ids_of), np.int64, len(rows))
    total = int(lengths.sum())
    width = int(lengths.max())
    starts = np.cumsum(lengths) - lengths
    columns = np.arange(width, dtype=np.int64)
    mask = columns < lengths[:, None]  # (rows, width): True on a token, False on padding
    scatter = np.flatnonzero(mask)  # row-major, the same order as the packed tokens
    types = chain.from_iterable(row.type_ids for row in rows)
    feed = {
        "input_ids": np.fromiter(chain.from_iterable(ids_of), np.int64, total),
        "token_type_ids": np.fromiter(types, np.int64, total),
        "position_ids": scatter % width,
        "gather_index": np.where(mask, starts[:, None] + columns, 0),
        "attention_mask": mask.astype(np.int64),
        "scatter_index": scatter,
    }
    return Packed(feed, starts, lengths)


def pool_packed(
    mode: PoolingMode, hidden: Floats, packed: Packed, skips: Ints | None = None
) -> Floats:
    """Pool the packed output ``hidden`` (tokens, dim) into one vector per row, each row's first
    ``skips`` tokens left out (``pooling.pool``)."""
    starts, lengths = packed.starts, packed.lengths
    if skips is not None:  # a token is kept where it is past its row's skip
        position = np.arange(len(hidden)) - np.repeat(starts, lengths)
        keep = position >= np.repeat(skips, lengths)
        counts = np.add.reduceat(keep.astype(np.float32), starts)
    if mode == "mean":
        if skips is None:
            sums = np.add.reduceat(hidden, starts, axis=0)
            pooled: Floats = (sums / lengths[:, None]).astype(np.float32, copy=False)
            return pooled
        sums = np.add.reduceat(hidden * keep[:, None], starts, axis=0)
        return (sums / np.maximum(counts, 1e-9)[:, None]).astype(np.float32, copy=False)
    if mode == "cls":
        # A row whose every token is skipped gives its first, as argmax of an empty mask does.
        first = starts if skips is None else np.where(skips < lengths, starts + skips, starts)
        return np.ascontiguousarray(hidden[first], dtype=np.float32)
    if mode == "max":
        kept = hidden if skips is None else np.where(keep[:, None], hidden, -np.inf)
        return np.ascontiguousarray(np.maximum.reduceat(kept, starts, axis=0), dtype=np.float32)
    raise ValueError(f"unsupported pooling mode {mode!r}")
