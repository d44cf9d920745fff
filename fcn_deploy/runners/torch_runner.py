"""The PyTorch FP32 reference: the checkpoint itself, run eagerly."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import torch

from ..checkpoint import Checkpoint, load_checkpoint
from .base import Prediction, Profile, Runner, TensorSpec, mask_from_logits


class TorchRunner(Runner):
    backend = "torch"
    precision = "fp32"

    def __init__(self, checkpoint: str | Path | Checkpoint, device: str = "cpu"):
        ckpt = checkpoint if isinstance(checkpoint, Checkpoint) else load_checkpoint(checkpoint)
        self.path = str(ckpt.path or "")
        self.meta = ckpt.meta
        self.device = torch.device(device)
        self.model = ckpt.build_model().to(self.device)
        self.profile = Profile(
            (1, self.meta.min_size, self.meta.min_size),
            (1, self.meta.train_size, self.meta.train_size),
            (64, 8192, 8192),
        )

    @property
    def inputs(self) -> list[TensorSpec]:
        return [TensorSpec("image", "float32", ("batch", 3, "height", "width"))]

    @property
    def outputs(self) -> list[TensorSpec]:
        return [TensorSpec("logits", "float32", ("batch", self.meta.num_classes, "height", "width"))]

    @torch.inference_mode()
    def infer_torch(self, batch: torch.Tensor) -> torch.Tensor:
        """Logits for a batch already on ``self.device`` (what the benchmark times on a GPU)."""
        logits = self.model(batch)
        if self.device.type == "cuda":
            torch.cuda.synchronize(self.device)
        return logits

    @torch.inference_mode()
    def infer(self, batch: np.ndarray, need_logits: bool = True) -> Prediction:
        logits = self.infer_torch(torch.from_numpy(np.ascontiguousarray(batch, dtype=np.float32)).to(self.device))
        if self.device.type == "cuda":  # argmax where the logits are; copy only what is needed
            mask = logits.argmax(1).cpu().numpy()
            return Prediction(mask=mask, logits=logits.float().cpu().numpy() if need_logits else None)
        logits_np = logits.numpy()
        return Prediction(mask=mask_from_logits(logits_np), logits=logits_np if need_logits else None)
