"""scripts/gpu-check.sh where there is no usable GPU (it must stop at once, say why and install nothing),
its choice of torch and TensorRT builds for a driver (``--plan``), the report it writes
(scripts/gpu_report.py: steps, all-skipped GPU tests, the GPU plan targets), and ``fcn-deploy gpu-check``."""

from __future__ import annotations

import importlib.util
import json
import os
import shutil
import subprocess
import sys
import time
from pathlib import Path

import pytest

from fcn_deploy.backends.tensorrt import TensorRTBackend
from fcn_deploy.cli import main

ROOT = Path(__file__).resolve().parents[1]
SCRIPT = ROOT / "scripts" / "gpu-check.sh"
BASH = shutil.which("bash") or "/bin/bash"


def fake_nvidia_smi(folder: Path, header: str | None, status: int = 0) -> None:
    """An ``nvidia-smi`` that prints ``header`` (its banner line) and exits with ``status``."""
    script = folder / "nvidia-smi"
    quoted = "'" + str(header).replace("'", "'\\''") + "'"
    script.write_text(f"#!{BASH}\necho {quoted}\nexit {status}\n")
    script.chmod(0o755)


def run_script(tmp_path: Path, *args: str, smi: tuple[str, int] | None = None, python: str = "python3", env: dict | None = None,
               timeout: float = 60) -> subprocess.CompletedProcess:  # fmt: skip
    """Run the script with a PATH holding only the tools it needs (and, if given, a fake nvidia-smi),
    its venv and output folder under ``tmp_path``."""
    tools = tmp_path / "bin"
    tools.mkdir(exist_ok=True)
    for tool in ("dirname", "sed", "head", "mkdir", "tr", "tee"):
        os.symlink(shutil.which(tool), tools / tool)
    if smi is not None:
        fake_nvidia_smi(tools, *smi)
    env = {"PATH": str(tools), "FCN_GPU_VENV": str(tmp_path / "venv"), "HOME": str(tmp_path), "PYTHON": python, **(env or {})}
    return subprocess.run([BASH, str(SCRIPT), *args, str(tmp_path / "out")], env=env, capture_output=True, text=True,
                          timeout=timeout)  # fmt: skip


def assert_installed_nothing(tmp_path: Path, *, report: bool = True) -> dict | None:
    """No venv; the report (when the run stopped early) says why it stopped."""
    assert not (tmp_path / "venv").exists()
    if not report:
        assert not (tmp_path / "out").exists()
        return None
    data = json.loads((tmp_path / "out" / "gpu-check.json").read_text())
    assert data["passed"] is False and data["exit_status"] == 2 and data["stopped"]
    return data


@pytest.mark.parametrize(
    ("smi", "message"),
    [
        (None, "nvidia-smi not found: no NVIDIA driver on this machine"),
        (("NVIDIA-SMI has failed because it couldn't communicate with the NVIDIA driver", 9),
         "nvidia-smi failed (NVIDIA-SMI has failed because it couldn't communicate with the NVIDIA driver): the NVIDIA driver is not working"),
        (("| NVIDIA-SMI 535.104.05   Driver Version: 535.104.05   CUDA Version: 12.2 |", 0),
         "the driver supports CUDA 12.2; torch's CUDA builds need 12.6 or newer. Update the NVIDIA driver"),
        (("| NVIDIA-SMI without a CUDA line |", 0), "could not read the driver's CUDA version"),
    ],
)  # fmt: skip
def test_without_a_usable_gpu_it_stops_says_why_and_installs_nothing(tmp_path, smi, message):
    result = run_script(tmp_path, smi=smi)
    assert result.returncode == 2, result.stderr
    assert message in result.stderr and "nothing was installed" in result.stderr
    assert result.stdout == ""
    assert message in assert_installed_nothing(tmp_path)["stopped"]


