"""Tiles: images larger than the engine's profile segmented at full resolution in overlapping tiles."""

from __future__ import annotations

import itertools
import json
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from fcn_deploy.backends import Profile, open_runner
from fcn_deploy.backends.torch import TorchRunner
from fcn_deploy.cli import main
from fcn_deploy.data.images import preprocess
from fcn_deploy.engines import BuildOptions, build_engine
from fcn_deploy.errors import FcnDeployError
from fcn_deploy.events import Recorder
from fcn_deploy.export import ExportOptions, export_onnx
from fcn_deploy.inference import Segmenter, estimate_context, run_infer, segment_tiled
from fcn_deploy.inference.tiles import ALIGN, axis_tiles, ramp, tile_hw_for

from helpers import conv_onnx, mosaic_scene, random_checkpoint

#: The random FCN's engine: its profile max is smaller than the scene, its opt size what the estimated overlap needs.
FCN_PROFILE = {"opt_shape": (512, 512), "max_shape": (1024, 1024)}
#: The cheap engine: a small profile, so big images take many tiles.
CONV_PROFILE = {"opt_shape": (256, 256), "max_shape": (512, 512)}


def ort_engine(onnx_path: Path, **profile) -> Path:
    manifest = build_engine(onnx_path, None, BuildOptions(backend="onnxruntime", **profile))
    return onnx_path.parent / manifest["engine"]


@pytest.fixture(scope="module")
def random_fcn(tmp_path_factory) -> tuple[Path, Path]:
    """(checkpoint, ONNX Runtime engine) of a random-weight FCN-8s ResNet-18 at a quarter width."""
    folder = tmp_path_factory.mktemp("tiles-fcn")
    checkpoint = random_checkpoint(folder / "r18.pt", "fcn8s-resnet18", {"width": 0.25})
    export_onnx(checkpoint, folder / "r18.onnx", ExportOptions(verify=False))
    return checkpoint, ort_engine(folder / "r18.onnx", **FCN_PROFILE)


@pytest.fixture(scope="module")
def conv_engine(tmp_path_factory) -> Path:
    """Two random convolutions (5x5, 7x7): a cut edge reaches exactly 2 + 3 = 5 pixels into the logits."""
    folder = tmp_path_factory.mktemp("tiles-conv")
    return ort_engine(conv_onnx(folder / "conv.onnx", kernels=(5, 7)), **CONV_PROFILE)


@pytest.fixture(scope="module")
def cheap_engine(tmp_path_factory) -> Path:
    """One random 3x3 convolution: what a 6000x4000 image can afford on two cores."""
    folder = tmp_path_factory.mktemp("tiles-cheap")
    return ort_engine(conv_onnx(folder / "cheap.onnx", kernels=(3,)), **CONV_PROFILE)


def test_a_tiled_mask_of_a_large_scene_agrees_with_pytorch_on_the_whole_image(random_fcn, tmp_path):
    checkpoint, engine = random_fcn
    scene = mosaic_scene(1536, 2048)
    Image.fromarray(scene).save(tmp_path / "scene.png")
    summary = run_infer(tmp_path / "scene.png", engine, out=tmp_path / "out")
    tiled = np.asarray(Image.open(tmp_path / "out" / "masks" / "scene.png"))
    reference = TorchRunner(checkpoint)
    whole = reference.infer(preprocess(scene, reference.meta.mean, reference.meta.std), need_logits=False).mask[0]
    agreement = float((tiled == whole).mean())
    assert tiled.shape == (1536, 2048)
    assert agreement >= 0.999, f"tiled vs whole-image PyTorch: {agreement:.5f}"
    tiles = summary["tiles"]
    assert summary["resized_frames"] == 0 and tiles["mode"] == "auto" and tiles["tiled_frames"] == 1
    assert tiles["overlap_from"] == "estimate" and tiles["overlap"] == 2 * tiles["context"]["reach"] > 0
    assert tiles["tile_hw"] == list(tile_hw_for(open_runner(engine).profile, tiles["overlap"]))


def test_without_overlap_tiles_disagree_so_the_overlap_is_what_makes_them_agree(random_fcn):
    checkpoint, engine = random_fcn
    scene = mosaic_scene(512, 1024)
    reference = TorchRunner(checkpoint)
    whole = reference.infer(preprocess(scene, reference.meta.mean, reference.meta.std), need_logits=False).mask[0]
    with Segmenter.from_engine(engine) as segmenter:
        bare = segment_tiled(segmenter, scene, tile_hw=(256, 256), overlap=0)
    assert (bare == whole).mean() < 0.99  # the random network's context is wide: bare cuts show


def test_the_estimate_finds_a_known_receptive_field(conv_engine):
    with open_runner(conv_engine) as runner:
        context = estimate_context(runner)
    assert context.reach == 5 and context.overlap == 10
    assert context.measured_up_to >= 5 and not context.to_dict()["saturated"]


def test_tiles_of_odd_sizes_match_the_whole_image(conv_engine):
    """Edge tiles shifted inward, a last tile wider than opt: the stitched mask equals one run on the whole image."""
    scene = mosaic_scene(777, 1001)
    with open_runner(conv_engine.parent / "conv.onnx") as whole_runner:  # a plain ONNX: no profile bound
        whole = whole_runner.infer(preprocess(scene, whole_runner.meta.mean, whole_runner.meta.std), need_logits=False).mask[0]
    with Segmenter.from_engine(conv_engine) as segmenter:
        tiled = segmenter.predict(scene)
    assert tiled.shape == whole.shape and (tiled == whole).mean() >= 0.9999
    assert segmenter.tiler.summary()["overlap"] == 10


