"""A backend from another package: the test plugin (tests/plugins/fcn-deploy-myort, installed by
conftest into this session's path through pip, registered by its entry point) works with every
command that takes engines, and no file of fcn-deploy names it."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from fcn_deploy import backends
from fcn_deploy.cli import main

PACKAGE = Path(__file__).resolve().parents[1] / "fcn_deploy"


@pytest.fixture(scope="module")
def plugin_engine(tiny_onnx, tmp_path_factory) -> Path:
    folder = tmp_path_factory.mktemp("plugin")
    source = folder / "tiny.onnx"
    source.write_bytes(tiny_onnx.read_bytes())
    assert main(["build-engine", str(source), "--backend", "myort", "--max-shape", "256x256"]) == 0
    return folder / "tiny.fp32.myort.onnx"


def test_the_plugin_is_registered_by_its_entry_point_and_named_nowhere_in_fcn_deploy(capsys):
    assert "myort" in backends.names() and backends.get("myort").name == "myort"
    assert type(backends.get("myort")).__module__ == "fcn_deploy_myort.backend"
    assert main(["backends", "--json"]) == 0
    rows = {r["name"]: r for r in json.loads(capsys.readouterr().out)}
    assert rows["myort"]["usable"] and rows["myort"]["options"][0]["flag"] == "--myort-tag"
    assert not [p for p in PACKAGE.rglob("*.py") if "myort" in p.read_text()]  # no edit to fcn-deploy
    assert main(["build-engine", "--help"]) == 0
    assert "myort options" in capsys.readouterr().out  # the plugin's own option, under its own heading


def test_validate_infer_benchmark_and_export_triton_take_a_plugin_engine(plugin_engine, tiny_checkpoint, tmp_path, capsys):
    manifest = json.loads(Path(f"{plugin_engine}.json").read_text())
    assert manifest["backend"] == "myort" and manifest["build"]["myort_tag"] == "plain"
    assert main(["validate", str(plugin_engine), "-r", str(tiny_checkpoint), "--sizes", "64x64,97x129"]) == 0
    assert "(myort, fp32)" in capsys.readouterr().out
    images = tmp_path / "images"
    images.mkdir()
    Image.fromarray(np.full((70, 90, 3), 120, np.uint8)).save(images / "a.png")
    assert main(["infer", str(images), "--engine", str(plugin_engine), "-o", str(tmp_path / "out")]) == 0
    assert np.asarray(Image.open(tmp_path / "out" / "masks" / "a.png")).shape == (70, 90)
    report = tmp_path / "bench.json"
    assert main(["benchmark", str(plugin_engine), "-r", str(tiny_checkpoint), "--sizes", "64x64", "--warmup", "1", "--iters", "2",
                 "--report", str(report)]) == 0  # fmt: skip
    assert "myort-fp32" in {r["label"] for r in json.loads(report.read_text())["results"]}
    assert main(["export-triton", str(plugin_engine), "--repo", str(tmp_path / "repo")]) == 0
    assert (tmp_path / "repo" / "fcn_engine" / "1" / "model.onnx").is_file()


def test_a_broken_plugin_is_listed_with_its_reason_and_hides_nothing(tmp_path):
    """A second plugin whose module does not import: `backends` names it and why; every other backend still works."""
    site = tmp_path / "site"
    (site / "broken_plugin-0.1.dist-info").mkdir(parents=True)
    (site / "broken_plugin-0.1.dist-info" / "METADATA").write_text("Metadata-Version: 2.1\nName: broken-plugin\nVersion: 0.1\n")
    (site / "broken_plugin-0.1.dist-info" / "entry_points.txt").write_text("[fcn_deploy.backends]\nbroken = no_such_module:Backend\n")
    code = "import json; from fcn_deploy import backends; print(json.dumps([backends.names(), backends.broken()]))"
    env = {**__import__("os").environ, "PYTHONPATH": f"{site}:{__import__('os').environ.get('PYTHONPATH', '')}"}
    names, broken = json.loads(subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True, check=True).stdout)
    assert "broken" not in names and {"onnxruntime", "openvino", "myort"} <= set(names)
    assert "no_such_module" in broken["broken"] and "ModuleNotFoundError" in broken["broken"]
    listing = subprocess.run([sys.executable, "-m", "fcn_deploy.cli", "backends"], env=env, capture_output=True, text=True)
    assert listing.returncode == 0 and "broken" in listing.stdout