@pytest.mark.parametrize(
    ("cuda", "torch_build", "tensorrt"),
    [
        ("13.0", "cu130", "tensorrt-cu13>=10.12,<12"),
        ("12.9", "cu128", "tensorrt-cu12>=10.12,<12"),
        ("12.6", "cu126", "tensorrt-cu12>=10.12,<12"),
    ],
)
def test_plan_follows_the_driver_cuda_version(tmp_path, cuda, torch_build, tensorrt):
    result = run_script(tmp_path, "--plan", smi=(f"| NVIDIA-SMI 580.65.06  Driver Version: 580.65.06  CUDA Version: {cuda} |", 0))
    assert result.returncode == 0, result.stderr
    assert f"driver CUDA {cuda} -> torch from https://download.pytorch.org/whl/{torch_build}, {tensorrt}" in result.stdout
    assert_installed_nothing(tmp_path, report=False)


# --------------------------------------------------------------------------- offline


def logging_python(tmp_path: Path) -> tuple[str, Path]:
    """A python that logs every command line it is given (to show pip is never called), then runs."""
    log, wrapper = tmp_path / "python-calls.log", tmp_path / "python-logged"
    wrapper.write_text(f'#!{BASH}\necho "$*" >>{log}\nexec {sys.executable} "$@"\n')
    wrapper.chmod(0o755)
    return str(wrapper), log


def test_offline_without_a_cuda_device_stops_at_once_with_a_report(tmp_path):
    python, log = logging_python(tmp_path)
    started = time.monotonic()
    result = run_script(tmp_path, "--offline", python=python, timeout=120)
    assert result.returncode == 2, (result.stdout, result.stderr)
    assert time.monotonic() - started < 60  # 30 s on an idle machine; this one is shared
    (line,) = result.stderr.strip().splitlines()
    assert line.startswith("gpu-check: error: no CUDA device: torch") and "nvidia-smi not found" in line
    assert "nothing was installed" in line
    report = assert_installed_nothing(tmp_path)
    assert report["offline"] is True and "no CUDA device" in report["stopped"]
    probe = json.loads((tmp_path / "out" / "environment.json").read_text())
    assert probe["torch"] and set(probe["packages"]) == {"tensorrt", "onnxruntime", "openvino", "av"}
    assert "-m pip" not in log.read_text() and "urlopen" not in log.read_text()  # no install, no network probe


def test_unreachable_index_means_offline_no_pip_and_the_torch_only_plan(tmp_path):
    python, log = logging_python(tmp_path)
    smi = ("| NVIDIA-SMI 580.65.06  Driver Version: 580.65.06  CUDA Version: 13.0 |", 0)
    env = {"FCN_GPU_INDEX_URL": "http://127.0.0.1:9/simple/", "FCN_GPU_TORCH_DEVICE": "cpu", "FCN_GPU_QUICK": "1"}
    result = run_script(tmp_path, smi=smi, python=python, env=env, timeout=300)
    assert result.returncode == 1, (result.stdout, result.stderr)  # ran, and TensorRT's targets could not be checked
    assert "does not answer within 5 s: running offline" in result.stdout and "offline: installing nothing" in result.stdout
    calls = log.read_text()
    assert "-m pip" not in calls and "venv" not in calls
    assert not (tmp_path / "venv").exists()
    out = tmp_path / "out"
    plan = json.loads((out / "torch-plan.json").read_text())
    configs = [row["config"] for row in plan["timing"]]
    assert configs[:2] == ["fp32 (TF32 off)", "tf32"] and "fp16 .half() channels_last" in configs
    assert all(row.get("median_ms", 0) > 0 or row.get("skipped") for row in plan["timing"])
    assert plan["fp16_accuracy"]["sizes"] and plan["fp16_accuracy"]["threshold"] == 0.999
    report = json.loads((out / "gpu-check.json").read_text())
    assert report["failed"][0].startswith("TensorRT missing: TensorRT is not installed in this interpreter")
    assert report["environment"]["offline"] is True and report["torch_plan"]["arch"] == "fcn8s-resnet18"
    assert [s["name"] for s in report["steps"]] == ["torch-plan", "backends"] and all(s["passed"] for s in report["steps"])
    assert "fp32 (TF32 off)" in (out / "gpu-check.html").read_text()


# --------------------------------------------------------------------------- the report


