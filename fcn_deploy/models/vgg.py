"""FCN-32s, FCN-16s and FCN-8s on VGG16, as in the paper's Caffe reference, and ``convolutionalize``.

Layout (``voc-fcn*s/net.py`` in shelhamer/fcn.berkeleyvision.org):

* conv1_1 pads by 100, every other 3x3 conv by 1; 2x2 max pools with stride 2 in ceil mode;
* fc6 is a 7x7 conv and fc7 a 1x1 conv (4096 channels each, dropout 0.5);
* score layers are 1x1 and zero-initialised;
* upsampling is a bias-free ConvTranspose with a bilinear kernel (4/2 for the 2x steps, 16/8 for
  the final 8x, 32/16 for 16x, 64/32 for 32x);
* skips are cropped at offsets 5 (pool4) and 9 (pool3) and the output at 31 (8s), 27 (16s) or
  19 (32s), which aligns the score map with the input for every input size (tested).

``features`` keeps torchvision's ``vgg16().features`` indices, so ImageNet VGG16 weights load
directly; see :func:`fcn_from_vgg_classifier`.
"""

from __future__ import annotations

import copy

import torch
from torch import nn

from .upsample import BilinearUpsample, crop_like

_VGG16_CFG = [64, 64, "M", 128, 128, "M", 256, 256, 256, "M", 512, 512, 512, "M", 512, 512, 512, "M"]
_POOL3, _POOL4 = 16, 23  # indices of pool3 / pool4 in the features Sequential (as in torchvision)

#: Crop offsets of the Caffe reference, per variant: (pool4 skip, pool3 skip, final output).
CROP_OFFSETS = {32: (None, None, 19), 16: (5, None, 27), 8: (5, 9, 31)}


def _scaled(channels: int, width: float) -> int:
    return max(1, round(channels * width))


def vgg16_features(width: float = 1.0, first_pad: int = 100, ceil_mode: bool = True) -> nn.Sequential:
    layers: list[nn.Module] = []
    in_ch = 3
    for item in _VGG16_CFG:
        if item == "M":
            layers.append(nn.MaxPool2d(2, stride=2, ceil_mode=ceil_mode))
        else:
            out_ch = _scaled(int(item), width)
            layers += [nn.Conv2d(in_ch, out_ch, 3, padding=first_pad if in_ch == 3 else 1), nn.ReLU(inplace=True)]
            in_ch = out_ch
    return nn.Sequential(*layers)


class FCNVGG16(nn.Module):
    """FCN-{32,16,8}s on VGG16.  ``forward(image) -> logits`` of the input's height and width."""

    def __init__(
        self,
        num_classes: int,
        stride: int = 8,
        width: float = 1.0,
        learnable_upsample: bool = False,
        at_once: bool = False,
    ):
        super().__init__()
        if stride not in CROP_OFFSETS:
            raise ValueError(f"stride must be 32, 16 or 8, not {stride}")
        self.stride = stride
        self.at_once = at_once
        c5, c_fc = _scaled(512, width), _scaled(4096, width)
        self.features = vgg16_features(width)
        self.fc6 = nn.Conv2d(c5, c_fc, 7)
        self.fc7 = nn.Conv2d(c_fc, c_fc, 1)
        self.drop = nn.Dropout(0.5)  # element-wise, as Caffe's Dropout layer
        self.score_fr = nn.Conv2d(c_fc, num_classes, 1)
        scores = [self.score_fr]
        if stride == 32:
            self.upscore = BilinearUpsample(num_classes, 32, learnable=learnable_upsample)
        else:
            self.score_pool4 = nn.Conv2d(_scaled(512, width), num_classes, 1)
            self.upscore2 = BilinearUpsample(num_classes, 2, learnable=learnable_upsample)
            scores.append(self.score_pool4)
            if stride == 16:
                self.upscore16 = BilinearUpsample(num_classes, 16, learnable=learnable_upsample)
            else:
                self.score_pool3 = nn.Conv2d(_scaled(256, width), num_classes, 1)
                self.upscore_pool4 = BilinearUpsample(num_classes, 2, learnable=learnable_upsample)
                self.upscore8 = BilinearUpsample(num_classes, 8, learnable=learnable_upsample)
                scores.append(self.score_pool3)
        for layer in scores:  # the reference zero-initialises every score layer
            nn.init.zeros_(layer.weight)
            nn.init.zeros_(layer.bias)

    def forward(self, image: torch.Tensor) -> torch.Tensor:
        x = image
        pool3 = pool4 = x
        for index, layer in enumerate(self.features):
            x = layer(x)
            if index == _POOL3:
                pool3 = x
            elif index == _POOL4:
                pool4 = x
        x = self.drop(torch.relu(self.fc6(x)))
        x = self.drop(torch.relu(self.fc7(x)))
        score = self.score_fr(x)
        off4, off3, off_out = CROP_OFFSETS[self.stride]
        if self.stride == 32:
            return crop_like(self.upscore(score), image, off_out)
        if self.at_once:  # PAMI at-once FCN-8s: scale the skips so all streams start comparable
            pool4, pool3 = pool4 * 0.01, pool3 * 0.0001
        upscore2 = self.upscore2(score)
        fuse = upscore2 + crop_like(self.score_pool4(pool4), upscore2, off4)
        if self.stride == 16:
            return crop_like(self.upscore16(fuse), image, off_out)
        up_pool4 = self.upscore_pool4(fuse)
        fuse = up_pool4 + crop_like(self.score_pool3(pool3), up_pool4, off3)
        return crop_like(self.upscore8(fuse), image, off_out)


