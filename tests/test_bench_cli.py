"""benchmark, the CLI surface, and the demo's end-to-end run."""

from __future__ import annotations

import json
import os
from pathlib import Path

import pytest

from fcn_deploy import __version__, models
from fcn_deploy.bench import count_flops, run_benchmark
from fcn_deploy.cli import main
from fcn_deploy.errors import FcnDeployError

PIPELINE = ["train", "import", "eval", "export", "build-engine", "validate", "infer", "benchmark", "demo", "models"]


def test_help_lists_the_pipeline_and_version_works(capsys):
    assert main(["--help"]) == 0
    out = capsys.readouterr().out
    for command in PIPELINE:
        assert command in out, command
    assert main(["--version"]) == 0
    assert capsys.readouterr().out.strip() == f"fcn-deploy {__version__}"


def test_models_command_lists_names_params_and_minimum(capsys):
    assert main(["models", "--json"]) == 0
    rows = json.loads(capsys.readouterr().out)
    assert [r["name"] for r in rows] == models.names()
    by_name = {r["name"]: r for r in rows}
    assert 130e6 < by_name["fcn8s-vgg16"]["parameters"] < 140e6  # the paper's 134M
    assert all(r["min_size"] == 32 for r in rows)


def test_flop_count_matches_hand_count():
    import torch

    net = torch.nn.Sequential(torch.nn.Conv2d(3, 8, 3, padding=1), torch.nn.ConvTranspose2d(8, 4, 4, stride=2))
    # conv: 2 * (10*12 outputs) * 3*9 inputs * 8 channels; deconv: 2 * (10*12 inputs) * 8*16 * 4
    assert count_flops(net, 10, 12) == 2 * 120 * 27 * 8 + 2 * 120 * 8 * 16 * 4


def test_benchmark_reports_baseline_and_engines(tiny_onnx, tiny_checkpoint, tmp_path, capsys):
    report_path, page = tmp_path / "bench.json", tmp_path / "bench.html"
    code = main(["benchmark", str(tiny_onnx), "--reference", str(tiny_checkpoint), "--sizes", "64x64,96x128",
                 "--warmup", "1", "--iters", "3", "--report", str(report_path), "--html", str(page)])  # fmt: skip
    assert code == 0
    html = page.read_text()
    assert "Median latency per engine" in html and "1x96x128" in html and "onnxruntime fp32" in html
    report = json.loads(report_path.read_text())
    results = report["results"]
    assert {(r["backend"], r["height"], r["width"]) for r in results} == {
        ("torch", 64, 64), ("torch", 96, 128), ("onnxruntime", 64, 64), ("onnxruntime", 96, 128),
    }  # fmt: skip
    for r in results:
        for key in ("backend", "precision", "height", "width", "batch", "median_ms", "p90_ms", "throughput_fps"):
            assert key in r, key
        assert r["median_ms"] > 0 and r["p90_ms"] >= r["median_ms"] * 0.999
        assert r["throughput_fps"] == pytest.approx(1000.0 / r["median_ms"])
        assert r["gflop"] > 0 and 0 < r["fraction_of_peak"] <= 1.0 and not r["above_peak"], r  # held against its own arithmetic's peak
        assert r["peak_kind"] == "fp32" and r["peak_source"]
    engine = [r for r in results if r["backend"] == "onnxruntime"]
    assert all(r["speedup_vs_torch"] is not None for r in engine)
    # Every engine was timed in its own worker process, none in this one.
    pids = {r["backend"]: r["worker_pid"] for r in results}
    assert len(set(pids.values())) == 2 and os.getpid() not in pids.values()
    assert all(r["p10_ms"] <= r["median_ms"] <= r["p90_ms"] and len(r["samples_ms"]) == 3 for r in results)
    peaks = report["machine"]["peaks"]["cpu"]
    assert report["baseline"]["mode"] == "eager" and peaks["fp32"]["gops"] > 0 and peaks["int8"]["gops"] > 0
    assert set(peaks["fp32"]["candidates"]) >= {"onnxruntime MatMul", "openvino MatMul", "torch.mm"}  # the best of every runtime's kernel
    assert "direct-convolution" in report["machine"]["flop_count"]
    assert "vs torch" in capsys.readouterr().out


