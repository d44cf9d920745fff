"""Export: one self-contained ONNX per family, dynamic N/H/W, metadata, verification that fails loudly."""

from __future__ import annotations

import numpy as np
import onnx
import pytest

from fcn_deploy.checkpoint import load_checkpoint
from fcn_deploy.cli import main
from fcn_deploy.data.images import preprocess
from fcn_deploy.data.synthetic import make_scene
from fcn_deploy.errors import CheckFailed, FcnDeployError
from fcn_deploy.export import ExportOptions, export_onnx
from fcn_deploy.meta import read_onnx_meta

from helpers import random_checkpoint

#: Nine sizes: the minimum, odd, prime, extreme aspect ratios, non-multiples of 32 (batch 2 on one).
CHECK_SIZES = [(32, 32), (97, 129), (127, 131), (32, 261), (199, 32), (64, 64), (211, 173), (45, 300), (160, 96)]

FAMILIES = {
    "fcn8s-vgg16": {"width": 1 / 16},
    "fcn32s-vgg16": {"width": 1 / 16},
    "fcn-resnet50": {"width": 0.125},
}


@pytest.mark.parametrize("arch", sorted(FAMILIES))
def test_each_family_exports_and_verifies_at_many_sizes(arch, tmp_path):
    ckpt = random_checkpoint(tmp_path / f"{arch}.pt", arch, FAMILIES[arch])
    report = export_onnx(ckpt, tmp_path / f"{arch}.onnx", check_sizes=CHECK_SIZES)
    check = report["check"]
    assert check["passed"]
    assert len(check["cases"]) == len(CHECK_SIZES) >= 8
    assert {(c["height"], c["width"]) for c in check["cases"]} == set(CHECK_SIZES)
    assert any(c["batch"] == 2 for c in check["cases"])
    assert all(c["max_abs_logit_diff"] < 1e-3 for c in check["cases"])


def test_onnx_is_single_file_dynamic_and_self_describing(tiny_checkpoint, tiny_onnx):
    assert not list(tiny_onnx.parent.glob(tiny_onnx.name + ".data"))
    model = onnx.load(str(tiny_onnx), load_external_data=False)
    assert not any(init.data_location == onnx.TensorProto.EXTERNAL for init in model.graph.initializer)
    onnx.checker.check_model(model, full_check=True)
    (image,) = model.graph.input
    assert image.name == "image"
    dims = [d.dim_param or d.dim_value for d in image.type.tensor_type.shape.dim]
    assert dims == ["batch", 3, "height", "width"]
    (logits,) = model.graph.output
    assert [d.dim_param or d.dim_value for d in logits.type.tensor_type.shape.dim] == ["batch", 5, "height", "width"]
    meta = read_onnx_meta(model)
    ckpt_meta = load_checkpoint(tiny_checkpoint).meta
    for field in ("arch", "num_classes", "class_names", "palette", "mean", "std", "min_size", "max_size", "arch_kwargs"):
        assert getattr(meta, field) == getattr(ckpt_meta, field), field
    assert len(meta.source_sha256) == 64
    props = {p.key: p.value for p in model.metadata_props}
    assert props["arch"] == "fcn8s-resnet18" and props["fcn_deploy.precision"] == "fp32"


def test_no_shape_is_frozen_to_the_export_example(tiny_onnx):
    """Exported at 96x96; runs (and shapes follow the input) far from it."""
    import onnxruntime as ort

    session = ort.InferenceSession(str(tiny_onnx), providers=["CPUExecutionProvider"])
    for n, h, w in [(1, 32, 32), (3, 41, 257), (1, 333, 97), (2, 96, 96)]:
        (out,) = session.run(None, {"image": np.zeros((n, 3, h, w), np.float32)})
        assert out.shape == (n, 5, h, w)


def test_reference_evaluator_agrees_with_onnxruntime(tmp_path):
    """An independent oracle: ONNX's own reference implementation of every op."""
    import onnxruntime as ort
    from onnx.reference import ReferenceEvaluator

    ckpt = random_checkpoint(tmp_path / "vgg.pt", "fcn8s-vgg16", {"width": 1 / 32})
    path = tmp_path / "vgg.onnx"
    export_onnx(ckpt, path, check_sizes=[(32, 40)])
    x = preprocess(make_scene(7, 0, 36, 44)[0], (0.5,) * 3, (0.25,) * 3)
    ort_out = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"]).run(None, {"image": x})[0]
    ref_out = ReferenceEvaluator(onnx.load(str(path))).run(None, {"image": x})[0]
    assert ref_out.shape == ort_out.shape == (1, 4, 36, 44)
    np.testing.assert_allclose(ref_out, ort_out, rtol=1e-4, atol=1e-4 * float(np.abs(ort_out).max()))


