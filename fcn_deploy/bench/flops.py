"""The model's arithmetic: FLOPs of a direct convolution, counted on the PyTorch model.

The benchmark divides them by the measured time for an achieved GFLOP/s, then by a peak
(:mod:`.peaks`) for the fraction of the machine an engine uses.  Counting the direct convolution
(not what a runtime actually executes: Winograd, fused or INT8 kernels) keeps one yardstick for
every engine of the same model.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

if TYPE_CHECKING:
    import torch


def count_flops(model: torch.nn.Module, height: int, width: int, batch: int = 1) -> float:
    """FLOPs (2 x multiply-adds) of the conv and deconv layers for one forward pass."""
    import torch

    total = [0.0]

    def conv_hook(module, inputs, output) -> None:
        kernel = module.kernel_size[0] * module.kernel_size[1]
        in_per_group = module.in_channels // module.groups
        if isinstance(module, torch.nn.ConvTranspose2d):
            positions = inputs[0].shape[0] * inputs[0].shape[2] * inputs[0].shape[3]
        else:
            positions = output.shape[0] * output.shape[2] * output.shape[3]
        total[0] += 2.0 * positions * in_per_group * kernel * module.out_channels

    hooks = [m.register_forward_hook(conv_hook) for m in model.modules() if isinstance(m, (torch.nn.Conv2d, torch.nn.ConvTranspose2d))]
    try:
        with torch.inference_mode():
            model(torch.zeros(batch, 3, height, width))
    finally:
        for hook in hooks:
            hook.remove()
    return total[0]