def stand_in_probe(measure):
    """A stand-in for the peak process whose every measurement is ``measure()``."""

    class Probe:
        def __init__(self, device, threads):
            self.device = device

        def measure(self):
            return measure()

        def __enter__(self):
            return self

        def __exit__(self, *exc):
            pass

    return Probe


def test_engines_are_held_against_the_peak_of_their_own_arithmetic(tiny_onnx, tiny_checkpoint, tmp_path, monkeypatch):
    """An INT8 engine that outruns the FP32 peak is held against the int8 peak; a row above 100 % of its
    peak is flagged as the bug it is (here: a stand-in FP32 peak far below what the engines reach)."""
    import fcn_deploy.bench.local as local
    from fcn_deploy.bench.peaks import Peak
    from fcn_deploy.engines import BuildOptions, build_engine
    from fcn_deploy.events import Recorder

    source = tmp_path / "tiny.onnx"
    source.write_bytes(tiny_onnx.read_bytes())
    int8 = build_engine(source, None, BuildOptions(precision="int8", backend="onnxruntime", max_shape=(128, 128), int8_repair="off"))
    stand_in = {"fp32": Peak("fp32", 1e-3, "a stand-in far below any engine"), "int8": Peak("int8", 1e6, "a stand-in above any engine")}
    monkeypatch.setattr(local, "PeakProcess", stand_in_probe(lambda: stand_in))
    recorder = Recorder()
    report = run_benchmark([source, tmp_path / int8["engine"]], reference=tiny_checkpoint, sizes=[(64, 64)], warmup=1, iters=2,
                           listener=recorder)  # fmt: skip
    rows = {r["label"]: r for r in report["results"]}
    assert rows["onnxruntime-int8"]["arithmetic"] == "int8" and rows["onnxruntime-int8"]["peak_kind"] == "int8"
    assert not rows["onnxruntime-int8"]["above_peak"] and rows["onnxruntime-int8"]["fraction_of_peak"] < 1e-3
    assert rows["onnxruntime-fp32"]["peak_kind"] == "fp32" and rows["onnxruntime-fp32"]["above_peak"]
    flagged = [text for level, text in recorder.notes if level == "error"]
    assert any("onnxruntime-fp32" in text and "of its fp32 peak" in text and "is wrong" in text for text in flagged), flagged
    assert not any("onnxruntime-int8" in text for text in flagged)


def test_benchmark_needs_a_reference_and_valid_sizes(tiny_onnx, tmp_path, capsys):
    lone = tmp_path / "lone.onnx"
    lone.write_bytes(tiny_onnx.read_bytes())
    with pytest.raises(FcnDeployError, match="no PyTorch checkpoint found for the baseline") as caught:
        run_benchmark([lone], sizes=[(64, 64)], iters=1)
    assert caught.value.options == ("reference",) and "--" not in str(caught.value)  # the CLI names the flag
    assert main(["benchmark", str(lone), "--sizes", "64x64", "--iters", "1"]) == 2
    assert "error: --reference: no PyTorch checkpoint found" in capsys.readouterr().err
    with pytest.raises(FcnDeployError, match="iters must be at least 1") as caught:
        run_benchmark([lone], sizes=[(64, 64)], iters=0)
    assert caught.value.options == ("iters",) and "--" not in str(caught.value)
    assert main(["benchmark", str(tiny_onnx), "--sizes", "64"]) == 2
    assert "HEIGHTxWIDTH" in capsys.readouterr().err


