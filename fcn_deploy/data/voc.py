"""PASCAL VOC-layout segmentation folders (read and write).

Layout::

    ROOT/JPEGImages/<id>.jpg
    ROOT/SegmentationClass/<id>.png        palette PNG, pixel value = class index, 255 = void
    ROOT/ImageSets/Segmentation/train.txt  one <id> per line (and val.txt)
    ROOT/classes.json                      optional: {"class_names": [...], "palette": [[r,g,b], ...]}

Without ``classes.json`` the 21 VOC classes and the VOC colour map are used.

Missing folders, split files, images or masks are reported before anything runs.  An image or mask
that cannot be decoded, or a mask label that is neither a class index nor 255, is an error naming
the file (and the value); nothing is skipped silently.
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
from PIL import Image

from ..errors import FcnDeployError, require_dir
from ..fileio import atomic_path, atomic_write_json
from ..meta import default_palette, voc_class_names
from .images import load_rgb, save_palette_png

VOID = 255
CLASSES_FILE = "classes.json"


def read_class_info(root: str | Path) -> tuple[list[str], list[list[int]]]:
    """Class names and palette from ``ROOT/classes.json``, else the VOC defaults."""
    path = Path(root) / CLASSES_FILE
    if not path.exists():
        return voc_class_names(), default_palette(21)
    return load_classes_file(path)


def load_classes_file(path: str | Path) -> tuple[list[str], list[list[int]]]:
    """Read ``{"class_names": [...], "palette": [[r, g, b], ...]}`` (palette optional)."""
    path = Path(path)
    try:
        data = json.loads(path.read_text())
        names = [str(n) for n in data["class_names"]]
    except (json.JSONDecodeError, KeyError, TypeError) as exc:
        raise FcnDeployError(f"{path}: expected JSON with a 'class_names' list ({exc}); fix or remove the file") from exc
    palette = data.get("palette") or default_palette(len(names))
    return names, [list(map(int, c)) for c in palette]


class VOCSegmentation:
    """A map-style dataset over a VOC-layout folder: ``dataset[i] -> (uint8 HxWx3, uint8 HxW)``."""

    def __init__(self, root: str | Path, split: str = "train", num_classes: int | None = None):
        self.root = require_dir(root, "dataset folder", "expected a VOC-layout folder; see `fcn-deploy synth-data`")
        self.split = split
        self.class_names, self.palette = read_class_info(self.root)
        self.num_classes = num_classes or len(self.class_names)
        image_dir = require_dir(self.root / "JPEGImages", "images folder", "the VOC layout needs JPEGImages/")
        mask_dir = require_dir(self.root / "SegmentationClass", "masks folder", "the VOC layout needs SegmentationClass/")
        split_file = self.root / "ImageSets" / "Segmentation" / f"{split}.txt"
        if not split_file.is_file():
            raise FcnDeployError(f"split file not found: {split_file} (list one image id per line)")
        self.ids = [line.strip() for line in split_file.read_text().splitlines() if line.strip()]
        if not self.ids:
            raise FcnDeployError(f"split file is empty: {split_file}")
        self.images = [self._find_image(image_dir, i) for i in self.ids]
        self.masks = [mask_dir / f"{i}.png" for i in self.ids]
        missing_img = [i for i, p in zip(self.ids, self.images) if p is None]
        missing_mask = [i for i, p in zip(self.ids, self.masks) if not p.is_file()]
        if missing_img:
            raise FcnDeployError(f"{len(missing_img)} image(s) of {split_file.name} missing from {image_dir} (first: {missing_img[0]})")
        if missing_mask:
            raise FcnDeployError(
                f"{len(missing_mask)} image(s) without a mask in {mask_dir} (first: {missing_mask[0]}.png); "
                "add the masks or remove the ids from the split file"
            )

    @staticmethod
    def _find_image(image_dir: Path, image_id: str) -> Path | None:
        for suffix in (".jpg", ".jpeg", ".png"):
            if (candidate := image_dir / f"{image_id}{suffix}").is_file():
                return candidate
        return None

    def __len__(self) -> int:
        return len(self.ids)

    def load_mask(self, index: int) -> np.ndarray:
        path = self.masks[index]
        try:
            with Image.open(path) as img:
                if img.mode not in ("P", "L"):
                    raise FcnDeployError(
                        f"{path}: mask is mode {img.mode}; masks must be palette (P) or grayscale (L) PNGs of class indices"
                    )
                mask = np.asarray(img, dtype=np.uint8).copy()
        except (OSError, SyntaxError) as exc:
            raise FcnDeployError(f"{path}: not a readable mask PNG ({exc.__class__.__name__}); replace it") from exc
        bad = mask[(mask >= self.num_classes) & (mask != VOID)]
        if bad.size:
            raise FcnDeployError(
                f"{path}: label {int(bad.max())} is beyond num_classes={self.num_classes} "
                f"(valid: 0..{self.num_classes - 1}, and {VOID} for void)"
            )
        return mask

    def __getitem__(self, index: int) -> tuple[np.ndarray, np.ndarray]:
        image = load_rgb(self.images[index], convert=True)
        mask = self.load_mask(index)
        if image.shape[:2] != mask.shape:
            raise FcnDeployError(
                f"{self.masks[index]}: mask is {mask.shape[1]}x{mask.shape[0]} but its image is "
                f"{image.shape[1]}x{image.shape[0]}; they must match"
            )
        return image, mask


def write_voc(root: str | Path, splits: dict[str, object], class_names: list[str], palette: list[list[int]]) -> Path:
    """Write datasets (``split -> dataset yielding (image, label)``) to ``root`` in VOC layout."""
    root = Path(root)
    (root / "JPEGImages").mkdir(parents=True, exist_ok=True)
    (root / "SegmentationClass").mkdir(parents=True, exist_ok=True)
    (root / "ImageSets" / "Segmentation").mkdir(parents=True, exist_ok=True)
    for split, dataset in splits.items():
        ids = []
        for index in range(len(dataset)):  # type: ignore[arg-type]
            image, label = dataset[index]  # type: ignore[index]
            image_id = f"{split}_{index:05d}"
            with atomic_path(root / "JPEGImages" / f"{image_id}.jpg") as tmp:
                Image.fromarray(image).save(tmp, format="JPEG", quality=95)
            save_palette_png(root / "SegmentationClass" / f"{image_id}.png", label, palette)
            ids.append(image_id)
        with atomic_path(root / "ImageSets" / "Segmentation" / f"{split}.txt") as tmp:
            tmp.write_text("\n".join(ids) + "\n")
    atomic_write_json(root / CLASSES_FILE, {"class_names": class_names, "palette": palette})
    return root
