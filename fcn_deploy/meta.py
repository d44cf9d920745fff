"""The model metadata that travels with every artefact.

The checkpoint holds a :class:`ModelMeta`; export copies it into the ONNX ``metadata_props``; the
engine manifest copies it again.  Any later stage can therefore run from its input file alone.
"""

from __future__ import annotations

import dataclasses
import json
from dataclasses import dataclass, field
from typing import Any

from . import __version__
from .errors import FcnDeployError

#: ImageNet statistics: what torchvision backbones (and our defaults) are trained with.
IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)

#: The ONNX metadata_props key that holds the JSON-encoded :class:`ModelMeta`.
ONNX_META_KEY = "fcn_deploy.meta"


@dataclass
class ModelMeta:
    """Everything needed to rebuild, feed and interpret a segmentation model."""

    arch: str
    num_classes: int
    class_names: list[str]
    palette: list[list[int]]
    #: Input normalisation: pixels are scaled to [0, 1], then ``(x - mean) / std`` per RGB channel.
    mean: list[float] = field(default_factory=lambda: list(IMAGENET_MEAN))
    std: list[float] = field(default_factory=lambda: list(IMAGENET_STD))
    #: Smallest input height/width the architecture accepts (the engine profile's minimum).
    min_size: int = 32
    #: Recommended largest input side (the default engine profile's maximum).
    max_size: int = 1024
    #: Height/width the model was trained at (the default engine profile's opt shape).
    train_size: int = 256
    #: Builder keyword arguments (width multiplier, learnable upsampling, ...).
    arch_kwargs: dict[str, Any] = field(default_factory=dict)
    #: Evaluation metrics from training or import (mean IU, ...), if any.
    metrics: dict[str, Any] = field(default_factory=dict)
    #: sha256 of the checkpoint this model came from (filled by export), or of the foreign ONNX it was adopted from.
    source_sha256: str = ""
    #: What `fcn-deploy adopt` did to a foreign ONNX (source file and sha256, original input and output names,
    #: dropped outputs, added resize, dims made dynamic); empty for models this toolkit exported.
    adopted: dict[str, Any] = field(default_factory=dict)
    fcn_deploy_version: str = __version__

    def __post_init__(self) -> None:
        if len(self.class_names) != self.num_classes:
            raise FcnDeployError(
                f"metadata lists {len(self.class_names)} class names for {self.num_classes} classes; give one name per class"
            )
        if len(self.palette) < self.num_classes:
            self.palette = list(self.palette) + default_palette(self.num_classes)[len(self.palette) :]

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    def to_json(self) -> str:
        return json.dumps(self.to_dict(), sort_keys=True)

    @classmethod
    def from_dict(cls, data: dict[str, Any], source: str = "metadata") -> ModelMeta:
        known = {f.name for f in dataclasses.fields(cls)}
        try:
            return cls(**{k: v for k, v in data.items() if k in known})
        except TypeError as exc:
            raise FcnDeployError(f"{source}: incomplete fcn-deploy metadata ({exc}); re-export the model") from exc

    @classmethod
    def from_json(cls, text: str, source: str = "metadata") -> ModelMeta:
        try:
            data = json.loads(text)
        except json.JSONDecodeError as exc:
            raise FcnDeployError(f"{source}: metadata is not valid JSON ({exc}); re-export the model") from exc
        return cls.from_dict(data, source)


def voc_class_names() -> list[str]:
    return [
        "background", "aeroplane", "bicycle", "bird", "boat", "bottle", "bus", "car", "cat", "chair", "cow",
        "diningtable", "dog", "horse", "motorbike", "person", "pottedplant", "sheep", "sofa", "train", "tvmonitor",
    ]  # fmt: skip


def default_palette(n: int = 256) -> list[list[int]]:
    """The PASCAL VOC colour map (bit-interleaved), extended to ``n`` entries."""
    palette = []
    for index in range(n):
        r = g = b = 0
        c = index
        for shift in range(7, -1, -1):
            r |= ((c >> 0) & 1) << shift
            g |= ((c >> 1) & 1) << shift
            b |= ((c >> 2) & 1) << shift
            c >>= 3
        palette.append([r, g, b])
    return palette


def write_onnx_meta(model, meta: ModelMeta, extra: dict[str, str] | None = None) -> None:
    """Store ``meta`` in an ONNX ModelProto's ``metadata_props`` (JSON under one key, plus a few
    readable keys for tools like Netron)."""
    props = {
        ONNX_META_KEY: meta.to_json(),
        "arch": meta.arch,
        "num_classes": str(meta.num_classes),
        "class_names": json.dumps(meta.class_names),
        "palette": json.dumps(meta.palette),
        "normalization": json.dumps({"scale": "1/255", "mean": meta.mean, "std": meta.std}),
        "min_size": str(meta.min_size),
        "max_size": str(meta.max_size),
        "source_sha256": meta.source_sha256,
        "fcn_deploy_version": meta.fcn_deploy_version,
        **(extra or {}),
    }
    existing = {p.key: p for p in model.metadata_props}
    for key, value in props.items():
        if key in existing:
            existing[key].value = value
        else:
            entry = model.metadata_props.add()
            entry.key, entry.value = key, value


def read_onnx_props(model) -> dict[str, str]:
    return {p.key: p.value for p in model.metadata_props}


def read_onnx_meta(model, source: str = "ONNX model") -> ModelMeta:
    props = read_onnx_props(model)
    if ONNX_META_KEY not in props:
        raise FcnDeployError(
            f"{source}: has no fcn-deploy metadata; export it with `fcn-deploy export`, or bring an ONNX exported "
            "elsewhere in with `fcn-deploy adopt`"
        )
    return ModelMeta.from_json(props[ONNX_META_KEY], source)
