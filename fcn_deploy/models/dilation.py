"""Shift-and-stitch and its equivalent, filter rarefaction (dilated convolution).

The FCN paper (section 3.2) gets dense output from a net of output stride ``f`` by running it on
``f*f`` shifted copies of the input and interlacing the outputs; it notes that the same result comes
from removing the stride and "rarefying" every later filter (dilating it by ``f``).  Both are here,
for sequential conv/pool nets, so a test can show they agree away from the borders (where zero
padding of the shifted copies and of the dilated layers differ).
"""

from __future__ import annotations

import copy

import torch
import torch.nn.functional as F
from torch import nn


def _pair(value) -> tuple[int, int]:
    return (value, value) if isinstance(value, int) else tuple(value)


def output_stride(net: nn.Sequential) -> int:
    """The product of the strides of ``net``'s conv and pooling layers (square strides only)."""
    stride = 1
    for layer in net:
        if isinstance(layer, (nn.Conv2d, nn.MaxPool2d, nn.AvgPool2d)):
            stride *= _pair(layer.stride)[0]
    return stride


def shift_and_stitch(net: nn.Module, f: int, x: torch.Tensor) -> torch.Tensor:
    """Dense output of a stride-``f`` net from ``f*f`` shifted inputs, interlaced.

    For every shift ``(dy, dx)`` with ``0 <= dy, dx < f`` the input is shifted so that pixel
    ``(dy, dx)`` becomes the origin (zero-filled at the far border), the net is run, and its output
    cell ``(i, j)`` is written to dense pixel ``(f*i + dy, f*j + dx)``.
    """
    n, _, height, width = x.shape
    pad_h, pad_w = (-height) % f, (-width) % f  # every shifted copy covers ceil(H/f) output rows
    out = None
    for dy in range(f):
        for dx in range(f):
            shifted = F.pad(x[:, :, dy:, dx:], (0, dx + pad_w, 0, dy + pad_h))
            y = net(shifted)
            if out is None:
                out = y.new_zeros(n, y.shape[1], height, width)
            rows = len(range(dy, height, f))
            cols = len(range(dx, width, f))
            out[:, :, dy::f, dx::f] = y[:, :, :rows, :cols]
    assert out is not None
    return out


def rarefy(net: nn.Sequential, f: int) -> nn.Sequential:
    """The filter-rarefaction version of ``net``: strides removed until ``f`` is used up, and every
    later conv and pooling window dilated by the removed factor (padding scaled to match).
    """
    net = copy.deepcopy(net)
    dilation, remaining = 1, f
    for layer in net:
        if isinstance(layer, nn.AvgPool2d) and _pair(layer.stride)[0] > 1:
            raise TypeError("rarefy: AvgPool2d has no dilation; use MaxPool2d or a strided conv instead")
        if not isinstance(layer, (nn.Conv2d, nn.MaxPool2d)):
            continue
        if dilation > 1:
            layer.dilation = (
                tuple(d * dilation for d in _pair(layer.dilation))
                if isinstance(layer, nn.Conv2d)
                else (_pair(layer.dilation)[0] * dilation)
            )
            layer.padding = (
                tuple(p * dilation for p in _pair(layer.padding)) if isinstance(layer, nn.Conv2d) else (_pair(layer.padding)[0] * dilation)
            )
        stride = _pair(layer.stride)[0]
        if stride > 1 and remaining > 1:
            if remaining % stride:
                raise ValueError(f"cannot remove a stride of {stride} from the remaining factor {remaining}")
            layer.stride = (1, 1) if isinstance(layer, nn.Conv2d) else 1
            dilation *= stride
            remaining //= stride
    if remaining != 1:
        raise ValueError(f"net has output stride {output_stride(net) * (f // remaining)}, less than f={f}")
    return net
