"""The unpadded ("packed") graph of a BERT encoder: dense layers see real tokens only.

In a padded batch every row is as long as the longest, and each dense layer works on the
padding too. The dense layers are 3.5 MFLOP per token and layer here, the attention core
4 x length x 384 FLOP: over 99% of the work is dense at STS-B's 14 tokens, about 90% at 256.
The packed graph takes the batch's tokens end to end, ``T`` of them, and runs embeddings, the
Q/K/V projection, the attention output and the feed-forward block on ``T x hidden``. Only the
attention core, ``softmax(QK^T)V``, needs rows: the graph gathers Q, K and V into
``rows x width`` there and scatters the result back, so it costs padding in that small part
only. text-embeddings-inference does the same on GPUs, where flash attention takes the rows'
boundaries (``cu_seqlens``) instead of indices.

Inputs (the engine builds them from the rows, ``app.engine.packing``)::

    input_ids, token_type_ids, position_ids  (T,)            each token, row after row
    gather_index                             (rows, width)   the packed index of each slot
    attention_mask                           (rows, width)   1 for a token, 0 for padding
    scatter_index                            (T,)            each token's slot in rows x width

Output ``last_hidden_state`` is ``(T, hidden)``; pooling happens in NumPy per row. Q, K and V
are one ``Linear`` with their weights side by side: one GEMM instead of three.
"""

from __future__ import annotations

import warnings
from collections.abc import Sequence
from pathlib import Path

import torch

from app.backends.onnx.packing import PACKED_INPUTS, pack
from app.core.model import Row


def packable(model: torch.nn.Module) -> bool:
    """Whether ``model`` is a BERT encoder this packed graph reproduces exactly: absolute
    position embeddings, self-attention only. Others keep the padded graph."""
    config = getattr(model, "config", None)
    return (
        config is not None
        and config.model_type == "bert"
        and getattr(config, "position_embedding_type", "absolute") == "absolute"
        and not config.is_decoder
        and not config.add_cross_attention
    )


class PackedBert(torch.nn.Module):
    """A ``BertModel``'s weights, run on packed tokens (see the module docstring)."""

    def __init__(self, bert: torch.nn.Module) -> None:
        super().__init__()
        config = bert.config
        self.embeddings = bert.embeddings
        self.layers = bert.encoder.layer
        self.heads = config.num_attention_heads
        self.head_size = config.hidden_size // config.num_attention_heads
        self.qkv = torch.nn.ModuleList()
        for layer in self.layers:
            attention = layer.attention.self
            projection = torch.nn.Linear(config.hidden_size, 3 * config.hidden_size)
            parts = (attention.query, attention.key, attention.value)
            projection.weight.data = torch.cat([p.weight for p in parts])
            projection.bias.data = torch.cat([p.bias for p in parts])
            self.qkv.append(projection)

    def forward(
        self,
        input_ids: torch.Tensor,
        token_type_ids: torch.Tensor,
        position_ids: torch.Tensor,
        gather_index: torch.Tensor,
        attention_mask: torch.Tensor,
        scatter_index: torch.Tensor,
    ) -> torch.Tensor:
        e = self.embeddings
        hidden = e.LayerNorm(
            e.word_embeddings(input_ids)
            + e.token_type_embeddings(token_type_ids)
            + e.position_embeddings(position_ids)
        )
        rows, width = gather_index.shape
        floor = torch.finfo(hidden.dtype).min
        bias = (1.0 - attention_mask.to(hidden.dtype))[:, None, None, :] * floor
        slots = gather_index.reshape(-1)
        for layer, qkv in zip(self.layers, self.qkv, strict=True):
            q, k, v = (
                qkv(hidden)[slots]
                .view(rows, width, 3, self.heads, self.head_size)
                .permute(2, 0, 3, 1, 4)
                .unbind(0)
            )
            scores = torch.matmul(q, k.transpose(2, 3)) * self.head_size**-0.5 + bias
            context = torch.matmul(scores.softmax(-1), v).transpose(1, 2)
            context = context.reshape(rows * width, -1)[scatter_index]
            out = layer.attention.output
            attended = out.LayerNorm(out.dense(context) + hidden)
            ff = layer.output
            hidden = ff.LayerNorm(ff.dense(layer.intermediate(attended)) + attended)
        return hidden


def export_packed(bert: torch.nn.Module, path: Path, sample: Sequence[Row], opset: int) -> None:
    """Trace ``PackedBert(bert)`` to ONNX at ``path``, from rows of unequal length."""
    arrays = pack(sample).feed  # the engine's own packing: both sides agree by construction
    tensors = tuple(torch.from_numpy(arrays[name]) for name in PACKED_INPUTS)
    tokens = {0: "tokens"}
    axes = {name: tokens for name in ("input_ids", "token_type_ids", "position_ids")}
    axes |= {"gather_index": {0: "rows", 1: "width"}, "attention_mask": {0: "rows", 1: "width"}}
    axes |= {"scatter_index": tokens, "last_hidden_state": tokens}
    with warnings.catch_warnings(), torch.no_grad():
        warnings.simplefilter("ignore")  # tracer chatter about shape-dependent Python branches
        torch.onnx.export(
            PackedBert(bert).eval(),
            tensors,
            str(path),
            input_names=list(PACKED_INPUTS),
            output_names=["last_hidden_state"],
            dynamic_axes=axes,
            opset_version=opset,
            do_constant_folding=True,
            dynamo=False,
        )
