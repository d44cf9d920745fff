"""Helpers shared by several test modules (test files never import each other)."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import onnx
import torch
from rich.console import Console

from fcn_deploy import models
from fcn_deploy.checkpoint import save_checkpoint
from fcn_deploy.meta import ModelMeta
from fcn_deploy.validation import Thresholds

#: The console the tests hand to commands that print: nothing reaches the terminal.
QUIET = Console(quiet=True)

#: The report tests' thresholds: 99 % pooled agreement, a 95 % floor per size, no confident-pixel gate.
THRESHOLDS = Thresholds(pixel_agreement=0.99, size_floor=0.95, confident_agreement=None, confidence_margin=0.5)


def perturbed_copy(src: Path, dst: Path, pick, edit) -> Path:
    """A copy of the ONNX ``src`` at ``dst`` with the first initializer ``pick`` accepts replaced by ``edit`` of it."""
    model = onnx.load(str(src))
    init = next(i for i in model.graph.initializer if pick(i))
    init.CopyFrom(onnx.numpy_helper.from_array(edit(onnx.numpy_helper.to_array(init)), init.name))
    onnx.save(model, str(dst))
    return dst


def random_checkpoint(path: Path, arch: str, arch_kwargs: dict, num_classes: int = 4) -> Path:
    """A randomly initialised model with non-zero score layers (the paper zero-initialises them,
    which would make every logit 0 and every comparison trivially pass)."""
    torch.manual_seed(0)
    model = models.build(arch, num_classes, **arch_kwargs)
    with torch.no_grad():
        for name, param in model.named_parameters():
            if "score" in name or name.startswith("classifier.4"):
                param.normal_(0, 0.5)
    meta = ModelMeta(
        arch=arch, num_classes=num_classes, class_names=[f"c{i}" for i in range(num_classes)],
        palette=[[i * 60, 0, 0] for i in range(num_classes)], min_size=32, train_size=64, arch_kwargs=arch_kwargs,
    )  # fmt: skip
    return save_checkpoint(path, model.eval(), meta)


def conv_onnx(path: Path, kernels: tuple[int, ...] = (5,), num_classes: int = 3, seed: int = 0) -> Path:
    """A cheap fully convolutional "model": random ``k x k`` convolutions with zero padding (ReLU between),
    with fcn-deploy metadata.  Its receptive field is known exactly: a cut edge reaches ``sum(k // 2)`` pixels."""
    import numpy as np
    from onnx import TensorProto, helper, numpy_helper

    from fcn_deploy.meta import write_onnx_meta

    rng = np.random.default_rng(seed)
    nodes, inits, channels, name = [], [], 3, "image"
    for index, kernel in enumerate(kernels):
        out_channels = num_classes if index == len(kernels) - 1 else 8
        weight = rng.normal(0, 1, (out_channels, channels, kernel, kernel)).astype(np.float32)
        inits.append(numpy_helper.from_array(weight, f"w{index}"))
        out = "logits" if index == len(kernels) - 1 else f"conv{index}"
        nodes.append(helper.make_node("Conv", [name, f"w{index}"], [out], pads=[kernel // 2] * 4))
        if out != "logits":
            nodes.append(helper.make_node("Relu", [out], [f"relu{index}"]))
            out = f"relu{index}"
        name, channels = out, out_channels
    graph = helper.make_graph(
        nodes, "conv", [helper.make_tensor_value_info("image", TensorProto.FLOAT, ["batch", 3, "height", "width"])],
        [helper.make_tensor_value_info("logits", TensorProto.FLOAT, ["batch", num_classes, "height", "width"])], inits,
    )  # fmt: skip
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    meta = ModelMeta(arch="conv", num_classes=num_classes, class_names=[f"c{i}" for i in range(num_classes)],
                     palette=[[i * 80, 0, 0] for i in range(num_classes)], min_size=32, train_size=64)  # fmt: skip
    write_onnx_meta(model, meta, {"fcn_deploy.precision": "fp32"})
    onnx.save(model, str(path))
    return path


def mosaic_scene(height: int, width: int, cell: int = 128, seed: int = 3):
    """A large synthetic scene as a mosaic of ``cell``-sized :func:`fcn_deploy.data.make_scene` scenes
    (one scene of 2048x1536 takes minutes to draw: each object paints a full-size texture)."""
    import numpy as np

    from fcn_deploy.data import make_scene

    rows, cols = -(-height // cell), -(-width // cell)
    image = np.concatenate(
        [np.concatenate([make_scene(seed, r * cols + c, cell, cell)[0] for c in range(cols)], axis=1) for r in range(rows)], axis=0
    )
    return image[:height, :width]


def independent_scores(labels: np.ndarray, predictions: np.ndarray, num_classes: int, void: int = 255) -> dict[str, float]:
    """The paper's four scores by counting sets per class (no confusion matrix): an oracle for
    ``fcn_deploy.metrics`` and for ``eval``."""
    gt, pr = np.asarray(labels).ravel().astype(int), np.asarray(predictions).ravel().astype(int)
    valid = gt != void
    gt, pr = gt[valid], pr[valid]
    ious, accs, weights = [], [], []
    for c in range(num_classes):
        g, p = gt == c, pr == c
        union = np.count_nonzero(g | p)
        ious.append(np.count_nonzero(g & p) / union if union else float("nan"))
        accs.append(np.count_nonzero(g & p) / np.count_nonzero(g) if g.any() else float("nan"))
        weights.append(np.count_nonzero(g))
    return {
        "pixel_accuracy": float(np.mean(gt == pr)),
        "mean_accuracy": float(np.nanmean(accs)),
        "mean_iu": float(np.nanmean(ious)),
        "fw_iu": float(np.sum(np.array(weights) * np.nan_to_num(ious)) / np.sum(weights)),
        "per_class_iu": [float(iou) for iou in ious],
    }


def build_all_precisions(tiny_onnx: Path, out_dir: Path, **options) -> dict[str, Path]:
    """FP32, FP16 and INT8 engines of the tiny model in ``out_dir`` (``options`` go to BuildOptions)."""
    import shutil

    from fcn_deploy.engines import BuildOptions, build_engine

    src = out_dir / "tiny.onnx"
    shutil.copy(tiny_onnx, src)
    engines = {}
    for precision in ("fp32", "fp16", "int8"):
        manifest = build_engine(src, None, BuildOptions(precision=precision, **options))
        engines[precision] = out_dir / manifest["engine"]
    return engines


class LoopbackNamespace:
    """A network namespace with only loopback (``unshare -n``, then ``ip link set lo up``; needs root),
    held open by one ``sleep`` process, that commands join with ``nsenter``.  Ray 2.60 binds the
    machine's interface address even when told 127.0.0.1; inside this namespace every Ray node is
    127.0.0.1, so a test's Ray traffic stays on loopback.  :meth:`stop` ends every process in the
    namespace by its pid (Ray's daemons included), leaving any other Ray on the machine alone."""

    def __init__(self, folder: Path):
        import os
        import shutil
        import subprocess
        import sys
        import time

        self.folder = folder
        if not (shutil.which("unshare") and shutil.which("nsenter") and shutil.which("ip")):
            raise OSError("unshare, nsenter or ip is missing")
        self.holder = subprocess.Popen(["unshare", "-n", "sh", "-c", "ip link set lo up && exec sleep 100000"],
                                       stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)  # fmt: skip
        ours = os.readlink("/proc/self/ns/net")
        deadline = time.monotonic() + 10
        while time.monotonic() < deadline:
            if self.holder.poll() is not None:
                raise OSError(f"unshare -n failed: {self.holder.stderr.read().decode().strip()}")
            try:
                theirs = os.readlink(f"/proc/{self.holder.pid}/ns/net")
                comm = Path(f"/proc/{self.holder.pid}/comm").read_text().strip()
            except OSError:
                theirs, comm = ours, ""
            if theirs != ours and comm == "sleep":
                break
            time.sleep(0.02)
        else:
            self.stop()
            raise OSError("the loopback namespace did not come up")
        self.ns = theirs
        home = folder / "home"
        home.mkdir(parents=True, exist_ok=True)
        bindir = str(Path(sys.executable).parent)
        repo = str(Path(__file__).resolve().parents[1])
        self.env = {
            **os.environ, "HOME": str(home), "RAY_TMPDIR": str(folder), "RAY_USAGE_STATS_ENABLED": "0", "RAY_AUTH_MODE": "disabled",
            "PATH": os.pathsep.join([bindir, os.environ.get("PATH", "")]), "RAY_BACKEND_LOG_LEVEL": "error",
            "PYTHONPATH": os.pathsep.join(filter(None, [repo, os.environ.get("PYTHONPATH")])),
            "FCN_DEPLOY_ENGINE_CACHE": str(folder / "engines"), "COLUMNS": "200",
        }  # fmt: skip

    def command(self, args: list[str]) -> list[str]:
        return ["nsenter", f"--net=/proc/{self.holder.pid}/ns/net", *args]

    def run(self, args: list[str], timeout: float = 120, **kwargs):
        import subprocess

        return subprocess.run(self.command(args), check=False, env=self.env, capture_output=True, text=True, timeout=timeout, **kwargs)

    def popen(self, args: list[str], **kwargs):
        import subprocess

        return subprocess.Popen(self.command(args), env=self.env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, **kwargs)

    def pids(self) -> list[int]:
        """Every process in the namespace, but the holder."""
        import os

        found = []
        for entry in Path("/proc").iterdir():
            if entry.name.isdigit() and int(entry.name) != self.holder.pid:
                try:
                    if os.readlink(entry / "ns" / "net") == self.ns:
                        found.append(int(entry.name))
                except OSError:
                    continue
        return found

    def stop(self) -> None:
        import contextlib
        import os
        import signal
        import time

        pids = self.pids() if hasattr(self, "ns") else []
        for sig in (signal.SIGTERM, signal.SIGKILL):
            for pid in pids:
                with contextlib.suppress(ProcessLookupError):
                    os.kill(pid, sig)
            deadline = time.monotonic() + (2 if sig == signal.SIGTERM else 5)
            while pids and time.monotonic() < deadline:
                pids = [pid for pid in pids if Path(f"/proc/{pid}").exists() and _not_zombie(pid)]
                time.sleep(0.05)
        self.holder.kill()
        self.holder.wait()


def _not_zombie(pid: int) -> bool:
    try:
        return Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0] != "Z"
    except (OSError, IndexError):
        return False


def ray_cli_command(args: list[str]) -> list[str]:
    """``ray ARGS`` with this interpreter's Ray."""
    import sys

    return [str(Path(sys.executable).parent / "ray"), *args]


def fcn_deploy_command(args: list[str]) -> list[str]:
    import sys

    return [sys.executable, "-m", "fcn_deploy.cli", *args]


# ImageNet normalisation, written out here (not read from fcn_deploy): the oracles' own.
IMAGENET_MEAN_INDEPENDENT, IMAGENET_STD_INDEPENDENT = np.array([0.485, 0.456, 0.406]), np.array([0.229, 0.224, 0.225])


def independent_input(rgb: np.ndarray) -> np.ndarray:
    """``H x W x 3`` uint8 RGB -> ``1 x 3 x H x W`` float32, in float64 arithmetic, channel by channel."""
    mean, std = IMAGENET_MEAN_INDEPENDENT, IMAGENET_STD_INDEPENDENT
    planes = [(rgb[..., c].astype(np.float64) / 255.0 - mean[c]) / std[c] for c in range(3)]
    return np.stack(planes)[None].astype(np.float32)


def direct_mask(onnx_path, rgb: np.ndarray) -> np.ndarray:
    """The mask of a bare ONNX Runtime session on independently normalised input: an oracle for
    ``infer`` and ``serve`` (first maximum wins, as numpy's argmax)."""
    import onnxruntime as ort

    session = ort.InferenceSession(str(onnx_path), providers=["CPUExecutionProvider"])
    (image,) = session.get_inputs()
    outputs = session.run(None, {image.name: independent_input(rgb)})
    logits = next(o for o in outputs if o.ndim == 4)
    return logits[0].argmax(axis=0)
