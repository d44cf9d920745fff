"""infer SOURCE...: folders (recursive), globs and lists of paths, images and videos mixed, the
output tree mirrored, a rerun resuming (single process; the same code runs in Ray's actors)."""

from __future__ import annotations

import json

import pytest
from PIL import Image

from fcn_deploy.cli import main
from fcn_deploy.data.synthetic import make_scene
from fcn_deploy.errors import FcnDeployError
from fcn_deploy.inference import run_infer
from fcn_deploy.inference.sources import expand_sources
from fcn_deploy.media import write_video


def picture(path, index=0, size=(48, 64)):
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(make_scene(4, index, *size)[0]).save(path)
    return path


def test_folders_globs_and_lists_mirror_their_tree(tmp_path, monkeypatch):
    a, b = tmp_path / "a", tmp_path / "b"
    for index, path in enumerate([a / "x.png", a / "deep" / "y.jpg", b / "z.png"]):
        picture(path, index)
    (a / "notes.txt").write_text("not an input")  # a folder's text files are not lists
    assert [(item.rel, item.kind) for item in expand_sources([a])] == [("x", "image"), ("deep/y", "image")]
    assert [item.rel for item in expand_sources([a, b])] == ["a/x", "a/deep/y", "b/z"]  # below the common folder
    assert [item.rel for item in expand_sources([str(tmp_path / "*" / "**" / "*.png")])] == ["a/x", "b/z"]
    listing = tmp_path / "inputs.txt"
    listing.write_text("# the survey\na/deep/y.jpg\n\n" + str(b / "z.png") + "\na/deep/y.jpg\n")
    assert [item.rel for item in expand_sources([listing])] == ["a/deep/y", "b/z"]  # relative to the list, once each
    picture(a / "x.jpg")
    with pytest.raises(FcnDeployError, match=r"x\.jpg and .*x\.png would write the same outputs \(x\)"):
        expand_sources([a])
    with pytest.raises(FcnDeployError, match=r"no images or videos in .*\*\.gif"):
        expand_sources([str(tmp_path / "*.gif")])
    with pytest.raises(FcnDeployError, match=r"source not found: .*nope"):
        expand_sources([tmp_path / "nope"])


def test_mixed_archive_single_process_resumes_and_overwrites(tiny_onnx, tmp_path, capsys):
    source = tmp_path / "survey"
    picture(source / "p0.png", 0)
    picture(source / "day" / "p1.png", 1)
    write_video(source / "day" / "clip.mp4", [make_scene(2, i, 48, 64)[0] for i in range(4)])
    listing = tmp_path / "list.txt"
    listing.write_text("survey/p0.png\nsurvey/day/p1.png\nsurvey/day/clip.mp4\nsurvey/missing.png\n")
    out, report = tmp_path / "out", tmp_path / "r.json"
    assert main(["infer", str(listing), "-e", str(tiny_onnx), "-o", str(out), "--video-masks", "--report", str(report)]) == 3
    stdout = capsys.readouterr().out
    assert "image not found: " in stdout and "missing.png" in stdout
    files = sorted(str(p.relative_to(out)) for p in out.rglob("*") if p.is_file())
    assert files == ["masks/day/clip/frame_000000.png", "masks/day/clip/frame_000001.png", "masks/day/clip/frame_000002.png",
                     "masks/day/clip/frame_000003.png", "masks/day/p1.png", "masks/p0.png", "overlays/day/clip.mp4",
                     "overlays/day/p1.png", "overlays/p0.png", "results.parquet"]  # fmt: skip
    summary = json.loads(report.read_text())
    assert (summary["images_done"], summary["videos_done"], summary["video_frames"], len(summary["skipped"])) == (2, 1, 4, 1)
    before = {p: p.stat().st_mtime_ns for p in out.rglob("*.png")}
    # a rerun: the three complete inputs are kept as they are, the missing one is named again
    assert main(["infer", str(listing), "-e", str(tiny_onnx), "-o", str(out), "--video-masks", "--report", str(report)]) == 3
    assert json.loads(report.read_text())["already_complete"] == 3 and {p: p.stat().st_mtime_ns for p in out.rglob("*.png")} == before
    assert "3 of 4 inputs already complete" in capsys.readouterr().out
    (tmp_path / "survey" / "missing.png").write_bytes((source / "p0.png").read_bytes())
    summary = run_infer(listing, tiny_onnx, out=out, overwrite=True, overlays=False, video_masks=True)
    assert summary["done"] == 4 and summary["already_complete"] == 0 and not summary["skipped"]
    assert (out / "masks" / "missing.png").is_file() and not (out / "overlays" / "missing.png").exists()
