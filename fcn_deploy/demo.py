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

Every step reuses its output when that output is newer than its input, unless ``--force``; the
summary table and ``DIR/report.json`` gather the reports of every step, and ``DIR/report.html``
shows them (:mod:`fcn_deploy.report`): the summary, per-class IU, each engine's validation with
pictures of its disagreements, the benchmark plots and frames of the overlay video.
"""

from __future__ import annotations

import time
from pathlib import Path
from typing import Any

from rich.console import Console
from rich.table import Table

from . import __version__, backends
from .checkpoint import load_checkpoint
from .data import open_dataset
from .data.calibration import DEFAULT_CALIB_COUNT, generate_default_calibration
from .data.synthetic import panning_frames
from .errors import FcnDeployError
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


def demo_backends(requested: str, listener=None) -> list[backends.Backend]:
    """``auto``: every usable backend, best first (and why the others are left out); else the named one."""
    from .events import SILENT

    listener = listener or SILENT
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


def run_demo(
    out: Path, force: bool = False, train_steps: int | None = None, backend: str = "auto", console: Console | None = None,
    html: Path | None = None,
) -> dict[str, Any]:
    """Run every step; write ``out/report.json`` and ``out/report.html`` (and the page to ``html`` too, if given)."""
    from .bench import run_benchmark
    from .engines import BuildOptions, build_engine
    from .export import export_onnx
    from .render.html import demo_page, write_page
    from .train import TrainConfig, evaluate, train
    from .render.bench import print_results
    from .render.console import ConsoleListener
    from .validation import ExampleKeeper, ValidateOptions, validate_engine
    from .inference import run_infer
    from .render.infer import print_summary as print_infer_summary

    console = console or Console()
    listener = ConsoleListener(console)
    out = ensure_writable_dir(out)
    models_dir = ensure_writable_dir(out / "models")
    calib_dir = out / "calibration"
    ckpt, onnx_path = models_dir / "default.pt", models_dir / "default.onnx"
    steps = train_steps or DEFAULT_TRAIN_STEPS
    report: dict[str, Any] = {"fcn_deploy_version": __version__, "out": str(out), "steps": {}}
    timings: dict[str, float] = {}
    started = time.perf_counter()

    def step(name: str):
        console.rule(f"[bold]{name}")
        timings[name] = time.perf_counter()

    def done(name: str) -> None:
        timings[name] = time.perf_counter() - timings[name]

    # 1. data --------------------------------------------------------------------------------
    step("1/8 synthetic data")
    if force or len(list(calib_dir.glob("*.png"))) < DEFAULT_CALIB_COUNT:
        generate_default_calibration(calib_dir)
    video = out / "sample.mp4"
    if force or not video.exists():
        write_video(video, (f for f, _ in panning_frames(5, VIDEO_FRAMES, *VIDEO_SIZE)))
    console.print(f"calibration set {calib_dir} ({DEFAULT_CALIB_COUNT} scenes), sample video {video} ({VIDEO_FRAMES} frames)")
    done("1/8 synthetic data")

    # 2. train -------------------------------------------------------------------------------
    step("2/8 train")
    if _fresh(ckpt, force=force) and load_checkpoint(ckpt).meta.arch == DEFAULT_ARCH:
        console.print(f"reusing {ckpt}")
        report["steps"]["train"] = {"reused": True, "checkpoint": str(ckpt)}
    else:
        result = train(
            TrainConfig(out=ckpt, arch=DEFAULT_ARCH, arch_kwargs=dict(DEFAULT_ARCH_KWARGS), epochs=TRAIN_EPOCHS, steps=steps,
                        batch_size=16, lr=3e-3, img_size=128),
            listener=listener,
        )  # fmt: skip
        report["steps"]["train"] = result
    done("2/8 train")

    # 3. eval --------------------------------------------------------------------------------
    step("3/8 eval")
    checkpoint = load_checkpoint(ckpt)
    held_out = open_dataset("synthetic", "val", size=192, length=96)
    scores = evaluate(checkpoint.build_model(), held_out, checkpoint.meta.mean, checkpoint.meta.std, checkpoint.meta.num_classes)
    report["steps"]["eval"] = {"split": held_out.name, "class_names": checkpoint.meta.class_names, **scores.to_dict()}
    console.print(f"held-out mean IU {scores.mean_iu:.4f}, pixel acc {scores.pixel_accuracy:.4f}")
    done("3/8 eval")

    # 4. export ------------------------------------------------------------------------------
    step("4/8 export")
    if _fresh(onnx_path, ckpt, force=force):
        console.print(f"reusing {onnx_path}")
        report["steps"]["export"] = {"reused": True, "onnx": str(onnx_path)}
    else:
        report["steps"]["export"] = export_onnx(ckpt, onnx_path, listener=listener)
    done("4/8 export")

    # 5. engines -----------------------------------------------------------------------------
    step("5/8 build engines")
    engines: dict[str, Path] = {}  # "<backend>-<precision>" -> engine
    report["steps"]["build"] = {}
    chosen = demo_backends(backend, listener=listener)
    for engine_backend in chosen:
        for precision in PRECISIONS:
            label = f"{engine_backend.name}-{precision}"
            engine = engine_backend.default_engine_path(onnx_path, precision)
            manifest_file = backends.manifest_path(engine)
            if _fresh(engine, onnx_path, force=force) and _fresh(manifest_file, onnx_path):
                console.print(f"reusing {engine}")
                manifest = backends.read_manifest(engine)
            else:
                manifest = build_engine(
                    onnx_path, engine, BuildOptions(precision=precision, backend=engine_backend.name, calib_dir=calib_dir),
                    listener=listener,
                )  # fmt: skip
            engines[label] = engine
            report["steps"]["build"][label] = {
                "engine": str(engine), "backend": manifest["backend"], "precision": precision, "profile": manifest["profile"],
                "files": manifest["files"], "transform": manifest.get("transform"), "build": manifest.get("build"),
            }  # fmt: skip
    done("5/8 build engines")

    # 6. validate ----------------------------------------------------------------------------
    step("6/8 validate")
    report["steps"]["validate"] = {}
    keepers: dict[str, ExampleKeeper] = {}  # a few pictures per engine for the page
    for label, engine in engines.items():
        keepers[label] = ExampleKeeper(worst=PAGE_EXAMPLES, max_failing=PAGE_EXAMPLES)
        from .render.validation import print_validation

        result = validate_engine(engine, ckpt, ValidateOptions(max_side=VALIDATE_CAP, random_sizes=VALIDATE_RANDOM_SIZES,
                                                               keep_examples=keepers[label]), listener=listener)  # fmt: skip
        print_validation(console, result)
        report["steps"]["validate"][label] = result.to_dict()
    done("6/8 validate")

    # 7. video -------------------------------------------------------------------------------
    step("7/8 infer on video")
    overlay = out / "sample.overlay.mp4"
    video_engine = engines[f"{chosen[0].name}-int8"]
    report["steps"]["infer"] = run_infer(video, video_engine, out=overlay, overwrite=True, listener=listener)
    print_infer_summary(console, report["steps"]["infer"])
    report["steps"]["infer"]["standalone_engine_fps"] = _standalone_fps(video_engine, VIDEO_SIZE)
    done("7/8 infer on video")

    # 8. benchmark ---------------------------------------------------------------------------
    step("8/8 benchmark")
    report["steps"]["benchmark"] = run_benchmark(
        list(engines.values()), reference=ckpt, sizes=[BENCH_SIZE], warmup=2, iters=BENCH_ITERS, listener=listener
    )
    print_results(console, report["steps"]["benchmark"]["results"])
    done("8/8 benchmark")

    report["seconds"] = {**timings, "total": time.perf_counter() - started}
    report["passed"] = all(v["passed"] for v in report["steps"]["validate"].values())
    report["summary"] = _summary(report)
    atomic_write_json(out / "report.json", report)
    page = demo_page(report, keepers, video=video, overlay=overlay, palette=checkpoint.meta.palette)
    for path in (out / "report.html", *([html] if html else [])):
        write_page(path, page)
    _print_summary(console, report, out, overlay)
    return report


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
    engines = [r for r in results if r["backend"] != "torch"]
    return {
        "held_out_mean_iu": report["steps"]["eval"]["mean_iu"],
        "backends": sorted({r["backend"] for r in engines}),
        "validation": {label: v["summary"] | {"passed": v["passed"]} for label, v in report["steps"]["validate"].items()},
        "bench_size": list(BENCH_SIZE),
        "median_ms": {r["label"]: r["median_ms"] for r in results if r["backend"] != "torch"}
        | {f"torch-eager-{r['device']}": r["median_ms"] for r in results if r["backend"] == "torch"},
        "speedup_vs_torch": {r["label"]: r["speedup_vs_torch"] for r in engines},
        "vs_onnxruntime_fp32": {r["label"]: ratio(results, r["label"], "onnxruntime-fp32") for r in engines},
        "vs_onnxruntime_int8": {r["label"]: ratio(results, r["label"], "onnxruntime-int8") for r in engines},
        "video_engine": infer.get("backend"),
        "video_fps": infer.get("end_to_end_fps"),
        "video_engine_fps": infer.get("engine_fps"),
        "video_fps_ratio": (infer["end_to_end_fps"] / infer["engine_fps"]) if infer.get("engine_fps") else None,
        "video_standalone_engine_fps": infer.get("standalone_engine_fps"),
        "video_vs_standalone_engine": infer["end_to_end_fps"] / infer["standalone_engine_fps"],
    }


def _print_summary(console: Console, report: dict[str, Any], out: Path, overlay: Path) -> None:
    summary = report["summary"]
    results = report["steps"]["benchmark"]["results"]
    h, w = BENCH_SIZE
    table = Table(title="fcn-deploy demo summary")
    for column in ("engine", "device", "validation", "min agreement", "mIU vs ref", f"median ms @{h}x{w}", "vs torch",
                   "vs ORT fp32"):  # fmt: skip
        table.add_column(column, justify="left" if column in ("engine", "device", "validation") else "right")
    for r in results:
        if r["backend"] == "torch":
            table.add_row("torch eager fp32 (reference)", r["device"], "-", "-", "-", f"{r['median_ms']:.1f}", "1.00x", "-")
            continue
        val = summary["validation"][r["label"]]
        vs_ort = summary["vs_onnxruntime_fp32"].get(r["label"])
        table.add_row(
            f"{r['backend']} {r['precision']}", r["device"], "[green]passed[/]" if val["passed"] else "[red]FAILED[/]",
            f"{val['min_pixel_agreement'] * 100:.3f}%", f"{val.get('mean_iu_vs_reference', val['min_mean_iu']):.4f}",
            f"{r['median_ms']:.1f}", f"{r['speedup_vs_torch']:.2f}x", "-" if vs_ort is None else f"{vs_ort:.2f}x",
        )  # fmt: skip
    console.print(table)
    console.print(
        f"held-out mean IU {summary['held_out_mean_iu']:.4f}; video ({summary['video_engine']}) {summary['video_fps']:.1f} fps "
        f"end to end ({summary['video_fps_ratio'] or float('nan'):.2f}x the engine's FPS inside the pipeline, "
        f"{summary['video_vs_standalone_engine']:.2f}x the engine alone at {VIDEO_SIZE[0]}x{VIDEO_SIZE[1]})"
    )
    console.print(
        f"overlay video: {overlay}\nreport: {out / 'report.json'}, page: {out / 'report.html'}  "
        f"(total {report['seconds']['total']:.0f} s)"
    )
