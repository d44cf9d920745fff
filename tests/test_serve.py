"""Serving: a real Triton server (PyTriton's bundled tritonserver) on loopback, its clients, and
the model repositories export-triton writes.

One `fcn-deploy serve` subprocess serves the tiny model's ONNX Runtime engine for most tests (free
ports chosen at run time, readiness polled, always torn down); the SIGTERM test stops a server of
its own, so the tests run in any order.  The repository's ensemble runs on the same bundled tritonserver, its engine stood in by
a Python model running the same ONNX (the wheel has no ONNX Runtime or OpenVINO backend).
"""

from __future__ import annotations

import json
import os
import re
import shutil
import signal
import socket
import subprocess
import sys
import threading
import time
import urllib.request
from pathlib import Path

import numpy as np
import pytest

if os.environ.get("CI"):  # CI installs the dev extra: a PyTriton or client that fails to import fails the run, never skips it
    import pytriton  # noqa: F401
    import tritonclient.grpc as grpcclient
else:
    pytest.importorskip("pytriton", reason="the serve extra is not installed (pip install 'fcn-deploy[serve]')")
    grpcclient = pytest.importorskip("tritonclient.grpc")

from google.protobuf import text_format  # noqa: E402
from tritonclient.grpc import model_config_pb2  # noqa: E402
from tritonclient.utils import InferenceServerException  # noqa: E402

from fcn_deploy.backends import Profile, Runner, TensorSpec, manifest_path, open_runner, read_manifest  # noqa: E402
from fcn_deploy.backends.remote import RemoteRunner, TritonModel, mask_dtype, request_problem  # noqa: E402
from fcn_deploy.cli import main  # noqa: E402
from fcn_deploy.data.images import preprocess, resize_mask  # noqa: E402
from fcn_deploy.data.synthetic import make_scene  # noqa: E402
from fcn_deploy.engines import BuildOptions, build_engine  # noqa: E402
from fcn_deploy.errors import FcnDeployError  # noqa: E402
from fcn_deploy.events import Recorder  # noqa: E402
from fcn_deploy.fileio import sha256_file  # noqa: E402
from fcn_deploy.inference import Segmenter  # noqa: E402
from fcn_deploy.meta import ModelMeta  # noqa: E402
from fcn_deploy.serve import prepost_model  # noqa: E402
from fcn_deploy.serve.in_triton import ServedModel, power_of_two_chunks  # noqa: E402
from fcn_deploy.serve.repository import export_triton  # noqa: E402

from helpers import direct_mask  # noqa: E402

MAX_SIDE = 160  # the served engine's profile maximum: larger images are fitted, beyond 4x refused
ODD_SIZES = [(37, 91), (97, 129), (300, 41), (20, 20)]  # in profile, in profile, fitted down, fitted up
READY_TIMEOUT_S = 180


def free_ports(count: int) -> list[int]:
    sockets = [socket.socket() for _ in range(count)]
    try:
        for sock in sockets:
            sock.bind(("127.0.0.1", 0))
        return [sock.getsockname()[1] for sock in sockets]
    finally:
        for sock in sockets:
            sock.close()


def scene(index: int, height: int, width: int) -> np.ndarray:
    return make_scene(11, index, height, width)[0]


@pytest.fixture(scope="module")
def engines(tiny_onnx, tmp_path_factory) -> dict[str, Path]:
    """ONNX Runtime and OpenVINO FP32 engines of the tiny model, profile up to 160x160."""
    import shutil

    folder = tmp_path_factory.mktemp("serve-engines")
    src = folder / "tiny.onnx"
    shutil.copy(tiny_onnx, src)
    built = {}
    for backend in ("onnxruntime", "openvino"):
        manifest = build_engine(src, None, BuildOptions(backend=backend, max_shape=(MAX_SIDE, MAX_SIDE)))
        built[backend] = folder / manifest["engine"]
    return built


@pytest.fixture(scope="module")
def local(engines):
    with Segmenter(open_runner(engines["onnxruntime"]), tile="off") as segmenter:  # the server resizes, never tiles
        yield segmenter


class ServerProcess:
    def __init__(self, engine: Path, workdir: Path):
        self.http, self.grpc, self.metrics = free_ports(3)
        self.log = workdir / "serve.log"
        command = [
            sys.executable, "-m", "fcn_deploy.cli", "serve", str(engine), "--http-port", str(self.http), "--grpc-port",
            str(self.grpc), "--metrics-port", str(self.metrics), "--queue-delay-us", "2000",
        ]  # fmt: skip
        self.out = open(self.log, "w")
        self.process = subprocess.Popen(command, stdout=self.out, stderr=subprocess.STDOUT, cwd=workdir)
        self.address = f"127.0.0.1:{self.grpc}"

    def wait_ready(self) -> None:
        deadline = time.monotonic() + READY_TIMEOUT_S
        while time.monotonic() < deadline:
            if self.process.poll() is not None:
                pytest.fail(f"fcn-deploy serve exited with {self.process.returncode}:\n{self.log.read_text()}")
            try:
                with urllib.request.urlopen(f"http://127.0.0.1:{self.http}/v2/models/fcn/ready", timeout=1) as response:
                    if response.status == 200 and "serving " in self.log.read_text():  # ready, and the start message out
                        return
            except OSError:
                pass
            time.sleep(0.2)  # readiness polling
        pytest.fail(f"the server was not ready within {READY_TIMEOUT_S} s:\n{self.log.read_text()}")

    def metrics_text(self) -> str:
        with urllib.request.urlopen(f"http://127.0.0.1:{self.metrics}/metrics", timeout=5) as response:
            return response.read().decode()

    def stop(self) -> None:
        if self.process.poll() is None:
            self.process.send_signal(signal.SIGTERM)
            try:
                self.process.wait(timeout=60)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait()
        self.out.close()


def started_server(engine: Path, workdir: Path):
    process = ServerProcess(engine, workdir)
    try:
        process.wait_ready()
        yield process
    finally:
        process.stop()


@pytest.fixture(scope="module")
def server(engines, tmp_path_factory):
    """The server most tests share; no test stops it."""
    yield from started_server(engines["onnxruntime"], tmp_path_factory.mktemp("serve"))


