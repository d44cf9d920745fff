"""Gather what scripts/gpu-check.sh ran into one report, OUT/gpu-check.json, and judge it.

Reads OUT/steps.tsv (one line per step: name, exit status, log), the GPU tests' JUnit XML, the
validation reports and the benchmark report, and checks the GPU plan targets:

* TensorRT FP16 >= 3x PyTorch eager FP32 on CUDA (median latency, 512x512, batch 1);
* TensorRT INT8 >= 1.3x TensorRT FP16.

Offline runs add what scripts/gpu_torch_plan.py wrote: OUT/environment.json (what imports here, why
TensorRT is missing) and OUT/torch-plan.json (the torch-only figures).  Writes OUT/gpu-check.json
and OUT/gpu-check.html.

Exits 0 when every step and target passed, 1 otherwise (a summary line says what failed).
Usage: python scripts/gpu_report.py OUT [--offline] [--driver-cuda 12.8] [--torch-index URL] [--tensorrt-package NAME]
"""

from __future__ import annotations

import argparse
import html
import json
import sys
import xml.etree.ElementTree as ET
from pathlib import Path

#: (name, numerator label, denominator label, minimum speed-up): "numerator runs N x faster".
TARGETS = [
    ("TensorRT FP16 >= 3x PyTorch eager (CUDA)", "tensorrt-fp16", "torch-fp32@cuda", 3.0),
    ("TensorRT INT8 >= 1.3x TensorRT FP16", "tensorrt-int8", "tensorrt-fp16", 1.3),
]
#: Speed-ups reported without a target.
REPORTED = [
    ("TensorRT FP32 vs PyTorch eager (CUDA)", "tensorrt-fp32", "torch-fp32@cuda"),
    ("ONNX Runtime FP32 (CUDA provider) vs PyTorch eager (CUDA)", "onnxruntime-fp32@cuda", "torch-fp32@cuda"),
    ("TensorRT FP16 vs ONNX Runtime FP16 (CUDA provider)", "tensorrt-fp16", "onnxruntime-fp16@cuda"),
]


def read_steps(out: Path) -> list[dict]:
    steps = []
    path = out / "steps.tsv"
    for line in path.read_text().splitlines() if path.is_file() else []:
        name, status, log = line.split("\t")
        steps.append({"name": name, "exit_status": int(status), "passed": int(status) == 0, "log": log})
    return steps


def junit_summary(path: Path) -> dict:
    """Counts from pytest's JUnit XML; ``ran`` excludes skipped tests."""
    if not path.is_file():
        return {"passed": False, "why": f"{path} is missing: the GPU tests did not run"}
    root = ET.parse(path).getroot()
    suites = [root] if root.tag == "testsuite" else list(root.iter("testsuite"))
    counts = {key: sum(int(s.get(key, 0)) for s in suites) for key in ("tests", "skipped", "failures", "errors")}
    ran = counts["tests"] - counts["skipped"]
    why = ""
    if counts["failures"] or counts["errors"]:
        why = f"{counts['failures']} failed, {counts['errors']} errors"
    elif ran == 0:
        why = f"all {counts['tests']} GPU tests skipped: the GPU or TensorRT is not usable from pytest"
    return {**counts, "ran": ran, "passed": not why, "why": why}


def medians(benchmark: dict) -> dict[str, float]:
    """Median ms per label at the first size measured; labels say the device when it is CUDA
    (``torch-fp32@cuda``), except TensorRT's, which only runs there."""
    picked: dict[str, float] = {}
    size = None
    for r in benchmark.get("results", []):
        size = size or (r["height"], r["width"], r["batch"])
        if (r["height"], r["width"], r["batch"]) != size:
            continue
        label = "torch-fp32" if r["backend"] == "torch" else r["label"]
        if r.get("device") == "cuda" and r["backend"] != "tensorrt":
            label += "@cuda"
        picked.setdefault(label, r["median_ms"])
    return picked


def judge_targets(benchmark: dict | None) -> tuple[list[dict], list[dict]]:
    times = medians(benchmark or {})
    targets = []
    for name, numerator, denominator, minimum in TARGETS:
        speedup = times[denominator] / times[numerator] if numerator in times and denominator in times else None
        targets.append({
            "name": name, "numerator": numerator, "denominator": denominator, "target": minimum,
            "speedup": speedup, "passed": speedup is not None and speedup >= minimum,
            "why": "" if speedup is not None else f"not measured ({numerator} or {denominator} missing from the benchmark)",
        })  # fmt: skip
    reported = [{"name": name, "speedup": times[den] / times[num]} for name, num, den in REPORTED if num in times and den in times]
    return targets, reported


def load_json(path: Path) -> dict | None:
    try:
        return json.loads(path.read_text())
    except (OSError, ValueError):
        return None