def test_timing_reports_progress_to_the_listener_and_prints_nothing(tiny_onnx, capsys):
    from fcn_deploy.bench import Contender, time_contenders
    from fcn_deploy.events import Recorder

    recorder = Recorder()
    [(info, samples)] = time_contenders([Contender("onnx", str(tiny_onnx))], [(64, 64)], warmup=0, iters=2, listener=recorder)
    assert info["backend"] == "onnxruntime" and len(samples[(64, 64)]) == 2 and all(s > 0 for s in samples[(64, 64)])
    assert recorder.events == [
        ("start", "benchmark-load", 1), ("advance", "benchmark-load", 1), ("finish", "benchmark-load", None),
        ("start", "benchmark", 2), ("advance", "benchmark", 2), ("finish", "benchmark", None),
    ]  # fmt: skip
    assert capsys.readouterr().out == ""


def test_demo_runs_end_to_end_and_reuses_its_work(tmp_path, monkeypatch, capsys):
    """The main job with a very short training run, through the CLI: every stage, the report and the
    page; then a second run reuses the checkpoint, the export and every engine (the checks after them
    are stubbed there: the first run already ran them for real), and a demo whose engine fails
    validation exits 1."""
    import fcn_deploy.demo as demo

    monkeypatch.setattr(demo, "VIDEO_FRAMES", 12)
    monkeypatch.setattr(demo, "BENCH_SIZE", (128, 128))
    monkeypatch.setattr(demo, "VALIDATE_CAP", 128)
    monkeypatch.setattr(demo, "VALIDATE_RANDOM_SIZES", 0)
    monkeypatch.setattr(demo, "BENCH_ITERS", 3)
    monkeypatch.setattr(demo, "TRAIN_EPOCHS", 1)
    import fcn_deploy.int8_check as int8_check

    # 30 training steps leave an INT8 model the repair works on; fewer pixels per check size keep its
    # trials short (the check itself is tested in tests/test_repair.py)
    monkeypatch.setattr(int8_check, "CHECK_PIXELS", 4096)
    from fcn_deploy.backends.tensorrt import TensorRTBackend

    # auto on a CPU machine: every usable CPU backend, the fastest first (TensorRT patched out, so a
    # GPU machine runs the same test).
    monkeypatch.setattr(TensorRTBackend, "status", lambda self: (False, "patched out"))
    monkeypatch.setattr(demo.backends, "names", lambda: ["tensorrt", "openvino", "onnxruntime"])  # the built-ins, not the test plugin
    out = tmp_path / "demo"
    code = main(["demo", "--out", str(out), "--train-steps", "30"])
    printed = capsys.readouterr().out
    assert "fcn-deploy demo summary" in printed and "8/8 benchmark" in printed
    saved = json.loads((out / "report.json").read_text())
    # 30 steps leave small margins, so an INT8 engine may fail at the smallest sizes: the exit code is the verdict
    assert code == (0 if saved["passed"] else 1) and saved["passed"] == all(v["passed"] for v in saved["steps"]["validate"].values())
    assert ("FAILED: an engine failed validation" in printed) == (not saved["passed"])
    page = (out / "report.html").read_text()  # the page, always written
    for heading in ("Summary", "Held-out accuracy", "Validation", "openvino-int8", "Benchmark", "Video"):
        assert f">{heading}</h" in page, heading
    assert 'alt="source, frame 0"' in page and 'alt="overlay, frame 0"' in page  # the first overlay frame beside its source
    assert set(saved["steps"]) == {"train", "eval", "export", "build", "validate", "infer", "benchmark"}
    labels = {f"{b}-{p}" for b in ("openvino", "onnxruntime") for p in ("fp32", "fp16", "int8")}
    assert set(saved["steps"]["build"]) == set(saved["steps"]["validate"]) == labels
    assert saved["steps"]["validate"]["openvino-fp32"]["passed"] is True
    assert saved["steps"]["validate"]["onnxruntime-fp32"]["passed"] is True
    assert saved["steps"]["infer"]["frames"] == 12 and (out / "sample.overlay.mp4").is_file()
    assert saved["steps"]["infer"]["backend"] == "openvino-int8"  # the first backend's INT8 engine
    assert {r["label"] for r in saved["steps"]["benchmark"]["results"]} == labels | {"torch-fp32"}
    by_engine = saved["summary"]["held_out_mean_iu_by_engine"]  # every engine scored on the held-out ground truth
    assert set(by_engine) == labels and all(0.0 <= v <= 1.0 for v in by_engine.values())
    assert abs(by_engine["onnxruntime-fp32"] - saved["steps"]["eval"]["mean_iu"]) < 1e-3  # FP32 scores as PyTorch does
    assert saved["steps"]["build"]["openvino-int8"]["int8_check"]["after"]["passed"] in (True, False)

    import fcn_deploy.bench
    import fcn_deploy.engines
    import fcn_deploy.evaluate
    import fcn_deploy.export
    import fcn_deploy.inference
    import fcn_deploy.train
    import fcn_deploy.validation

    def must_not_run(*args, **kwargs):
        raise AssertionError("the second demo run must reuse this step's output")

    label_of = {Path(b["engine"]): label for label, b in saved["steps"]["build"].items()}
    for name in ("train", "export_onnx", "build_engine"):
        module = {"train": fcn_deploy.train, "export_onnx": fcn_deploy.export, "build_engine": fcn_deploy.engines}[name]
        monkeypatch.setattr(module, name, must_not_run)

    def saved_validation(failing: set[str]):
        class SavedValidation:
            def __init__(self, engine, *args, **kwargs):
                self.engine = Path(engine)

            @property
            def passed(self):
                return label_of[self.engine] not in failing

            def to_dict(self):
                return {**saved["steps"]["validate"][label_of[self.engine]], "passed": self.passed}

        return SavedValidation

    monkeypatch.setattr(fcn_deploy.validation, "validate_engine", saved_validation(set()))
    monkeypatch.setattr(
        fcn_deploy.evaluate, "evaluate_model", lambda path, *a, **k: saved["steps"]["eval"]["engines"][label_of[Path(path)]]
    )
    monkeypatch.setattr(fcn_deploy.inference, "run_infer", lambda *a, **k: dict(saved["steps"]["infer"]))
    monkeypatch.setattr(demo, "_standalone_fps", lambda *a: saved["steps"]["infer"]["standalone_engine_fps"])
    monkeypatch.setattr(fcn_deploy.bench, "run_benchmark", lambda *a, **k: saved["steps"]["benchmark"])
    monkeypatch.setattr("fcn_deploy.render.demo.print_validation", lambda *a, **k: None)  # stubs have no cases to draw
    again = demo.run_demo(out, train_steps=30)
    assert again.report["steps"]["train"]["reused"] and again.report["steps"]["export"]["reused"]
    assert set(again.report["steps"]["build"]) == labels and again.passed is True  # every stubbed verdict passes
    monkeypatch.setattr(fcn_deploy.validation, "validate_engine", saved_validation({"onnxruntime-int8"}))
    capsys.readouterr()
    assert main(["demo", "--out", str(out), "--train-steps", "30"]) == 1  # an engine failed validation: the main job fails
    assert "FAILED: an engine failed validation" in capsys.readouterr().out
    assert json.loads((out / "report.json").read_text())["passed"] is False


