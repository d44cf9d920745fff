"""fcn-deploy's INT8 engines against NNCF's (OpenVINO's own quantizer), on the same model, images and sizes, in one run.

For one FP32 ONNX (exported or adopted) and one calibration folder it builds:

* ours: ``build-engine --int8`` for OpenVINO and for ONNX Runtime (the check and the repair on), the
  plain INT8 engines (``--int8-repair off``), the float-node search alone on OpenVINO
  (``--int8-repair float-nodes``), and the FP32 engines of both;
* NNCF, OpenVINO backend: ``nncf.quantize`` on the OpenVINO model, run on OpenVINO;
* NNCF, OpenVINO backend with accuracy control (``quantize_with_accuracy_control``, ``max_drop``
  0.005 on pooled mask agreement with FP32, OpenVINO as the validation runtime);
* NNCF, ONNX backend: ``nncf.quantize`` on the ONNX graph, run on ONNX Runtime and on OpenVINO;

validates every engine against the FP32 ONNX at the same sizes and inputs (``validate``'s default
spread over the engines' common profile, capped), and times every engine in one benchmark run (each
in its own process).  NNCF's engines are written as fcn-deploy engines (IR or ONNX plus a manifest)
so the same validate and benchmark open them.  Needs ``pip install 'fcn-deploy[compare]'``.

    python scripts/compare_nncf.py tests/data/lraspp-mnv3-w050.onnx --calib calib/ --min-shape 64x64 --out cmp-lraspp --report cmp.json
    python scripts/compare_nncf.py demo-out/models/default.onnx --checkpoint demo-out/models/default.pt --calib demo-out/calibration --out cmp-default
"""

from __future__ import annotations

import argparse
import datetime as dt
import json
import time
from pathlib import Path

import numpy as np

from fcn_deploy import __version__, backends
from fcn_deploy.backends import Profile
from fcn_deploy.backends.manifest import MANIFEST_FORMAT, file_entries, write_manifest
from fcn_deploy.bench import run_benchmark
from fcn_deploy.data.calibration import load_calibration
from fcn_deploy.engines import BuildOptions, build_engine, library_versions
from fcn_deploy.errors import CheckFailed
from fcn_deploy.fileio import sha256_file
from fcn_deploy.meta import read_onnx_meta, write_onnx_meta
from fcn_deploy.onnxkit import read_onnx, save_onnx
from fcn_deploy.validation import InputSource, ValidateOptions, validate_engine
from fcn_deploy.validation.metrics import METRICS

MAX_SIDE = 256
VARIANT_LABELS = {"off": ", plain (--int8-repair off)", "float-nodes": ", float nodes alone (--int8-repair float-nodes)"}
PROFILE = Profile((1, 32, 32), (1, 256, 256), (1, 512, 512))


def _manifest(engine: Path, backend: str, source: Path, graph: Path, meta, build: dict) -> None:
    """An fcn-deploy manifest for an engine made outside build-engine (NNCF's), so validate and benchmark open it."""
    manifest = {
        "format": MANIFEST_FORMAT, "engine": engine.name, "files": file_entries(backends.get(backend).engine_files(engine)),
        "engine_sha256": sha256_file(engine), "backend": backend, "precision": "int8", "versions": library_versions(backends.get(backend)),
        "device": backends.get(backend).device_info(), "profile": PROFILE.to_dict(), "source_onnx": str(source.resolve()),
        "source_onnx_sha256": sha256_file(source), "precision_onnx": str(graph.resolve()), "precision_onnx_sha256": sha256_file(graph),
        "transform": {"precision": "int8", "quantizer": build.get("quantizer")}, "build": build, "meta": meta.to_dict(),
        "built_at": dt.datetime.now(dt.timezone.utc).isoformat(timespec="seconds"), "built_by": f"scripts/compare_nncf.py, fcn-deploy {__version__}",
        "rebuild_command": "python scripts/compare_nncf.py ...",
    }  # fmt: skip
    write_manifest(engine, manifest)


def _dataset(batches):
    import nncf

    return nncf.Dataset(batches)


