"""Bring existing weights into the fcn-deploy checkpoint format.

Two kinds of source are understood:

* a torchvision FCN (``fcn_resnet50``/``fcn_resnet101``) state dict, with or without the aux head;
* a torchvision VGG16 *classifier* state dict, convolutionalized into FCN-32s/16s/8s (conv1..fc7
  from the classifier, zero score layers and bilinear upsampling as in the paper) for fine-tuning.

``--pretrained`` fetches torchvision's published weights through its weight enums; these machines
are offline, so that path fails with a message saying how to import a downloaded file instead.
"""

from __future__ import annotations

import socket
from pathlib import Path
from typing import Any

import torch
import torchvision

from . import models
from .checkpoint import read_weights_only, save_checkpoint
from .data.voc import load_classes_file
from .errors import FcnDeployError, require_file
from .meta import ModelMeta, default_palette, voc_class_names

#: ``--pretrained`` names -> (torchvision builder name, weight enum attribute).
PRETRAINED = {
    "fcn_resnet50": ("fcn_resnet50", "FCN_ResNet50_Weights"),
    "fcn_resnet101": ("fcn_resnet101", "FCN_ResNet101_Weights"),
    "vgg16": ("vgg16", "VGG16_Weights"),
}


def _unwrap_state_dict(data: Any, path: Path) -> dict[str, torch.Tensor]:
    if isinstance(data, dict):
        for key in ("state_dict", "model", "model_state_dict"):
            if isinstance(data.get(key), dict):
                data = data[key]
                break
    if not isinstance(data, dict) or not all(isinstance(v, torch.Tensor) for v in data.values()):
        raise FcnDeployError(f"{path}: expected a state dict (parameter name -> tensor); save model.state_dict()")
    return {k.removeprefix("module."): v for k, v in data.items()}


def detect_kind(state: dict[str, torch.Tensor]) -> str:
    keys = set(state)
    if "classifier.4.weight" in keys and any(k.startswith("backbone.layer4.") for k in keys):
        return "torchvision-fcn"
    if "features.0.weight" in keys and "classifier.0.weight" in keys and "classifier.6.weight" in keys:
        return "vgg16"
    raise FcnDeployError(
        "unrecognised weights: expected a torchvision fcn_resnet50/101 or vgg16 state dict (for fcn-deploy checkpoints no import is needed)"
    )


def _class_info(num_classes: int, classes_file: Path | None) -> tuple[list[str], list[list[int]]]:
    if classes_file is not None:
        names, palette = load_classes_file(require_file(classes_file, "classes file"))
        if len(names) != num_classes:
            raise FcnDeployError(f"{classes_file}: lists {len(names)} classes, the weights have {num_classes}")
        return names, palette
    if num_classes == 21:
        return voc_class_names(), default_palette(21)
    return [f"class_{i}" for i in range(num_classes)], default_palette(num_classes)


def import_torchvision_fcn(state: dict[str, torch.Tensor], classes_file: Path | None = None) -> tuple[torch.nn.Module, ModelMeta]:
    layer3_blocks = {int(k.split(".")[2]) for k in state if k.startswith("backbone.layer3.")}
    depth = {6: 50, 23: 101}.get(len(layer3_blocks))
    if depth is None:
        raise FcnDeployError(f"torchvision FCN with {len(layer3_blocks)} layer3 blocks: only ResNet-50/101 are supported")
    num_classes = int(state["classifier.4.weight"].shape[0])
    aux = any(k.startswith("aux_classifier.") for k in state)
    model = models.build(f"fcn-resnet{depth}", num_classes, aux=aux)
    try:
        model.load_state_dict(state, strict=True)
    except RuntimeError as exc:
        raise FcnDeployError(
            f"weights look like a torchvision FCN-ResNet{depth} but do not fit it ({str(exc).splitlines()[0]}); is the file complete?"
        ) from exc
    names, palette = _class_info(num_classes, classes_file)
    meta = ModelMeta(
        arch=f"fcn-resnet{depth}", num_classes=num_classes, class_names=names, palette=palette,
        min_size=models.spec(f"fcn-resnet{depth}").min_size, train_size=520, arch_kwargs={"aux": aux},
    )  # fmt: skip
    return model, meta


def import_vgg16_classifier(
    state: dict[str, torch.Tensor], arch: str, num_classes: int, classes_file: Path | None = None
) -> tuple[torch.nn.Module, ModelMeta]:
    if arch not in ("fcn32s-vgg16", "fcn16s-vgg16", "fcn8s-vgg16"):
        raise FcnDeployError(f"a VGG16 classifier converts to fcn32s-vgg16, fcn16s-vgg16 or fcn8s-vgg16, not {arch}")
    vgg = torchvision.models.vgg16(weights=None, num_classes=int(state["classifier.6.weight"].shape[0]))
    try:
        vgg.load_state_dict(state, strict=True)
    except RuntimeError as exc:
        raise FcnDeployError(f"weights are not a torchvision VGG16 classifier ({str(exc).splitlines()[0]})") from exc
    stride = int(arch.removeprefix("fcn").split("s")[0])
    model = models.fcn_from_vgg_classifier(vgg, num_classes, stride=stride)
    names, palette = _class_info(num_classes, classes_file)
    meta = ModelMeta(
        arch=arch, num_classes=num_classes, class_names=names, palette=palette,
        min_size=models.spec(arch).min_size, train_size=500,
    )  # fmt: skip
    return model, meta


def fetch_pretrained(name: str, timeout: float = 20.0) -> dict[str, torch.Tensor]:
    """Download torchvision's published weights for ``name`` (fails clearly when offline)."""
    if name not in PRETRAINED:
        raise FcnDeployError(f"unknown --pretrained {name!r}; choose one of: {', '.join(PRETRAINED)}")
    builder, enum_name = PRETRAINED[name]
    weights = getattr(torchvision.models.segmentation if "fcn" in name else torchvision.models, enum_name).DEFAULT
    previous = socket.getdefaulttimeout()
    socket.setdefaulttimeout(timeout)
    try:
        return weights.get_state_dict(progress=True, check_hash=True)
    except Exception as exc:  # urllib raises URLError, socket errors, HTTP errors, hash mismatches
        raise FcnDeployError(
            f"could not download {builder} weights from {weights.url} ({exc.__class__.__name__}: {exc}); "
            "this machine may be offline: download that file elsewhere, then run "
            f"`fcn-deploy import FILE -o OUT.pt`"
        ) from exc
    finally:
        socket.setdefaulttimeout(previous)


def import_weights(
    out: Path,
    source: Path | None = None,
    pretrained: str | None = None,
    arch: str = "fcn8s-vgg16",
    num_classes: int = 21,
    classes_file: Path | None = None,
) -> tuple[Path, ModelMeta]:
    """Convert ``source`` (or ``--pretrained`` weights) and write an fcn-deploy checkpoint to ``out``."""
    if (source is None) == (pretrained is None):
        raise FcnDeployError("give either a weights FILE or --pretrained NAME")
    if source is not None:
        path = require_file(source, "weights file")
        state = _unwrap_state_dict(read_weights_only(path), path)
    else:
        state = fetch_pretrained(str(pretrained))
    kind = detect_kind(state)
    if kind == "torchvision-fcn":
        model, meta = import_torchvision_fcn(state, classes_file)
    else:
        model, meta = import_vgg16_classifier(state, arch, num_classes, classes_file)
    meta.metrics = {"imported_from": str(source or f"torchvision:{pretrained}"), "kind": kind}
    save_checkpoint(out, model, meta)
    return Path(out), meta
