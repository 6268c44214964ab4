"""What happens to a model's rows after the pass: the one place vectors are normalised, and where
a sparse model's rows are pruned.

A request asks for its vectors whole or cut to their first ``dimensions`` components
(Matryoshka), unit length or not. ``finisher`` makes the one function that does both, in that
order, so a cut vector is normalised once, after the cut. ``/similarity`` takes unit vectors
from here and needs only a dot product.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence

import numpy as np

from app.core.model import Floats, Model, SparseVector

Finish = Callable[[Floats], Floats]


def l2_normalize(x: Floats) -> Floats:
    """Scale each row to unit length; an all-zero row stays zero."""
    norms = np.linalg.norm(x, axis=1, keepdims=True)
    unit: Floats = (x / np.maximum(norms, 1e-12)).astype(np.float32, copy=False)
    return unit


def finisher(*, normalize: bool, dimensions: int | None = None) -> Finish | None:
    """The post-processing a request asked for, or ``None`` for the vectors as they are."""
    if dimensions is None:
        return l2_normalize if normalize else None

    def finish(x: Floats) -> Floats:
        cut = np.ascontiguousarray(x[:, :dimensions])
        return l2_normalize(cut) if normalize else cut

    return finish


def dot_scores(source: Floats, targets: Floats) -> Floats:
    """Each row of ``targets`` dotted with ``source``: the cosine, for unit vectors."""
    scores: Floats = (targets @ source).astype(np.float32, copy=False)
    return scores


def encode_now(model: Model, texts: Sequence[str], *, prompt: str = "") -> Floats:
    """Unit vectors for ``texts`` in one pass, synchronously: for scripts and tests that check a
    model outside the service (the service goes through the engine and its batcher)."""
    return l2_normalize(model.run(model.tokenize(texts, truncate=True, prompt=prompt)))


def _sigmoid(x: Floats) -> Floats:
    out: Floats = (1.0 / (1.0 + np.exp(-x))).astype(np.float32, copy=False)
    return out


def _identity(x: Floats) -> Floats:
    return x


def _tanh(x: Floats) -> Floats:
    return np.tanh(x).astype(np.float32, copy=False)


# A reranker's score function over its logit, by the name its manifest records: what
# sentence-transformers' ``CrossEncoder.predict`` applies by default.
ACTIVATIONS: dict[str, Finish] = {"sigmoid": _sigmoid, "identity": _identity, "tanh": _tanh}


def scorer(activation: str | None, *, raw: bool) -> Finish:
    """A rerank pass's rows (one logit each) to one score per pair: the logit when ``raw``,
    else the model's activation of it."""
    apply = _identity if raw else ACTIVATIONS[activation or "identity"]

    def score(logits: Floats) -> Floats:
        return apply(np.ascontiguousarray(logits[:, 0]))

    return score


def sparse_pruner(*, threshold: float, top_k: int | None) -> Callable[[Floats], SparseVector]:
    """What a sparse request keeps of each row: its entries above ``threshold``, highest value
    first (ties by index), at most ``top_k`` of them. Runs on the worker, row by row, so that a
    request never holds a vocabulary-wide row per input."""

    def prune(row: Floats) -> SparseVector:
        kept = np.flatnonzero(row > threshold)
        values = row[kept]
        order = np.lexsort((kept, -values))
        if top_k is not None:
            order = order[:top_k]
        return SparseVector(kept[order].astype(np.int32), np.ascontiguousarray(values[order]))

    return prune
