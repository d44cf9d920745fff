"""FCNs on ResNet: torchvision's dilated FCN-ResNet50/101, and a light FCN-8s-style skip net on ResNet-18.

The trunk is built from torchvision's own ``BasicBlock``/``Bottleneck`` with torchvision's module
names, so ``fcn_resnet50/101`` checkpoints (``backbone.*``, ``classifier.*``, ``aux_classifier.*``)
and ImageNet ResNet-18 backbones load as they are.  A ``width`` multiplier makes the tiny models
the tests export; ``width=1`` is the standard network.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn
from torchvision.models.resnet import BasicBlock, Bottleneck

from .upsample import BilinearUpsample, crop_like

_DEPTHS = {18: (BasicBlock, [2, 2, 2, 2]), 50: (Bottleneck, [3, 4, 6, 3]), 101: (Bottleneck, [3, 4, 23, 3])}


class ResNetTrunk(nn.Module):
    """torchvision's ResNet without ``avgpool``/``fc``; returns layer2, layer3 and layer4 features.

    ``dilate`` replaces the strides of layer2/3/4 with dilation (torchvision's
    ``replace_stride_with_dilation``), which is the paper's filter rarefaction.
    """

    def __init__(self, depth: int = 50, width: float = 1.0, dilate: tuple[bool, bool, bool] = (False, False, False)):
        super().__init__()
        block, layers = _DEPTHS[depth]
        base = max(1, round(64 * width))
        self.inplanes, self.dilation = base, 1
        self.conv1 = nn.Conv2d(3, base, 7, stride=2, padding=3, bias=False)
        self.bn1 = nn.BatchNorm2d(base)
        self.relu = nn.ReLU(inplace=True)
        self.maxpool = nn.MaxPool2d(3, stride=2, padding=1)
        self.layer1 = self._make_layer(block, base, layers[0])
        self.layer2 = self._make_layer(block, base * 2, layers[1], stride=2, dilate=dilate[0])
        self.layer3 = self._make_layer(block, base * 4, layers[2], stride=2, dilate=dilate[1])
        self.layer4 = self._make_layer(block, base * 8, layers[3], stride=2, dilate=dilate[2])
        self.channels = [base * 2 * block.expansion, base * 4 * block.expansion, base * 8 * block.expansion]
        for module in self.modules():
            if isinstance(module, nn.Conv2d):
                nn.init.kaiming_normal_(module.weight, mode="fan_out", nonlinearity="relu")

    def _make_layer(self, block, planes: int, blocks: int, stride: int = 1, dilate: bool = False) -> nn.Sequential:
        # Mirrors torchvision.models.resnet.ResNet._make_layer (same module names and order).
        previous_dilation = self.dilation
        if dilate:
            self.dilation *= stride
            stride = 1
        downsample = None
        if stride != 1 or self.inplanes != planes * block.expansion:
            downsample = nn.Sequential(
                nn.Conv2d(self.inplanes, planes * block.expansion, 1, stride=stride, bias=False),
                nn.BatchNorm2d(planes * block.expansion),
            )
        layers = [block(self.inplanes, planes, stride, downsample, dilation=previous_dilation)]
        self.inplanes = planes * block.expansion
        for _ in range(1, blocks):
            layers.append(block(self.inplanes, planes, dilation=self.dilation))
        return nn.Sequential(*layers)

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        x = self.maxpool(self.relu(self.bn1(self.conv1(x))))
        c2 = self.layer2(self.layer1(x))
        c3 = self.layer3(c2)
        return c2, c3, self.layer4(c3)


class FCNHead(nn.Sequential):
    """torchvision's FCNHead: conv3x3 to in/4, BatchNorm, ReLU, Dropout(0.1), conv1x1 to classes."""

    def __init__(self, in_channels: int, num_classes: int):
        inter = in_channels // 4
        super().__init__(
            nn.Conv2d(in_channels, inter, 3, padding=1, bias=False),
            nn.BatchNorm2d(inter),
            nn.ReLU(),
            nn.Dropout(0.1),
            nn.Conv2d(inter, num_classes, 1),
        )


