"""Checkpoints: weights plus the :class:`~fcn_deploy.meta.ModelMeta` that rebuilds and feeds them.

Format (a plain dict, so ``torch.load(weights_only=True)`` reads it)::

    {"format": "fcn-deploy/1", "meta": {...}, "state_dict": {...},
     "train_state": {"epoch": ..., "step": ..., "optimizer": ..., "scheduler": ..., "best_miou": ...}}

Loading never unpickles code: a file that needs more than tensors and plain containers is refused.
"""

from __future__ import annotations

import pickle
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from torch import nn

from . import models
from .errors import FcnDeployError, require_file
from .fileio import atomic_path
from .meta import ModelMeta

FORMAT = "fcn-deploy/1"


@dataclass
class Checkpoint:
    meta: ModelMeta
    state_dict: dict[str, torch.Tensor]
    train_state: dict[str, Any] | None = None
    path: Path | None = None

    def build_model(self, eval_mode: bool = True) -> nn.Module:
        """Rebuild the architecture and load the weights (strictly: a mismatch is an error)."""
        model = models.build(self.meta.arch, self.meta.num_classes, **self.meta.arch_kwargs)
        try:
            model.load_state_dict(self.state_dict, strict=True)
        except RuntimeError as exc:
            first = str(exc).splitlines()[0]
            where = self.path or "checkpoint"
            raise FcnDeployError(
                f"{where}: weights do not fit architecture {self.meta.arch} ({first}); is this a checkpoint for a different architecture?"
            ) from exc
        return model.eval() if eval_mode else model


def save_checkpoint(path: str | Path, model: nn.Module, meta: ModelMeta, train_state: dict[str, Any] | None = None) -> Path:
    """Write a checkpoint atomically (temporary file, then rename)."""
    payload = {"format": FORMAT, "meta": meta.to_dict(), "state_dict": model.state_dict()}
    if train_state is not None:
        payload["train_state"] = train_state
    with atomic_path(path) as tmp:
        torch.save(payload, tmp)
    return Path(path)


def read_weights_only(path: Path) -> Any:
    """``torch.load(weights_only=True)`` with each way a file can be wrong turned into a clear error."""
    try:
        return torch.load(path, map_location="cpu", weights_only=True)
    except pickle.UnpicklingError as exc:
        if "Unsupported global" in str(exc):  # a class or function the weights-only unpickler refused
            raise FcnDeployError(
                f"{path}: refused: the file needs arbitrary pickled code to load (weights_only=True); re-save it as a plain state dict"
            ) from exc
        raise FcnDeployError(f"{path}: not a readable PyTorch checkpoint (invalid pickle data); is it corrupt?") from exc
    except Exception as exc:  # BadZipFile, EOFError, RuntimeError, KeyError, ... from a damaged file
        first = (str(exc).splitlines() or [exc.__class__.__name__])[0]
        raise FcnDeployError(f"{path}: not a readable PyTorch checkpoint ({first}); is it corrupt?") from exc


def load_checkpoint(path: str | Path) -> Checkpoint:
    path = require_file(path, "checkpoint")
    if path.suffix in (".onnx", ".plan", ".engine"):
        raise FcnDeployError(f"{path}: is an exported model, not a checkpoint; pass the .pt checkpoint it came from")
    data = read_weights_only(path)
    if not isinstance(data, dict) or data.get("format") != FORMAT:
        raise FcnDeployError(f"{path}: not an fcn-deploy checkpoint; bring torchvision or VGG weights in with `fcn-deploy import`")
    meta = ModelMeta.from_dict(data["meta"], source=str(path))
    models.spec(meta.arch)  # unknown architecture -> clear error
    return Checkpoint(meta, data["state_dict"], data.get("train_state"), path)
