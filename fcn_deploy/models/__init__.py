"""The FCN model family and its registry.

``build(name, num_classes=...)`` makes any architecture; ``names()`` lists them; ``spec(name)`` gives
what later stages need to know without building it (minimum input size, output stride, family).
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from torch import nn

from ..errors import FcnDeployError
from .dilation import rarefy, shift_and_stitch
from .resnet import FCN8sResNet18, FCNResNet, fcn8s_resnet18, fcn_resnet50, fcn_resnet101
from .upsample import BilinearUpsample, bilinear_kernel
from .vgg import FCNVGG16, convolutionalize, fcn8s_vgg16, fcn16s_vgg16, fcn32s_vgg16, fcn_from_vgg_classifier

__all__ = [
    "ArchSpec", "build", "names", "spec", "count_parameters",
    "FCNVGG16", "FCNResNet", "FCN8sResNet18", "BilinearUpsample", "bilinear_kernel",
    "convolutionalize", "fcn_from_vgg_classifier", "shift_and_stitch", "rarefy",
]  # fmt: skip


@dataclass(frozen=True)
class ArchSpec:
    """What the toolkit knows about an architecture before building it."""

    name: str
    builder: Callable[..., nn.Module]
    family: str
    description: str
    #: Coarsest feature stride (the score map's cell size before upsampling).
    output_stride: int
    #: Smallest supported input side.  Every architecture here produces an input-sized output for
    #: any side >= 1 (VGG thanks to the pad-100 and crop design, ResNet by ceil-mode strides and
    #: crops/resize), but below one coarsest cell (32 px) the top layers see mostly padding; 32 is the
    #: supported minimum and the default engine profile's min.
    min_size: int = 32
    defaults: dict[str, Any] = field(default_factory=dict)


_REGISTRY: dict[str, ArchSpec] = {
    spec.name: spec
    for spec in [
        ArchSpec("fcn32s-vgg16", fcn32s_vgg16, "vgg", "FCN-32s, VGG16 (paper, Caffe reference)", 32),
        ArchSpec("fcn16s-vgg16", fcn16s_vgg16, "vgg", "FCN-16s, VGG16, pool4 skip", 32),
        ArchSpec("fcn8s-vgg16", fcn8s_vgg16, "vgg", "FCN-8s, VGG16, pool4+pool3 skips", 32),
        ArchSpec("fcn-resnet50", fcn_resnet50, "resnet", "torchvision FCN: dilated ResNet-50 (OS 8) + FCNHead", 8),
        ArchSpec("fcn-resnet101", fcn_resnet101, "resnet", "torchvision FCN: dilated ResNet-101 (OS 8) + FCNHead", 8),
        ArchSpec("fcn8s-resnet18", fcn8s_resnet18, "resnet", "light FCN-8s skip net on ResNet-18 (CPU default)", 32),
    ]
}


def names() -> list[str]:
    return list(_REGISTRY)


def spec(name: str) -> ArchSpec:
    try:
        return _REGISTRY[name]
    except KeyError:
        raise FcnDeployError(f"unknown architecture {name!r}; choose one of: {', '.join(names())}") from None


def build(name: str, num_classes: int = 21, **kwargs: Any) -> nn.Module:
    """Build architecture ``name`` with ``num_classes`` outputs (keyword arguments go to its builder)."""
    arch = spec(name)
    try:
        return arch.builder(num_classes=num_classes, **{**arch.defaults, **kwargs})
    except TypeError as exc:
        raise FcnDeployError(f"{name}: bad builder option ({exc})") from exc


def count_parameters(model: nn.Module) -> int:
    return sum(p.numel() for p in model.parameters())