def test_mask_output_and_static_batch(tiny_checkpoint, tmp_path):
    import onnxruntime as ort

    path = tmp_path / "masked.onnx"
    export_onnx(
        tiny_checkpoint, path, ExportOptions(static_batch=True, mask_output=True, simplify=True),
        check_sizes=[(64, 80), (97, 33)],
    )  # fmt: skip
    model = onnx.load(str(path))
    assert [o.name for o in model.graph.output] == ["logits", "mask"]
    assert model.graph.output[1].type.tensor_type.elem_type == onnx.TensorProto.INT64
    assert model.graph.input[0].type.tensor_type.shape.dim[0].dim_value == 1
    session = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    x = preprocess(make_scene(3, 1, 70, 90)[0], (0.485, 0.456, 0.406), (0.229, 0.224, 0.225))
    logits, mask = session.run(None, {"image": x})
    assert mask.shape == (1, 70, 90) and mask.dtype == np.int64
    np.testing.assert_array_equal(mask, logits.argmax(1))


def test_a_wrong_export_fails_and_writes_nothing(tiny_checkpoint, tmp_path, monkeypatch, capsys):
    """Verification is not a warning: perturb one weight in the exported graph and the command fails."""
    import fcn_deploy.export as export_module

    real_trace = export_module._trace

    def broken_trace(*args, **kwargs):
        proto = real_trace(*args, **kwargs)
        conv = next(i for i in proto.graph.initializer if len(i.dims) == 4 and i.dims[0] == 5)
        array = onnx.numpy_helper.to_array(conv) * 3.0
        conv.CopyFrom(onnx.numpy_helper.from_array(array, conv.name))
        return proto

    monkeypatch.setattr(export_module, "_trace", broken_trace)
    out = tmp_path / "broken.onnx"
    with pytest.raises(CheckFailed, match="disagrees with PyTorch at"):
        export_onnx(tiny_checkpoint, out, check_sizes=[(64, 64), (97, 129)])
    assert not out.exists()
    assert not list(tmp_path.glob(".*tmp*"))
    assert main(["export", str(tiny_checkpoint), "-o", str(out)]) == 1
    assert not out.exists()


def test_interrupted_export_leaves_no_onnx(tiny_checkpoint, tmp_path, monkeypatch):
    import fcn_deploy.export as export_module

    def interrupt(*args, **kwargs):
        raise KeyboardInterrupt

    monkeypatch.setattr(export_module, "verify_export", interrupt)
    out = tmp_path / "model.onnx"
    with pytest.raises(KeyboardInterrupt):
        export_onnx(tiny_checkpoint, out)
    assert list(tmp_path.iterdir()) == []


def test_export_bad_input(tiny_checkpoint, tmp_path, capsys):
    missing = tmp_path / "missing.pt"
    assert main(["export", str(missing), "-o", str(tmp_path / "x.onnx")]) == 2
    assert "checkpoint not found" in capsys.readouterr().err
    corrupt = tmp_path / "corrupt.pt"
    corrupt.write_bytes(b"\x00garbage" * 100)
    assert main(["export", str(corrupt), "-o", str(tmp_path / "x.onnx")]) == 2
    assert "corrupt" in capsys.readouterr().err
    with pytest.raises(FcnDeployError, match="unsupported opset 9"):
        export_onnx(tiny_checkpoint, tmp_path / "x.onnx", ExportOptions(opset=9))
    blocker = tmp_path / "not-a-directory"
    blocker.write_text("")
    with pytest.raises(FcnDeployError, match="cannot create output directory"):
        export_onnx(tiny_checkpoint, blocker / "x.onnx")
    assert not list(tmp_path.glob("*.onnx"))


def test_output_path_that_is_a_directory_is_refused(tiny_checkpoint, tmp_path, capsys):
    target = tmp_path / "existing-dir.onnx"
    target.mkdir()
    assert main(["export", str(tiny_checkpoint), "-o", str(target)]) == 2
    assert "is a directory" in capsys.readouterr().err