def nncf_openvino(source: Path, calibration, out: Path, meta, accuracy_control: bool, validation_batches=None) -> Path:
    """NNCF on the OpenVINO model (optionally with accuracy control judged by mask agreement on OpenVINO)."""
    import nncf
    import openvino as ov

    core = ov.Core()
    model = core.read_model(str(source))
    if accuracy_control:
        reference = core.compile_model(model, "CPU", {"INFERENCE_PRECISION_HINT": "f32"})

        def agreement(candidate, items) -> tuple[float, None]:
            """Pooled mask agreement with FP32 on ``items`` (NNCF passes the validation set whole, or one item)."""
            compiled = candidate if hasattr(candidate, "create_infer_request") else core.compile_model(candidate, "CPU",
                                                                                                       {"INFERENCE_PRECISION_HINT": "f32"})  # fmt: skip
            references = [reference(batch)[0].argmax(1) for batch in items]
            agree = sum(int((compiled(batch)[0].argmax(1) == ref).sum()) for batch, ref in zip(items, references))
            return agree / sum(ref.size for ref in references), None

        quantized = nncf.quantize_with_accuracy_control(model, _dataset(calibration.batches), _dataset(validation_batches), agreement,
                                                        max_drop=0.005, subset_size=len(calibration.batches))  # fmt: skip
    else:
        quantized = nncf.quantize(model, _dataset(calibration.batches), subset_size=len(calibration.batches))
    quantized.set_rt_info(json.dumps(meta.to_dict()), ["fcn_deploy", "meta"])
    engine = out / f"nncf{'-ac' if accuracy_control else ''}.int8.openvino.xml"
    ov.save_model(quantized, str(engine), compress_to_fp16=False)
    build = {"config": {"INFERENCE_PRECISION_HINT": "f32"}, "quantizer": f"nncf {nncf.__version__} OpenVINO backend"
             + (" with accuracy control (max_drop 0.005 on pooled mask agreement, OpenVINO)" if accuracy_control else "")}  # fmt: skip
    _manifest(engine, "openvino", source, source, meta, build)
    return engine