def test_the_peaks_are_the_best_measured_before_and_after_the_engines(tiny_onnx, tiny_checkpoint, tmp_path, monkeypatch):
    """A neighbour holding the machine down while one peak measurement runs must not leave the
    engines above 100 %: the benchmark measures the peaks before and after the engines and keeps each
    kind's best, whichever came first."""
    import fcn_deploy.bench.local as local
    from fcn_deploy.bench.peaks import Peak

    source = tmp_path / "tiny.onnx"
    source.write_bytes(tiny_onnx.read_bytes())
    held_down = {"fp32": Peak("fp32", 1e-3, "held down", {"a": 1e-3, "b": 5e-4}), "int8": Peak("int8", 9e5, "int8 first", {"a": 9e5})}
    free = {"fp32": Peak("fp32", 1e6, "free", {"a": 2e-3, "b": 1e6}), "int8": Peak("int8", 1e5, "int8 second", {"a": 1e5})}
    measured = iter([held_down, free])
    monkeypatch.setattr(local, "PeakProcess", stand_in_probe(lambda: next(measured)))
    report = run_benchmark([source], reference=tiny_checkpoint, sizes=[(64, 64)], warmup=1, iters=2)
    assert next(measured, None) is None  # measured twice: before and after
    peaks = report["machine"]["peaks"]["cpu"]
    assert (peaks["fp32"]["gops"], peaks["fp32"]["source"]) == (1e6, "free")
    assert (peaks["int8"]["gops"], peaks["int8"]["source"]) == (9e5, "int8 first")
    assert peaks["fp32"]["candidates"] == {"a": 2e-3, "b": 1e6} and peaks["int8"]["candidates"] == {"a": 9e5}
    engine = next(r for r in report["results"] if r["label"] == "onnxruntime-fp32")
    assert engine["peak_gops"] == 1e6 and not engine["above_peak"]


