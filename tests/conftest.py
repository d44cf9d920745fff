"""Shared fixtures: one small trained model, exported once per test session.

The model is the light ``fcn8s-resnet18`` at a quarter width, trained for a few seconds on the
synthetic scenes, so masks are image-like (not near-ties) while the whole suite stays fast.
"""

from __future__ import annotations

import os
import re
from pathlib import Path

import pytest
import torch

torch.set_num_threads(max(1, min(2, os.cpu_count() or 1)))

TINY_ARCH_KWARGS = {"width": 0.25}
#: Skip reasons that are acceptable in CI (a CPU-only machine): anything about a GPU or TensorRT.
HARDWARE_SKIP = re.compile(r"gpu|cuda|tensorrt|nvidia|renameat2", re.IGNORECASE)


def _requires_cuda_reason() -> str | None:
    if not torch.cuda.is_available():
        return "no CUDA device"
    return None


PLUGIN_SOURCE = Path(__file__).parent / "plugins" / "fcn-deploy-myort"


def pytest_configure(config):
    """Install the test plugin package (a backend registered by entry point) into a folder of its own
    on this process's path and every child's, so the whole suite runs with it registered."""
    import subprocess
    import sys
    import tempfile

    target = Path(tempfile.mkdtemp(prefix="fcn-deploy-test-plugin-"))
    subprocess.run(
        [sys.executable, "-m", "pip", "install", "--quiet", "--no-index", "--no-deps", "--no-build-isolation", "--target",
         str(target), str(PLUGIN_SOURCE)], check=True, capture_output=True,
    )  # fmt: skip
    sys.path.insert(0, str(target))
    os.environ["PYTHONPATH"] = os.pathsep.join(filter(None, [str(target), os.environ.get("PYTHONPATH")]))
    config._fcn_deploy_plugin_dir = target

    from fcn_deploy import backends

    backends.refresh()


def pytest_unconfigure(config):
    import shutil

    target = getattr(config, "_fcn_deploy_plugin_dir", None)
    if target is not None:
        shutil.rmtree(target, ignore_errors=True)


def pytest_collection_modifyitems(config, items):
    """Skip GPU/TensorRT tests, with the reason, where the machine cannot run them."""
    cuda_reason = _requires_cuda_reason()
    try:
        import tensorrt  # noqa: F401

        trt_reason = None
    except ImportError:
        trt_reason = "the tensorrt package is not installed (pip install 'fcn-deploy[tensorrt]' on a GPU machine)"
    for item in items:
        reasons = []
        # markers, not keywords: keywords hold the names of the folders above a test too (a checkout named "gpu")
        marked = {name for name in ("gpu", "tensorrt") if item.get_closest_marker(name) is not None}
        if marked and cuda_reason:
            reasons.append(cuda_reason)
        if "tensorrt" in marked and trt_reason:
            reasons.append(trt_reason)
        if reasons:
            item.add_marker(pytest.mark.skip(reason="; ".join(reasons)))


@pytest.hookimpl(hookwrapper=True)
def pytest_runtest_makereport(item, call):
    """With ``CI`` set, a skip for any reason but missing GPU/TensorRT hardware is a failure: a CPU path
    that silently stops running (a missing optional package, a failed import) must show in CI."""
    outcome = yield
    report = outcome.get_result()
    if not os.environ.get("CI") or not report.skipped or hasattr(report, "wasxfail"):
        return
    reason = str(report.longrepr[2]) if isinstance(report.longrepr, tuple) else str(report.longrepr)
    if not HARDWARE_SKIP.search(reason):
        report.outcome = "failed"
        report.longrepr = f"skipped in CI for a reason that is not GPU/TensorRT hardware: {reason}"


@pytest.hookimpl(hookwrapper=True)
def pytest_make_collect_report(collector):
    """The same for a whole module skipped at import (``pytest.importorskip`` at module level)."""
    outcome = yield
    report = outcome.get_result()
    if os.environ.get("CI") and report.skipped:
        reason = str(report.longrepr[2]) if isinstance(report.longrepr, tuple) else str(report.longrepr)
        if not HARDWARE_SKIP.search(reason):
            report.outcome = "failed"
            report.longrepr = f"{collector.nodeid} skipped in CI for a reason that is not GPU/TensorRT hardware: {reason}"


@pytest.fixture(scope="session")
def artefacts(tmp_path_factory) -> Path:
    return tmp_path_factory.mktemp("artefacts")


@pytest.fixture(scope="session")
def tiny_checkpoint(artefacts) -> Path:
    from fcn_deploy.train import TrainConfig, train

    out = artefacts / "tiny.pt"
    train(
        TrainConfig(
            out=out,
            arch="fcn8s-resnet18",
            arch_kwargs=TINY_ARCH_KWARGS,
            epochs=2,
            steps=120,
            batch_size=8,
            lr=5e-3,
            img_size=96,
            train_count=480,
            val_count=8,
            val_size=96,
        )
    )
    return out


@pytest.fixture(scope="session")
def tiny_onnx(tiny_checkpoint, artefacts) -> Path:
    from fcn_deploy.export import export_onnx

    out = artefacts / "tiny.onnx"
    export_onnx(tiny_checkpoint, out, check_sizes=[(64, 64), (97, 129)])
    return out


@pytest.fixture(scope="session")
def tiny_calibration(artefacts) -> Path:
    """Ten 96x96 calibration scenes (the held-out calibration seed), generated once per session."""
    from fcn_deploy.data.calibration import generate_default_calibration

    folder = artefacts / "calibration"
    generate_default_calibration(folder, count=10, size=96)
    return folder


@pytest.fixture(scope="session")
def vgg16_classifier():
    """torchvision's VGG16 classifier with seeded random weights (138M parameters): built once."""
    import torchvision

    torch.manual_seed(5)
    return torchvision.models.vgg16(weights=None).eval()


@pytest.fixture(scope="session")
def torchvision_fcn():
    """``torchvision_fcn(depth, aux)``: torchvision's FCN-ResNet with seeded random weights and
    non-trivial BatchNorm statistics (so a mis-wired BatchNorm shows), built once per (depth, aux)."""
    import torchvision

    built = {}

    def make(depth: int = 50, aux: bool = True):
        if (depth, aux) not in built:
            torch.manual_seed(5)
            builder = getattr(torchvision.models.segmentation, f"fcn_resnet{depth}")
            model = builder(weights=None, weights_backbone=None, num_classes=21, aux_loss=aux)
            with torch.no_grad():
                for module in model.modules():
                    if isinstance(module, torch.nn.BatchNorm2d):
                        module.running_mean.uniform_(-0.1, 0.1)
                        module.running_var.uniform_(0.5, 1.5)
                        module.weight.uniform_(0.5, 1.5)
                        module.bias.uniform_(-0.1, 0.1)
            built[(depth, aux)] = model.eval()
        return built[(depth, aux)]

    return make
