"""What scripts/gpu-check.sh runs with the machine's own packages: a probe, and the torch-only plan.

``probe OUT``: which of torch (and its CUDA), TensorRT, ONNX Runtime (and its providers), OpenVINO
and PyAV import here, written to OUT/environment.json.  Exit 0 when torch sees a CUDA device
(3 when TensorRT is usable too), else 2 with one line naming the cause.

``run OUT``: the torch-only plan, for a GPU machine without TensorRT: the default architecture at
512x512, timed (GPU time from CUDA events, and host wall time) eager FP32 with TF32 off, TF32, FP16
by autocast and by ``.half()``, ``.half()`` channels_last, and a CUDA-graph replay; then FP16 masks
on the GPU against FP32 masks on the CPU at many sizes, at the product's FP16 pixel-agreement
threshold.  Written to OUT/torch-plan.json.

Only torch, numpy and fcn_deploy's model, data and threshold modules are imported (no ``av``, no
OpenVINO, no serving).  ``FCN_GPU_TORCH_DEVICE=cpu`` runs the plan on the CPU (tests only), and
``FCN_GPU_QUICK=1`` at small sizes with few runs.
"""

from __future__ import annotations

import importlib
import json
import os
import statistics
import sys
import time
from pathlib import Path

SIZE = (512, 512)
ACCURACY_SIZES = [(512, 512), (97, 129), (256, 384), (720, 1280), (1024, 768), (33, 517)]
QUICK = os.environ.get("FCN_GPU_QUICK") == "1"


def _write(path: Path, data: dict) -> None:
    tmp = path.with_name("." + path.name + ".tmp")
    tmp.write_text(json.dumps(data, indent=2))
    tmp.replace(path)


def _module(name: str) -> tuple[object | None, str]:
    try:
        return importlib.import_module(name), ""
    except Exception as exc:  # noqa: BLE001 - any failure means "not usable here", with its reason
        return None, f"{exc.__class__.__name__}: {exc}"


def probe(out: Path) -> int:
    env: dict = {"python": sys.executable, "packages": {}}
    torch, why = _module("torch")
    if torch is None:
        env["cause"] = (f"torch does not import in {sys.executable} ({why}): offline, nothing can be installed; "
                        "run with PYTHON= a python that has torch with CUDA")  # fmt: skip
    else:
        env.update(torch=torch.__version__, torch_cuda=torch.version.cuda, cuda_available=torch.cuda.is_available())
        if torch.cuda.is_available():
            env["gpu"] = torch.cuda.get_device_name(0)
        elif os.environ.get("FCN_GPU_TORCH_DEVICE") == "cpu":
            env["gpu"] = "none (FCN_GPU_TORCH_DEVICE=cpu: the plan runs on the CPU, for tests)"
        elif torch.version.cuda is None:
            env["cause"] = f"no CUDA device: torch {torch.__version__} in {sys.executable} is a CPU-only build"
        else:
            env["cause"] = (f"no CUDA device: torch {torch.__version__} (CUDA {torch.version.cuda}) sees none "
                            f"(CUDA_VISIBLE_DEVICES={os.environ.get('CUDA_VISIBLE_DEVICES', 'unset')}; is the driver loaded?)")  # fmt: skip
    for name in ("tensorrt", "onnxruntime", "openvino", "av"):
        module, why = _module(name)
        env["packages"][name] = {"version": getattr(module, "__version__", "?")} if module else {"missing": why}
    ort = sys.modules.get("onnxruntime")
    if ort is not None:
        env["packages"]["onnxruntime"]["providers"] = list(ort.get_available_providers())
    usable_trt = False
    if torch is not None and torch.cuda.is_available() and "missing" not in env["packages"]["tensorrt"]:
        from fcn_deploy.backends.tensorrt import tensorrt_status

        usable_trt, env["tensorrt_status"] = tensorrt_status()
    else:
        env["tensorrt_status"] = ("TensorRT is not installed in this interpreter (its wheels come from NVIDIA's index: "
                                  "offline, none can be installed)")  # fmt: skip
    env["tensorrt_usable"] = usable_trt
    _write(out / "environment.json", env)
    if "cause" in env:
        print(env["cause"])
        return 2
    print(f"torch {env['torch']} on {env.get('gpu', 'cpu')}; TensorRT: {'usable' if usable_trt else env['tensorrt_status']}")
    return 3 if usable_trt else 0


def _timed(torch, device, fn, warmup: int, iters: int) -> dict:
    """Median GPU time (CUDA events) and host wall time of ``fn()``, in ms."""
    cuda = device.type == "cuda"
    for _ in range(warmup):
        fn()
    if cuda:
        torch.cuda.synchronize()
    gpu, wall = [], []
    for _ in range(iters):
        if cuda:
            start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
            start.record()
        began = time.perf_counter()
        fn()
        if cuda:
            end.record()
            end.synchronize()
            gpu.append(start.elapsed_time(end))
        wall.append((time.perf_counter() - began) * 1000.0)
    return {"gpu_median_ms": statistics.median(gpu) if gpu else None, "median_ms": statistics.median(wall)}


