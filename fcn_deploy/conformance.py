"""The backend conformance suite: what every registered backend must do, for each precision it declares.

For one backend and precision it builds an engine from an exported FP32 ONNX, opens it through its
manifest, validates it against the PyTorch reference at the product thresholds, segments a batch
at an odd size, refuses the engine once a file is tampered with, and describes itself.  The test
suite runs it over every registered backend (entry-point plugins included), and a plugin's author
runs it on their own backend with ``fcn-deploy backends --check NAME``.
"""

from __future__ import annotations

import shutil
import traceback
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from . import backends, precisions
from .data.images import preprocess
from .data.synthetic import make_scene
from .engines import BuildOptions, build_engine
from .errors import FcnDeployError, first_line
from .events import SILENT, Listener

#: Sizes the suite validates at: the minimum, odd, prime and extreme-aspect sizes.
SIZES = [(32, 32), (97, 129), (45, 160), (131, 67), (200, 200)]
#: The profile's largest side (keeps the suite quick on a CPU).
MAX_SIDE = 256
DESCRIBE_KEYS = {"name", "usable", "device", "precisions", "engine_suffix", "options", "capabilities", "triton"}


@dataclass
class Check:
    backend: str
    precision: str
    name: str
    passed: bool
    detail: str = ""


def _tampered_refusal(engine: Path, backend: backends.Backend, workdir: Path) -> str:
    """Copy the engine (files and manifest), flip one byte of its first file, and return why opening it failed."""
    from .artefacts import manifest_path

    copy_dir = workdir / "tampered"
    copy_dir.mkdir(exist_ok=True)
    files = backend.engine_files(engine)
    for path in [*files, manifest_path(engine)]:
        shutil.copy(path, copy_dir / path.name)
    target = copy_dir / files[0].name
    data = bytearray(target.read_bytes())
    data[len(data) // 2] ^= 0xFF
    target.write_bytes(bytes(data))
    try:
        backends.open_engine(copy_dir / engine.name).close()
    except FcnDeployError as exc:
        return str(exc)
    raise AssertionError("a tampered engine opened")


def check_backend(
    name: str, *, checkpoint: Path, onnx_path: Path, calib_dir: Path, workdir: Path, precision_names: list[str] | None = None,
    listener: Listener = SILENT,
) -> list[Check]:  # fmt: skip
    """Run the suite for backend ``name`` (every precision it declares, or ``precision_names``); never raises for a failed check."""
    from .backends.torch import TorchRunner
    from .validation import default_thresholds, validate

    backend = backends.get(name)
    results: list[Check] = []

    def check(precision: str, label: str, step: Callable[[], str]) -> bool:
        try:
            detail = step() or ""
            results.append(Check(name, precision, label, True, detail))
        except Exception as exc:  # noqa: BLE001 - every failure is reported as a failed check
            where = traceback.extract_tb(exc.__traceback__)[-1]
            results.append(
                Check(name, precision, label, False, f"{exc.__class__.__name__}: {first_line(exc)} ({where.name}:{where.lineno})")
            )
        listener.note(f"{name} {precision} {label}: {'ok' if results[-1].passed else 'FAILED ' + results[-1].detail}",
                      level="info" if results[-1].passed else "error")  # fmt: skip
        return results[-1].passed

    def describe() -> str:
        facts = backend.describe()
        missing = DESCRIBE_KEYS - set(facts)
        assert not missing, f"describe() lacks {sorted(missing)}"
        assert facts["name"] == name, f"describe() names {facts['name']!r}"
        return f"{len(facts)} facts"

    check("-", "describe", describe)
    for precision in precision_names or list(backend.precisions):
        precisions.get(precision)
        folder = workdir / f"{name}-{precision}"
        folder.mkdir(parents=True, exist_ok=True)
        source = folder / onnx_path.name
        shutil.copy(onnx_path, source)
        built: dict = {}

        def build() -> str:
            built["manifest"] = build_engine(source, None, BuildOptions(precision=precision, backend=name, calib_dir=calib_dir,
                                                                         max_shape=(MAX_SIDE, MAX_SIDE)))  # fmt: skip
            built["engine"] = folder / built["manifest"]["engine"]
            manifest = built["manifest"]
            assert manifest["backend"] == name and manifest["precision"] == precision
            listed = {f["name"] for f in manifest["files"]}
            assert listed == {p.name for p in backend.engine_files(built["engine"])}, f"manifest lists {sorted(listed)}"
            assert all(len(f["sha256"]) == 64 for f in manifest["files"])
            return built["engine"].name

        if not check(precision, "build", build):
            continue

        def open_and_validate() -> str:
            with backends.open_engine(built["engine"]) as runner, TorchRunner(checkpoint) as reference:
                assert runner.backend == name and runner.precision == precision, (runner.backend, runner.precision)
                report = validate(runner, reference, SIZES, default_thresholds(precision))
                assert report.passed, f"failed at the product thresholds: {report.failures or report.failing_sizes}"
                return f"pooled agreement {report.pixel_agreement:.5f}, mIU vs reference {report.mean_iu:.4f}"

        check(precision, "validate", open_and_validate)

        def infer() -> str:
            with backends.open_engine(built["engine"]) as runner:
                images = np.stack([make_scene(7, i, 75, 111)[0] for i in range(2)])
                prediction = runner.infer(preprocess(images, runner.meta.mean, runner.meta.std), need_logits=False)
                assert prediction.mask.shape == (2, 75, 111) and prediction.mask.dtype == np.int64, prediction.mask.shape
                assert prediction.mask.max() < runner.meta.num_classes
                return "2x75x111"

        check(precision, "infer", infer)

        def tampered() -> str:
            why = _tampered_refusal(built["engine"], backend, folder)
            assert "sha256 differs" in why and "Rebuild it:" in why, why
            return "refused"

        check(precision, "tampered file refused", tampered)

        def described() -> str:
            facts = backend.describe_engine(built["engine"], built["manifest"])
            assert isinstance(facts, dict)
            spec = backend.triton_spec(built["manifest"])
            if spec is not None:
                assert len(spec.model_files) == len(backend.engine_files(built["engine"])), spec.model_files
            return f"{facts.get('nodes', '?')} nodes; Triton: {spec.value if spec else 'none'}"

        check(precision, "describe engine", described)
    return results


def tiny_model(workdir: Path, *, listener: Listener = SILENT) -> tuple[Path, Path, Path]:
    """A small FCN trained for a few seconds on the synthetic scenes (image-like masks, not near-ties),
    exported, with a calibration set: what the suite checks a backend with.  Returns (checkpoint, onnx, calibration)."""
    from .data.calibration import generate_default_calibration
    from .export import export_onnx
    from .train import TrainConfig, train

    checkpoint, onnx_path, calibration = workdir / "tiny.pt", workdir / "tiny.onnx", workdir / "calibration"
    listener.note("training a small FCN on the synthetic scenes for the conformance suite")
    train(TrainConfig(out=checkpoint, arch="fcn8s-resnet18", arch_kwargs={"width": 0.25}, epochs=2, steps=120, batch_size=8, lr=5e-3,
                      img_size=96, train_count=480, val_count=8, val_size=96), listener=listener)  # fmt: skip
    export_onnx(checkpoint, onnx_path, check_sizes=[(64, 64), (97, 129)])
    generate_default_calibration(calibration, count=10, size=96)
    return checkpoint, onnx_path, calibration
