"""infer --ray on a real Ray: a two-node cluster on this machine (``ray start --head``, then a worker
node with ``ray start --address``), all of it in a loopback-only network namespace (helpers.LoopbackNamespace).

One cluster per session; every command runs in the namespace.  The outputs are compared byte for
byte with single-process ``infer`` on the same engine, in this process."""

from __future__ import annotations

import json
import os
import shutil
import signal
import socket
import sys
import time
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from fcn_deploy.data.synthetic import make_scene
from fcn_deploy.errors import FcnDeployError
from fcn_deploy.inference import run_infer
from fcn_deploy.media import write_video

from helpers import LoopbackNamespace, fcn_deploy_command, ray_cli_command

pytest.importorskip("ray", reason="Ray is not installed (pip install 'fcn-deploy[ray]')")
pq = pytest.importorskip("pyarrow.parquet", reason="pyarrow is not installed (pip install 'fcn-deploy[ray]')")


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


@pytest.fixture(scope="session")
def cluster(tmp_path_factory):
    """Two Ray nodes of one CPU each, on loopback: yields (namespace, address)."""
    import tempfile

    folder = Path(tempfile.mkdtemp(prefix="fr", dir="/tmp"))  # short: Ray's socket paths must fit 107 bytes
    try:
        namespace = LoopbackNamespace(folder)
    except OSError as exc:
        shutil.rmtree(folder, ignore_errors=True)
        pytest.skip(f"no loopback-only network namespace here (unshare -n needs root): {exc}")
    try:
        port = free_port()
        common = ["--num-cpus", "1", "--disable-usage-stats"]
        head = namespace.run(ray_cli_command(["start", "--head", "--port", str(port), "--include-dashboard=false",
                                              "--temp-dir", str(folder), *common]))  # fmt: skip
        assert head.returncode == 0, head.stderr[-2000:]
        worker = namespace.run(ray_cli_command(["start", "--address", f"127.0.0.1:{port}", *common]))
        assert worker.returncode == 0, worker.stderr[-2000:]
        yield namespace, f"127.0.0.1:{port}"
    finally:
        namespace.stop()
        shutil.rmtree(folder, ignore_errors=True)


@pytest.fixture(scope="module")
def engine(tiny_onnx, tmp_path_factory) -> Path:
    from fcn_deploy.engines import BuildOptions, build_engine

    folder = tmp_path_factory.mktemp("ray-engine")
    shutil.copy(tiny_onnx, folder / "tiny.onnx")
    manifest = build_engine(folder / "tiny.onnx", None, BuildOptions(precision="fp32", backend="onnxruntime"))
    return folder / manifest["engine"]


