"""The INT8 calibration cache, through ``apply_precision``: a hit reads no calibration image (the
reader raises), every part of the key is a miss, and a corrupt cache is measured again, never reused.

A miss is seen as the calibration reader being asked for a batch: it raises ``Recalibrated`` (a
BaseException, so no library wrapper turns it into an error message), which also keeps each miss
cheap: the run stops where the ranges would be measured.
"""

from __future__ import annotations

import shutil

import numpy as np
import pytest

from fcn_deploy.data.calibration import generate_default_calibration
from fcn_deploy.events import Recorder
from fcn_deploy.precision import apply_precision

from helpers import perturbed_copy


class Recalibrated(BaseException):
    """The calibration images were read: the cache was not used."""


class RaisingReader:
    def __init__(self, input_name, batches):
        pass

    def get_next(self):
        raise Recalibrated

    def __len__(self):
        return 1

    def rewind(self):
        pass


@pytest.fixture(scope="module")
def warm(tiny_onnx, tmp_path_factory):
    """A calibration folder (8 scenes at 64 px) whose cache holds the tiny model's ranges."""
    folder = tmp_path_factory.mktemp("calib") / "set"
    generate_default_calibration(folder, count=8, size=64)
    first = apply_precision(tiny_onnx, folder.parent / "first.onnx", "int8", calib_dir=folder)
    assert first["calibration"]["cache_hit"] is False
    return folder


@pytest.fixture
def calib(warm, tmp_path):
    copy = tmp_path / "calib"
    shutil.copytree(warm, copy)
    return copy


@pytest.fixture
def no_reading(monkeypatch):
    monkeypatch.setattr("fcn_deploy.precision.int8._Reader", RaisingReader)


def cache_files(folder):
    return sorted(p for p in (folder / ".cache").iterdir() if p.suffix == ".json")


def test_a_hit_reads_no_calibration_image(tiny_onnx, calib, tmp_path, no_reading):
    report = apply_precision(tiny_onnx, tmp_path / "hit.onnx", "int8", calib_dir=calib)
    assert report["calibration"]["cache_hit"] is True
    assert (tmp_path / "hit.onnx").is_file()


@pytest.mark.parametrize("part", ["model", "encoding", "renamed image", "smaller profile"])
def test_each_key_part_is_a_miss(part, tiny_onnx, calib, tmp_path, no_reading):
    source, options = tiny_onnx, {"calib_dir": calib}
    if part == "model":  # the same graph, one weight changed
        source = perturbed_copy(tiny_onnx, tmp_path / "other.onnx", pick=lambda i: len(i.dims) == 4, edit=lambda w: w * np.float32(1.01))
    elif part == "encoding":
        options["int8_encoding"] = "uint8-asymmetric"
    elif part == "renamed image":
        first = min(calib.glob("*.png"))
        first.rename(first.with_name("renamed.png"))
    else:  # the same files, fitted to a 48x48 maximum
        options["max_hw"] = (48, 48)
    with pytest.raises(Recalibrated):
        apply_precision(source, tmp_path / "miss.onnx", "int8", **options)
    assert not (tmp_path / "miss.onnx").exists()


@pytest.mark.parametrize("damage", ["truncated", "edited ranges", "no checksum"])
def test_a_corrupt_cache_is_measured_again_never_reused(damage, tiny_onnx, calib, tmp_path, monkeypatch):
    (cached,) = cache_files(calib)
    data = cached.read_bytes()
    if damage == "truncated":
        cached.write_bytes(data[: len(data) // 2])
    elif damage == "edited ranges":  # still valid JSON ONNX Runtime would load: only the checksum tells
        text = data.decode()
        digit = next(i for i, ch in enumerate(text) if ch.isdigit() and ch != "9")
        cached.write_text(text[:digit] + "9" + text[digit + 1 :])
    else:
        cached.with_name(cached.name + ".sha256").unlink()
    with monkeypatch.context() as patch:
        patch.setattr("fcn_deploy.precision.int8._Reader", RaisingReader)
        with pytest.raises(Recalibrated):  # the damaged file is not used: the images are read again
            apply_precision(tiny_onnx, tmp_path / "x.onnx", "int8", calib_dir=calib)
    recorder = Recorder()
    report = apply_precision(tiny_onnx, tmp_path / "again.onnx", "int8", calib_dir=calib, listener=recorder)
    assert report["calibration"]["cache_hit"] is False
    warnings = [text for level, text in recorder.notes if "unusable" in text]
    assert len(warnings) == 1 and cached.name in warnings[0] and "\n" not in warnings[0]
    assert cached.read_bytes() == data  # measured again and replaced with the same ranges
    assert apply_precision(tiny_onnx, tmp_path / "then.onnx", "int8", calib_dir=calib)["calibration"]["cache_hit"] is True
