"""demo: the main job on the embedded default, end to end, in about ten minutes on 2 CPU cores.

1. synthetic data: the calibration set and a sample video (a camera panning over a scene);
2. train the light FCN (``fcn8s-resnet18``, half width) on synthetic scenes;
3. eval on the held-out synthetic split (the paper's metrics);
4. export to ONNX (verified against PyTorch at many sizes);
5. build FP32, FP16 and INT8 engines with the best available backend;
6. validate each engine at arbitrary sizes against the PyTorch reference;
7. infer on the sample video (overlay video out);
8. benchmark the engines against PyTorch eager at 512x512.

Every step reuses its output when that output is newer than its input, unless ``--force``; the
summary table and ``DIR/report.json`` gather the reports of every step.
"""

from __future__ import annotations

import time
from pathlib import Path
from typing import Any

from rich.console import Console
from rich.table import Table

from . import __version__
from .checkpoint import load_checkpoint
from .data import open_dataset
from .data.synthetic import panning_frames, write_video
from .fileio import atomic_write_json, ensure_writable_dir

DEFAULT_ARCH = "fcn8s-resnet18"
DEFAULT_ARCH_KWARGS = {"width": 0.5}
#: About 4.5 minutes of training on 2 CPU cores; reaches mean IU ~0.87 on the held-out split.
DEFAULT_TRAIN_STEPS = 1400
VIDEO_FRAMES, VIDEO_SIZE = 150, (360, 640)
BENCH_SIZE = (512, 512)
VALIDATE_CAP = 512


def _fresh(output: Path, *inputs: Path, force: bool = False) -> bool:
    """True when ``output`` exists and is newer than every input (so the step can be skipped)."""
    if force or not output.exists():
        return False
    return all(output.stat().st_mtime >= i.stat().st_mtime for i in inputs if i.exists())


def run_demo(
    out: Path, force: bool = False, train_steps: int | None = None, backend: str = "auto", console: Console | None = None
) -> dict[str, Any]:
    from .bench import run_benchmark
    from .engines import BuildOptions, build_engine, default_engine_path, manifest_path, read_manifest, resolve_backend
    from .export import export_onnx
    from .precision import generate_default_calibration
    from .train import TrainConfig, evaluate, train
    from .validate import validate_engine
    from .video import run_infer

    console = console or Console()
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
    if force or len(list(calib_dir.glob("*.png"))) < 32:
        generate_default_calibration(calib_dir)
    video = out / "sample.mp4"
    if force or not video.exists():
        write_video(video, (f for f, _ in panning_frames(5, VIDEO_FRAMES, *VIDEO_SIZE)))
    console.print(f"calibration set {calib_dir} (32 scenes), sample video {video} ({VIDEO_FRAMES} frames)")
    done("1/8 synthetic data")

    # 2. train -------------------------------------------------------------------------------
    step("2/8 train")
    if _fresh(ckpt, force=force) and load_checkpoint(ckpt).meta.arch == DEFAULT_ARCH:
        console.print(f"reusing {ckpt}")
        report["steps"]["train"] = {"reused": True, "checkpoint": str(ckpt)}
    else:
        result = train(
            TrainConfig(out=ckpt, arch=DEFAULT_ARCH, arch_kwargs=dict(DEFAULT_ARCH_KWARGS), epochs=4, steps=steps,
                        batch_size=16, lr=3e-3, img_size=128),
            console=console,
        )  # fmt: skip
        report["steps"]["train"] = result
    done("2/8 train")

    # 3. eval --------------------------------------------------------------------------------
    step("3/8 eval")
    checkpoint = load_checkpoint(ckpt)
    held_out = open_dataset("synthetic", "val", size=192, length=96)
    scores = evaluate(checkpoint.build_model(), held_out, checkpoint.meta.mean, checkpoint.meta.std, checkpoint.meta.num_classes)
    report["steps"]["eval"] = {"split": held_out.name, **scores.to_dict()}
    console.print(f"held-out mean IU {scores.mean_iu:.4f}, pixel acc {scores.pixel_accuracy:.4f}")
    done("3/8 eval")

    # 4. export ------------------------------------------------------------------------------
    step("4/8 export")
    if _fresh(onnx_path, ckpt, force=force):
        console.print(f"reusing {onnx_path}")
        report["steps"]["export"] = {"reused": True, "onnx": str(onnx_path)}
    else:
        report["steps"]["export"] = export_onnx(ckpt, onnx_path, console=console)
    done("4/8 export")

    # 5. engines -----------------------------------------------------------------------------
    step("5/8 build engines")
    engines: dict[str, Path] = {}
    report["steps"]["build"] = {}
    chosen = resolve_backend(backend, log=console.print)
    for precision in ("fp32", "fp16", "int8"):
        engine = default_engine_path(onnx_path, precision, chosen)
        if _fresh(engine, onnx_path, force=force) and _fresh(manifest_path(engine), onnx_path):
            console.print(f"reusing {engine}")
            manifest = read_manifest(engine)
        else:
            manifest = build_engine(
                onnx_path, None, BuildOptions(precision=precision, backend=chosen, calib_dir=calib_dir), log=console.print
            )
            engine = models_dir / manifest["engine"]
        engines[precision] = engine
        report["steps"]["build"][precision] = {
            "engine": str(engine), "backend": manifest["backend"], "profile": manifest["profile"],
            "engine_sha256": manifest["engine_sha256"], "transform": manifest.get("transform"),
        }  # fmt: skip
    done("5/8 build engines")

    # 6. validate ----------------------------------------------------------------------------
    step("6/8 validate")
    report["steps"]["validate"] = {}
    for precision, engine in engines.items():
        result = validate_engine(engine, ckpt, max_side=VALIDATE_CAP, console=console)
        report["steps"]["validate"][precision] = result.to_dict()
    done("6/8 validate")

    # 7. video -------------------------------------------------------------------------------
    step("7/8 infer on video")
    overlay = out / "sample.overlay.mp4"
    video_engine = engines["int8"]
    report["steps"]["infer"] = run_infer(video, video_engine, out=overlay, overwrite=True, console=console)
    report["steps"]["infer"]["standalone_engine_fps"] = _standalone_fps(video_engine, VIDEO_SIZE)
    done("7/8 infer on video")

    # 8. benchmark ---------------------------------------------------------------------------
    step("8/8 benchmark")
    report["steps"]["benchmark"] = run_benchmark(
        [engines[p] for p in ("fp32", "fp16", "int8")], reference=ckpt, sizes=[BENCH_SIZE], warmup=2, iters=30,
        console=console,
    )  # fmt: skip
    done("8/8 benchmark")

    report["seconds"] = {**timings, "total": time.perf_counter() - started}
    report["passed"] = all(v["passed"] for v in report["steps"]["validate"].values())
    report["summary"] = _summary(report)
    atomic_write_json(out / "report.json", report)
    _print_summary(console, report, out, overlay)
    return report