def nncf_onnx(source: Path, calibration, out: Path, meta) -> tuple[Path, Path]:
    """NNCF's ONNX backend: one Q/DQ graph, compiled by ONNX Runtime and by OpenVINO (our compile steps)."""
    import nncf

    from fcn_deploy.backends import CompileOptions

    model = read_onnx(source)
    name = model.graph.input[0].name  # NNCF's ONNX backend feeds ONNX Runtime a dict per item
    dataset = nncf.Dataset(calibration.batches, lambda batch: {name: batch})
    quantized = nncf.quantize(model, dataset, subset_size=len(calibration.batches))
    write_onnx_meta(quantized, meta, {"fcn_deploy.precision": "int8"})
    graph = save_onnx(quantized, out / "nncf-onnx.int8.onnx")
    engines = []
    for name, suffix in (("onnxruntime", "ort.onnx"), ("openvino", "openvino.xml")):
        engine = out / f"nncf-onnx.int8.{suffix}"
        build = backends.get(name).compile(graph, engine, PROFILE, meta, CompileOptions("int8"))
        _manifest(engine, name, source, graph, meta, {**build, "quantizer": f"nncf {nncf.__version__} ONNX backend"})
        engines.append(engine)
    return engines[0], engines[1]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("onnx", type=Path, help="The FP32 ONNX (exported or adopted).")
    parser.add_argument("--calib", type=Path, required=True, help="Calibration images.")
    parser.add_argument("--out", type=Path, required=True, help="Where the engines go.")
    parser.add_argument("--iters", type=int, default=20)
    parser.add_argument("--size", default="512x512", help="Benchmark size HxW.")
    parser.add_argument("--checkpoint", type=Path, help="The model's PyTorch checkpoint, if it has one (the benchmark's baseline).")
    parser.add_argument("--min-shape", default="32x32", help="The engines' smallest HxW (the profile's min; build-engine --min-shape).")
    parser.add_argument("--report", type=Path)
    args = parser.parse_args()
    global PROFILE
    PROFILE = Profile((1, *(int(v) for v in args.min_shape.split("x"))), PROFILE.opt, PROFILE.max)
    args.out.mkdir(parents=True, exist_ok=True)
    source = args.out / args.onnx.name
    source.write_bytes(args.onnx.read_bytes())
    meta = read_onnx_meta(read_onnx(source, load_data=False), str(source))
    calibration = load_calibration(args.calib, meta, max_hw=PROFILE.max[1:])
    timings: dict[str, float] = {}
    engines: dict[str, Path] = {}

    def timed(label: str, make):
        started = time.perf_counter()
        engines[label] = make()
        timings[label] = time.perf_counter() - started
        print(f"built {label} in {timings[label]:.0f} s: {engines[label]}", flush=True)

    # The plain INT8 engines (no repair) and the float-node search alone build from copies in plain/ and
    # float-nodes/, so that their INT8 graphs do not replace the default build's beside the source.
    copies = {}
    for repair in ("off", "float-nodes"):
        copies[repair] = args.out / ("plain" if repair == "off" else repair) / source.name
        copies[repair].parent.mkdir(exist_ok=True)
        copies[repair].write_bytes(source.read_bytes())
    variants = {"openvino": [None, "off", "float-nodes", "default"], "onnxruntime": [None, "off", "default"]}
    for backend, repairs in variants.items():
        for repair in repairs:
            precision = "fp32" if repair is None else "int8"
            src = copies.get(repair, source)
            options = BuildOptions(precision=precision, backend=backend, calib_dir=args.calib, min_shape=PROFILE.min[1:],
                                   max_shape=PROFILE.max[1:], int8_repair=None if repair == "default" else repair)  # fmt: skip
            label = f"ours {backend} {precision}" + VARIANT_LABELS.get(repair or "", "")
            try:
                timed(label, lambda: src.parent / build_engine(src, None, options)["engine"])  # noqa: B023 - called at once
            except CheckFailed as exc:  # no repair within the budget: a row that says so
                print(f"{label}: {exc}", flush=True)
    if backends.get("openvino").status()[0]:
        validation_batches = [InputSource().batch(h, w, 1, i) for i, (h, w) in enumerate([(97, 129), (160, 224), (64, 80)])]
        from fcn_deploy.data.images import preprocess

        validation_batches = [preprocess(b, meta.mean, meta.std) for b in validation_batches]
        timed("nncf openvino", lambda: nncf_openvino(source, calibration, args.out, meta, False))
        timed("nncf openvino, accuracy control", lambda: nncf_openvino(source, calibration, args.out, meta, True, validation_batches))
    onnx_engines = nncf_onnx(source, calibration, args.out, meta)
    engines["nncf onnx on onnxruntime"], engines["nncf onnx on openvino"] = onnx_engines
    rows = {}
    for label, engine in engines.items():
        report = validate_engine(engine, source, ValidateOptions(max_side=MAX_SIDE, random_sizes=4))
        summary = report.summary()
        rows[label] = {"engine": str(engine), "passed": report.passed, "pooled_agreement": summary["pixel_agreement"],
                       "lowest_size_agreement": summary["min_pixel_agreement"], "mean_iu_vs_reference": summary["mean_iu_vs_reference"],
                       "failures": report.failures, "sizes": len(report.cases)}  # fmt: skip
        print(
            f"validated {label}: {'passed' if report.passed else 'FAILED'} {summary['pixel_agreement']:.4%} "
            f"(lowest {summary['min_pixel_agreement']:.4%}), mIU vs FP32 {summary['mean_iu_vs_reference']:.4f}",
            flush=True,
        )
    h, w = (int(v) for v in args.size.split("x"))
    bench = run_benchmark(list(engines.values()), reference=args.checkpoint, sizes=[(h, w)], warmup=3, iters=args.iters)
    by_engine = {r["engine"]: r for r in bench["results"]}
    print(f"\n| engine | validate (pooled / lowest size / mIU vs FP32) | median ms at {h}x{w} |\n|---|---|---|")
    for label, row in rows.items():
        timing = by_engine.get(row["engine"], {})
        row.update(median_ms=timing.get("median_ms"), p10_ms=timing.get("p10_ms"), p90_ms=timing.get("p90_ms"))
        verdict = "passes" if row["passed"] else "fails"
        print(
            f"| {label} | {row['pooled_agreement']:.2%} / {row['lowest_size_agreement']:.2%} / {row['mean_iu_vs_reference']:.4f}: "
            f"{verdict} | {row['median_ms']:.1f} |"
        )
    if args.report:
        args.report.write_text(json.dumps({"model": str(args.onnx), "rows": rows, "build_seconds": timings, "benchmark": bench,
                                           "metrics": list(METRICS)}, indent=2, default=str))  # fmt: skip


if __name__ == "__main__":
    np.set_printoptions(precision=4)
    main()
