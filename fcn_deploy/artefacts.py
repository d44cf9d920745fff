"""What a path is: a checkpoint, an ONNX graph, or an engine.  The one place that decides.

An engine is whatever has a manifest beside it (``<engine>.json``), whatever its suffix: the
manifest names the backend.  A checkpoint is a PyTorch file (a zip archive, or ``.pt``/``.pth``).
An ONNX graph is a protobuf file named ``.onnx`` without a manifest.  Every command that takes a
model asks :func:`kind_of`, never the suffix.
"""

from __future__ import annotations

import enum
import zipfile
from pathlib import Path

from .errors import FcnDeployError, require_file

CHECKPOINT_SUFFIXES = (".pt", ".pth")


class Kind(enum.Enum):
    CHECKPOINT = "checkpoint"
    ONNX = "onnx"
    ENGINE = "engine"


def manifest_path(engine: str | Path) -> Path:
    """Where an engine's manifest lives: ``<engine>.json`` beside it."""
    engine = Path(engine)
    return engine.with_name(engine.name + ".json")


def has_manifest(path: str | Path) -> bool:
    return manifest_path(path).is_file()


def is_checkpoint(path: str | Path) -> bool:
    path = Path(path)
    if path.suffix.lower() in CHECKPOINT_SUFFIXES:
        return True
    return path.is_file() and zipfile.is_zipfile(path)


def kind_of(path: str | Path, what: str = "model or engine") -> Kind:
    """The kind of the existing file ``path``, or a one-line error saying what it could be."""
    path = require_file(path, what)
    if has_manifest(path):
        return Kind.ENGINE
    if is_checkpoint(path):
        return Kind.CHECKPOINT
    if path.suffix.lower() == ".onnx":
        return Kind.ONNX
    raise FcnDeployError(
        f"{path}: its manifest {manifest_path(path).name} is missing, and engines open through their manifest; rebuild it with "
        "`fcn-deploy build-engine` (or pass the checkpoint or ONNX file it was built from)"
    )
