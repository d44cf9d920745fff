"""Property tests that check the FCN paper's ideas on ``fcn_deploy.models``.

Each group checks one idea from Long, Shelhamer & Darrell on this code, with behaviour that would
change if the idea were implemented wrongly:

1. in-network upsampling is bilinear interpolation (Caffe kernel, exact crop/offset relations);
2. "convolutionalization": a classifier's FC layers as convolutions give the same logits, and on a
   larger input a score map whose cells are the classifier applied to every patch;
3. shift-and-stitch equals filter rarefaction away from the borders;
4. every architecture gives an input-sized output, and the VGG pad-100 + crop design (and the
   ResNet-18 odd-layout skips) align that output with the input;
5. the ResNet FCNs match torchvision's state dicts and outputs;
6. registry and reference layer facts (zero score layers, fc6/fc7, bilinear ConvTranspose, at-once);
7. ``fcn_from_vgg_classifier`` copies the classifier's weights.

Everything runs on CPU, in eval mode, under ``torch.no_grad`` unless it is testing gradients.
"""

from __future__ import annotations

import functools
import itertools
from fractions import Fraction

import pytest
import torch
import torch.nn.functional as F
import torchvision
from torch import nn

import fcn_deploy.models.vgg as vgg_module
from fcn_deploy.errors import FcnDeployError
from fcn_deploy.models import (
    FCNVGG16,
    BilinearUpsample,
    FCN8sResNet18,
    bilinear_kernel,
    build,
    convolutionalize,
    fcn_from_vgg_classifier,
    names,
    rarefy,
    shift_and_stitch,
    spec,
)
from fcn_deploy.models.vgg import CROP_OFFSETS

ALL_NAMES = {"fcn32s-vgg16", "fcn16s-vgg16", "fcn8s-vgg16", "fcn-resnet50", "fcn-resnet101", "fcn8s-resnet18"}
VGG_NAMES = ["fcn32s-vgg16", "fcn16s-vgg16", "fcn8s-vgg16"]
VGG_STRIDES = {"fcn32s-vgg16": 32, "fcn16s-vgg16": 16, "fcn8s-vgg16": 8}
TINY_WIDTH = {"vgg": 1 / 16, "resnet": 0.25}


@pytest.fixture(autouse=True)
def _no_grad_and_seed():
    torch.manual_seed(0)
    with torch.no_grad():
        yield


def _assert_close(actual: torch.Tensor, expected: torch.Tensor, rtol: float = 1e-4) -> None:
    """Close relative to the scale of ``expected`` (so near-zero entries don't need exact equality)."""
    scale = expected.abs().max().item()
    assert scale > 0, "reference is identically zero: the comparison would be vacuous"
    torch.testing.assert_close(actual, expected, rtol=rtol, atol=rtol * scale)


# ---------------------------------------------------------------------------------------------
# 1. Bilinear upsampling
# ---------------------------------------------------------------------------------------------


def _caffe_upsample_filt(size: int) -> list[list[float]]:
    """Independent transcription of ``upsample_filt`` from the FCN reference's surgery.py."""
    factor = (size + 1) // 2
    center = factor - 1 if size % 2 == 1 else factor - 0.5
    return [[(1 - abs(i - center) / factor) * (1 - abs(j - center) / factor) for j in range(size)] for i in range(size)]


@pytest.mark.parametrize("size", [*range(1, 17), 31, 32, 63, 64])
def test_bilinear_kernel_matches_caffe_formula(size):
    kernel = bilinear_kernel(size)
    assert kernel.shape == (size, size)
    expected = torch.tensor(_caffe_upsample_filt(size), dtype=torch.float32)
    torch.testing.assert_close(kernel, expected, rtol=0, atol=1e-7)
    # The kernel is symmetric and peaks in its centre (i.e. it is an interpolation kernel).
    torch.testing.assert_close(kernel, kernel.T)
    torch.testing.assert_close(kernel, kernel.flip(0).flip(1))


