"""The SPLADE graph: a masked-language model with its pooling inside, ``(rows, vocabulary)`` out.

A SPLADE vector holds, per vocabulary entry, the maximum over the text's tokens of
``log(1 + ReLU(logit))``, padding left out. ``log(1 + ReLU(x))`` never decreases, so the maximum
of it is it of the maximum: the graph takes each row's maximum logit per entry first and applies
``log1p(relu(.))`` to ``(rows, vocabulary)`` only. The session never returns, and the graph
never applies an elementwise op to, ``tokens x vocabulary`` beyond the one projection that makes
the logits.

On the packed layout (``packed_graph``; BERT with absolute positions) no padding reaches the
vocabulary projection, which dominates a small SPLADE model's cost. Each row's maximum is one
``ScatterND`` with ``reduction="max"`` (ONNX opset 18) over the packed tokens, indexed by row:
the index is ``(tokens, 1)``, not ``(tokens, vocabulary)``. Other models keep the padded layout,
where padding is set to 0 (no logit can raise the maximum above its own row's) before the max.
"""

from __future__ import annotations

import warnings
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import torch
from packed_graph import PackedBert

from app.backends.onnx.packing import PACKED_INPUTS, pack
from app.core.model import Row

OPSET = 18  # ScatterND's max reduction
OUTPUT = "sparse_embedding"


class _RowMax(torch.autograd.Function):
    """``data[rows[i]] = max(data[rows[i]], updates[i])``, exported as one ``ScatterND``."""

    @staticmethod
    def forward(ctx: Any, data: torch.Tensor, rows: torch.Tensor, updates: torch.Tensor) -> Any:
        return data.index_reduce(0, rows[:, 0], updates, "amax", include_self=True)

    @staticmethod
    def symbolic(g: Any, data: Any, rows: Any, updates: Any) -> Any:
        return g.op("ScatterND", data, rows, updates, reduction_s="max")


def splade(maximum: torch.Tensor) -> torch.Tensor:
    """The SPLADE weight of each row's maximum logit."""
    return torch.log1p(torch.relu(maximum))


class PackedSplade(torch.nn.Module):
    """A ``BertForMaskedLM`` on packed tokens, pooled SPLADE's way per row."""

    def __init__(self, mlm: torch.nn.Module) -> None:
        super().__init__()
        self.encoder = PackedBert(mlm.bert)
        self.head = mlm.cls

    def forward(self, *packed: torch.Tensor) -> torch.Tensor:
        """``packed`` are the packed graph's inputs, in ``PACKED_INPUTS`` order."""
        inputs = dict(zip(PACKED_INPUTS, packed, strict=True))
        logits = self.head(self.encoder(*packed))  # (tokens, vocabulary)
        rows, width = inputs["gather_index"].shape
        row_of_token = (inputs["scatter_index"] // width)[:, None]
        floor = torch.zeros(rows, logits.shape[1], dtype=logits.dtype)  # relu's floor
        return splade(_RowMax.apply(floor, row_of_token, logits))


class PaddedSplade(torch.nn.Module):
    """Any masked-language model on padded rows: padding set to 0, then the max per row."""

    def __init__(self, mlm: torch.nn.Module, input_names: Sequence[str]) -> None:
        super().__init__()
        self.mlm = mlm
        self.input_names = list(input_names)

    def forward(self, *tensors: torch.Tensor) -> torch.Tensor:
        inputs = dict(zip(self.input_names, tensors, strict=True))
        logits = self.mlm(**inputs).logits  # (rows, width, vocabulary)
        mask = inputs["attention_mask"][:, :, None].to(logits.dtype)
        return splade((logits * mask).amax(dim=1))


def export_packed_splade(mlm: torch.nn.Module, path: Path, sample: Sequence[Row]) -> None:
    """Trace ``PackedSplade(mlm)`` to ONNX at ``path``, from rows of unequal length."""
    arrays = pack(sample).feed
    tensors = tuple(torch.from_numpy(arrays[name]) for name in PACKED_INPUTS)
    tokens = {0: "tokens"}
    axes = {name: tokens for name in ("input_ids", "token_type_ids", "position_ids")}
    axes |= {"gather_index": {0: "rows", 1: "width"}, "attention_mask": {0: "rows", 1: "width"}}
    axes |= {"scatter_index": tokens, OUTPUT: {0: "rows"}}
    _export(PackedSplade(mlm), tensors, path, list(PACKED_INPUTS), axes)


def export_padded_splade(
    mlm: torch.nn.Module, path: Path, sample: dict[str, torch.Tensor], input_names: list[str]
) -> None:
    """Trace ``PaddedSplade(mlm)`` to ONNX at ``path``, dynamic rows and width."""
    tensors = tuple(sample[name] for name in input_names)
    axes = {name: {0: "rows", 1: "width"} for name in input_names} | {OUTPUT: {0: "rows"}}
    _export(PaddedSplade(mlm, input_names), tensors, path, input_names, axes)


def _export(
    module: torch.nn.Module,
    tensors: tuple[torch.Tensor, ...],
    path: Path,
    input_names: list[str],
    axes: dict[str, dict[int, str]],
) -> None:
    with warnings.catch_warnings(), torch.no_grad():
        warnings.simplefilter("ignore")  # tracer chatter about shape-dependent Python branches
        torch.onnx.export(
            module.eval(),
            tensors,
            str(path),
            input_names=input_names,
            output_names=[OUTPUT],
            dynamic_axes=axes,
            opset_version=OPSET,
            do_constant_folding=True,
            dynamo=False,
        )
