"""The README's exit-code table, row by row, through ``fcn_deploy.cli.main``.

| 0 | done, every check passed | 1 | a check ran and failed (export, adopt, validate, demo) |
| 2 | bad input, nothing done  | 3 | done, but some input was skipped (infer DIR)           |

Exit 1 is reached by real checks on real engines: a limit is tightened (never a verdict stubbed),
or a graph is really changed, so the product's own comparison is what fails.  Export's exit 1 (a
broken trace) is in test_export.py.  The demo's exit 1 here runs a small real demo (the session's
model reused, ONNX Runtime only) and is marked ``slow`` (about 2 minutes on 2 shared cores);
test_bench_cli.py's demo test still reaches its exit 1 through a stubbed verdict.
"""

from __future__ import annotations

import importlib
import json
import shutil

import numpy as np
import onnx
import pytest
from PIL import Image

from fcn_deploy import precisions
from fcn_deploy.cli import main
from fcn_deploy.data import open_dataset
from fcn_deploy.errors import EXIT_FAILED, EXIT_PARTIAL, EXIT_USAGE


def test_row_0_everything_passed(tiny_onnx, tiny_checkpoint, tmp_path):
    report = tmp_path / "val.json"
    assert main(["validate", str(tiny_onnx), "-r", str(tiny_checkpoint), "--sizes", "64x64", "--random-sizes", "0",
                 "--report", str(report)]) == 0  # fmt: skip
    assert json.loads(report.read_text())["passed"] is True


def test_row_1_validate_fails(tiny_onnx, tiny_checkpoint, tmp_path, capsys):
    # FP32 ONNX Runtime against PyTorch differs by ~1e-6 in the logits: a zero tolerance is a real, failing check
    code = main(["validate", str(tiny_onnx), "-r", str(tiny_checkpoint), "--sizes", "64x64", "--random-sizes", "0",
                 "--threshold", "max_rel_logit_diff=0"])  # fmt: skip
    assert code == EXIT_FAILED == 1
    assert "max |logit diff|" in capsys.readouterr().out


def test_row_1_adopt_fails_when_the_adopted_logits_differ(tiny_onnx, tmp_path, monkeypatch, capsys):
    """The edit step is made to scale the score layers: the adopted graph then computes other logits
    than the source, and adopt's own comparison (not a stub) refuses it."""
    adopt_module = importlib.import_module("fcn_deploy.adopt.adopt")  # the module (the package exports the function)
    real_candidate = adopt_module.candidate

    def miswired(*args, **kwargs):
        built = real_candidate(*args, **kwargs)
        for init in built.model.graph.initializer:
            if len(init.dims) == 4 and init.dims[0] == 5 and init.dims[2] == 1:  # the 1x1 score layers (5 classes)
                scaled = onnx.numpy_helper.to_array(init) * np.float32(1.5)
                init.CopyFrom(onnx.numpy_helper.from_array(scaled, init.name))
        return built

    monkeypatch.setattr(adopt_module, "candidate", miswired)
    foreign = tmp_path / "foreign.onnx"
    model = onnx.load(str(tiny_onnx))
    del model.metadata_props[:]  # an ONNX from elsewhere: no fcn-deploy metadata
    onnx.save(model, str(foreign))
    out = tmp_path / "adopted.onnx"
    assert main(["adopt", str(foreign), "-o", str(out), "--num-classes", "5"]) == 1
    err = capsys.readouterr().err
    assert "logits differ from the source's" in err and "nothing was written" in err
    assert not out.exists()
    monkeypatch.setattr(adopt_module, "candidate", real_candidate)
    assert main(["adopt", str(foreign), "-o", str(out), "--num-classes", "5"]) == 0  # the same source, unbroken: adopted
    assert out.is_file()


@pytest.mark.slow
def test_row_1_demo_fails_when_an_engine_fails_validation(tiny_checkpoint, tiny_calibration, tmp_path, monkeypatch, capsys):
    """The demo, small and on ONNX Runtime only, reusing the session's trained model; the FP32
    engine is held to a zero logit tolerance, which its real validation fails."""
    from fcn_deploy import demo

    out = tmp_path / "demo"
    (out / "models").mkdir(parents=True)
    shutil.copy(tiny_checkpoint, out / "models" / "default.pt")  # fcn8s-resnet18 like the demo's: reused, not trained
    for name, value in {"PRECISIONS": ("fp32", "int8"), "VIDEO_FRAMES": 3, "VIDEO_SIZE": (64, 96), "BENCH_SIZE": (96, 96),
                        "BENCH_ITERS": 1, "VALIDATE_CAP": 96, "VALIDATE_RANDOM_SIZES": 0}.items():  # fmt: skip
        monkeypatch.setattr(demo, name, value)
    monkeypatch.setattr(demo, "generate_default_calibration", lambda folder: shutil.copytree(tiny_calibration, folder, dirs_exist_ok=True))
    monkeypatch.setattr(demo, "open_dataset", lambda *a, **k: open_dataset("synthetic", "val", size=64, length=4))
    monkeypatch.setitem(precisions.get("fp32").limits, "max_rel_logit_diff", 0.0)
    assert main(["demo", "--out", str(out), "--backend", "onnxruntime"]) == 1
    assert "FAILED: an engine failed validation" in capsys.readouterr().out
    report = json.loads((out / "report.json").read_text())
    assert report["passed"] is False and report["steps"]["train"]["reused"]
    fp32 = report["steps"]["validate"]["onnxruntime-fp32"]
    assert fp32["passed"] is False
    assert all("max |logit diff|" in f for case in fp32["cases"] for f in case["failures"]) and fp32["failing_sizes"]


@pytest.mark.parametrize(
    "argv", [["validate", "{tmp}/missing.onnx", "-r", "{ckpt}"], ["validate", "{onnx}", "-r", "{ckpt}", "--batch", "0"]]
)
def test_row_2_bad_input_writes_nothing(argv, tiny_onnx, tiny_checkpoint, tmp_path, capsys):
    report = tmp_path / "out" / "r.json"
    args = [a.format(tmp=tmp_path, ckpt=tiny_checkpoint, onnx=tiny_onnx) for a in argv] + ["--report", str(tmp_path / "r.json")]
    assert main(args) == EXIT_USAGE == 2
    assert not report.exists() and not (tmp_path / "r.json").exists()
    err = capsys.readouterr().err.strip()
    assert err and (err.startswith("error:") or "Usage" in err)


def test_row_3_some_input_skipped(tiny_onnx, tmp_path):
    folder = tmp_path / "photos"
    folder.mkdir()
    image, _ = open_dataset("synthetic", "test", size=48, length=1).dataset[0]
    Image.fromarray(image).save(folder / "good.png")
    (folder / "bad.png").write_bytes(b"not a png")
    out = tmp_path / "out"
    assert main(["infer", str(folder), "-e", str(tiny_onnx), "-o", str(out)]) == EXIT_PARTIAL == 3
    assert sorted(p.name for p in (out / "masks").iterdir()) == ["good.png"]
