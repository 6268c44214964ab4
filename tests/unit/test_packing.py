"""The packed graph's feed: every token once, in its row's order, and pooled back per row."""

from __future__ import annotations

import numpy as np
import pytest

from app.backends.onnx.packing import pack, pool_packed
from app.backends.onnx.pooling import pool
from app.core.model import TokenIds

ROWS = [TokenIds([101, 7, 102]), TokenIds([101, 102]), TokenIds([101, 5, 6, 8, 102])]


def test_tokens_go_end_to_end_with_their_positions() -> None:
    feed = pack(ROWS).feed
    assert feed["input_ids"].tolist() == [101, 7, 102, 101, 102, 101, 5, 6, 8, 102]
    assert feed["position_ids"].tolist() == [0, 1, 2, 0, 1, 0, 1, 2, 3, 4]
    assert feed["token_type_ids"].tolist() == [0] * 10
    assert feed["attention_mask"].tolist() == [
        [1, 1, 1, 0, 0],
        [1, 1, 0, 0, 0],
        [1, 1, 1, 1, 1],
    ]


def test_gather_and_scatter_are_inverse_on_the_tokens() -> None:
    packed = pack(ROWS)
    feed = packed.feed
    tokens = feed["input_ids"]
    slots = tokens[feed["gather_index"]]  # (rows, width), as the graph lays out attention
    mask = feed["attention_mask"].astype(bool)
    assert slots[mask].tolist() == tokens.tolist()
    assert slots.reshape(-1)[feed["scatter_index"]].tolist() == tokens.tolist()
    assert packed.starts.tolist() == [0, 3, 5] and packed.lengths.tolist() == [3, 2, 5]


@pytest.mark.parametrize("mode", ["mean", "cls", "max"])
@pytest.mark.parametrize("skips", [None, [0, 0, 0], [1, 0, 3], [2, 2, 5]])
def test_packed_pooling_equals_padded_pooling(mode: str, skips: list[int] | None) -> None:
    """With or without a prompt left out of the pooling (``skips``; a row may skip all its
    tokens, as a prompt that truncation kept alone would)."""
    packed = pack(ROWS)
    rng = np.random.default_rng(0)
    hidden = rng.standard_normal((10, 4)).astype(np.float32)
    padded = hidden[packed.feed["gather_index"]]  # padding slots hold other rows' values
    skip = None if skips is None else np.array(skips)
    mask = packed.feed["attention_mask"]
    expected = pool(mode, padded, mask, skip)  # type: ignore[arg-type]
    got = pool_packed(mode, hidden, packed, skip)  # type: ignore[arg-type]
    assert np.allclose(got, expected, atol=1e-6)


def test_pooling_leaves_the_skipped_tokens_out_as_sentence_transformers_does() -> None:
    hidden = np.arange(2 * 4 * 2, dtype=np.float32).reshape(2, 4, 2)
    mask = np.array([[1, 1, 1, 1], [1, 1, 1, 0]])
    skips = np.array([2, 1])
    assert pool("mean", hidden, mask, skips).tolist() == [[5, 6], [11, 12]]
    assert pool("max", hidden, mask, skips).tolist() == [[6, 7], [12, 13]]
    # CLS takes the first token left in, as sentence-transformers' argmax over the mask does.
    assert pool("cls", hidden, mask, skips).tolist() == [[4, 5], [10, 11]]