def archive(folder: Path, images: int = 6, size: tuple[int, int] = (64, 80)) -> Path:
    """Images in the folder and a subfolder, one corrupt JPEG, one video and one truncated video."""
    (folder / "day2").mkdir(parents=True)
    for index in range(images):
        where = folder / ("day2" if index % 2 else "")
        Image.fromarray(make_scene(5, index, *size)[0]).save(where / f"im{index}.png")
    (folder / "bad.jpg").write_bytes(b"\xff\xd8\xff\xe0" + b"not a jpeg" * 10)
    write_video(folder / "day2" / "clip.mp4", [make_scene(2, index, 64, 96)[0] for index in range(8)])
    data = (folder / "day2" / "clip.mp4").read_bytes()
    (folder / "cut.mp4").write_bytes(data[: len(data) // 2])
    return folder


def tree(out: Path) -> dict[str, bytes]:
    return {str(p.relative_to(out)): p.read_bytes() for p in sorted(out.rglob("*")) if p.is_file() and p.suffix == ".png"}


def infer_ray(cluster, *args: str, timeout: float = 120):
    namespace, address = cluster
    return namespace.run(fcn_deploy_command(["infer", *args, "--ray", address]), timeout=timeout)


WAIT_FOR_IDLE_CPUS = """
import sys, time, ray
ray.init(address=sys.argv[1], logging_level="ERROR")
deadline = time.monotonic() + 60
while ray.available_resources().get("CPU", 0) < float(sys.argv[2]) and time.monotonic() < deadline:
    time.sleep(0.2)
print(ray.available_resources().get("CPU", 0))
"""


def wait_for_idle_cpus(cluster, cpus: float) -> None:
    """Until the cluster's CPUs are free again: a test that ran before (the tests run in random order)
    may leave an actor being torn down, and a pool that finds one node busy runs on the other alone."""
    namespace, address = cluster
    result = namespace.run([sys.executable, "-c", WAIT_FOR_IDLE_CPUS, address, str(cpus)], timeout=90)
    assert result.returncode == 0 and float(result.stdout.split()[-1]) >= cpus, result.stdout[-2000:] + result.stderr[-2000:]


@pytest.fixture(scope="module")
def first_run(cluster, engine, tmp_path_factory):
    source = archive(tmp_path_factory.mktemp("ray-src") / "survey")
    wait_for_idle_cpus(cluster, 2)
    out = source.parent / "out"
    report = source.parent / "report.json"
    result = infer_ray(
        cluster, str(source), "-e", str(engine), "-o", str(out), "--actors", "2", "--task-inputs", "2", "--report", str(report)
    )
    return source, out, report, result


def test_two_nodes_write_every_readable_input_and_name_the_bad_ones(first_run, engine, tmp_path):
    source, out, report, result = first_run
    assert result.returncode == 3, result.stdout[-3000:] + result.stderr[-3000:]
    assert "bad.jpg: not a readable image" in result.stdout and "cut.mp4: not a readable video" in result.stdout
    summary = json.loads(report.read_text())
    assert summary["ray"]["nodes"] == 2 and summary["ray"]["actors"] == 2
    assert len({node for node, _, _ in summary["ray"]["engines_opened"]}) == 2  # the engine reached both nodes, and opened
    assert sorted(item["path"] for item in summary["skipped"]) == [str(source / "bad.jpg"), str(source / "cut.mp4")]
    assert summary["images_done"] == 6 and summary["videos_done"] == 1 and summary["video_frames"] == 8
    assert "6 images, 1 videos (8 frames) of 9 inputs" in result.stdout and "skipped 2 unreadable" in result.stdout
    rows = pq.read_table(out / "results.parquet").to_pylist()
    assert sorted(row["path"] for row in rows) == sorted(str(p) for p in source.rglob("*") if p.is_file())
    by_name = {Path(row["path"]).name: row for row in rows}
    assert by_name["bad.jpg"]["status"] == "skipped" and by_name["clip.mp4"]["frames"] == 8
    assert sum(by_name["im0.png"]["class_pixels"]) == 64 * 80 and by_name["im0.png"]["height"] == 64
    assert not (out / "overlays" / "cut.mp4").exists() and (out / "overlays" / "day2" / "clip.mp4").is_file()
    # single-process infer on the same sources and engine: the same files, byte for byte
    local = run_infer(source, engine, out=tmp_path / "local")
    assert local["images_done"] == 6 and len(local["skipped"]) == 2
    ours, theirs = tree(out), tree(tmp_path / "local")
    assert sorted(ours) == sorted(theirs) and len(ours) == 12
    assert all(ours[name] == theirs[name] for name in ours)
    assert not [p for p in out.rglob("*") if ".tmp" in p.name]


def test_a_rerun_skips_completed_inputs_and_changes_nothing(first_run, cluster, engine):
    source, out, first_report, _ = first_run
    report = first_report.with_name("rerun.json")  # the first run's report stays what the other tests read, in any order
    before = {p: (p.stat().st_mtime_ns, p.read_bytes()) for p in out.rglob("*") if p.is_file() and p.suffix != ".parquet"}
    result = infer_ray(cluster, str(source), "-e", str(engine), "-o", str(out), "--actors", "2", "--report", str(report))
    assert result.returncode == 3  # the two unreadable inputs are tried again, and still fail
    summary = json.loads(report.read_text())
    assert summary["already_complete"] == 7 and summary["done"] == 0 and len(summary["skipped"]) == 2
    assert "7 of 9 inputs already complete" in result.stdout
    after = {p: (p.stat().st_mtime_ns, p.read_bytes()) for p in out.rglob("*") if p.is_file() and p.suffix != ".parquet"}
    assert after == before
    rows = pq.read_table(out / "results.parquet").to_pylist()
    assert len(rows) == 9 and sum(row["status"] == "complete" for row in rows) == 7
    assert {row["frames"] for row in rows if row["path"].endswith("clip.mp4")} == {8}  # facts carried over from the first run


def test_killing_an_actor_mid_run_loses_nothing(cluster, engine, tmp_path):
    namespace, address = cluster
    source = tmp_path / "many"
    source.mkdir()
    for index in range(40):
        Image.fromarray(make_scene(3, index, 192, 224)[0]).save(source / f"{index:03d}.png")
    out, report = tmp_path / "out", tmp_path / "report.json"
    args = ["infer", str(source), "-e", str(engine), "-o", str(out), "--actors", "2", "--task-inputs", "1", "--report", str(report)]
    wait_for_idle_cpus(cluster, 2)
    process = namespace.popen(fcn_deploy_command([*args, "--ray", address]))
    killed = None
    deadline = time.monotonic() + 90
    while killed is None and process.poll() is None and time.monotonic() < deadline:
        if (out / "masks").is_dir() and any((out / "masks").glob("*.png")):
            actors = [pid for pid in namespace.pids() if "SegmentActor" in Path(f"/proc/{pid}/cmdline").read_text(errors="replace")]
            if actors:
                killed = actors[0]
                os.kill(killed, signal.SIGKILL)
        time.sleep(0.02)
    stdout, stderr = process.communicate(timeout=120)
    assert killed is not None, "the run ended before an actor could be killed"
    assert process.returncode == 0, stdout[-3000:] + stderr[-3000:]
    summary = json.loads(report.read_text())
    assert summary["ray"]["retried"] >= 1 and summary["done"] == 40 and not summary["skipped"]
    rows = pq.read_table(out / "results.parquet").to_pylist()
    assert sorted(row["path"] for row in rows) == sorted(str(p) for p in source.iterdir())  # each input once
    assert not [p for p in out.rglob("*") if ".tmp" in p.name]
    local = run_infer(source, engine, out=tmp_path / "local")
    assert local["done"] == 40
    assert tree(out) == tree(tmp_path / "local")


@pytest.mark.slow
def test_strict_stops_at_the_first_unreadable_input(cluster, engine, tmp_path):
    source = archive(tmp_path / "src", images=2)
    result = infer_ray(cluster, str(source), "-e", str(engine), "-o", str(tmp_path / "out"), "--strict", "--task-inputs", "1")
    assert result.returncode == 2
    assert "error:" in result.stderr and (
        "bad.jpg: not a readable image" in result.stderr or "cut.mp4: not a readable video" in result.stderr
    )


def test_infer_ray_without_an_address_starts_its_own_ray(cluster, engine, tmp_path):
    namespace, _ = cluster
    source = archive(tmp_path / "src", images=2)
    result = namespace.run(fcn_deploy_command(["infer", str(source), "-e", str(engine), "-o", str(tmp_path / "out"), "--ray"]), timeout=180)
    assert result.returncode == 3, result.stdout[-3000:] + result.stderr[-3000:]
    assert "on Ray (1 node" in result.stdout
    run_infer(source, engine, out=tmp_path / "local")
    assert tree(tmp_path / "out") == tree(tmp_path / "local")


def test_without_ray_installed_the_error_says_how_to_install_it(engine, tmp_path, monkeypatch):
    import sys

    monkeypatch.setitem(sys.modules, "ray", None)
    source = archive(tmp_path / "src", images=1)
    with pytest.raises(FcnDeployError, match=r"Ray is not installed .*pip install 'fcn-deploy\[ray\]'"):
        run_infer(source, engine, out=tmp_path / "out", ray="local")
    assert not (tmp_path / "out").exists()


def test_masks_agree_with_the_engine(engine, tmp_path):
    """The archive layout's masks are the engine's masks (not just equal across runners)."""
    from fcn_deploy.inference import Segmenter

    source = archive(tmp_path / "src", images=2)
    run_infer([source / "im0.png", source / "day2" / "im1.png"], engine, out=tmp_path / "out")
    with Segmenter.from_engine(engine) as segmenter:
        expected = segmenter.predict(np.asarray(Image.open(source / "day2" / "im1.png").convert("RGB")))
    np.testing.assert_array_equal(np.asarray(Image.open(tmp_path / "out" / "masks" / "day2" / "im1.png")), expected)