def test_a_6000x4000_image_comes_back_as_a_6000x4000_mask(cheap_engine, tmp_path, capsys):
    image = np.full((4000, 6000, 3), (90, 140, 60), np.uint8)
    image[1000:3000, 2000:4500] = (200, 30, 30)
    Image.fromarray(image).save(tmp_path / "big.png", compress_level=1)
    out, report = tmp_path / "out", tmp_path / "report.json"
    assert main(["infer", str(tmp_path / "big.png"), "-e", str(cheap_engine), "-o", str(out), "--report", str(report)]) == 0
    with Image.open(out / "masks" / "big.png") as mask:
        assert mask.size == (6000, 4000)
    tiles = json.loads(report.read_text())["tiles"]
    assert tiles["tiled_frames"] == 1 and tiles["tile_hw"] == [256, 256] and tiles["context"]["reach"] == 1
    assert "tiled 1 images at full size" in capsys.readouterr().out


def test_tile_off_resizes_to_fit_as_before_and_says_so(conv_engine, tmp_path):
    scene = mosaic_scene(640, 1280)
    Image.fromarray(scene).save(tmp_path / "wide.png")
    recorder = Recorder()
    summary = run_infer(tmp_path / "wide.png", conv_engine, out=tmp_path / "out", tile="off", listener=recorder)
    with Image.open(tmp_path / "out" / "masks" / "wide.png") as mask:
        assert mask.size == (1280, 640)
    assert summary["resized_frames"] == 1 and summary["tiles"]["tiled_frames"] == 0
    warning = next(text for level, text in recorder.notes if level == "warning")
    assert "outside the engine's profile" in warning and "running it at 256x512" in warning and "tile it" in warning


def test_tile_overlap_from_the_flag_and_its_limits(conv_engine, tmp_path):
    Image.fromarray(mosaic_scene(300, 600)).save(tmp_path / "a.png")
    summary = run_infer(tmp_path / "a.png", conv_engine, out=tmp_path / "out", tile="on", tile_overlap=40)
    assert summary["tiles"]["overlap"] == 40 and summary["tiles"]["overlap_from"] == "given" and "context" not in summary["tiles"]
    with pytest.raises(FcnDeployError, match="leaves no room to advance") as err:
        run_infer(tmp_path / "a.png", conv_engine, out=tmp_path / "out2", tile="on", tile_overlap=500)
    assert err.value.options == ("tile_overlap",)
    with pytest.raises(FcnDeployError, match="tile 'sometimes': choose one of auto, on, off"):
        run_infer(tmp_path / "a.png", conv_engine, out=tmp_path / "out3", tile="sometimes")


@pytest.mark.parametrize(("extent", "tile", "overlap", "max_side"), [(2048, 256, 64, 512), (1001, 256, 10, 512), (777, 256, 100, 256),
                                                                     (300, 256, 0, 300), (200, 256, 50, 512)])  # fmt: skip
def test_axis_tiles_cover_the_extent_inside_the_image_on_the_grid(extent, tile, overlap, max_side):
    tiles = axis_tiles(extent, tile, overlap, max_side)
    assert tiles[0][0] == 0 and sum(tiles[-1]) == extent
    assert all(0 <= start and start + size <= extent and min(tile, extent) <= size <= max_side for start, size in tiles)
    assert all(start % ALIGN == 0 for start, _ in tiles[:-1])
    assert all(a + size_a - b >= overlap for (a, size_a), (b, _) in itertools.pairwise(tiles))
    # the cross-fade weights of neighbours sum to one wherever both cover a pixel, and every pixel has weight
    total = np.zeros(extent, np.float32)
    for start, size in tiles:
        total[start : start + size] += ramp(start, size, extent, tile - (tiles[1][0] if len(tiles) > 1 else 0))
    assert total.min() > 0


def test_segment_tiled_takes_a_runner_or_a_segmenter(conv_engine):
    scene = mosaic_scene(600, 700)
    with open_runner(conv_engine) as runner:
        by_runner = segment_tiled(runner, scene, overlap=16)
        with Segmenter(runner) as segmenter:
            assert np.array_equal(segment_tiled(segmenter, scene, overlap=16), by_runner)
    assert by_runner.shape == (600, 700)


def test_tiles_need_each_side_at_least_the_profile_minimum():
    runner = type("R", (), {"profile": Profile((1, 32, 32), (1, 256, 256), (8, 512, 512))})()
    with pytest.raises(FcnDeployError, match="smaller than the engine's minimum 32x32"):
        segment_tiled(runner, np.zeros((20, 1000, 3), np.uint8), overlap=0)


def test_a_server_cannot_tile_because_it_returns_masks():
    from fcn_deploy.inference import RemoteSegmenter

    with pytest.raises(FcnDeployError, match="a server returns masks") as err:
        RemoteSegmenter("127.0.0.1:1", tile="on")  # refused before connecting
    assert err.value.options == ("tile", "server")
