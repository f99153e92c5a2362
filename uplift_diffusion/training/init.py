"""Optional initialisations that make short training runs converge faster (architecture unchanged)."""

from __future__ import annotations

import torch
from torch import nn

from ..blocks import BlockGroup


@torch.no_grad()
def identity_refiner_init(model: nn.Module) -> None:
    """Start the refiner (VAE presets) as the identity on the Local Attender's output.

    The last 1x1 conv of every refiner block is zeroed (each block then passes its input through the residual
    rule) and ``refiner_out`` copies the first ``in_channels`` channels, which hold the attender output. The model
    therefore starts from the Local Attender's upsampling and learns the refinement as a residual; every weight
    still receives gradients. A model without a refiner is left unchanged.
    """
    refiner: BlockGroup | None = getattr(model, "refiner", None)
    if refiner is None:
        return
    for block in refiner.blocks:
        last = block.conv[-1]  # [C_out, C_out, 1, 1]
        last.weight.zero_()
        last.bias.zero_()
    out = model.refiner_out  # Conv2d(width, in_channels, 1)
    c = out.out_channels
    out.weight.zero_()
    out.weight[:, :c, 0, 0] = torch.eye(c)
    out.bias.zero_()