def run(out: Path) -> int:
    import torch

    from fcn_deploy import models
    from fcn_deploy.data.images import preprocess
    from fcn_deploy.data.synthetic import CLASS_NAMES, make_scene
    from fcn_deploy.validation import DEFAULT_THRESHOLDS

    device = torch.device(os.environ.get("FCN_GPU_TORCH_DEVICE", "cuda"))
    cuda = device.type == "cuda"
    size, sizes = ((64, 64), [(64, 64), (37, 53)]) if QUICK else (SIZE, ACCURACY_SIZES)
    warmup, iters = (1, 2) if QUICK else (10, 50)
    torch.manual_seed(0)
    arch = "fcn8s-resnet18"
    model = models.build(arch, num_classes=len(CLASS_NAMES), **({"width": 0.25} if QUICK else {})).eval()
    mean, std = (0.485, 0.456, 0.406), (0.229, 0.224, 0.225)

    def batch(h: int, w: int):
        return torch.from_numpy(preprocess(make_scene(7, 0, h, w)[0][None], mean, std))

    rows = []
    x = batch(*size).to(device)
    gpu_model = model.to(device)
    with torch.inference_mode():
        for label, tf32 in (("fp32 (TF32 off)", False), ("tf32", True)):
            if cuda:
                torch.backends.cuda.matmul.allow_tf32 = torch.backends.cudnn.allow_tf32 = tf32
            rows.append({"config": label, **_timed(torch, device, lambda: gpu_model(x), warmup, iters)})
        if cuda:
            torch.backends.cuda.matmul.allow_tf32 = torch.backends.cudnn.allow_tf32 = False
        with torch.autocast(device.type, dtype=torch.float16):
            rows.append({"config": "fp16 autocast", **_timed(torch, device, lambda: gpu_model(x), warmup, iters)})
        half, xh = gpu_model.half(), x.half()
        rows.append({"config": "fp16 .half()", **_timed(torch, device, lambda: half(xh), warmup, iters)})
        last, xl = half.to(memory_format=torch.channels_last), xh.to(memory_format=torch.channels_last)
        rows.append({"config": "fp16 .half() channels_last", **_timed(torch, device, lambda: last(xl), warmup, iters)})
        if cuda:
            graph, static = torch.cuda.CUDAGraph(), xl.clone()
            side = torch.cuda.Stream()
            side.wait_stream(torch.cuda.current_stream())
            with torch.cuda.stream(side):
                for _ in range(3):
                    last(static)
            torch.cuda.current_stream().wait_stream(side)
            with torch.cuda.graph(graph):
                last(static)
            rows.append({"config": "fp16 .half() channels_last, CUDA graph replay", **_timed(torch, device, graph.replay, warmup, iters)})
        else:
            rows.append({"config": "fp16 .half() channels_last, CUDA graph replay", "skipped": "needs a CUDA device"})
        reference = model.float().to(memory_format=torch.contiguous_format).to("cpu")
        fp16 = models.build(arch, num_classes=len(CLASS_NAMES), **({"width": 0.25} if QUICK else {})).eval()
        fp16.load_state_dict(reference.state_dict())
        fp16 = fp16.to(device).half()
        threshold = DEFAULT_THRESHOLDS["fp16"].pixel_agreement
        accuracy = []
        for h, w in sizes:
            image = batch(h, w)
            expected = reference(image).argmax(1)
            got = fp16(image.to(device).half()).float().argmax(1).cpu()
            agreement = float((got == expected).float().mean())
            accuracy.append({"height": h, "width": w, "pixel_agreement": agreement, "passed": agreement >= threshold})
    plan = {
        "device": str(device), "gpu": torch.cuda.get_device_name(0) if cuda else None, "torch": torch.__version__,
        "arch": arch, "size": list(size), "batch": 1, "warmup": warmup, "iters": iters, "timing": rows,
        "weights": "random (seed 0): the timing does not depend on them; mask agreement is indicative only",
        "fp16_accuracy": {"threshold": threshold, "sizes": accuracy, "passed": all(a["passed"] for a in accuracy),
                          "reference": "the same model in FP32 on the CPU"},
    }  # fmt: skip
    _write(out / "torch-plan.json", plan)
    for row in rows:
        gpu = f", {row['gpu_median_ms']:.2f} ms GPU" if row.get("gpu_median_ms") else ""
        figure = row.get("skipped") or f"{row['median_ms']:.2f} ms host{gpu}"
        print(f"torch {row['config']}: {figure}")
    print(f"FP16 masks vs FP32 on the CPU: lowest agreement {min(a['pixel_agreement'] for a in accuracy):.4%} (threshold {threshold:.2%})")
    return 0


if __name__ == "__main__":
    mode, out = sys.argv[1], Path(sys.argv[2])
    out.mkdir(parents=True, exist_ok=True)
    sys.exit(probe(out) if mode == "probe" else run(out))