class FCNResNet(nn.Module):
    """torchvision's FCN: dilated ResNet (output stride 8), FCNHead, bilinear resize to the input.

    ``aux=True`` adds the auxiliary head on layer3 (used for the training loss only).
    """

    def __init__(self, num_classes: int = 21, depth: int = 50, aux: bool = False, width: float = 1.0):
        super().__init__()
        self.backbone = ResNetTrunk(depth, width, dilate=(False, True, True))
        self.classifier = FCNHead(self.backbone.channels[2], num_classes)
        self.aux_classifier = FCNHead(self.backbone.channels[1], num_classes) if aux else None

    def forward_with_aux(self, image: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor | None]:
        size = image.shape[-2:]
        _, c3, c4 = self.backbone(image)
        out = F.interpolate(self.classifier(c4), size=size, mode="bilinear", align_corners=False)
        aux = None
        if self.aux_classifier is not None:
            aux = F.interpolate(self.aux_classifier(c3), size=size, mode="bilinear", align_corners=False)
        return out, aux

    def forward(self, image: torch.Tensor) -> torch.Tensor:
        size = image.shape[-2:]
        _, _, c4 = self.backbone(image)
        return F.interpolate(self.classifier(c4), size=size, mode="bilinear", align_corners=False)


def fcn_resnet50(num_classes: int = 21, aux: bool = False, width: float = 1.0) -> FCNResNet:
    return FCNResNet(num_classes, depth=50, aux=aux, width=width)


def fcn_resnet101(num_classes: int = 21, aux: bool = False, width: float = 1.0) -> FCNResNet:
    return FCNResNet(num_classes, depth=101, aux=aux, width=width)


class FCN8sResNet18(nn.Module):
    """A light FCN-8s-style skip net on ResNet-18: the CPU-friendly embedded default.

    Scores from layer4 (stride 32) are upsampled 2x and fused with layer3 scores (stride 16), again
    2x with layer2 scores (stride 8), then 8x to the input.  The ``odd`` bilinear layout places
    stride-s sample ``i`` on pixel ``s*i``, exactly where the strided convolutions took it from, so
    every crop starts at offset 0 and the output is aligned to the input for any size.  Fixed
    (non-learnable) upsampling is depthwise: the same bilinear function for a fraction of the work.
    """

    def __init__(self, num_classes: int = 21, width: float = 1.0, learnable_upsample: bool = False):
        super().__init__()
        self.backbone = ResNetTrunk(18, width)
        c2, c3, c4 = self.backbone.channels
        self.score_layer4 = nn.Conv2d(c4, num_classes, 1)
        self.score_layer3 = nn.Conv2d(c3, num_classes, 1)
        self.score_layer2 = nn.Conv2d(c2, num_classes, 1)
        fixed = not learnable_upsample
        self.upscore2 = BilinearUpsample(num_classes, 2, "odd", learnable_upsample, depthwise=fixed)
        self.upscore_layer3 = BilinearUpsample(num_classes, 2, "odd", learnable_upsample, depthwise=fixed)
        self.upscore8 = BilinearUpsample(num_classes, 8, "odd", learnable_upsample, depthwise=fixed)

    def forward(self, image: torch.Tensor) -> torch.Tensor:
        c2, c3, c4 = self.backbone(image)
        score3 = self.score_layer3(c3)
        fuse3 = crop_like(self.upscore2(self.score_layer4(c4)), score3) + score3
        score2 = self.score_layer2(c2)
        fuse2 = crop_like(self.upscore_layer3(fuse3), score2) + score2
        return crop_like(self.upscore8(fuse2), image)


def fcn8s_resnet18(num_classes: int = 21, width: float = 1.0, learnable_upsample: bool = False) -> FCN8sResNet18:
    return FCN8sResNet18(num_classes, width=width, learnable_upsample=learnable_upsample)
