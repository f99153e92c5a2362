"""Tolerances and helpers shared by the fast-path tests (test_fast_paths.py, test_cpu_backend.py)."""

import torch

# The channels-last path changes only the summation order of the convs and norms (float rounding).
EXACT = dict(rtol=1e-5, atol=1e-5)
# Stated tolerance of the opt-in bfloat16 path (8-bit mantissa): max error / max |output| of a whole model.
BF16_RELATIVE = 5e-2


def randomise_batch_norms(module):
    """Random statistics and affine parameters in every BatchNorm2d (the default ones make folding trivial)."""
    for m in module.modules():
        if isinstance(m, torch.nn.BatchNorm2d):
            m.running_mean.normal_()
            m.running_var.uniform_(0.5, 2.0)
            m.weight.data.normal_()
            m.bias.data.normal_()


def relative_error(a, b):
    """max |a - b| / max |b| (of the whole tensors)."""
    return ((a.float() - b.float()).abs().max() / b.float().abs().max()).item()
