"""A transformers model as ``torch.onnx.export`` can trace it (torch, build time only)."""

from __future__ import annotations

import torch


class ByKeyword(torch.nn.Module):
    """transformers 5 models take keywords only; the exporter passes positional tensors. Gives
    the model output's ``output`` field (``last_hidden_state``, ``logits``)."""

    def __init__(self, model: torch.nn.Module, input_names: list[str], output: str) -> None:
        super().__init__()
        self.model = model
        self.input_names = input_names
        self.output = output

    def forward(self, *tensors: torch.Tensor) -> torch.Tensor:
        out = self.model(**dict(zip(self.input_names, tensors, strict=True)))
        return getattr(out, self.output)