def _standalone_fps(engine: Path, size: tuple[int, int]) -> float:
    """The engine alone at the video's frame size (no decode/encode threads competing)."""
    from .bench import scene_batch, time_runner, warm_up
    from .engines import load_runner

    with load_runner(engine) as runner:
        batch = scene_batch(*size, 1, runner.meta)
        warm_up(runner, batch, 2)
        return 1000.0 / time_runner(runner, batch, 15).median_ms


def _summary(report: dict[str, Any]) -> dict[str, Any]:
    """The headline figures; every engine is compared with PyTorch eager on its own device."""
    results = report["steps"]["benchmark"]["results"]
    torch_ms = {r["device"]: r["median_ms"] for r in results if r["backend"] == "torch"}
    engines = {r["precision"]: r for r in results if r["backend"] != "torch"}
    infer = report["steps"]["infer"]
    fp32 = engines.get("fp32")
    return {
        "held_out_mean_iu": report["steps"]["eval"]["mean_iu"],
        "backend": fp32["backend"] if fp32 else None,
        "validation": {p: v["summary"] | {"passed": v["passed"]} for p, v in report["steps"]["validate"].items()},
        "median_ms": {f"{r['backend']}-{p}": r["median_ms"] for p, r in engines.items()}
        | {f"torch-eager-{d}": ms for d, ms in torch_ms.items()},
        "bench_size": list(BENCH_SIZE),
        "speedup_vs_torch": {p: torch_ms[r["device"]] / r["median_ms"] for p, r in engines.items()},
        "int8_vs_fp32": fp32["median_ms"] / engines["int8"]["median_ms"] if fp32 and "int8" in engines else None,
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
    for column in ("engine", "device", "validation", "min agreement", "min mIU vs ref", f"median ms @{h}x{w}", "vs torch"):
        table.add_column(column, justify="left" if column in ("engine", "device", "validation") else "right")
    torch_ms = {r["device"]: r["median_ms"] for r in results if r["backend"] == "torch"}
    for device, ms in torch_ms.items():
        table.add_row("torch eager fp32 (reference)", device, "-", "-", "-", f"{ms:.1f}", "1.00x")
    for r in (r for r in results if r["backend"] != "torch"):
        val = summary["validation"][r["precision"]]
        table.add_row(
            f"{r['backend']} {r['precision']}", r["device"],
            "[green]passed[/]" if val["passed"] else "[red]FAILED[/]",
            f"{val['min_pixel_agreement'] * 100:.3f}%", f"{val['min_mean_iu']:.4f}",
            f"{r['median_ms']:.1f}", f"{torch_ms[r['device']] / r['median_ms']:.2f}x",
        )  # fmt: skip
    console.print(table)
    backend = summary["backend"]
    console.print(
        f"held-out mean IU {summary['held_out_mean_iu']:.4f}; {backend} FP32 {summary['speedup_vs_torch']['fp32']:.2f}x "
        f"torch eager; INT8 {summary['int8_vs_fp32']:.2f}x {backend} FP32; video {summary['video_fps']:.1f} fps end to end "
        f"({summary['video_fps_ratio']:.2f}x the engine's FPS inside the pipeline, "
        f"{summary['video_vs_standalone_engine']:.2f}x the engine alone at {VIDEO_SIZE[0]}x{VIDEO_SIZE[1]})"
    )
    console.print(f"overlay video: {overlay}\nreport: {out / 'report.json'}  (total {report['seconds']['total']:.0f} s)")
