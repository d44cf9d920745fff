"""ONNX Runtime: any fcn-deploy ONNX file (plain export, FP16, INT8 Q/DQ, or an ORT engine)."""

from __future__ import annotations

from pathlib import Path

import numpy as np

from ..errors import FcnDeployError, require_file
from ..meta import read_onnx_meta, read_onnx_props
from .base import Prediction, Profile, Runner, TensorSpec, mask_from_logits

_ORT_TYPES = {
    "tensor(float)": "float32", "tensor(float16)": "float16", "tensor(int64)": "int64",
    "tensor(int32)": "int32", "tensor(uint8)": "uint8",
}  # fmt: skip


def choose_providers(requested: str | list[str] = "auto") -> list[str]:
    """``auto``: the TensorRT and CUDA execution providers when installed, then the CPU one; a list
    (from an engine manifest) is used as it is, if every provider in it is available."""
    import onnxruntime as ort

    available = ort.get_available_providers()
    if isinstance(requested, list):
        missing = [p for p in requested if p not in available]
        if missing:
            raise FcnDeployError(
                f"the engine was optimised for ONNX Runtime providers {requested}, and {missing} are not available "
                "here; rebuild it on this machine"
            )
        return requested
    if requested == "cpu":
        return ["CPUExecutionProvider"]
    preferred = ["TensorrtExecutionProvider", "CUDAExecutionProvider"] if requested == "auto" else [requested]
    chosen = [p for p in preferred if p in available]
    if requested not in ("auto", "cpu") and not chosen:
        raise FcnDeployError(f"ONNX Runtime provider {requested} is not available here (have: {', '.join(available)})")
    return [*chosen, "CPUExecutionProvider"]


def default_profile(meta, batch_dim) -> Profile:
    """Without a manifest: the architecture's minimum up to the recommended maximum."""
    max_batch = batch_dim if isinstance(batch_dim, int) else 64
    min_batch = batch_dim if isinstance(batch_dim, int) else 1
    opt_batch = batch_dim if isinstance(batch_dim, int) else 1
    return Profile(
        (min_batch, meta.min_size, meta.min_size),
        (opt_batch, meta.train_size, meta.train_size),
        (max_batch, meta.max_size, meta.max_size),
    )


class OrtRunner(Runner):
    backend = "onnxruntime"

    def __init__(
        self,
        path: str | Path,
        providers: str | list[str] = "auto",
        threads: int | None = None,
        profile: Profile | None = None,
        precision: str | None = None,
    ):
        import onnx
        import onnxruntime as ort

        self.path = str(require_file(path, "ONNX model"))
        try:
            proto = onnx.load(self.path, load_external_data=False)
        except Exception as exc:  # onnx raises DecodeError / ValueError on a corrupt file
            raise FcnDeployError(f"{path}: not a readable ONNX model ({exc.__class__.__name__}); re-export it") from exc
        self.meta = read_onnx_meta(proto, str(path))
        self.precision = precision or read_onnx_props(proto).get("fcn_deploy.precision", "fp32")
        options = ort.SessionOptions()
        options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
        if threads:
            options.intra_op_num_threads = threads
        options.log_severity_level = 3
        try:
            self.session = ort.InferenceSession(self.path, options, providers=choose_providers(providers))
        except Exception as exc:
            raise FcnDeployError(f"{path}: ONNX Runtime cannot load it ({str(exc).splitlines()[0]})") from exc
        self.providers = self.session.get_providers()
        self._input = self.session.get_inputs()[0]
        names = [o.name for o in self.session.get_outputs()]
        self._logits_name = "logits" if "logits" in names else None
        self._mask_name = "mask" if "mask" in names else None
        if self._logits_name is None and self._mask_name is None:
            raise FcnDeployError(f"{path}: has neither a 'logits' nor a 'mask' output; re-export it")
        self._input_dtype = np.float16 if self._input.type == "tensor(float16)" else np.float32
        self.profile = profile or default_profile(self.meta, self._input.shape[0])

    @staticmethod
    def _spec(arg) -> TensorSpec:
        return TensorSpec(arg.name, _ORT_TYPES.get(arg.type, arg.type), tuple(arg.shape))

    @property
    def inputs(self) -> list[TensorSpec]:
        return [self._spec(i) for i in self.session.get_inputs()]

    @property
    def outputs(self) -> list[TensorSpec]:
        return [self._spec(o) for o in self.session.get_outputs()]

    def infer(self, batch: np.ndarray, need_logits: bool = True) -> Prediction:
        n, _, h, w = batch.shape
        self.profile.check(n, h, w)
        skip_logits = not need_logits and self._mask_name is not None
        wanted = [name for name in (None if skip_logits else self._logits_name, self._mask_name) if name]
        results = dict(zip(wanted, self.session.run(wanted, {self._input.name: batch.astype(self._input_dtype, copy=False)})))
        logits = results.get(self._logits_name)
        if logits is not None:
            logits = logits.astype(np.float32, copy=False)
        mask = results[self._mask_name].astype(np.int64, copy=False) if self._mask_name else mask_from_logits(logits)
        return Prediction(mask=mask, logits=logits)

    def close(self) -> None:
        self.session = None  # type: ignore[assignment]
