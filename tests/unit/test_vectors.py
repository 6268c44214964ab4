from __future__ import annotations

import numpy as np

from app.backends.onnx.pooling import cls_pool, mean_pool, pool
from app.core.vectors import dot_scores, l2_normalize


def test_mean_pool_ignores_padding() -> None:
    hidden = np.array([[[1.0, 2.0], [3.0, 4.0], [100.0, 100.0]]], dtype=np.float32)
    mask = np.array([[1, 1, 0]], dtype=np.int64)
    assert np.allclose(mean_pool(hidden, mask), [[2.0, 3.0]])


def test_mean_pool_of_an_empty_mask_is_zero_not_nan() -> None:
    hidden = np.ones((1, 2, 3), dtype=np.float32)
    out = mean_pool(hidden, np.zeros((1, 2), dtype=np.int64))
    assert np.all(np.isfinite(out)) and np.allclose(out, 0.0)


def test_cls_pool_takes_the_first_token() -> None:
    hidden = np.arange(12, dtype=np.float32).reshape(2, 2, 3)
    assert np.array_equal(cls_pool(hidden, np.ones((2, 2), dtype=np.int64)), [[0, 1, 2], [6, 7, 8]])
    assert np.array_equal(pool("cls", hidden, np.ones((2, 2), dtype=np.int64))[1], [6, 7, 8])


def test_l2_normalize_gives_unit_rows_and_keeps_zero_rows() -> None:
    x = np.array([[3.0, 4.0], [0.0, 0.0]], dtype=np.float32)
    out = l2_normalize(x)
    assert np.allclose(out, [[0.6, 0.8], [0.0, 0.0]])
    assert out.dtype == np.float32


def test_dot_scores_of_unit_vectors_are_their_cosines() -> None:
    source = np.array([1.0, 0.0], dtype=np.float32)
    targets = l2_normalize(np.array([[5.0, 0.0], [0.0, 2.0], [-1.0, 1.0]], dtype=np.float32))
    assert np.allclose(dot_scores(source, targets), [1.0, 0.0, -np.sqrt(0.5)], atol=1e-6)
