"""The LLM's output head on CPU in fp32, its weight reordered once for oneDNN's GEMM.

A batched decode step multiplies a few rows (one per running request) by the output head,
the widest matrix of a small LLM (49,152 x 576 in SmolLM2-135M, a fifth of its weights).
MKL's GEMM of the plain layout is slow there at 2-16 rows: at 8 rows the head took 36-43 ms
against 15-16 ms at one row on the 2-core AVX2 development machine.  oneDNN, given the
weight reordered once into its own blocked layout (``torch.ops.mkldnn._reorder_linear_weight``,
the packing PyTorch's own compiler uses for CPU linears), took 23-25 ms; see
docs/PERFORMANCE.md.  At one row the plain weight is at least as fast, so one-row inputs
keep it.  (The MLP's projections gain less per byte: not packed.)

The packed copy is the engine's own: the model's module is left as it is (others, such as
``generate``, may use it), so the head's weight takes memory twice (113 MB for SmolLM2-135M).
Used where every condition holds: CPU, fp32, oneDNN built in, the private ops present, and
a packed product equal to the plain one within float rounding on a probe (else the engine
runs the model's own modules).
"""

from __future__ import annotations

import logging

import torch
from torch import nn
import torch.nn.functional as F

log = logging.getLogger(__name__)

ROWS_HINT = 8           # the batch size oneDNN picks the layout for (a decode step's rows)


class PackedLinear(nn.Module):
    """``linear`` with its weight reordered for oneDNN: inputs of 2 or more rows (all
    leading dimensions together) use the packed copy, one row the plain weight."""

    def __init__(self, linear: nn.Linear) -> None:
        super().__init__()
        self.linear = linear
        self.bias = linear.bias
        with torch.inference_mode():
            self.packed = torch.ops.mkldnn._reorder_linear_weight(linear.weight.detach(),
                                                                  ROWS_HINT)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        rows = x.reshape(-1, x.shape[-1])
        if rows.shape[0] < 2:
            return self.linear(x)
        out = torch.ops.mkldnn._linear_pointwise(rows, self.packed, self.bias, "none", [], "")
        return out.reshape(*x.shape[:-1], out.shape[-1])


def usable(weight: torch.Tensor) -> bool:
    """Whether packing applies to a model with this weight (see the module docstring)."""
    if weight.device.type != "cpu" or weight.dtype != torch.float32:
        return False
    if not torch.backends.mkldnn.is_available():
        return False
    mkldnn = torch.ops.mkldnn
    if not (hasattr(mkldnn, "_reorder_linear_weight") and hasattr(mkldnn, "_linear_pointwise")):
        return False
    try:
        probe = nn.Linear(64, 96)
        x = torch.randn(ROWS_HINT, 64, generator=torch.Generator().manual_seed(0))
        with torch.inference_mode():
            packed = PackedLinear(probe)(x)
            return torch.allclose(packed, F.linear(x, probe.weight, probe.bias),
                                  rtol=1e-4, atol=1e-5)
    except RuntimeError as exc:           # a build whose ops refuse this input
        log.info("oneDNN packed weights not used: %s", exc)
        return False
