"""demo: the main job on the embedded default, end to end, in about six minutes on 2 CPU cores.

1. synthetic data: the calibration set and a sample video (a camera panning over a scene);
2. train the light FCN (``fcn8s-resnet18``, half width) on synthetic scenes;
3. eval on the held-out synthetic split (the paper's metrics);
4. export to ONNX (verified against PyTorch at many sizes);
5. build FP32, FP16 and INT8 engines with every usable backend (``--backend auto``; on a CPU
   machine OpenVINO and ONNX Runtime, with TensorRT first where a GPU is usable), or one named backend;
6. validate each engine at arbitrary sizes against the PyTorch reference;
7. infer on the sample video with the first backend's INT8 engine (overlay video out);
8. benchmark every engine against PyTorch eager at 512x512, each in its own process.

Every step reuses its output when that output is newer than its input, unless forced; ``DIR/report.json``
gathers the reports of every step, and every engine is also scored on the held-out ground truth, so
the summary shows what each precision costs in task accuracy.  Nothing is printed: each step and
each step's report reach the listener (``demo_step``, ``validation``, ``infer_summary``,
``benchmark``, ``demo_summary`` results), and the CLI draws them and writes ``DIR/report.html``
from :class:`DemoResult` (:mod:`fcn_deploy.render.html`).
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from . import __version__, backends
from .checkpoint import load_checkpoint
from .data import open_dataset
from .data.calibration import DEFAULT_CALIB_COUNT, generate_default_calibration
from .data.synthetic import panning_frames
from .errors import FcnDeployError
from .events import SILENT, Listener
from .fileio import atomic_write_json, ensure_writable_dir
from .media import write_video

DEFAULT_ARCH = "fcn8s-resnet18"
DEFAULT_ARCH_KWARGS = {"width": 0.5}
#: About 4.5 minutes of training on 2 CPU cores; reaches mean IU ~0.90 on the held-out split.
DEFAULT_TRAIN_STEPS = 1400
#: Validations (and best-checkpoint choices) during training.
TRAIN_EPOCHS = 4
VIDEO_FRAMES, VIDEO_SIZE = 150, (360, 640)
BENCH_SIZE = (512, 512)
BENCH_ITERS = 30
VALIDATE_CAP = 512
VALIDATE_RANDOM_SIZES = 4
PRECISIONS = ("fp32", "fp16", "int8")
#: Pictures per engine on the page: its worst sizes by agreement, and as many failing ones.
PAGE_EXAMPLES = 2


def _fresh(output: Path, *inputs: Path, force: bool = False) -> bool:
    """True when ``output`` exists and is newer than every input (so the step can be skipped)."""
    if force or not output.exists():
        return False
    return all(output.stat().st_mtime >= i.stat().st_mtime for i in inputs if i.exists())


def demo_backends(requested: str, listener: Listener = SILENT) -> list[backends.Backend]:
    """``auto``: every usable backend, best first (and why the others are left out); else the named one."""
    if requested != "auto":
        return [backends.resolve(requested, listener)]
    chosen, skipped = [], []
    for name in backends.names():
        backend = backends.get(name)
        usable, why = backend.status()
        (chosen if usable else skipped).append(backend if usable else f"{name} ({why})")
    chosen.sort(key=lambda b: b.auto_rank)
    if not chosen:
        raise FcnDeployError(f"no backend is usable here ({', '.join(skipped)}); pip install onnxruntime openvino")
    listener.note(f"backends: {', '.join(b.name for b in chosen)}" + (f"; not usable here: {', '.join(skipped)}" if skipped else ""))
    return chosen


@dataclass
class DemoResult:
    """What the demo made: the report (also in ``out/report.json``) and what its page shows."""

    report: dict[str, Any]
    out: Path
    video: Path
    overlay: Path
    palette: list[list[int]]
    #: A few pictures per engine (validation disagreements) for the page.
    keepers: dict[str, Any] = field(default_factory=dict)

    @property
    def passed(self) -> bool:
        return bool(self.report.get("passed"))


STEPS = ("synthetic data", "train", "eval", "export", "build engines", "validate", "infer on video", "benchmark")


def run_demo(out: Path, *, force: bool = False, train_steps: int | None = None, backend: str = "auto",
             listener: Listener = SILENT) -> DemoResult:  # fmt: skip
    """Run every step; write ``out/report.json`` and return the result (the CLI writes the page)."""
    from .bench import run_benchmark
    from .engines import BuildOptions, build_engine
    from .evaluate import evaluate_model
    from .export import export_onnx
    from .inference import run_infer
    from .train import TrainConfig, evaluate, train
    from .validation import ExampleKeeper, ValidateOptions, validate_engine

    out = ensure_writable_dir(out)
    models_dir = ensure_writable_dir(out / "models")
    calib_dir = out / "calibration"
    ckpt, onnx_path = models_dir / "default.pt", models_dir / "default.onnx"
    steps = train_steps or DEFAULT_TRAIN_STEPS
    report: dict[str, Any] = {"fcn_deploy_version": __version__, "out": str(out), "steps": {}}
    timings: dict[str, float] = {}
    started = time.perf_counter()
    current: list[str] = []

    def step(index: int) -> None:
        if current:
            timings[current[0]] = time.perf_counter() - timings[current[0]]
        name = f"{index}/{len(STEPS)} {STEPS[index - 1]}"
        current[:] = [name]
        timings[name] = time.perf_counter()
        listener.result("demo_step", name)

    step(1)
    if force or len(list(calib_dir.glob("*.png"))) < DEFAULT_CALIB_COUNT:
        generate_default_calibration(calib_dir)
    video = out / "sample.mp4"
    if force or not video.exists():
        write_video(video, (f for f, _ in panning_frames(5, VIDEO_FRAMES, *VIDEO_SIZE)))
    listener.note(f"calibration set {calib_dir} ({DEFAULT_CALIB_COUNT} scenes), sample video {video} ({VIDEO_FRAMES} frames)")

    step(2)
    if _fresh(ckpt, force=force) and load_checkpoint(ckpt).meta.arch == DEFAULT_ARCH:
        listener.note(f"reusing {ckpt}")
        report["steps"]["train"] = {"reused": True, "checkpoint": str(ckpt)}
    else:
        report["steps"]["train"] = train(
            TrainConfig(out=ckpt, arch=DEFAULT_ARCH, arch_kwargs=dict(DEFAULT_ARCH_KWARGS), epochs=TRAIN_EPOCHS, steps=steps,
                        batch_size=16, lr=3e-3, img_size=128),
            listener=listener,
        )  # fmt: skip

    step(3)
    checkpoint = load_checkpoint(ckpt)
    held_out = open_dataset("synthetic", "val", size=192, length=96)
    scores = evaluate(checkpoint.build_model(), held_out, checkpoint.meta.mean, checkpoint.meta.std, checkpoint.meta.num_classes)
    report["steps"]["eval"] = {"split": held_out.name, "class_names": checkpoint.meta.class_names, **scores.to_dict()}
    listener.note(f"held-out mean IU {scores.mean_iu:.4f}, pixel acc {scores.pixel_accuracy:.4f}")

    step(4)
    if _fresh(onnx_path, ckpt, force=force):
        listener.note(f"reusing {onnx_path}")
        report["steps"]["export"] = {"reused": True, "onnx": str(onnx_path)}
    else:
        report["steps"]["export"] = export_onnx(ckpt, onnx_path, listener=listener)

    step(5)
    engines: dict[str, Path] = {}  # "<backend>-<precision>" -> engine
    report["steps"]["build"] = {}
    chosen = demo_backends(backend, listener=listener)
    for engine_backend in chosen:
        for precision in PRECISIONS:
            label = f"{engine_backend.name}-{precision}"
            engine = engine_backend.default_engine_path(onnx_path, precision)
            if _fresh(engine, onnx_path, force=force) and _fresh(backends.manifest_path(engine), onnx_path):
                listener.note(f"reusing {engine}")
                manifest = backends.read_manifest(engine)
            else:
                options = BuildOptions(precision=precision, backend=engine_backend.name, calib_dir=calib_dir, opt_shape=BENCH_SIZE)
                manifest = build_engine(onnx_path, engine, options, listener=listener)
            engines[label] = engine
            report["steps"]["build"][label] = {
                "engine": str(engine), "backend": manifest["backend"], "precision": precision, "profile": manifest["profile"],
                "files": manifest["files"], "transform": manifest.get("transform"), "build": manifest.get("build"),
                "int8_check": manifest.get("int8_check"),
            }  # fmt: skip
    report["steps"]["eval"]["engines"] = {label: evaluate_model(engine, held_out, listener=listener) for label, engine in engines.items()}

    step(6)
    report["steps"]["validate"] = {}
    keepers: dict[str, ExampleKeeper] = {}
    for label, engine in engines.items():
        keepers[label] = ExampleKeeper(worst=PAGE_EXAMPLES, max_failing=PAGE_EXAMPLES)
        options = ValidateOptions(max_side=VALIDATE_CAP, random_sizes=VALIDATE_RANDOM_SIZES, keep_examples=keepers[label])
        result = validate_engine(engine, ckpt, options, listener=listener)
        listener.result("validation", result)
        report["steps"]["validate"][label] = result.to_dict()

    step(7)
    overlay = out / "sample.overlay.mp4"
    video_engine = engines[f"{chosen[0].name}-int8"]
    report["steps"]["infer"] = run_infer(video, video_engine, out=overlay, overwrite=True, listener=listener)
    listener.result("infer_summary", report["steps"]["infer"])
    report["steps"]["infer"]["standalone_engine_fps"] = _standalone_fps(video_engine, VIDEO_SIZE)

    step(8)
    report["steps"]["benchmark"] = run_benchmark(
        list(engines.values()), reference=ckpt, sizes=[BENCH_SIZE], warmup=2, iters=BENCH_ITERS, listener=listener
    )
    listener.result("benchmark", report["steps"]["benchmark"])
    timings[current[0]] = time.perf_counter() - timings[current[0]]

    report["seconds"] = {**timings, "total": time.perf_counter() - started}
    report["passed"] = all(v["passed"] for v in report["steps"]["validate"].values())
    report["summary"] = _summary(report)
    atomic_write_json(out / "report.json", report)
    result = DemoResult(report, out, video, overlay, list(checkpoint.meta.palette), keepers)
    listener.result("demo_summary", result)
    return result


def _standalone_fps(engine: Path, size: tuple[int, int]) -> float:
    """The engine alone at the video's frame size, in its own process (nothing else competing)."""
    from .bench import Contender, time_contenders

    [(_, samples)] = time_contenders([Contender(str(engine), str(engine))], [size], warmup=2, iters=15)
    samples_ms = sorted(samples[size])
    return 1000.0 / samples_ms[len(samples_ms) // 2]


def _summary(report: dict[str, Any]) -> dict[str, Any]:
    """The headline figures; every engine is compared with PyTorch eager on its own device and
    with the ONNX Runtime FP32 engine, as the README's targets are."""
    from .bench import ratio

    results = report["steps"]["benchmark"]["results"]
    infer = report["steps"]["infer"]
    engines = [r for r in results if not r.get("baseline")]
    baselines = [r for r in results if r.get("baseline")]
    held_out = report["steps"]["eval"].get("engines", {})
    portable = backends.plain_onnx_backend().name  # the README's targets are ratios against its FP32 and INT8 engines
    return {
        "held_out_mean_iu": report["steps"]["eval"]["mean_iu"],
        "held_out_mean_iu_by_engine": {label: scores["mean_iu"] for label, scores in held_out.items()},
        "backends": sorted({r["backend"] for r in engines}),
        "validation": {label: v["summary"] | {"passed": v["passed"]} for label, v in report["steps"]["validate"].items()},
        "bench_size": list(BENCH_SIZE),
        "median_ms": {r["label"]: r["median_ms"] for r in engines} | {f"torch-eager-{r['device']}": r["median_ms"] for r in baselines},
        "speedup_vs_torch": {r["label"]: r["speedup_vs_torch"] for r in engines},
        "vs_onnxruntime_fp32": {r["label"]: ratio(results, r["label"], f"{portable}-fp32") for r in engines},
        "vs_onnxruntime_int8": {r["label"]: ratio(results, r["label"], f"{portable}-int8") for r in engines},
        "video_engine": infer.get("backend"),
        "video_fps": infer.get("end_to_end_fps"),
        "video_engine_fps": infer.get("engine_fps"),
        "video_fps_ratio": (infer["end_to_end_fps"] / infer["engine_fps"]) if infer.get("engine_fps") else None,
        "video_standalone_engine_fps": infer.get("standalone_engine_fps"),
        "video_vs_standalone_engine": infer["end_to_end_fps"] / infer["standalone_engine_fps"],
    }