@pytest.fixture
def own_server(engines, tmp_path):
    """A server for one test alone (the SIGTERM test stops it)."""
    yield from started_server(engines["onnxruntime"], tmp_path)


@pytest.fixture(scope="module")
def remote(server):
    with TritonModel(server.address) as model:
        yield model


def metric(text: str, name: str, model: str = "fcn") -> float:
    match = re.search(rf'^{name}\{{model="{model}",version="1"\}} ([0-9.e+]+)$', text, re.MULTILINE)
    assert match, f"{name} not in the metrics"
    return float(match.group(1))


# --------------------------------------------------------------------------- the served interface


def test_masks_over_shared_memory_grpc_and_http_equal_the_local_engine(server, remote, local):
    """The same-host client (this test's user holds the published token) sends images and gets
    masks through system shared memory, its regions grown as the sizes grow; a gRPC-only client
    and an HTTP client get the same masks."""
    import tritonclient.http as httpclient

    assert remote.transport == "system shared memory"
    http = httpclient.InferenceServerClient(f"127.0.0.1:{server.http}")  # gevent-based: this thread only
    classes = set()
    with TritonModel(server.address, shared_memory=False) as plain:
        assert plain.transport == "gRPC"
        try:
            for index, (height, width) in enumerate(ODD_SIZES):
                image = scene(index, height, width)
                expected = local.predict(image)
                classes |= set(np.unique(expected).tolist())
                over_shm, over_grpc = remote.infer(image), plain.infer(image)
                tensor = httpclient.InferInput("image", [1, height, width, 3], "UINT8")
                tensor.set_data_from_numpy(image[None], binary_data=True)
                over_http = http.infer("fcn", [tensor]).as_numpy("mask")[0]
                assert over_shm.dtype == over_grpc.dtype == over_http.dtype == np.uint8
                assert over_shm.shape == over_grpc.shape == over_http.shape == (height, width)
                for got in (over_shm, over_grpc, over_http):
                    np.testing.assert_array_equal(got, expected)
        finally:
            http.close()
    assert len(classes) > 2  # the scenes segment into several classes: equality means something


def test_a_request_whose_region_cannot_be_made_goes_over_grpc(server, local, monkeypatch):
    """No room for a larger region (a full /dev/shm, or a server that stopped taking the token):
    that request's image and mask go over gRPC, with the same mask, the smaller region pair keeps
    serving its sizes, and the client goes on."""
    from tritonclient.utils.shared_memory import SharedMemoryException

    with TritonModel(server.address) as model:
        pool = model.shared_memory
        assert model.transport == "system shared memory"
        through_regions = []
        request = pool.request
        monkeypatch.setattr(
            pool, "request", lambda grpc, pair, batch, *rest: through_regions.append(batch.shape) or request(grpc, pair, batch, *rest)
        )
        image, larger = scene(3, 97, 131), scene(4, 160, 224)
        np.testing.assert_array_equal(model.infer(image), local.predict(image))
        assert through_regions == [(1, 97, 131, 3)] and len(pool._all) == 1

        def no_room(*_):
            raise SharedMemoryException("unable to create the shared memory region")

        monkeypatch.setattr(pool, "_create", no_room)
        np.testing.assert_array_equal(model.infer(larger), local.predict(larger))  # over gRPC
        np.testing.assert_array_equal(model.infer(image), local.predict(image))  # through the smaller pair again
        assert through_regions == [(1, 97, 131, 3)] * 2 and len(pool._all) == 1
        monkeypatch.delattr(pool, "_create")  # room again: the pair grows
        np.testing.assert_array_equal(model.infer(larger), local.predict(larger))
        assert through_regions[-1] == (1, 160, 224, 3) and len(pool._all) == 1 and pool._all[0].image_bytes == larger.nbytes


def test_shared_memory_is_refused_without_the_token_only_this_user_can_read(server, remote):
    from fcn_deploy.backends.remote_shm import GRPC_TOKEN_HEADER, read_token, token_folder, token_path

    path = token_path(server.grpc)
    assert oct(path.stat().st_mode & 0o777) == "0o600" and oct(token_folder().stat().st_mode & 0o777) == "0o700"
    token = read_token(server.address)
    assert token and token in path.read_text()
    client = grpcclient.InferenceServerClient(server.address)
    try:
        for headers in (None, {GRPC_TOKEN_HEADER: token[::-1]}):  # no token, a wrong one
            with pytest.raises(InferenceServerException, match="restricted"):
                client.register_system_shared_memory("intruder", "/fcn-deploy-intruder", 64, headers=headers)
            with pytest.raises(InferenceServerException, match="restricted"):
                client.get_system_shared_memory_status(headers=headers)  # nor may anyone list the regions in use
        assert client.get_system_shared_memory_status(headers={GRPC_TOKEN_HEADER: token}) is not None
    finally:
        client.close()


def test_config_publishes_the_engine_facts_and_the_start_message_prints_them(server, remote, engines):
    manifest = read_manifest(engines["onnxruntime"])
    config = remote.config
    params = {key: value["string_value"] for key, value in config["parameters"].items()}
    assert params["engine_sha256"] == manifest["files"][0]["sha256"] == sha256_file(engines["onnxruntime"])
    assert (params["backend"], params["precision"]) == ("onnxruntime", "fp32")
    assert json.loads(params["class_names"]) == manifest["meta"]["class_names"]
    assert json.loads(params["palette"]) == manifest["meta"]["palette"][: manifest["meta"]["num_classes"]]
    assert json.loads(params["fcn_deploy.profile"]) == manifest["profile"]
    assert config["input"] == [{"name": "image", "data_type": "TYPE_UINT8", "dims": ["-1", "-1", "3"]}]
    assert config["output"] == [{"name": "mask", "data_type": "TYPE_UINT8", "dims": ["-1", "-1"]}]
    assert config["max_batch_size"] == manifest["profile"]["max"][0] and "dynamic_batching" in config
    printed = server.log.read_text()
    assert params["engine_sha256"] in printed and all(name in printed for name in manifest["meta"]["class_names"])