def test_each_kernel_counts_at_its_best_size_and_the_best_kernel_is_the_peak(monkeypatch):
    """No one product size is every kernel's best: each candidate is its best over the sizes, the
    peak is the best candidate, and the source names the kernel and the size that reached it."""
    from fcn_deploy.bench import peaks

    rate = {  # GOP/s per (kernel, int8, n): ORT peaks at 1536, OpenVINO at 2048; int8 where OpenVINO is best at 1024
        ("ort", False, 1024): 300, ("ort", False, 1536): 450, ("ort", False, 2048): 400,
        ("ov", False, 1024): 200, ("ov", False, 1536): 380, ("ov", False, 2048): 420,
        ("ort", True, 1024): 1000, ("ort", True, 1536): 1200, ("ort", True, 2048): 1100,
        ("ov", True, 1024): 1600, ("ov", True, 1536): 1500, ("ov", True, 2048): 1400,
    }  # fmt: skip

    def seconds(kernel):
        return lambda int8, n, threads: 2.0 * n**3 / (rate[(kernel, int8, n)] * 1e9)

    def torch_mm(kind, n, threads, device):
        if n == 2048:
            raise RuntimeError("out of memory")  # a size a kernel cannot run is skipped, not fatal
        return 2.0 * n**3 / (150e9 if n == 1536 else 100e9)

    monkeypatch.setattr(peaks, "_onnxruntime", seconds("ort"))
    monkeypatch.setattr(peaks, "_openvino", seconds("ov"))
    monkeypatch.setattr(peaks, "_torch", torch_mm)
    monkeypatch.setattr(peaks, "_has_fp16_arithmetic", lambda device: False)
    found = peaks._measure("cpu", 2, (1024, 1536, 2048))
    assert found["fp32"]["gops"] == pytest.approx(450) and found["fp32"]["source"] == "onnxruntime MatMul, 1536x1536x1536, 2 threads"
    assert found["fp32"]["candidates"] == pytest.approx({"onnxruntime MatMul": 450, "openvino MatMul": 420, "torch.mm": 150})
    assert found["int8"]["gops"] == pytest.approx(1600) and found["int8"]["source"] == "openvino MatMul, 1024x1024x1024, 2 threads"
    assert found["int8"]["candidates"] == pytest.approx({"onnxruntime MatMul": 1200, "openvino MatMul": 1600})
    assert "fp16" not in found


def test_one_peak_process_measures_before_and_after():
    """The process that measures the peaks stays up between the measurements and stops when closed."""
    from fcn_deploy.bench.peaks import PeakProcess

    with PeakProcess("cpu", 1, sizes=(64,)) as probe:
        first, second = probe.measure(), probe.measure()
        pid = probe._process.pid
        assert probe._process.is_alive()
    assert not probe._process.is_alive() and pid
    for found in (first, second):
        assert found["fp32"].gops > 0 and found["int8"].gops > 0 and "64x64x64, 1 threads" in found["fp32"].source