def fcn32s_vgg16(num_classes: int = 21, **kwargs) -> FCNVGG16:
    return FCNVGG16(num_classes, stride=32, **kwargs)


def fcn16s_vgg16(num_classes: int = 21, **kwargs) -> FCNVGG16:
    return FCNVGG16(num_classes, stride=16, **kwargs)


def fcn8s_vgg16(num_classes: int = 21, **kwargs) -> FCNVGG16:
    return FCNVGG16(num_classes, stride=8, **kwargs)


class ConvolutionalizedNet(nn.Module):
    """A classifier whose fully connected layers became convolutions: ``features`` then ``head``."""

    def __init__(self, features: nn.Module, head: nn.Sequential):
        super().__init__()
        self.features = features
        self.head = head

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(self.features(x))


def convolutionalize(classifier: nn.Module) -> ConvolutionalizedNet:
    """Turn a torchvision VGG or AlexNet classifier into a fully convolutional net.

    Each ``Linear`` of ``classifier.classifier`` becomes a convolution whose kernel covers its whole
    input: the first one a ``k x k`` conv (``k`` = the adaptive pool's output size, 7 for VGG and 6
    for AlexNet), the rest 1x1.  The adaptive pool is dropped: at the classifier's native size it is
    the identity, and on larger inputs the net must slide rather than pool.  The result maps a
    224x224 image to a 1x1 score map equal to the classifier's logits, and a larger image to a
    score map whose cells are the classifier applied to every 7x7 (6x6) window of the feature map.
    """
    features = getattr(classifier, "features", None)
    head_in = getattr(classifier, "classifier", None)
    pool = getattr(classifier, "avgpool", None)
    if features is None or head_in is None or not isinstance(pool, nn.AdaptiveAvgPool2d):
        raise TypeError("convolutionalize expects a torchvision VGG or AlexNet (features, avgpool, classifier)")
    size = pool.output_size if isinstance(pool.output_size, int) else pool.output_size[0]
    head: list[nn.Module] = []
    first = True
    for module in head_in:
        if isinstance(module, nn.Linear):
            kernel = size if first else 1
            in_ch = module.in_features // (kernel * kernel)
            conv = nn.Conv2d(in_ch, module.out_features, kernel)
            with torch.no_grad():
                conv.weight.copy_(module.weight.view(module.out_features, in_ch, kernel, kernel))
                conv.bias.copy_(module.bias)
            head.append(conv)
            first = False
        else:  # ReLU, Dropout: element-wise, unchanged
            head.append(copy.deepcopy(module))
    return ConvolutionalizedNet(copy.deepcopy(features), nn.Sequential(*head))


def fcn_from_vgg_classifier(vgg: nn.Module, num_classes: int, stride: int = 8, **kwargs) -> FCNVGG16:
    """An FCN-{stride}s whose conv1..fc7 come from a torchvision VGG16 classifier (ready to fine-tune).

    The score layers stay zero-initialised and the upsampling bilinear, as in the paper.
    """
    fcn = FCNVGG16(num_classes, stride=stride, **kwargs)
    conv_net = convolutionalize(vgg)
    fcn.features.load_state_dict(conv_net.features.state_dict())
    convs = [m for m in conv_net.head if isinstance(m, nn.Conv2d)]
    if len(convs) != 3 or convs[0].weight.shape != fcn.fc6.weight.shape or convs[1].weight.shape != fcn.fc7.weight.shape:
        raise ValueError("the classifier is not a VGG16 (its fc6/fc7 do not fit FCN-VGG16)")
    fcn.fc6.load_state_dict(convs[0].state_dict())
    fcn.fc7.load_state_dict(convs[1].state_dict())
    return fcn
