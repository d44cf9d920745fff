"""Image I/O and the one preprocessing function every stage shares.

Training, calibration, validation and inference all call :func:`preprocess`, so an engine is fed
exactly what the reference was fed.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

import numpy as np
from PIL import Image, UnidentifiedImageError

from ..errors import FcnDeployError
from ..fileio import atomic_path

IMAGE_SUFFIXES = {".jpg", ".jpeg", ".png", ".bmp", ".tif", ".tiff", ".webp"}


def list_images(folder: str | Path) -> list[Path]:
    """Image files directly inside ``folder``, sorted by name."""
    return sorted(p for p in Path(folder).iterdir() if p.suffix.lower() in IMAGE_SUFFIXES and p.is_file())


def load_rgb(path: str | Path, convert: bool = False) -> np.ndarray:
    """Read an image as ``uint8 HxWx3`` RGB.

    Grayscale, palette and RGBA images are refused unless ``convert`` (then they are converted to
    RGB, alpha dropped), because silently feeding a model a different kind of image than it was
    trained on is a quiet accuracy bug.
    """
    path = Path(path)
    try:
        with Image.open(path) as img:
            img.load()
            mode = img.mode
            if mode != "RGB":
                if not convert:
                    kind = {"L": "grayscale", "LA": "grayscale+alpha", "RGBA": "RGBA", "P": "palette", "I;16": "16-bit"}
                    raise FcnDeployError(
                        f"{path}: image is {kind.get(mode, mode)} (mode {mode}), the model expects RGB; convert it, or pass --convert-rgb"
                    )
                img = img.convert("RGB")
            return np.asarray(img, dtype=np.uint8).copy()
    except FileNotFoundError:
        raise FcnDeployError(f"image not found: {path}") from None
    except (UnidentifiedImageError, OSError, SyntaxError, ValueError) as exc:
        raise FcnDeployError(f"{path}: not a readable image ({exc.__class__.__name__}); replace or remove it") from exc


def normalisation(mean: Sequence[float], std: Sequence[float]) -> tuple[np.ndarray, np.ndarray]:
    """float32 ``(scale, shift)`` per channel: a pixel ``x`` in 0..255 becomes ``x * scale - shift``,
    ``(x / 255 - mean) / std`` in one multiply and one subtract (an engine that normalises inside its
    graph uses the same two constants, so both give the same floats)."""
    std32 = np.asarray(std, dtype=np.float32)
    return (1.0 / (255.0 * std32)).astype(np.float32), (np.asarray(mean, dtype=np.float32) / std32).astype(np.float32)


def preprocess(images: np.ndarray | Sequence[np.ndarray], mean: Sequence[float], std: Sequence[float]) -> np.ndarray:
    """``uint8 (N)xHxWx3`` RGB -> ``float32 Nx3xHxW``: scaled to [0, 1], then ``(x - mean) / std``."""
    batch = np.asarray(images) if not isinstance(images, np.ndarray) else images
    if batch.ndim == 3:
        batch = batch[None]
    if batch.ndim != 4 or batch.shape[-1] != 3:
        raise ValueError(f"expected (N)xHxWx3 RGB images, got shape {batch.shape}")
    scale, shift = (value.reshape(1, 3, 1, 1) for value in normalisation(mean, std))
    out = np.empty((batch.shape[0], 3, *batch.shape[1:3]), dtype=np.float32)
    np.multiply(batch.transpose(0, 3, 1, 2), scale, out=out)  # one pass, no float temporaries
    np.subtract(out, shift, out=out)
    return out


def resize_rgb(image: np.ndarray, height: int, width: int) -> np.ndarray:
    if image.shape[:2] == (height, width):
        return image
    return np.asarray(Image.fromarray(image).resize((width, height), Image.BILINEAR))


def resize_mask(mask: np.ndarray, height: int, width: int) -> np.ndarray:
    """Nearest-neighbour resize of a label map; uint8 unless it is int32 (more than 256 classes)."""
    if mask.shape[:2] == (height, width):
        return mask
    labels = mask if mask.dtype == np.int32 else mask.astype(np.uint8)
    return np.asarray(Image.fromarray(labels).resize((width, height), Image.NEAREST))


def fit_to_size(image: np.ndarray, height: int, width: int) -> np.ndarray:
    """Resize ``image`` to cover ``height x width`` keeping its aspect, then centre-crop to it."""
    h, w = image.shape[:2]
    scale = max(height / h, width / w)
    image = resize_rgb(image, max(height, round(h * scale)), max(width, round(w * scale)))
    top = (image.shape[0] - height) // 2
    left = (image.shape[1] - width) // 2
    return image[top : top + height, left : left + width]


def colorize(mask: np.ndarray, palette: Sequence[Sequence[int]]) -> np.ndarray:
    """Label map -> ``uint8 HxWx3`` colours (labels beyond the palette are black)."""
    lut = np.zeros((256, 3), dtype=np.uint8)
    pal = np.asarray(palette, dtype=np.uint8)[:256]
    lut[: len(pal)] = pal
    return lut[mask.astype(np.uint8)]


def save_palette_png(path: str | Path, mask: np.ndarray, palette: Sequence[Sequence[int]]) -> None:
    """Save a label map as a palette PNG (the VOC SegmentationClass format): pixel values = labels."""
    img = Image.fromarray(mask.astype(np.uint8))  # mode L; putpalette turns it into P
    flat = [c for colour in list(palette)[:256] for c in colour]
    img.putpalette(flat + [0] * (768 - len(flat)))
    with atomic_path(path) as tmp:
        img.save(tmp, format="PNG")
