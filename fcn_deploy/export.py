"""Export a checkpoint to one self-describing ONNX file with dynamic batch, height and width.

The torch dynamo exporter traces the model with symbolic ``batch``/``height``/``width`` (so no op
can freeze the example's size), the output dims are renamed to the input's, the model metadata is
written to ``metadata_props``, the file passes ``onnx.checker`` (full check) and strict shape
inference, and it is saved as a single file (the exporter's external data folded back in).

Then, always, ONNX Runtime is checked against PyTorch at a spread of sizes (odd, prime, extreme
aspect, the minimum) and at batch 2 on image-like inputs.  The file is written under a temporary
name and only renamed into place when every size passes; otherwise the command fails.
"""

from __future__ import annotations

import contextlib
import io
import logging
import warnings
from dataclasses import dataclass
from pathlib import Path

import onnx
import torch

from .backends.onnxruntime import OnnxRuntimeRunner
from .backends.torch import TorchRunner
from .checkpoint import load_checkpoint
from .errors import CheckFailed, FcnDeployError, first_line
from .events import SILENT, Listener
from .fileio import atomic_path, ensure_writable_dir, sha256_file
from .meta import write_onnx_meta
from .validation import export_thresholds, spread_sizes, validate

#: Opsets the dynamo exporter and the TensorRT parser both handle.
SUPPORTED_OPSETS = range(17, 24)
DEFAULT_OPSET = 20
#: Largest side used by the post-export check (keeps VGG16 checks quick on a CPU).
CHECK_CAP = 320
_TWO_GB = 2 * 1024**3


@dataclass
class ExportOptions:
    opset: int = DEFAULT_OPSET
    static_batch: bool = False
    simplify: bool = False
    mask_output: bool = False
    verify: bool = True


class _WithMask(torch.nn.Module):
    """Adds the argmax ``mask`` output (int64, N x H x W, as ONNX ArgMax defines it)."""

    def __init__(self, model: torch.nn.Module):
        super().__init__()
        self.model = model

    def forward(self, image: torch.Tensor):
        logits = self.model(image)
        return logits, torch.argmax(logits, dim=1)


def _trace(model: torch.nn.Module, example: torch.Tensor, opts: ExportOptions, min_size: int) -> onnx.ModelProto:
    dims = {
        2: torch.export.Dim("height", min=max(2, min_size), max=16384),
        3: torch.export.Dim("width", min=max(2, min_size), max=16384),
    }
    if not opts.static_batch:
        dims[0] = torch.export.Dim("batch", min=1, max=1024)
    output_names = ["logits", "mask"] if opts.mask_output else ["logits"]
    sink = io.StringIO()
    with warnings.catch_warnings(), contextlib.redirect_stdout(sink), contextlib.redirect_stderr(sink):
        warnings.simplefilter("ignore")
        logging.getLogger("torch.onnx").setLevel(logging.ERROR)
        try:
            program = torch.onnx.export(
                model, (example,), dynamo=True, input_names=["image"], output_names=output_names,
                dynamic_shapes={"image": dims}, opset_version=opts.opset, verbose=False, report=False,
            )  # fmt: skip
        except Exception as exc:  # noqa: BLE001 - the exporter raises many kinds for models it cannot trace
            raise FcnDeployError(f"the ONNX exporter failed: {first_line(exc)}") from exc
    return program.model_proto


def _name_dims(model: onnx.ModelProto, static_batch: bool) -> None:
    """Give every I/O dim a readable name: outputs have the input's batch, height and width."""
    batch_name = None if static_batch else "batch"
    for value in list(model.graph.input) + list(model.graph.output):
        dims = value.type.tensor_type.shape.dim
        names = [batch_name, None, "height", "width"] if len(dims) == 4 else [batch_name, "height", "width"]
        for dim, name in zip(dims, names):
            if name is not None:
                dim.ClearField("dim_value")
                dim.dim_param = name


def _check(model: onnx.ModelProto, where: str) -> onnx.ModelProto:
    try:
        onnx.checker.check_model(model, full_check=True)
        return onnx.shape_inference.infer_shapes(model, check_type=True, strict_mode=True, data_prop=True)
    except Exception as exc:
        raise FcnDeployError(f"{where}: the ONNX checker rejected the exported graph: {first_line(exc)}") from exc