def build_report(out: Path, environment: dict) -> dict:
    steps = read_steps(out)
    tests = junit_summary(out / "gpu-tests.xml")
    for step in steps:  # pytest exits 0 when everything skipped; the report does not
        if step["name"] == "gpu-tests" and not tests["passed"]:
            step["passed"], step["why"] = False, tests["why"]
    validation = {}
    for path in sorted(out.glob("validate-*.json")):
        data = load_json(path) or {}
        validation[path.stem.removeprefix("validate-")] = {
            "passed": bool(data.get("passed")), "arithmetic": data.get("arithmetic"), "summary": data.get("summary"),
            "report": str(path),
        }  # fmt: skip
    benchmark = load_json(out / "benchmark.json")
    targets, reported = judge_targets(benchmark)
    failed = [s["name"] for s in steps if not s["passed"]] + [t["name"] for t in targets if not t["passed"]]
    if not steps:
        failed.append("no steps ran")
    probe = load_json(out / "environment.json")
    if probe is not None:
        environment = {**environment, "probe": probe}
        if not probe.get("tensorrt_usable"):
            failed.insert(0, f"TensorRT missing: {probe.get('tensorrt_status')}")
    return {
        "passed": not failed,
        "failed": failed,
        "environment": environment,
        "steps": steps,
        "gpu_tests": tests,
        "validation": validation,
        "targets": targets,
        "speedups": reported,
        "benchmark": str(out / "benchmark.json") if benchmark else None,
        "demo": str(out / "demo" / "report.json"),
        "torch_plan": load_json(out / "torch-plan.json"),
    }


def _ms(value) -> str:
    return "-" if value is None else f"{value:.2f}"


def html_page(report: dict) -> str:
    """One page: the verdict, the targets, the steps, the torch-only figures."""
    e = html.escape
    cell = "".join
    targets = [cell(["<tr><td>", e(t["name"]), "</td><td>", "-" if t["speedup"] is None else f"{t['speedup']:.2f}x", "</td><td>",
                     "PASS" if t["passed"] else "FAIL", "</td></tr>"]) for t in report["targets"]]  # fmt: skip
    steps = [cell(["<tr><td>", e(s["name"]), "</td><td>", str(s["exit_status"]), "</td><td>", "PASS" if s["passed"] else "FAIL",
                   "</td></tr>"]) for s in report["steps"]]  # fmt: skip
    plan = report.get("torch_plan") or {}
    timing = [cell(["<tr><td>", e(r["config"]), "</td><td>", e(r["skipped"]) if r.get("skipped") else _ms(r.get("median_ms")), "</td><td>",
                    _ms(r.get("gpu_median_ms")), "</td></tr>"]) for r in plan.get("timing", [])]  # fmt: skip
    verdict = "passed" if report["passed"] else "FAILED: " + ", ".join(report["failed"])
    parts = ["<!doctype html><meta charset=utf-8><title>gpu-check</title><h1>gpu-check ", e(verdict), "</h1>",
             "<h2>Targets</h2><table><tr><th>target<th>speed-up<th></tr>", *targets, "</table>",
             "<h2>Steps</h2><table><tr><th>step<th>exit<th></tr>", *steps, "</table>"]  # fmt: skip
    if plan:
        parts += [f"<h2>torch only ({e(str(plan.get('gpu') or plan.get('device')))}, {plan.get('size')})</h2>",
                  "<table><tr><th>config<th>host ms<th>GPU ms</tr>", *timing, "</table>"]  # fmt: skip
    parts += ["<h2>Environment</h2><pre>", e(json.dumps(report["environment"], indent=2)), "</pre>"]
    return "".join(parts)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("out", type=Path)
    parser.add_argument("--driver-cuda", default="")
    parser.add_argument("--torch-index", default="")
    parser.add_argument("--tensorrt-package", default="")
    parser.add_argument("--offline", action="store_true", help="nothing was installed: the machine's own packages")
    args = parser.parse_args(argv)
    environment = {"driver_cuda": args.driver_cuda, "torch_index": args.torch_index, "tensorrt_package": args.tensorrt_package,
                   "offline": args.offline}  # fmt: skip
    try:
        import tensorrt
        import torch

        environment.update(torch=torch.__version__, torch_cuda=torch.version.cuda, tensorrt=tensorrt.__version__,
                           gpu=torch.cuda.get_device_name(0) if torch.cuda.is_available() else None)  # fmt: skip
    except ImportError:
        pass
    report = build_report(args.out, environment)
    tmp = args.out / ".gpu-check.json.tmp"
    tmp.write_text(json.dumps(report, indent=2))
    tmp.replace(args.out / "gpu-check.json")
    (args.out / "gpu-check.html").write_text(html_page(report))
    for target in report["targets"]:
        value = "not measured" if target["speedup"] is None else f"{target['speedup']:.2f}x"
        print(f"{'PASS' if target['passed'] else 'FAIL'}  {target['name']}: {value}")
    verdict = "passed" if report["passed"] else f"FAILED: {', '.join(report['failed'])}"
    print(f"gpu-check {verdict}; report: {args.out / 'gpu-check.json'}")
    return 0 if report["passed"] else 1


if __name__ == "__main__":
    sys.exit(main())