@pytest.mark.parametrize("s", [2, 4, 8, 16])
def test_even_layout_equals_interpolate_half_pixel_in_interior(s):
    """Kernel 2s / stride s puts input sample i at output s*i + s - 1/2; F.interpolate
    (align_corners=False) puts it at s*i + s/2 - 1/2.  So cropping s//2 aligns them, exactly, on the
    interior rows [s/2, n*s - s/2) where interpolate does not clamp to the edge."""
    channels, n, m = 3, 5, 7
    x = torch.rand(2, channels, n, m) + 0.5
    up = BilinearUpsample(channels, s, layout="even")
    assert (up.kernel_size, up.stride, up.padding) == ((2 * s, 2 * s), (s, s), (0, 0))
    y = up(x)
    assert y.shape == (2, channels, (n + 1) * s, (m + 1) * s)
    ref = F.interpolate(x, scale_factor=s, mode="bilinear", align_corners=False)
    off = s // 2

    def interior(t, offset):
        crop = t[:, :, offset : offset + n * s, offset : offset + m * s]
        return crop[:, :, s // 2 : n * s - s // 2, s // 2 : m * s - s // 2]

    assert interior(y, off).shape[-2:] == ((n - 1) * s, (m - 1) * s)
    _assert_close(interior(y, off), interior(ref, 0), rtol=1e-5)
    # The offset is exact: one pixel either way does not match.
    for wrong in (off - 1, off + 1):
        assert (interior(y, wrong) - interior(ref, 0)).abs().max() > 1e-3
    # Outside the interior they differ (interpolate clamps, the deconvolution fades out): the
    # interior restriction is needed, not just convenient.
    crop = y[:, :, off : off + n * s, off : off + m * s]
    assert (crop[:, :, 0] - ref[:, :, 0]).abs().max() > 1e-3


@pytest.mark.parametrize("s", [2, 8])
def test_even_layout_no_cross_channel_mixing(s):
    channels = 4
    up = BilinearUpsample(channels, s)
    for c, d in itertools.product(range(channels), repeat=2):
        if c != d:
            assert torch.count_nonzero(up.weight[c, d]) == 0
    x = torch.zeros(1, channels, 6, 5)
    x[:, 2] = torch.rand(6, 5) + 0.1
    y = up(x)
    for c in range(channels):
        if c != 2:
            assert torch.count_nonzero(y[:, c]) == 0
    single = BilinearUpsample(1, s)(x[:, 2:3])
    torch.testing.assert_close(y[:, 2:3], single)
    assert y[:, 2].abs().max() > 0


@pytest.mark.parametrize("s", [2, 4, 8])
def test_odd_layout_places_sample_i_on_pixel_s_i(s):
    """Kernel 2s-1, padding s-1: input i sits on output s*i, i.e. align_corners=True interpolation on
    the first (n-1)*s+1 pixels (the rest is the fade-out past the last sample)."""
    channels, n, m = 3, 5, 6
    x = torch.randn(2, channels, n, m)
    up = BilinearUpsample(channels, s, layout="odd")
    assert up.kernel_size == (2 * s - 1, 2 * s - 1)
    y = up(x)
    assert y.shape == (2, channels, n * s, m * s)
    torch.testing.assert_close(y[:, :, ::s, ::s], x, rtol=0, atol=1e-6)
    hn, wm = (n - 1) * s + 1, (m - 1) * s + 1
    ref = F.interpolate(x, size=(hn, wm), mode="bilinear", align_corners=True)
    _assert_close(y[:, :, :hn, :wm], ref, rtol=1e-5)
    # ...and not the half-pixel convention of align_corners=False.
    half = F.interpolate(x, size=(hn, wm), mode="bilinear", align_corners=False)
    assert (y[:, :, :hn, :wm] - half).abs().max() > 1e-3


def test_bilinear_upsample_rejects_unknown_layout():
    with pytest.raises(ValueError):
        BilinearUpsample(2, 2, layout="centre")


@pytest.mark.parametrize("layout", ["even", "odd"])
def test_learnable_flag_freezes_or_trains_the_weight(layout):
    with torch.enable_grad():
        for learnable in (False, True):
            up = BilinearUpsample(2, 4, layout=layout, learnable=learnable)
            assert up.weight.requires_grad is learnable
            assert any(p is up.weight for p in up.parameters())  # still a parameter either way
            before = up.weight.detach().clone()
            x = torch.rand(1, 2, 3, 3, requires_grad=True)
            opt = torch.optim.SGD(up.parameters(), lr=0.1)
            up(x).pow(2).sum().backward()
            opt.step()
            assert x.grad is not None and x.grad.abs().max() > 0  # gradients flow through it
            changed = not torch.equal(up.weight.detach(), before)
            assert changed is learnable
    frozen = FCNVGG16(3, stride=8, width=1 / 16)
    trained = FCNVGG16(3, stride=8, width=1 / 16, learnable_upsample=True)
    assert all(not m.weight.requires_grad for m in frozen.modules() if isinstance(m, BilinearUpsample))
    assert all(m.weight.requires_grad for m in trained.modules() if isinstance(m, BilinearUpsample))


# ---------------------------------------------------------------------------------------------
# 2. Convolutionalization
# ---------------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def vgg16(vgg16_classifier):
    return vgg16_classifier


def test_convolutionalized_vgg16_equals_classifier_at_224(vgg16):
    net = convolutionalize(vgg16).eval()
    convs = [m for m in net.head if isinstance(m, nn.Conv2d)]
    assert [c.kernel_size for c in convs] == [(7, 7), (1, 1), (1, 1)]
    assert not any(isinstance(m, nn.Linear) for m in net.modules())
    x = torch.randn(1, 3, 224, 224)
    logits = vgg16(x)
    scores = net(x)
    assert scores.shape == (1, 1000, 1, 1)
    _assert_close(scores.flatten(1), logits)


def test_convolutionalized_alexnet_equals_classifier_at_224():
    alexnet = torchvision.models.alexnet(weights=None).eval()
    net = convolutionalize(alexnet).eval()
    convs = [m for m in net.head if isinstance(m, nn.Conv2d)]
    assert [c.kernel_size for c in convs] == [(6, 6), (1, 1), (1, 1)]
    x = torch.randn(1, 3, 224, 224)
    scores = net(x)
    assert scores.shape == (1, 1000, 1, 1)
    _assert_close(scores.flatten(1), alexnet(x))


def test_convolutionalize_rejects_non_classifier():
    with pytest.raises(TypeError):
        convolutionalize(nn.Sequential(nn.Conv2d(3, 3, 1)))


def test_convolutionalized_net_is_the_classifier_on_every_patch():
    """With unpadded convs, a patch of side P is exactly a window of the large image's computation, so
    cell (i, j) of the score map is the classifier on x[i*4 : i*4+P, j*4 : j*4+P]."""
    from torchvision.models.vgg import VGG

    torch.manual_seed(1)
    # P -> conv3 (P-2) -> pool (17) -> conv3 (15) -> pool (7, floor drops one row): exactly 7x7.
    features = nn.Sequential(
        nn.Conv2d(3, 16, 3), nn.ReLU(inplace=True), nn.MaxPool2d(2, 2),
        nn.Conv2d(16, 512, 3), nn.ReLU(inplace=True), nn.MaxPool2d(2, 2),
    )  # fmt: skip
    classifier = VGG(features, num_classes=10, init_weights=True).eval()
    # torchvision's classifier layout (Linear, ReLU, Dropout, Linear, ReLU, Dropout, Linear), narrower
    # than its 4096 so the test stays fast; convolutionalize must handle any such stack.
    classifier.classifier = nn.Sequential(
        nn.Linear(512 * 7 * 7, 256), nn.ReLU(True), nn.Dropout(),
        nn.Linear(256, 256), nn.ReLU(True), nn.Dropout(), nn.Linear(256, 10),
    ).eval()  # fmt: skip
    patch, stride = 36, 4
    assert classifier.features(torch.zeros(1, 3, patch, patch)).shape[-2:] == (7, 7)
    net = convolutionalize(classifier).eval()
    rows, cols = 4, 3
    x = torch.randn(1, 3, patch + (rows - 1) * stride, patch + (cols - 1) * stride)
    scores = net(x)
    assert scores.shape == (1, 10, rows, cols)
    patches = torch.cat(
        [x[..., i * stride : i * stride + patch, j * stride : j * stride + patch] for i in range(rows) for j in range(cols)]
    )
    expected = classifier(patches).view(rows, cols, 10).permute(2, 0, 1)
    _assert_close(scores[0], expected)
    # The cells really differ from each other (so matching each to its own patch means something).
    assert (expected - expected[:, :1, :1]).abs().max() > 1e-3 * expected.abs().max()


def test_convolutionalized_vgg16_head_is_fc_classifier_on_every_7x7_feature_window(vgg16):
    """The exact statement for the real (padded) VGG16: on a larger feature map the head is the FC
    classifier slid over every 7x7 window (the adaptive pool is dropped, not averaging)."""
    net = convolutionalize(vgg16).eval()
    feats = torch.relu(torch.randn(1, 512, 8, 8))  # the feature map of a 256x256 image
    scores = net.head(feats)
    rows, cols = 2, 2
    assert scores.shape == (1, 1000, rows, cols)
    windows = torch.cat([feats[..., i : i + 7, j : j + 7].flatten(1) for i in range(rows) for j in range(cols)])
    expected = vgg16.classifier(windows).view(rows, cols, 1000).permute(2, 0, 1)
    _assert_close(scores[0], expected)


# ---------------------------------------------------------------------------------------------
# 3. Shift-and-stitch == filter rarefaction (away from the borders)
# ---------------------------------------------------------------------------------------------


def _net_stride2() -> nn.Sequential:
    return nn.Sequential(
        nn.Conv2d(3, 4, 3, padding=1), nn.ReLU(), nn.MaxPool2d(2, 2),
        nn.Conv2d(4, 5, 3, padding=1), nn.ReLU(), nn.Conv2d(5, 3, 1),
    ).eval()  # fmt: skip


def _net_stride4() -> nn.Sequential:
    return nn.Sequential(
        nn.Conv2d(3, 4, 3, stride=2, padding=1), nn.ReLU(),
        nn.Conv2d(4, 6, 3, padding=1), nn.ReLU(), nn.MaxPool2d(2, 2),
        nn.Conv2d(6, 6, 3, padding=1), nn.ReLU(), nn.Conv2d(6, 3, 1),
    ).eval()  # fmt: skip


def _receptive_field(net: nn.Sequential) -> int:
    """Receptive field of a stride-1 (rarefied) net: 1 + sum of the dilated kernel spans."""
    rf = 1
    for layer in net:
        if isinstance(layer, (nn.Conv2d, nn.MaxPool2d)):
            k = layer.kernel_size if isinstance(layer.kernel_size, int) else layer.kernel_size[0]
            d = layer.dilation if isinstance(layer.dilation, int) else layer.dilation[0]
            s = layer.stride if isinstance(layer.stride, int) else layer.stride[0]
            assert s == 1
            rf += (k - 1) * d
    return rf


@pytest.mark.parametrize(
    "make_net, f, size",
    [
        (_net_stride2, 2, (64, 64)),
        (_net_stride2, 2, (66, 70)),
        (_net_stride2, 2, (67, 61)),  # sizes not divisible by f
        (_net_stride4, 4, (64, 72)),
        (_net_stride4, 4, (66, 69)),  # sizes not divisible by f
    ],
    ids=["s2-64x64", "s2-66x70", "s2-67x61", "s4-64x72", "s4-66x69"],
)
def test_shift_and_stitch_equals_rarefaction_away_from_borders(make_net, f, size):
    torch.manual_seed(2)
    net = make_net()
    x = torch.randn(1, 3, *size)
    coarse = net(x)
    stitched = shift_and_stitch(net, f, x)
    assert stitched.shape == (1, 3, *size)
    rare_net = rarefy(net, f)
    margin = _receptive_field(rare_net)
    # The (0, 0) shift is the plain net: its outputs sit on the f-lattice of the dense output (up to
    # the far border, where a canvas rounded up to a multiple of f may legitimately differ).
    keep = -(-margin // f)
    torch.testing.assert_close(
        stitched[:, :, ::f, ::f][..., : coarse.shape[-2] - keep, : coarse.shape[-1] - keep],
        coarse[..., : coarse.shape[-2] - keep, : coarse.shape[-1] - keep],
    )
    assert all((m.stride if isinstance(m.stride, int) else m.stride[0]) == 1 for m in rare_net if isinstance(m, (nn.Conv2d, nn.MaxPool2d)))
    dense = rare_net(x)
    h = min(dense.shape[-2], stitched.shape[-2])
    w = min(dense.shape[-1], stitched.shape[-1])
    assert h >= size[0] - f and w >= size[1] - f  # at most a few rows short
    assert h - 2 * margin >= 8 and w - 2 * margin >= 8, "test input too small for its margin"
    a, b = stitched[..., :h, :w], dense[..., :h, :w]
    inner = (slice(None), slice(None), slice(margin, h - margin), slice(margin, w - margin))
    _assert_close(a[inner], b[inner], rtol=1e-5)
    # Near the border the two differ (zero padding of shifted copies vs of dilated layers): the
    # interior restriction is real and the comparison above is not between identical tensors.
    border = torch.ones(h, w, dtype=torch.bool)
    border[margin : h - margin, margin : w - margin] = False
    assert (a - b).abs()[..., border].max() > 1e-4


def test_rarefy_leaves_the_original_alone_and_f1_is_identity():
    net = _net_stride4()
    x = torch.randn(1, 3, 32, 32)
    before = net(x)
    same = rarefy(net, 1)
    torch.testing.assert_close(same(x), before)
    rarefy(net, 4)
    torch.testing.assert_close(net(x), before)
    assert net[0].stride == (2, 2)


@pytest.mark.parametrize("make_net, f", [(_net_stride4, 3), (_net_stride4, 8), (_net_stride2, 4), (_net_stride2, 3)])
def test_rarefy_rejects_f_that_does_not_divide_the_strides(make_net, f):
    with pytest.raises(ValueError):
        rarefy(make_net(), f)


# ---------------------------------------------------------------------------------------------
# 4. Output size and alignment
# ---------------------------------------------------------------------------------------------

SIZES = [(32, 32), (33, 47), (97, 129), (131, 67), (127, 251), (32, 200), (255, 257), (64, 37)]


@functools.cache
def _tiny(name: str) -> nn.Module:
    torch.manual_seed(3)
    model = build(name, 5, width=TINY_WIDTH[spec(name).family]).eval()
    # Non-zero score layers, so the output is not trivially zero (VGG score layers start at zero).
    with torch.no_grad():
        for mod_name, module in model.named_modules():
            if isinstance(module, nn.Conv2d) and mod_name.startswith("score"):
                nn.init.normal_(module.weight, std=0.1)
                nn.init.normal_(module.bias, std=0.1)
    return model


@pytest.mark.parametrize("name", sorted(ALL_NAMES))
def test_output_is_input_sized_for_many_sizes(name):
    model = _tiny(name)
    min_size = spec(name).min_size
    sizes = [(min_size, min_size), (min_size + 1, min_size), *SIZES]
    assert all(min(h, w) >= min_size for h, w in sizes)
    # ArchSpec documents that every architecture also works below min_size (any side >= 1).
    for h, w in [*sizes, (1, 1), (7, 9), (17, 31), (1, 64)]:
        y = model(torch.randn(1, 3, h, w))
        assert y.shape == (1, 5, h, w), f"{name} at {h}x{w}"
        assert torch.isfinite(y).all() and y.abs().max() > 0
    # Batch 2: same size, and each sample as if run alone.
    x = torch.randn(2, 3, 97, 129)
    y = model(x)
    assert y.shape == (2, 5, 97, 129)
    _assert_close(y[1:], model(x[1:]), rtol=1e-4)


def _layer_map(layer: nn.Module, a: Fraction, b: Fraction) -> tuple[Fraction, Fraction]:
    """Compose the Caffe ``coord_map`` of one layer onto the image->blob map ``x -> a*x + b``."""

    def first(v):
        return v if isinstance(v, int) else v[0]

    if isinstance(layer, nn.ConvTranspose2d):
        k, s, p = first(layer.kernel_size), first(layer.stride), first(layer.padding)
        return a * s, b * s + Fraction(k - 1, 2) - p
    if isinstance(layer, (nn.Conv2d, nn.MaxPool2d)):
        k, s, p, d = first(layer.kernel_size), first(layer.stride), first(layer.padding), first(layer.dilation)
        return a / s, (b + p - Fraction((k - 1) * d, 2)) / s
    assert isinstance(layer, (nn.ReLU, nn.Dropout)), type(layer)
    return a, b


def _chain(layers, start=(Fraction(1), Fraction(0))):
    a, b = start
    for layer in layers:
        a, b = _layer_map(layer, a, b)
    return a, b


def _crop_offset(blob: tuple[Fraction, Fraction], reference: tuple[Fraction, Fraction]) -> int:
    """The Caffe Crop offset of ``blob`` to ``reference``: both at one scale, integral, non-negative."""
    assert blob[0] == reference[0], "crop between blobs of different scales"
    offset = blob[1] - reference[1]
    assert offset.denominator == 1 and offset >= 0, offset
    return int(offset)


@pytest.mark.parametrize("stride", [32, 16, 8])
def test_crop_offsets_follow_from_the_layer_geometry(stride):
    """Derive each crop offset as Caffe's ``coord_map`` does, from this model's own layers."""
    model = FCNVGG16(3, stride=stride, width=1 / 16)
    feats = list(model.features)
    pool3 = _chain(feats[: vgg_module._POOL3 + 1])
    pool4 = _chain(feats[: vgg_module._POOL4 + 1])
    assert pool3[0] == Fraction(1, 8) and pool4[0] == Fraction(1, 16)
    score = _chain([model.fc6, model.fc7, model.score_fr], _chain(feats))
    assert score[0] == Fraction(1, 32)
    off4 = off3 = None
    if stride == 32:
        out = _chain([model.upscore], score)
    else:
        up2 = _chain([model.upscore2], score)
        off4 = _crop_offset(_chain([model.score_pool4], pool4), up2)
        if stride == 16:
            out = _chain([model.upscore16], up2)
        else:
            up4 = _chain([model.upscore_pool4], up2)
            off3 = _crop_offset(_chain([model.score_pool3], pool3), up4)
            out = _chain([model.upscore8], up4)
    final = _crop_offset(out, (Fraction(1), Fraction(0)))
    assert (off4, off3, final) == CROP_OFFSETS[stride]
    assert CROP_OFFSETS == {32: (None, None, 19), 16: (5, None, 27), 8: (5, 9, 31)}  # the guide's values


def _delta_(conv: nn.Conv2d, on: bool = True) -> None:
    """Make ``conv`` pass channel 0 through its centre tap (or output zero): an impulse stays an impulse."""
    with torch.no_grad():
        conv.weight.zero_()
        if conv.bias is not None:
            conv.bias.zero_()
        if on:
            kh, kw = conv.kernel_size
            conv.weight[0, 0, kh // 2, kw // 2] = 1.0


def _centroid(profile: torch.Tensor) -> torch.Tensor:
    pos = torch.arange(profile.shape[-1], dtype=torch.float64)
    p = profile.double()
    return (p * pos).sum(-1) / p.sum(-1)


def _impulse_profiles(model: nn.Module, rows: list[int], height: int, width: int, axis: int) -> torch.Tensor:
    """Output profiles (summed over the other axis) for impulses at ``rows`` along ``axis`` (2: H, 3: W)."""
    x = torch.zeros(len(rows), 3, height, width)
    other = (width if axis == 2 else height) // 2
    for b, r in enumerate(rows):
        if axis == 2:
            x[b, 0, r, other] = 1.0
        else:
            x[b, 0, other, r] = 1.0
    y = model(x)
    assert y.shape == x.shape[:1] + (1,) + x.shape[2:]
    return y[:, 0].sum(dim=4 - axis)  # y[:, 0] is (B, H, W): axis 2 -> sum over W, axis 3 -> over H


def _delta_vgg(stride: int, path: str) -> FCNVGG16:
    model = FCNVGG16(1, stride=stride, width=1 / 64).eval()
    for conv in [m for m in model.features if isinstance(m, nn.Conv2d)] + [model.fc6, model.fc7]:
        _delta_(conv)
    for score in ("score_fr", "score_pool4", "score_pool3"):
        if hasattr(model, score):
            _delta_(getattr(model, score), on=(score == path))
    return model


def _vgg_alignment_errors(model: nn.Module, path_stride: int, axis: int) -> list[float]:
    """Impulses at every position of a range: group the positions whose outputs are identical (one
    coarse cell of the path); return centroid(output) - mean(group) for every complete group.

    The range has 2 * path_stride + 2 positions, so at least one group is complete whatever the
    phase of the cells; the output is long enough that no response is clipped (asserted).
    """
    positions = list(range(56, 56 + 2 * path_stride + 2))
    long_side, short_side = 184, 8
    h, w = (long_side, short_side) if axis == 2 else (short_side, long_side)
    profiles = _impulse_profiles(model, positions, h, w, axis)
    assert (profiles.sum(-1) > 0).all()
    groups: list[list[int]] = [[0]]
    for b in range(1, len(positions)):
        if torch.allclose(profiles[b], profiles[groups[-1][0]], rtol=1e-6, atol=1e-7):
            groups[-1].append(b)
        else:
            groups.append([b])
    complete = groups[1:-1]  # the first and last may be cut by the range
    assert len(complete) >= 1
    errors = []
    for group in complete:
        assert len(group) == path_stride  # one coarse cell pools exactly `path_stride` input pixels
        profile = profiles[group[0]]
        assert profile[0] == 0 and profile[-1] == 0, "response clipped by the output border"
        mean_position = sum(positions[b] for b in group) / len(group)
        errors.append(_centroid(profile).item() - mean_position)
    return errors


VGG_PATHS = [(32, "score_fr", 32), (16, "score_fr", 32), (16, "score_pool4", 16),
             (8, "score_fr", 32), (8, "score_pool4", 16), (8, "score_pool3", 8)]  # fmt: skip


@pytest.mark.parametrize("stride, path, path_stride", VGG_PATHS)
def test_vgg_output_is_aligned_with_input(stride, path, path_stride):
    """A coarse cell pools a block of input pixels; its output response must be centred on that block.

    With centre-tap (delta) filters an impulse anywhere in one block gives the same output, a
    symmetric bilinear bump.  The bump's centre must equal the centre of the block, on both axes and
    through every stream (fc7, pool4, pool3) of the net: that is what the pad-100 + crop design buys.
    """
    model = _delta_vgg(stride, path)
    for axis in (2, 3):
        errors = _vgg_alignment_errors(model, path_stride, axis)
        assert max(abs(e) for e in errors) < 1e-4, errors


@pytest.mark.parametrize(
    "stride, index, path, shift",
    [(32, 2, "score_fr", 1), (16, 2, "score_pool4", -1), (16, 0, "score_pool4", 1),
     (8, 2, "score_pool3", 1), (8, 0, "score_pool4", -1), (8, 1, "score_pool3", 1)],
)  # fmt: skip
def test_vgg_alignment_test_catches_off_by_one_crop(monkeypatch, stride, index, path, shift):
    """The alignment check above is sharp: any crop offset moved by one breaks it."""
    offsets = list(CROP_OFFSETS[stride])
    offsets[index] += shift
    monkeypatch.setitem(vgg_module.CROP_OFFSETS, stride, tuple(offsets))
    model = _delta_vgg(stride, path)
    path_stride = {"score_fr": 32, "score_pool4": 16, "score_pool3": 8}[path]
    errors = _vgg_alignment_errors(model, path_stride, axis=2)
    assert min(abs(e) for e in errors) > 0.5, errors


@pytest.mark.parametrize("name", VGG_NAMES)
def test_vgg_is_translation_equivariant_at_its_stride(name):
    """Bias-free random weights make zero input give zero features, so the zero canvas is the same as
    zero padding: shifting the content by 32 px shifts the output by exactly 32 px.  A shift by 16
    or 1 (not a multiple of the coarsest stride) does not, so the check is not vacuous."""
    torch.manual_seed(4)
    model = build(name, 3, width=1 / 16).eval()
    for module in model.modules():
        if isinstance(module, nn.Conv2d):
            if module.weight.abs().max() == 0:  # score layers
                nn.init.normal_(module.weight, std=0.5)
            if module.bias is not None:
                module.bias.zero_()
    content = torch.rand(1, 3, 60, 70)
    h, w = 100, 110

    def placed(shift):
        x = torch.zeros(1, 3, h + shift, w + shift)
        x[..., 20 + shift : 80 + shift, 20 + shift : 90 + shift] = content
        return model(x)

    # Exact away from the output border only: the smaller input's score map is a smaller window of
    # the (zero-extended) score map, so cells just outside it are missing near the border.
    m = 32
    base = placed(0)[..., m:-m, m:-m]
    assert base.abs().max() > 0
    _assert_close(placed(32)[..., 32 + m : -m, 32 + m : -m], base, rtol=1e-5)
    for shift in (16, 1):  # (16: only the stride-32 stream breaks; float noise is ~1e-7 relative)
        assert (placed(shift)[..., shift + m : -m, shift + m : -m] - base).abs().max() > 1e-5 * base.abs().max()


@pytest.mark.parametrize("path, lattice", [("score_layer4", 32), ("score_layer3", 16), ("score_layer2", 8)])
def test_resnet18_skip_net_is_aligned_with_input(path, lattice):
    """The odd-layout skip net: a centre-tap net carries an impulse at input pixel s*i (on the stride
    lattice) to coarse sample i, and the odd upsampling must put it back on pixel s*i: the output
    bump is centred on, and peaks at, the impulse itself, through every stream."""
    model = FCN8sResNet18(1, width=1 / 64).eval()
    for conv in (m for m in model.backbone.modules() if isinstance(m, nn.Conv2d)):
        _delta_(conv)
    for score in ("score_layer4", "score_layer3", "score_layer2"):
        _delta_(getattr(model, score), on=(score == path))
    positions = list(range(32, 160, lattice))
    for axis in (2, 3):
        h, w = (160 + 32, 64) if axis == 2 else (64, 160 + 32)
        profiles = _impulse_profiles(model, positions, h, w, axis)
        for r, profile in zip(positions, profiles):
            assert profile.sum() > 0 and profile[0] == 0 and profile[-1] == 0
            assert abs(_centroid(profile).item() - r) < 1e-4
            assert profile.argmax().item() == r


# ---------------------------------------------------------------------------------------------
# 5. torchvision compatibility
# ---------------------------------------------------------------------------------------------


@pytest.mark.parametrize("depth, aux", [(50, True), (50, False), pytest.param(101, True, marks=pytest.mark.slow)])
def test_resnet_fcn_loads_torchvision_state_dict_and_matches(torchvision_fcn, depth, aux):
    reference = torchvision_fcn(depth, aux)  # non-trivial BatchNorm statistics, so a mis-wired BN would show
    model = build(f"fcn-resnet{depth}", 21, aux=aux).eval()
    model.load_state_dict(reference.state_dict(), strict=True)
    x = torch.randn(1, 3, 67, 93)
    expected = reference(x)
    assert set(expected) == ({"out", "aux"} if aux else {"out"})
    out = model(x)
    assert out.shape == (1, 21, 67, 93)
    _assert_close(out, expected["out"])
    out2, aux_out = model.forward_with_aux(x)
    _assert_close(out2, expected["out"])
    if aux:
        _assert_close(aux_out, expected["aux"])
    else:
        assert aux_out is None


# ---------------------------------------------------------------------------------------------
# 6. Registry and reference layer facts
# ---------------------------------------------------------------------------------------------


def test_registry_lists_all_six():
    assert set(names()) == ALL_NAMES and len(names()) == 6
    for name in names():
        arch = spec(name)
        assert arch.name == name
        assert isinstance(arch.min_size, int) and arch.min_size > 0
        assert arch.family in TINY_WIDTH


def test_unknown_name_raises_with_the_list():
    with pytest.raises(FcnDeployError) as info:
        build("fcn4s-vgg16")
    message = str(info.value)
    assert "fcn4s-vgg16" in message
    for name in ALL_NAMES:
        assert name in message
    with pytest.raises(FcnDeployError):
        spec("nope")


def test_bad_builder_option_is_a_user_error():
    with pytest.raises(FcnDeployError):
        build("fcn8s-vgg16", 21, no_such_option=1)


EXPECTED_UPSAMPLERS = {
    32: {"upscore": (64, 32)},
    16: {"upscore2": (4, 2), "upscore16": (32, 16)},
    8: {"upscore2": (4, 2), "upscore_pool4": (4, 2), "upscore8": (16, 8)},
}


def _assert_bilinear_diagonal(module: nn.ConvTranspose2d, kernel: int, stride: int) -> None:
    assert isinstance(module, nn.ConvTranspose2d)
    assert module.bias is None
    assert module.kernel_size == (kernel, kernel) and module.stride == (stride, stride)
    assert module.in_channels == module.out_channels
    expected = bilinear_kernel(kernel)
    if module.groups > 1:  # depthwise: the diagonal alone
        assert module.groups == module.in_channels and module.weight.shape[1] == 1
        for c in range(module.in_channels):
            torch.testing.assert_close(module.weight[c, 0], expected)
        return
    for c, d in itertools.product(range(module.in_channels), repeat=2):
        if c == d:
            torch.testing.assert_close(module.weight[c, d], expected)
        else:
            assert torch.count_nonzero(module.weight[c, d]) == 0


@pytest.mark.parametrize("name", VGG_NAMES)
def test_vgg_reference_layer_facts(name):
    stride = VGG_STRIDES[name]
    model = build(name, 4, width=1 / 16)
    convs = [m for m in model.features if isinstance(m, nn.Conv2d)]
    assert len(convs) == 13
    assert convs[0].padding == (100, 100) and all(c.padding == (1, 1) for c in convs[1:])
    assert all(c.kernel_size == (3, 3) for c in convs)
    pools = [m for m in model.features if isinstance(m, nn.MaxPool2d)]
    assert len(pools) == 5 and all(p.kernel_size == 2 and p.stride == 2 and p.ceil_mode for p in pools)
    assert model.fc6.kernel_size == (7, 7) and model.fc6.padding == (0, 0)
    assert model.fc7.kernel_size == (1, 1)
    assert model.fc6.out_channels == model.fc7.out_channels == 4096 // 16
    scores = [m for n, m in model.named_modules() if n.startswith("score")]
    assert len(scores) == {32: 1, 16: 2, 8: 3}[stride]
    for score in scores:
        assert score.kernel_size == (1, 1)
        assert torch.count_nonzero(score.weight) == 0 and torch.count_nonzero(score.bias) == 0
    ups = {n: m for n, m in model.named_modules() if isinstance(m, nn.ConvTranspose2d)}
    assert set(ups) == set(EXPECTED_UPSAMPLERS[stride])
    for n, (kernel, s) in EXPECTED_UPSAMPLERS[stride].items():
        _assert_bilinear_diagonal(ups[n], kernel, s)
    # Zero score layers: a freshly built FCN outputs exactly zero.
    assert torch.count_nonzero(model.eval()(torch.rand(1, 3, 40, 40))) == 0


def test_resnet18_skip_net_upsamplers_are_bilinear_odd_layout():
    model = build("fcn8s-resnet18", 3, width=0.25)
    ups = {n: m for n, m in model.named_modules() if isinstance(m, nn.ConvTranspose2d)}
    assert set(ups) == {"upscore2", "upscore_layer3", "upscore8"}
    for n, s in {"upscore2": 2, "upscore_layer3": 2, "upscore8": 8}.items():
        _assert_bilinear_diagonal(ups[n], 2 * s - 1, s)
        assert ups[n].padding == (s - 1, s - 1)
        assert ups[n].groups == 3  # fixed upsampling is depthwise
    learnable = build("fcn8s-resnet18", 3, width=0.25, learnable_upsample=True)
    assert learnable.upscore8.groups == 1 and learnable.upscore8.weight.requires_grad


@pytest.mark.parametrize("layout", ["even", "odd"])
def test_depthwise_bilinear_equals_the_full_diagonal_kernel(layout):
    torch.manual_seed(3)
    x = torch.randn(2, 4, 9, 11)
    full = BilinearUpsample(4, 8, layout=layout)
    depthwise = BilinearUpsample(4, 8, layout=layout, depthwise=True)
    assert depthwise.weight.numel() * 4 == full.weight.numel()
    with torch.no_grad():
        torch.testing.assert_close(depthwise(x), full(x))


def test_fcn8s_at_once_scales_the_skips():
    torch.manual_seed(6)
    staged = FCNVGG16(4, stride=8, width=1 / 16).eval()
    for score in (staged.score_fr, staged.score_pool4, staged.score_pool3):
        nn.init.normal_(score.weight, std=0.5)
        nn.init.normal_(score.bias, std=0.1)
    at_once = FCNVGG16(4, stride=8, width=1 / 16, at_once=True).eval()
    at_once.load_state_dict(staged.state_dict())
    x = torch.rand(1, 3, 64, 80)
    y_staged, y_once = staged(x), at_once(x)
    assert (y_staged - y_once).abs().max() > 1e-3 * y_staged.abs().max()
    # Exactly: at-once == staged with the skip score weights scaled by 0.01 (pool4) and 1e-4 (pool3).
    scaled = FCNVGG16(4, stride=8, width=1 / 16).eval()
    scaled.load_state_dict(staged.state_dict())
    scaled.score_pool4.weight.mul_(0.01)
    scaled.score_pool3.weight.mul_(1e-4)
    _assert_close(y_once, scaled(x), rtol=1e-5)
    # With zero score layers (as built) both are zero: the scaling only matters once trained.
    fresh = build("fcn8s-vgg16", 4, width=1 / 16, at_once=True).eval()
    assert torch.count_nonzero(fresh(x)) == 0


# ---------------------------------------------------------------------------------------------
# 7. FCN from a VGG16 classifier
# ---------------------------------------------------------------------------------------------


def test_fcn_from_vgg_classifier_copies_conv_and_fc_weights(vgg16):
    fcn = fcn_from_vgg_classifier(vgg16, 21, stride=8)
    assert isinstance(fcn, FCNVGG16) and fcn.stride == 8
    src_convs = [m for m in vgg16.features if isinstance(m, nn.Conv2d)]
    dst_convs = [m for m in fcn.features if isinstance(m, nn.Conv2d)]
    assert len(src_convs) == len(dst_convs) == 13
    for src, dst in zip(src_convs, dst_convs):
        assert torch.equal(src.weight, dst.weight) and torch.equal(src.bias, dst.bias)
    assert dst_convs[0].padding == (100, 100)  # the FCN keeps its own geometry
    fc6, fc7 = vgg16.classifier[0], vgg16.classifier[3]
    assert torch.equal(fcn.fc6.weight, fc6.weight.view(4096, 512, 7, 7))
    assert torch.equal(fcn.fc6.bias, fc6.bias)
    assert torch.equal(fcn.fc7.weight, fc7.weight.view(4096, 4096, 1, 1))
    assert torch.equal(fcn.fc7.bias, fc7.bias)
    # A copy, not shared storage: training the FCN leaves the classifier alone.
    assert fcn.fc6.weight.data_ptr() != fc6.weight.data_ptr()
    # The new parts are as in the paper: zero scores (21 classes), bilinear upsampling.
    for score in (fcn.score_fr, fcn.score_pool4, fcn.score_pool3):
        assert score.out_channels == 21 and torch.count_nonzero(score.weight) == 0
    _assert_bilinear_diagonal(fcn.upscore8, 16, 8)