def _simplify(model: onnx.ModelProto) -> onnx.ModelProto:
    try:
        import onnxslim
    except ImportError:
        raise FcnDeployError("simplifying needs onnxslim: pip install 'fcn-deploy[simplify]'", options=("simplify",)) from None
    with contextlib.redirect_stdout(io.StringIO()):
        slim = onnxslim.slim(model)
    slim.ClearField("metadata_props")
    slim.metadata_props.extend(model.metadata_props)
    return slim


def export_onnx(
    checkpoint: str | Path,
    out: str | Path,
    opts: ExportOptions | None = None,
    *,
    check_sizes: list[tuple[int, int]] | None = None,
    listener: Listener = SILENT,
) -> dict[str, object]:
    """Export ``checkpoint`` to ``out`` and verify it; returns the check's report (as a dict).
    Each checked size reaches ``listener`` as an ``export_case`` result."""
    opts = opts or ExportOptions()
    if opts.opset not in SUPPORTED_OPSETS:
        raise FcnDeployError(f"unsupported opset {opts.opset}: choose {SUPPORTED_OPSETS.start}..{SUPPORTED_OPSETS.stop - 1}")
    out = Path(out)
    ensure_writable_dir(out.parent)
    ckpt = load_checkpoint(checkpoint)
    meta = ckpt.meta
    meta.source_sha256 = sha256_file(ckpt.path)  # type: ignore[arg-type]
    model = ckpt.build_model()
    wrapped = _WithMask(model) if opts.mask_output else model
    size = max(meta.train_size, 2 * meta.min_size)
    example = torch.zeros(1 if opts.static_batch else 2, 3, size, size)
    listener.note(
        f"exporting {meta.arch} from {checkpoint} (opset {opts.opset}, dynamic "
        f"{'H, W' if opts.static_batch else 'N, H, W'}{', mask output' if opts.mask_output else ''})"
    )
    proto = _trace(wrapped.eval(), example, opts, meta.min_size)
    _name_dims(proto, opts.static_batch)
    write_onnx_meta(proto, meta, {"fcn_deploy.precision": "fp32", "fcn_deploy.opset": str(opts.opset)})
    proto.doc_string = f"fcn-deploy export of {meta.arch} ({meta.num_classes} classes)"
    _check(proto, str(out))
    if opts.simplify:
        proto = _simplify(proto)
        _check(proto, str(out))
    if proto.ByteSize() >= _TWO_GB:
        raise FcnDeployError(f"{meta.arch} is over 2 GB; single-file ONNX cannot hold it")

    report: dict[str, object] = {"onnx": str(out), "opset": opts.opset, "simplified": opts.simplify}
    with atomic_path(out) as tmp:
        onnx.save(proto, str(tmp), save_as_external_data=False)
        if opts.verify:
            result = verify_export(tmp, ckpt, static_batch=opts.static_batch, sizes=check_sizes, listener=listener)
            report["check"] = result
            if not result["passed"]:
                raise CheckFailed(
                    f"{out}: ONNX Runtime disagrees with PyTorch at {', '.join(result['failing_sizes'])}; "
                    "nothing was written (see the sizes above)"
                )
    report["sha256"] = sha256_file(out)
    listener.note(f"wrote {out} ({out.stat().st_size / 1e6:.1f} MB)", level="success")
    return report


def verify_export(
    onnx_path: Path, ckpt, *, static_batch: bool = False, sizes: list[tuple[int, int]] | None = None, listener: Listener = SILENT
) -> dict[str, object]:
    """ONNX Runtime vs PyTorch, FP32, at a spread of sizes and (unless static) batch 2."""
    engine = OnnxRuntimeRunner(onnx_path, providers="cpu")
    reference = TorchRunner(ckpt)
    sizes = sizes or spread_sizes(engine.profile, random_sizes=2, cap=CHECK_CAP)
    batch_sizes = {} if static_batch else {sizes[min(2, len(sizes) - 1)]: 2}
    listener.note(f"checking ONNX Runtime against PyTorch at {len(sizes)} sizes")
    report = validate(engine, reference, sizes, export_thresholds(), batch_sizes=batch_sizes, listener=_ExportCases(listener))
    return report.to_dict()


class _ExportCases(Listener):
    """Passes each validated size on as an ``export_case`` (the export prints one line per size)."""

    def __init__(self, listener: Listener):
        self.inner = listener

    def note(self, text: str, level="info") -> None:
        self.inner.note(text, level)

    def result(self, kind: str, value) -> None:
        if kind == "validation_case":
            self.inner.result("export_case", value)