def gpu_report():
    spec = importlib.util.spec_from_file_location("gpu_report", ROOT / "scripts" / "gpu_report.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def write_run(out: Path, *, skipped: int, medians: dict[tuple[str, str, str], float]) -> None:
    out.mkdir()
    (out / "steps.tsv").write_text("".join(f"{name}\t0\t{out / name}.log\n" for name in ("gpu-status", "gpu-tests", "demo", "benchmark")))
    (out / "gpu-tests.xml").write_text(
        f'<testsuites><testsuite name="pytest" tests="9" skipped="{skipped}" failures="0" errors="0"/></testsuites>'
    )
    results = [
        {"backend": backend, "precision": precision, "device": device, "label": f"{backend}-{precision}", "height": 512,
         "width": 512, "batch": 1, "median_ms": ms}
        for (backend, precision, device), ms in medians.items()
    ]  # fmt: skip
    (out / "benchmark.json").write_text(json.dumps({"results": results}))
    (out / "validate-int8.json").write_text(json.dumps({"passed": True, "arithmetic": "int8", "summary": {}}))


FAST = {("torch", "fp32", "cpu"): 400.0, ("torch", "fp32", "cuda"): 30.0, ("tensorrt", "fp32", "cuda"): 12.0,
        ("tensorrt", "fp16", "cuda"): 8.0, ("tensorrt", "int8", "cuda"): 5.0}  # fmt: skip


def test_report_passes_when_every_step_and_target_passes(tmp_path, capsys):
    write_run(tmp_path / "out", skipped=0, medians=FAST)
    assert gpu_report().main([str(tmp_path / "out"), "--driver-cuda", "12.8"]) == 0
    report = json.loads((tmp_path / "out" / "gpu-check.json").read_text())
    assert report["passed"] and report["failed"] == []
    assert [(t["speedup"], t["passed"]) for t in report["targets"]] == [(30.0 / 8.0, True), (8.0 / 5.0, True)]
    assert report["gpu_tests"]["ran"] == 9 and report["validation"]["int8"]["passed"]
    assert report["environment"]["driver_cuda"] == "12.8"
    assert "PASS  TensorRT FP16 >= 3x PyTorch eager (CUDA): 3.75x" in capsys.readouterr().out


def test_report_fails_on_a_missed_target_and_on_all_skipped_gpu_tests(tmp_path, capsys):
    slow_int8 = {**FAST, ("tensorrt", "int8", "cuda"): 7.0}  # 8 / 7 = 1.14x < 1.3x
    write_run(tmp_path / "out", skipped=9, medians=slow_int8)
    assert gpu_report().main([str(tmp_path / "out")]) == 1
    report = json.loads((tmp_path / "out" / "gpu-check.json").read_text())
    assert report["failed"] == ["gpu-tests", "TensorRT INT8 >= 1.3x TensorRT FP16"]
    assert report["gpu_tests"]["why"] == "all 9 GPU tests skipped: the GPU or TensorRT is not usable from pytest"
    assert "FAIL  TensorRT INT8 >= 1.3x TensorRT FP16: 1.14x" in capsys.readouterr().out


def test_report_fails_when_nothing_was_measured(tmp_path):
    (tmp_path / "out").mkdir()
    assert gpu_report().main([str(tmp_path / "out")]) == 1
    report = json.loads((tmp_path / "out" / "gpu-check.json").read_text())
    assert all(t["speedup"] is None and not t["passed"] for t in report["targets"])
    assert "no steps ran" in report["failed"] and report["gpu_tests"]["passed"] is False


# --------------------------------------------------------------------------- fcn-deploy gpu-check


def test_gpu_check_command_exits_2_when_tensorrt_is_unusable(monkeypatch, capsys):
    monkeypatch.setattr(TensorRTBackend, "status", lambda self: (False, "the tensorrt package is not installed"))
    assert main(["gpu-check"]) == 2
    captured = capsys.readouterr()
    assert "TensorRT: not usable (the tensorrt package is not installed)" in captured.out
    assert "error: TensorRT is not usable here: the tensorrt package is not installed" in captured.err
    monkeypatch.setattr(TensorRTBackend, "status", lambda self: (True, "tensorrt imports and a CUDA device is present"))
    assert main(["gpu-check"]) == 0