def test_sixteen_concurrent_clients_all_served_and_batched(server, remote, local):
    images = [scene(100 + i, 64, 96) for i in range(8)]
    expected = local.predict_batch(images)
    before = server.metrics_text()
    results: dict[tuple[int, int], np.ndarray] = {}
    errors: list[str] = []

    def client(index: int) -> None:
        connection = grpcclient.InferenceServerClient(server.address)
        try:
            for request in range(8):
                tensor = grpcclient.InferInput("image", [1, 64, 96, 3], "UINT8")
                tensor.set_data_from_numpy(images[request][None])
                results[(index, request)] = connection.infer("fcn", [tensor], client_timeout=120).as_numpy("mask")[0]
        except Exception as exc:  # noqa: BLE001 - collected and asserted below
            errors.append(str(exc))
        finally:
            connection.close()

    threads = [threading.Thread(target=client, args=(i,)) for i in range(16)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(timeout=300)
    assert not errors and len(results) == 16 * 8  # every request answered, none lost
    for (_, request), mask in results.items():
        np.testing.assert_array_equal(mask, expected[request])
    after = server.metrics_text()
    inferences = metric(after, "nv_inference_count") - metric(before, "nv_inference_count")
    executions = metric(after, "nv_inference_exec_count") - metric(before, "nv_inference_exec_count")
    assert inferences == 16 * 8 and executions < inferences  # the dynamic batcher ran batches of more than one
    batch_stats = remote.client.get_inference_statistics("fcn", as_json=True)["model_stats"][0]["batch_stats"]
    assert any(int(entry["batch_size"]) > 1 for entry in batch_stats)


@pytest.mark.parametrize(
    "label, name, datatype, array, reason",
    [
        ("float32 image", "image", "FP32", np.zeros((1, 40, 40, 3), np.float32), "data-type is 'FP32', but model 'fcn' expects 'UINT8'"),
        ("rank 2", "image", "UINT8", np.zeros((40, 40), np.uint8), "batch-size must be <= "),  # Triton reads dim 0 as the batch
        ("0x0 image", "image", "UINT8", np.zeros((1, 0, 0, 3), np.uint8), "the image is 0x0 (batch 1); send at least one non-empty image"),
        (
            "beyond 4x the profile's maximum",
            "image",
            "UINT8",
            np.zeros((1, 4 * MAX_SIDE + 1, 8, 3), np.uint8),
            "larger than this server accepts",
        ),
        ("wrong input name", "img", "UINT8", np.zeros((1, 40, 40, 3), np.uint8), "unexpected inference input 'img'"),
    ],
)
def test_bad_requests_get_an_error_and_the_server_stays_ready(remote, label, name, datatype, array, reason):
    tensor = grpcclient.InferInput(name, list(array.shape), datatype)
    tensor.set_data_from_numpy(array)
    with pytest.raises(InferenceServerException, match=re.escape(reason)):
        remote.client.infer("fcn", [tensor], client_timeout=60)
    assert remote.client.is_server_ready() and remote.client.is_model_ready("fcn")
    assert remote.infer(scene(1, 40, 40)).shape == (40, 40)


def test_a_too_large_image_is_refused_with_its_reason(remote):
    with pytest.raises(FcnDeployError, match=r"larger than this server accepts \(640x640"):
        remote.infer(np.zeros((4 * MAX_SIDE + 1, 8, 3), np.uint8))


def test_validate_and_infer_against_the_server_match_local_runs(server, engines, tiny_checkpoint, tmp_path, capsys):
    report = tmp_path / "validate.json"
    assert main(["validate", "--server", server.address, "--reference", str(tiny_checkpoint), "--sizes", "61x77,97x129",
                 "--random-sizes", "0", "--report", str(report)]) == 0  # fmt: skip
    cases = json.loads(report.read_text())["cases"]
    assert [(c["height"], c["width"]) for c in cases] == [(61, 77), (97, 129)]
    assert all(c["passed"] and c["pixel_agreement"] >= 0.9999 for c in cases)
    folder = tmp_path / "images"
    folder.mkdir()
    from PIL import Image

    for index, (height, width) in enumerate(ODD_SIZES):
        Image.fromarray(scene(50 + index, height, width)).save(folder / f"frame{index}.png")
    # a server returns masks, so it cannot blend tiles: it resizes what exceeds the profile, as local --tile off does
    assert main(["infer", str(folder), "--engine", str(engines["onnxruntime"]), "-o", str(tmp_path / "local"), "--tile", "off"]) == 0
    assert main(["infer", str(folder), "--server", server.address, "-o", str(tmp_path / "remote"), "--batch", "3"]) == 0
    written = {kind: sorted(p.relative_to(tmp_path / kind) for p in (tmp_path / kind).rglob("*.png")) for kind in ("local", "remote")}
    assert written["local"] == written["remote"] and len(written["local"]) == 2 * len(ODD_SIZES)  # masks/ and overlays/
    for name in written["local"]:
        assert (tmp_path / "local" / name).read_bytes() == (tmp_path / "remote" / name).read_bytes()
    # and against independent code: a bare ONNX Runtime session on numpy-normalised input (in-profile sizes)
    for index, (height, width) in enumerate(ODD_SIZES[:2]):
        served = np.asarray(Image.open(tmp_path / "remote" / "masks" / f"frame{index}.png"))
        expected = direct_mask(engines["onnxruntime"], scene(50 + index, height, width))
        assert served.shape == expected.shape == (height, width) and len(np.unique(expected)) >= 2
        assert np.mean(served == expected) >= 0.9999
    out = capsys.readouterr().out
    assert "triton-onnxruntime-fp32" in out


def test_clients_explain_a_wrong_address_or_model(server):
    with pytest.raises(FcnDeployError, match="HOST:PORT"):
        TritonModel("localhost")
    with pytest.raises(FcnDeployError, match="no ready model 'nope'"):
        TritonModel(server.address, "nope")
    port = free_ports(1)[0]
    with pytest.raises(FcnDeployError, match=f"cannot reach a Triton gRPC endpoint at 127.0.0.1:{port}"):
        TritonModel(f"127.0.0.1:{port}", timeout_s=2)


def test_benchmark_against_the_server_reports_each_concurrency_level(server, engines, tmp_path, capsys):
    """With the served engine given, it is timed alone too, and each row says what serving costs."""
    report = tmp_path / "bench.json"
    assert main(["benchmark", "--server", server.address, str(engines["onnxruntime"]), "--concurrency", "1,4", "--sizes", "64x64",
                 "--iters", "4", "--warmup", "1", "--report", str(report)]) == 0  # fmt: skip
    assert "overhead" in capsys.readouterr().out
    data = json.loads(report.read_text())
    (alone,) = data["engine_alone"]
    assert (alone["height"], alone["width"], alone["backend"]) == (64, 64, "onnxruntime") and alone["median_ms"] > 0
    assert alone["blocks"] == 3  # before each of the two levels and after the last
    for row in data["results"]:  # each level against the blocks on either side of it
        assert alone["min_ms"] <= row["engine_ms"] <= alone["max_ms"]
        assert row["overhead"] == pytest.approx(row["p50_ms"] / row["engine_ms"] - 1)
        assert row["vs_engine"] == pytest.approx(row["throughput_rps"] * row["engine_ms"] / 1000)
    # another engine than the served one is refused: the comparison would mean nothing
    assert main(["benchmark", "--server", server.address, str(engines["openvino"]), "--iters", "1"]) == 2  # bad input
    assert "the server serves tiny.fp32.ort.onnx, not this engine" in capsys.readouterr().err
    assert [r["concurrency"] for r in data["results"]] == [1, 4]
    for row in data["results"]:
        assert row["requests"] == row["concurrency"] * 4
        for key in ("backend", "precision", "height", "width", "batch", "median_ms", "p90_ms", "throughput_fps"):
            assert key in row, key
        assert row["throughput_rps"] > 0 and row["p50_ms"] <= row["p90_ms"] <= row["p99_ms"]
        assert row["server_avg_batch"] >= 1 and row["client_cpu_ms_per_request"] > 0
        assert row["transport"] == "system shared memory"  # each client its own regions, on the server's host
    assert data["server"]["engine_sha256"] == sha256_file(server_engine(server))
    assert main(["benchmark", "--server", server.address, "--concurrency", "2", "--sizes", "64x64", "--iters", "2", "--warmup", "0",
                 "--transport", "grpc", "--report", str(report)]) == 0  # fmt: skip
    assert [row["transport"] for row in json.loads(report.read_text())["results"]] == ["gRPC"]
    assert main(["benchmark", "--server", server.address, "--transport", "pigeon"]) == 2
    assert "--transport 'pigeon': choose auto or grpc" in capsys.readouterr().err


def server_engine(server: ServerProcess) -> Path:
    return Path(server.process.args[4])


def test_port_in_use_is_a_one_line_error(engines, capsys):
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        http, metrics = free_ports(2)
        code = main(["serve", str(engines["onnxruntime"]), "--grpc-port", str(port), "--http-port", str(http),
                     "--metrics-port", str(metrics)])  # fmt: skip
    err = capsys.readouterr().err.strip()
    assert code == 2 and len(err.splitlines()) == 1
    assert f"port {port} on 127.0.0.1 is in use" in err and "--grpc-port" in err


def test_sigterm_drains_in_flight_requests_and_exits_0(own_server):
    """SIGTERM goes once the first response is back (so every request has reached the server), with
    most of them still queued or running.  It stops a server of its own, not the shared one."""
    server = own_server
    images = [scene(200 + i, MAX_SIDE, MAX_SIDE) for i in range(48)]
    client = grpcclient.InferenceServerClient(server.address)
    answers: list[tuple[float, object]] = []
    first, done = threading.Event(), threading.Event()

    def on_done(result, error) -> None:
        answers.append((time.monotonic(), error if error is not None else result.as_numpy("mask").shape))
        first.set()
        if len(answers) == len(images):
            done.set()

    for image in images:
        tensor = grpcclient.InferInput("image", [1, *image.shape], "UINT8")
        tensor.set_data_from_numpy(image[None])
        client.async_infer("fcn", [tensor], callback=on_done, client_timeout=120)
    assert first.wait(timeout=120)
    signalled = time.monotonic()
    server.process.send_signal(signal.SIGTERM)
    assert server.process.wait(timeout=120) == 0
    assert done.wait(timeout=10)
    client.close()
    assert [answer for _, answer in answers] == [(1, MAX_SIDE, MAX_SIDE)] * len(images)  # none failed, none lost
    assert any(when > signalled for when, _ in answers)  # some were answered while the server drained
    log = server.log.read_text()
    assert "stopping: draining in-flight requests" in log and re.search(r"stopped in [\d.]+ s: served 48 request", log)
    from fcn_deploy.backends.remote_shm import token_path

    assert "through system shared memory" in log and not token_path(server.grpc).exists()  # published while it served, then withdrawn
    assert re.search(r"per image inside the server: .*preprocess [\d.]+ ms, infer [\d.]+ ms", log)


# --------------------------------------------------------------------------- pieces, without a server


class _ManyClassRunner(Runner):
    """300 classes: masks must come back as INT32 with labels above 255 intact."""

    backend = "fake"

    def __init__(self):
        names = [f"c{i}" for i in range(300)]
        super().__init__("fake", ModelMeta("fcn8s-resnet18", 300, names, []), Profile((1, 32, 32), (1, 64, 64), (8, 64, 512)))

    inputs = property(lambda self: [TensorSpec("image", "float32", ("n", 3, "h", "w"))])
    outputs = property(lambda self: [TensorSpec("mask", "int64", ("n", "h", "w"))])

    def infer_impl(self, batch, need_logits):
        n, _, h, w = batch.shape
        return {"mask": np.broadcast_to((np.arange(w) % 300)[None, None, :], (n, h, w)).copy(), "logits": None}


def test_masks_are_int32_beyond_256_classes_and_uint8_up_to_256():
    assert mask_dtype(256) is np.uint8 and mask_dtype(257) is np.int32
    runner = _ManyClassRunner()
    recorder = Recorder()
    served = ServedModel(Segmenter(runner, mask_dtype=np.int32), listener=recorder)
    image = np.zeros((1, 20, 300, 3), np.uint8)  # below the minimum height: run at 32x480, masks resized back
    (mask,) = served.infer([image])
    assert mask.dtype == np.int32 and mask.shape == (1, 20, 300) and mask.max() > 255
    big = np.zeros((1, 64 * 4 + 1, 20, 3), np.uint8)
    refused, served_too = served.infer([big, image])  # one batch: the bad request is refused, the other served
    assert isinstance(refused, ValueError) and "larger than this server accepts" in str(refused)
    np.testing.assert_array_equal(served_too, mask)
    assert served.counts == {"requests": 2, "images": 2, "executions": 2, "largest_batch": 1, "refused": 1, "failed": 0}
    (refusal,) = recorder.texts("warning")
    assert refusal.startswith("refused 1 request(s): the image is 257x20, larger than this server accepts")
    with pytest.raises(FcnDeployError, match="do not fit 8-bit masks"):
        Segmenter(runner)


def test_a_served_openvino_engine_stops_pinning_its_threads_and_keeps_its_masks(engines):
    """Pinned alike, two served instances queued on the same cores (README, "Serving")."""
    runner = open_runner(engines["openvino"])
    images = [scene(i, 64, 96) for i in range(2)]
    with Segmenter(runner, tile="off") as segmenter:
        before = [segmenter.predict_batch(images) for _ in range(2)][-1]  # a shape seen twice gets a static graph
        assert runner._static
        ServedModel(segmenter)
        assert not runner._static and runner.compiled.get_property("ENABLE_CPU_PINNING") is False
        after = [segmenter.predict_batch(images) for _ in range(2)][-1]
        static = [entry[0].get_compiled_model() for entry in runner._static.values()]
        assert static and all(compiled.get_property("ENABLE_CPU_PINNING") is False for compiled in static)
        for mask, again in zip(before, after):
            np.testing.assert_array_equal(mask, again)


def test_a_batch_runs_in_falling_powers_of_two_in_order():
    """So a runner compiling a graph per shape meets at most log2(max batch) + 1 batch sizes per image size."""
    images = [np.full((2, 2, 3), i, np.uint8) for i in range(7)]
    chunks = power_of_two_chunks(images)
    assert [len(c) for c in chunks] == [4, 2, 1] and [int(i[0, 0, 0]) for c in chunks for i in c] == list(range(7))
    assert [len(c) for c in power_of_two_chunks(images[:1] * 8)] == [8] and power_of_two_chunks([]) == []


def test_remote_runner_recovers_the_exact_uint8_images_and_refuses_other_batches():
    runner = RemoteRunner.__new__(RemoteRunner)
    runner.meta = ModelMeta("fcn8s-resnet18", 2, ["a", "b"], [])
    runner.path = "grpc://test/fcn"
    images = np.stack([scene(i, 33, 47) for i in range(3)])
    np.testing.assert_array_equal(runner.images_from_batch(preprocess(images, runner.meta.mean, runner.meta.std)), images)
    noise = np.random.default_rng(0).normal(size=(1, 3, 8, 8)).astype(np.float32)
    with pytest.raises(FcnDeployError, match="not preprocessed uint8 images"):
        runner.images_from_batch(noise)
    assert request_problem((1, 0, 0, 3), Profile((1, 32, 32), (1, 32, 32), (1, 64, 64)))


def test_python_model_numpy_resizes_follow_pillow():
    rng = np.random.default_rng(3)
    for height, width, to_h, to_w in [(300, 41, 160, 22), (37, 91, 64, 158), (20, 20, 32, 32), (97, 129, 33, 77)]:
        labels = rng.integers(0, 7, (height, width)).astype(np.uint8)
        np.testing.assert_array_equal(prepost_model.resize_labels(labels, to_h, to_w), resize_mask(labels, to_h, to_w))
        image = scene(0, height, width)
        pillow = prepost_model.resize_rgb(image, to_h, to_w, use_pillow=True).astype(int)
        numpy_only = prepost_model.resize_rgb(image, to_h, to_w, use_pillow=False).astype(int)
        assert np.abs(pillow - numpy_only).max() <= 1


# --------------------------------------------------------------------------- export-triton


def parse_repo(repo: Path) -> dict[str, model_config_pb2.ModelConfig]:
    configs = {}
    for path in sorted(repo.glob("*/config.pbtxt")):
        configs[path.parent.name] = text_format.Parse(path.read_text(), model_config_pb2.ModelConfig())
    return configs


def tensors(values) -> list[tuple[str, str, list[int]]]:
    return [(t.name, model_config_pb2.DataType.Name(t.data_type), list(t.dims)) for t in values]


def check_ensemble(configs, name: str, engine_input: str, engine_output: str, num_classes: int, max_batch: int) -> None:
    ensemble = configs[name]
    assert ensemble.platform == "ensemble" and ensemble.max_batch_size == max_batch
    assert tensors(ensemble.input) == [("image", "TYPE_UINT8", [-1, -1, 3])]
    assert tensors(ensemble.output) == [("mask", "TYPE_UINT8", [-1, -1])]
    steps = [(s.model_name, dict(s.input_map), dict(s.output_map)) for s in ensemble.ensemble_scheduling.step]
    assert steps == [
        (f"{name}_preprocess", {"image": "image"}, {"preprocessed": "preprocessed", "original_size": "original_size"}),
        (f"{name}_engine", {engine_input: "preprocessed"}, {engine_output: "engine_output"}),
        (f"{name}_postprocess", {engine_output: "engine_output", "original_size": "original_size"}, {"mask": "mask"}),
    ]
    pre, post = configs[f"{name}_preprocess"], configs[f"{name}_postprocess"]
    assert pre.backend == post.backend == "python" and pre.max_batch_size == post.max_batch_size == max_batch
    assert tensors(pre.output) == [("preprocessed", "TYPE_FP32", [3, -1, -1]), ("original_size", "TYPE_INT32", [2])]
    assert tensors(post.input)[0] == ("logits", "TYPE_FP32", [num_classes, -1, -1])
    assert pre.parameters["fcn_deploy.role"].string_value == "preprocess"
    assert post.parameters["fcn_deploy.role"].string_value == "postprocess"


def test_export_triton_onnxruntime_and_openvino_configs_parse_into_model_config(engines, tmp_path, capsys):
    for backend, platform_field, platform, files in [
        ("onnxruntime", "platform", "onnxruntime_onnx", ["model.onnx"]),
        ("openvino", "backend", "openvino", ["model.xml", "model.bin"]),
    ]:
        engine = engines[backend]
        manifest = read_manifest(engine)
        repo = tmp_path / f"repo-{backend}"
        assert main(["export-triton", str(engine), "--repo", str(repo), "--instances", "2", "--queue-delay-us", "500"]) == 0
        out = capsys.readouterr().out
        assert f"wrote {repo}: model fcn = fcn_preprocess -> fcn_engine ({platform}, fp32) -> fcn_postprocess" in out
        assert ("note: Triton's OpenVINO backend cannot pin the inference precision" in out) == (backend == "openvino")
        configs = parse_repo(repo)
        assert set(configs) == {"fcn", "fcn_preprocess", "fcn_engine", "fcn_postprocess"}
        check_ensemble(configs, "fcn", "image", "logits", manifest["meta"]["num_classes"], 8)
        engine_config = configs["fcn_engine"]
        assert getattr(engine_config, platform_field) == platform
        num_classes = manifest["meta"]["num_classes"]
        if backend == "openvino":  # no Triton batching: the backend would pad every batch to max_batch_size
            assert engine_config.max_batch_size == 0 and not engine_config.HasField("dynamic_batching")
            assert tensors(engine_config.input) == [("image", "TYPE_FP32", [-1, 3, -1, -1])]
            assert tensors(engine_config.output) == [("logits", "TYPE_FP32", [-1, num_classes, -1, -1])]
        else:
            assert engine_config.max_batch_size == manifest["profile"]["max"][0] == 8
            assert engine_config.dynamic_batching.max_queue_delay_microseconds == 500
            assert tensors(engine_config.input) == [("image", "TYPE_FP32", [3, -1, -1])]
            assert tensors(engine_config.output) == [("logits", "TYPE_FP32", [num_classes, -1, -1])]
        (group,) = engine_config.instance_group
        assert (model_config_pb2.ModelInstanceGroup.Kind.Name(group.kind), group.count) == ("KIND_CPU", 2)
        params = {k: v.string_value for k, v in configs["fcn"].parameters.items()}
        assert params["engine_sha256"] == manifest["files"][0]["sha256"] and params["backend"] == backend
        assert json.loads(params["class_names"]) == manifest["meta"]["class_names"]
        copies = [repo / "fcn_engine" / "1" / f for f in files]
        assert [sha256_file(c) for c in copies] == [f["sha256"] for f in manifest["files"]]
        assert (repo / "fcn_preprocess" / "1" / "model.py").read_text() == Path(prepost_model.__file__).read_text()
        assert (repo / "fcn" / "1").is_dir() and "docker run" in (repo / "README.txt").read_text()


def test_export_triton_tensorrt_from_a_faked_manifest(engines, tiny_onnx, tmp_path):
    """A TensorRT plan's repository is written on a machine without TensorRT (for the GPU host)."""
    ort_manifest = read_manifest(engines["onnxruntime"])
    plan = tmp_path / "tiny.fp16.plan"
    plan.write_bytes(b"not a real plan, only its bytes are copied")
    profile = {"min": [1, 64, 64], "opt": [2, 128, 128], "max": [16, 128, 128]}
    manifest = {
        "format": "fcn-deploy-engine/2", "engine": plan.name, "backend": "tensorrt", "precision": "fp16",
        "files": [{"name": plan.name, "sha256": sha256_file(plan)}], "profile": profile, "meta": ort_manifest["meta"],
        "precision_onnx": str(tiny_onnx), "versions": {"tensorrt": "10.13.0"}, "build": {},
    }  # fmt: skip
    manifest_path(plan).write_text(json.dumps(manifest))
    repo = tmp_path / "repo-trt"
    export_triton(plan, repo, name="seg")
    configs = parse_repo(repo)
    check_ensemble(configs, "seg", "image", "logits", ort_manifest["meta"]["num_classes"], 16)
    engine_config = configs["seg_engine"]
    assert engine_config.platform == "tensorrt_plan" and engine_config.max_batch_size == 16
    assert tensors(engine_config.input) == [("image", "TYPE_FP32", [3, -1, -1])]
    assert engine_config.HasField("dynamic_batching")
    (group,) = engine_config.instance_group
    assert model_config_pb2.ModelInstanceGroup.Kind.Name(group.kind) == "KIND_GPU"
    assert (repo / "seg_engine" / "1" / "model.plan").read_bytes() == plan.read_bytes()
    readme = (repo / "README.txt").read_text()
    assert "--gpus all" in readme and "TensorRT is 10.13.0" in readme


def test_export_triton_is_atomic_and_refuses_what_it_cannot_serve(engines, tmp_path):
    repo = tmp_path / "repo"
    repo.mkdir()
    (repo / "keep.txt").write_text("mine")
    with pytest.raises(FcnDeployError, match="already exists; allow overwriting it, or choose another repository folder") as info:
        export_triton(engines["onnxruntime"], repo)
    assert info.value.options == ("overwrite", "repo")
    assert [p.name for p in repo.iterdir()] == ["keep.txt"]
    with pytest.raises(FcnDeployError, match=re.escape("max batch 9: the engine's profile runs batches of 1 to 8")) as info:
        export_triton(engines["onnxruntime"], tmp_path / "other", max_batch=9)
    assert info.value.options == ("max_batch",)
    tampered = tmp_path / "tampered.ort.onnx"
    tampered.write_bytes(engines["onnxruntime"].read_bytes() + b"x")
    manifest = read_manifest(engines["onnxruntime"])
    manifest["engine"], manifest["files"][0]["name"] = tampered.name, tampered.name
    manifest_path(tampered).write_text(json.dumps(manifest))
    with pytest.raises(FcnDeployError, match="sha256 differs"):
        export_triton(tampered, tmp_path / "never")
    assert not (tmp_path / "never").exists() and not list(tmp_path.glob(".*.tmp"))
    # --overwrite replaces only a repository export-triton wrote, never a folder of the user's ...
    with pytest.raises(FcnDeployError, match="is not a repository export-triton wrote .*choose another repository folder") as info:
        export_triton(engines["onnxruntime"], repo, overwrite=True)
    assert info.value.options == ("repo",)
    assert [p.name for p in repo.iterdir()] == ["keep.txt"]
    # ... nor the folder that holds the engine itself.
    with pytest.raises(FcnDeployError, match="holds the engine .* itself") as info:
        export_triton(engines["onnxruntime"], engines["onnxruntime"].parent, overwrite=True)
    assert info.value.options == ("repo",)
    ours = tmp_path / "ours"
    export_triton(engines["onnxruntime"], ours)
    (ours / "fcn" / "stale.txt").write_text("from an older export")
    export_triton(engines["onnxruntime"], ours, overwrite=True)
    assert not (ours / "fcn" / "stale.txt").exists() and (ours / "fcn" / "config.pbtxt").is_file()
    assert not [p for p in tmp_path.iterdir() if p.name.startswith(".")]


def test_export_triton_serves_a_plain_onnx_and_refuses_what_triton_cannot_run(tiny_onnx, engines, tmp_path, monkeypatch, capsys):
    from fcn_deploy.backends.onnxruntime import OnnxRuntimeBackend

    repo = tmp_path / "plain"
    result = export_triton(tiny_onnx, repo, name="plain")  # no manifest: the backend that runs plain ONNX files serves it
    assert (result["backend"], result["platform"]) == ("onnxruntime", "onnxruntime_onnx")
    configs = parse_repo(repo)
    num_classes = read_manifest(engines["onnxruntime"])["meta"]["num_classes"]
    check_ensemble(configs, "plain", "image", "logits", num_classes, 8)
    (group,) = configs["plain_engine"].instance_group
    assert model_config_pb2.ModelInstanceGroup.Kind.Name(group.kind) == "KIND_CPU"
    assert (repo / "plain_engine" / "1" / "model.onnx").read_bytes() == tiny_onnx.read_bytes()
    assert not (repo / "plain_engine" / "fcn-deploy-manifest.json").exists()
    assert "a Triton release whose ONNX Runtime is 1.27 or newer" in result["readme"] == (repo / "README.txt").read_text()
    # a backend without a Triton backend of its own is refused in one line, naming it
    monkeypatch.setattr(OnnxRuntimeBackend, "triton_spec", lambda self, manifest: None)
    with pytest.raises(FcnDeployError, match=r"onnxruntime has no Triton backend; serve it with `fcn-deploy serve` instead"):
        export_triton(engines["onnxruntime"], tmp_path / "none")
    assert not (tmp_path / "none").exists()
    # the CLI names its flags for the options a library error is about
    assert main(["export-triton", str(tiny_onnx), "--repo", str(tmp_path / "x"), "--name", "x y"]) == 2
    err = capsys.readouterr().err.strip()
    assert err == "error: --name: model name 'x y': use letters, digits, dots, dashes and underscores"


def tree(folder: Path) -> dict[str, bytes] | None:
    """Every file under ``folder`` with its bytes (None when there is no folder)."""
    if not folder.exists():
        return None
    return {str(p.relative_to(folder)): p.read_bytes() for p in sorted(folder.rglob("*")) if p.is_file()}


class Interrupter:
    """Counts the file-system steps export-triton takes, and raises KeyboardInterrupt at one of them
    (before it, or after it took effect), as a Ctrl-C arriving there would."""

    STEPS = [(os, "replace"), (shutil, "rmtree"), (shutil, "copyfile"), (Path, "mkdir"), (Path, "write_text")]

    def __init__(self, monkeypatch, fileio):
        self.calls, self.at, self.after, self.armed, self.names = 0, 0, False, False, []
        for owner, attr in [*self.STEPS, (fileio, "exchange_paths")]:
            monkeypatch.setattr(owner, attr, self._wrap(getattr(owner, attr), attr))

    def _wrap(self, real, name):
        def step(*args, **kwargs):
            if not self.armed:
                return real(*args, **kwargs)
            self.calls += 1
            self.names.append(name)
            index = self.calls  # steps may nest (Path.mkdir with parents)
            if index == self.at and not self.after:
                raise KeyboardInterrupt
            result = real(*args, **kwargs)
            if index == self.at and self.after:
                raise KeyboardInterrupt
            return result

        return step

    def run(self, call, at: int = 0, after: bool = False) -> bool:
        """Run ``call`` armed; whether it was interrupted."""
        self.calls, self.at, self.after, self.armed, self.names = 0, at, after, True, []
        try:
            call()
        except KeyboardInterrupt:
            return True
        finally:
            self.armed = False
        return False


@pytest.mark.parametrize("swap", ["renameat2", "two renames"])
def test_export_triton_interrupted_at_any_step_leaves_the_old_or_the_new_repository_whole(engines, tmp_path, monkeypatch, swap):
    from fcn_deploy import fileio

    if swap == "two renames":  # where RENAME_EXCHANGE is missing
        monkeypatch.setattr(fileio, "exchange_paths", lambda a, b: False)
    else:
        for folder in ("a", "b"):
            (tmp_path / folder).mkdir()
        if not fileio.exchange_paths(tmp_path / "a", tmp_path / "b"):
            pytest.skip("renameat2(RENAME_EXCHANGE) is not available here")
        for folder in ("a", "b"):
            shutil.rmtree(tmp_path / folder)
    engine = engines["onnxruntime"]
    parent = tmp_path / "out"
    repo = parent / "repo"
    write_old = lambda: export_triton(engine, repo, instances=1, overwrite=True)  # noqa: E731
    write_new = lambda: export_triton(engine, repo, instances=2, overwrite=True)  # noqa: E731
    interrupter = Interrupter(monkeypatch, fileio)
    assert not interrupter.run(write_new)  # into an absent folder
    fresh_steps = interrupter.calls
    new = tree(repo)
    write_old()
    old = tree(repo)
    assert old != new and not interrupter.run(write_new)
    steps = interrupter.calls
    assert interrupter.names.count("replace") == (0 if swap == "renameat2" else 2) and tree(repo) == new
    for existing, count in [(True, steps), (False, fresh_steps)]:
        seen = set()
        for at in range(1, count + 1):
            for after in (False, True):
                shutil.rmtree(repo, ignore_errors=True)
                if existing:
                    write_old()
                assert interrupter.run(write_new, at, after), (at, after)
                state = tree(repo)
                where = f"interrupted {'after' if after else 'before'} step {at} ({interrupter.names[at - 1]})"
                assert state in ((old, new) if existing else (None, new)), where
                assert [p.name for p in parent.iterdir()] == (["repo"] if state is not None else []), where
                seen.add(state == new)
        assert seen == {False, True}  # interrupted early, the old state stays; late, the new one is whole


#: A Ctrl-C (a real SIGINT) while export-triton swaps the repositories, in a process of its own: in the
#: test process, other tests' native threads (Triton's client and server libraries) may be alive when
#: the signal arrives, and a full run died there with SIGSEGV.
CTRL_C_DURING_THE_SWAP = """
import os, signal, sys
from pathlib import Path
from fcn_deploy import fileio
from fcn_deploy.serve.repository import export_triton
engine, repo = Path(sys.argv[1]), Path(sys.argv[2])
real = fileio.exchange_paths
def exchange_after_ctrl_c(a, b):
    os.kill(os.getpid(), signal.SIGINT)  # as a terminal's Ctrl-C, while the swap runs
    return real(a, b)
fileio.exchange_paths = exchange_after_ctrl_c
try:
    export_triton(engine, repo, instances=2, overwrite=True)
except KeyboardInterrupt:
    assert signal.getsignal(signal.SIGINT) is signal.default_int_handler
    print("interrupted after the swap")
    sys.exit(0)
sys.exit("no KeyboardInterrupt")
"""


def test_a_ctrl_c_during_the_swap_takes_effect_once_the_new_repository_is_in_place(engines, tmp_path):
    engine, repo = engines["onnxruntime"], tmp_path / "repo"
    export_triton(engine, repo, instances=2)
    new = tree(repo)
    export_triton(engine, repo, instances=1, overwrite=True)
    done = subprocess.run([sys.executable, "-c", CTRL_C_DURING_THE_SWAP, str(engine), str(repo)], capture_output=True, text=True,
                          timeout=120)  # fmt: skip
    assert done.returncode == 0 and "interrupted after the swap" in done.stdout, done.stdout + done.stderr
    assert tree(repo) == new and [p.name for p in tmp_path.iterdir()] == ["repo"]


STAND_IN_ENGINE = '''
import numpy as np
import onnxruntime as ort
import triton_python_backend_utils as pb_utils


class TritonPythonModel:
    """Stands in for Triton's ONNX Runtime backend (not in PyTriton's wheel): the same model.onnx."""

    def initialize(self, args):
        self.session = ort.InferenceSession(args["model_repository"] + "/1/model.onnx", providers=["CPUExecutionProvider"])

    def execute(self, requests):
        responses = []
        for request in requests:
            image = pb_utils.get_input_tensor_by_name(request, "image").as_numpy()
            (logits,) = self.session.run(["logits"], {"image": image})
            responses.append(pb_utils.InferenceResponse([pb_utils.Tensor("logits", logits)]))
        return responses
'''


#: Runs PyTriton's bundled tritonserver on a model repository in a process of its own (a clean
#: interpreter: started inside the test process after the whole suite's libraries were loaded, it crashed).
TRITON_ON_A_REPOSITORY = """
import sys, time
from pathlib import Path
from pytriton.triton import Triton, TritonConfig
from fcn_deploy.serve.triton import python_libdir_first

repo, tmp, http, grpc, metrics = Path(sys.argv[1]), Path(sys.argv[2]), *map(int, sys.argv[3:6])
python_libdir_first()
config = TritonConfig(model_repository=repo, http_address="127.0.0.1", http_port=http, grpc_address="127.0.0.1", grpc_port=grpc,
                      metrics_address="127.0.0.1", metrics_port=metrics, log_file=tmp / "triton.log")
with Triton(config=config, workspace=tmp / "workspace"):
    print("ready", flush=True)
    sys.stdin.read()  # until the test closes our stdin
"""


def test_the_repository_ensemble_serves_the_same_masks_on_a_real_triton(engines, local, tmp_path):
    """The ensemble, its Python pre/post-processing and its config run on PyTriton's bundled
    tritonserver; only the engine's backend is stood in (by a Python model running the same ONNX)."""
    repo = tmp_path / "repo"
    export_triton(engines["onnxruntime"], repo)
    config = repo / "fcn_engine" / "config.pbtxt"
    config.write_text(config.read_text().replace('platform: "onnxruntime_onnx"', 'backend: "python"'))
    (repo / "fcn_engine" / "1" / "model.py").write_text(STAND_IN_ENGINE)
    http, grpc_port, metrics = free_ports(3)
    server = subprocess.Popen([sys.executable, "-c", TRITON_ON_A_REPOSITORY, str(repo), str(tmp_path), str(http), str(grpc_port), str(metrics)],
                              stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)  # fmt: skip
    try:
        lines = []
        while not lines or lines[-1].strip() != "ready":  # tritonserver's own lines (e.g. no NVML here) come first
            line = server.stdout.readline()
            assert line, "Triton exited before it was ready:\n" + "".join(lines)
            lines.append(line)
        with TritonModel(f"127.0.0.1:{grpc_port}") as ensemble:
            assert (ensemble.backend, ensemble.engine) == ("onnxruntime", engines["onnxruntime"].name)
            images = [scene(300 + i, h, w) for i, (h, w) in enumerate(ODD_SIZES)]
            for image, mask in zip(images, ensemble.segment(images, in_flight=4)):
                np.testing.assert_array_equal(mask, local.predict(image))
            with pytest.raises(FcnDeployError, match="larger than this server accepts"):
                ensemble.infer(np.zeros((4 * MAX_SIDE + 1, 8, 3), np.uint8))
            assert ensemble.client.is_model_ready("fcn")
    finally:
        server.stdin.close()
        try:
            server.wait(timeout=60)
        except subprocess.TimeoutExpired:
            server.kill()
            server.wait()
