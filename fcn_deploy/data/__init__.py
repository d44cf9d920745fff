"""Datasets: the synthetic default and VOC-layout folders, behind one ``open_dataset`` call."""

from __future__ import annotations

from dataclasses import dataclass

from ..errors import FcnDeployError
from .images import colorize, fit_to_size, list_images, load_rgb, preprocess, resize_mask, resize_rgb
from .synthetic import CLASS_NAMES as SYNTHETIC_CLASSES
from .synthetic import PALETTE as SYNTHETIC_PALETTE
from .synthetic import SyntheticScenes, make_scene
from .voc import VOID, VOCSegmentation, read_class_info, write_voc

__all__ = [
    "DataSource", "open_dataset", "SyntheticScenes", "VOCSegmentation", "make_scene",
    "load_rgb", "preprocess", "list_images", "colorize", "fit_to_size", "resize_rgb", "resize_mask",
    "write_voc", "read_class_info", "VOID", "SYNTHETIC_CLASSES", "SYNTHETIC_PALETTE",
]  # fmt: skip

#: Seeds of the synthetic splits: disjoint streams, so "val" is truly held out.
SYNTHETIC_SEEDS = {"train": 0, "val": 1, "calib": 2, "test": 3, "bench": 4, "check": 6}


@dataclass
class DataSource:
    """A dataset split plus the class metadata that goes into the checkpoint."""

    dataset: object  # map-style: len() and [i] -> (uint8 HxWx3, uint8 HxW)
    class_names: list[str]
    palette: list[list[int]]
    name: str


def open_dataset(source: str, split: str = "train", size: int = 128, length: int | None = None) -> DataSource:
    """``source`` is ``"synthetic"`` or a VOC-layout folder.

    For ``synthetic``, ``size`` is the scene side and ``length`` the number of scenes (defaults:
    4000 for train, 96 otherwise).  For folders, both are ignored: images keep their own size.
    """
    if source == "synthetic":
        if split not in SYNTHETIC_SEEDS:
            raise FcnDeployError(f"synthetic split {split!r}: choose one of {', '.join(sorted(SYNTHETIC_SEEDS))}")
        count = length if length is not None else (4000 if split == "train" else 96)
        dataset = SyntheticScenes(count, size, seed=SYNTHETIC_SEEDS[split])
        return DataSource(dataset, list(SYNTHETIC_CLASSES), [list(c) for c in SYNTHETIC_PALETTE], f"synthetic:{split}")
    voc = VOCSegmentation(source, split)
    return DataSource(voc, voc.class_names, voc.palette, f"{source}:{split}")
