"""Optional initialisations that make short training runs converge faster (architecture unchanged)."""

from __future__ import annotations

import json

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


GROWABLE_KEYS = ("refiner_blocks", "guide_conditions", "guide_condition_scale")


def _plain(value):
    """A config value as JSON would write it (tuples and lists alike)."""
    return json.loads(json.dumps(value))


@torch.no_grad()
def grow_model(source: nn.Module, overrides: dict) -> nn.Module:
    """A larger copy of a trained model that computes exactly what ``source`` computes.

    ``overrides`` may only grow the model, so that capacity or inputs can be added to a trained model without
    starting over:

    - ``refiner_blocks.num_blocks`` raised: the blocks ``source`` has keep their weights, the new ones start as the
      identity (their last 1x1 conv zeroed, so the residual rule passes the input through);
    - ``guide_conditions`` extended (``source``'s list, or none, followed by new names): the encoder's first conv
      gets one input channel per new condition, with zero weights, so the model starts by ignoring them;
      ``guide_condition_scale`` may be set with them, for a model that had none (a trained condition's scale is part
      of what its weights compute).

    Other keys may only repeat what ``source`` already is (so that a recipe continuing a model can extend the recipe
    that made it); anything else (other widths, fewer blocks) is a different architecture and is refused.
    """
    config = {k: v for k, v in source.config.items() if not k.startswith("_")}
    other = sorted(k for k in set(overrides) - set(GROWABLE_KEYS) if _plain(overrides[k]) != _plain(config.get(k)))
    if other:
        raise ValueError(f"model.overrides with model.init_from can only grow {GROWABLE_KEYS}, got {other}")
    old = config.get("refiner_blocks")
    new = {**(old or {}), **overrides.get("refiner_blocks", {})}
    changed = sorted(k for k in new if old is None or new[k] != old.get(k))
    if "refiner_blocks" in overrides and (old is None or set(changed) - {"num_blocks"}
                                          or new["num_blocks"] < old["num_blocks"]):
        raise ValueError(f"model.overrides.refiner_blocks with model.init_from can only raise num_blocks of the "
                         f"initial model's refiner {old}, got {overrides['refiner_blocks']}")
    old_conditions = list(config.get("guide_conditions") or [])
    conditions = list(overrides.get("guide_conditions") or old_conditions)
    if conditions[:len(old_conditions)] != old_conditions:
        raise ValueError(f"model.overrides.guide_conditions with model.init_from can only add conditions after the "
                         f"initial model's {old_conditions}, got {conditions}")
    scale = overrides.get("guide_condition_scale", config.get("guide_condition_scale", 1.0))
    if old_conditions and scale != config.get("guide_condition_scale", 1.0):
        raise ValueError(f"model.overrides.guide_condition_scale with model.init_from can only be set for a model "
                         f"without guide conditions; this one has {old_conditions}")
    model = type(source)(**{**config, "refiner_blocks": new if old is not None else None,
                            "guide_conditions": conditions or None, "guide_condition_scale": scale})
    state = dict(source.state_dict())
    first = "encoder.block_0.blocks.0.conv.0.weight"  # [C_out, C_in, 3, 3]: C_in = RGB + conditions
    grown = model.state_dict()[first].clone().zero_()
    grown[:, :state[first].shape[1]] = state[first]
    state[first] = grown
    missing, unexpected = model.load_state_dict(state, strict=False)
    new_blocks = [f"refiner.blocks.{i}." for i in range(old["num_blocks"], new["num_blocks"])] if old else []
    if unexpected or any(not k.startswith(tuple(new_blocks)) for k in missing):
        raise ValueError(f"cannot grow the model: missing {missing}, unexpected {unexpected}")
    for block in model.refiner.blocks[old["num_blocks"]:] if old else ():
        block.conv[-1].weight.zero_()
        block.conv[-1].bias.zero_()
    return model
