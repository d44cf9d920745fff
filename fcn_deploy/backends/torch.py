"""The PyTorch FP32 reference: the checkpoint itself, run eagerly (on the CPU or a CUDA device).

``precision="fp16"`` runs the same model with FP16 weights and activations (``model.half()``, torch
float16 runs on CPUs too): every layer's output is rounded to FP16, as in a TensorRT FP16 engine.
Validated against the FP32 reference, it measures what FP16 arithmetic alone costs a model
(``fcn-deploy validate CKPT -r CKPT --emulate-fp16``), which is where the FP16 thresholds come from.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import torch

from ..checkpoint import Checkpoint, load_checkpoint
from ..errors import FcnDeployError
from .base import Capabilities, Runner, TensorSpec
from .profile import default_profile


class TorchRunner(Runner):
    backend = "torch"

    #: torch dtype of the weights and activations per precision (I/O stays float32).
    DTYPES = {"fp32": torch.float32, "fp16": torch.float16}

    def __init__(self, checkpoint: str | Path | Checkpoint, device: str = "cpu", precision: str = "fp32"):
        if precision not in self.DTYPES:
            raise FcnDeployError(f"the PyTorch runner runs {' or '.join(self.DTYPES)}, not {precision!r}")
        ckpt = checkpoint if isinstance(checkpoint, Checkpoint) else load_checkpoint(checkpoint)
        super().__init__(ckpt.path or "", ckpt.meta, default_profile(ckpt.meta, bounded=False), precision)
        self.torch_device = torch.device(device)
        self.device = self.torch_device.type
        self.capabilities = Capabilities(device_infer=self.device == "cuda")
        self.dtype = self.DTYPES[precision]
        self.model = ckpt.build_model().to(self.torch_device, self.dtype)

    @property
    def arithmetic(self) -> str:
        return self.precision  # torch float16 rounds every layer's output to FP16, as a TensorRT FP16 engine does

    @property
    def inputs(self) -> list[TensorSpec]:
        return [TensorSpec("image", "float32", ("batch", 3, "height", "width"))]

    @property
    def outputs(self) -> list[TensorSpec]:
        return [TensorSpec("logits", "float32", ("batch", self.meta.num_classes, "height", "width"))]

    @torch.inference_mode()
    def infer_on_device(self, batch: torch.Tensor) -> torch.Tensor:
        """Logits for a batch already on the device (what the benchmark times on a GPU)."""
        logits = self.model(batch.to(self.dtype)).float()
        if self.torch_device.type == "cuda":
            torch.cuda.synchronize(self.torch_device)
        return logits

    @torch.inference_mode()
    def infer_impl(self, batch: np.ndarray, need_logits: bool) -> dict[str, np.ndarray | None]:
        logits = self.infer_on_device(torch.from_numpy(batch).to(self.torch_device))
        if self.torch_device.type == "cuda":  # argmax where the logits are; copy only what is needed
            return {"mask": logits.argmax(1).cpu().numpy(), "logits": logits.float().cpu().numpy() if need_logits else None}
        return {"logits": logits.numpy()}
