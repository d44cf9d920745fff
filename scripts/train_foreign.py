"""Train a torchvision mobile segmentation model on the synthetic scenes and export it as a foreign ONNX.

The INT8 repair needs a model whose plain INT8 fails validation, and random weights prove nothing
(their near-tied logits flip under any rounding), so the test suite ships one trained here: an
LR-ASPP MobileNetV3 (``--width`` scales the backbone's channels) trained for a few minutes on the
synthetic scenes, saved as a float16 state dict (small enough to ship) with what rebuilds it.

    python scripts/train_foreign.py --arch lraspp --width 0.5 --steps 900 -o tests/data/lraspp-w050.pt
    python scripts/train_foreign.py --export tests/data/lraspp-w050.pt -o /tmp/lraspp.onnx

The ``--export`` form writes the ONNX exactly as someone outside this project would (torch's
exporter, input ``input``, output ``out``), for ``fcn-deploy adopt``.
"""

from __future__ import annotations

import argparse
import math
import time
from pathlib import Path

import torch
import torch.nn.functional as F

ARCHS = ("lraspp", "deeplabv3")


class Logits(torch.nn.Module):
    """torchvision's segmentation models return ``{"out": logits}``; exporters want a tensor."""

    def __init__(self, model: torch.nn.Module):
        super().__init__()
        self.model = model

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.model(x)["out"]


def build(arch: str, width: float, num_classes: int) -> torch.nn.Module:
    from torchvision.models import mobilenet_v3_large
    from torchvision.models.segmentation.deeplabv3 import _deeplabv3_mobilenetv3
    from torchvision.models.segmentation.lraspp import _lraspp_mobilenetv3

    backbone = mobilenet_v3_large(weights=None, dilated=True, width_mult=width)
    if arch == "lraspp":
        return _lraspp_mobilenetv3(backbone, num_classes)
    return _deeplabv3_mobilenetv3(backbone, num_classes, aux=False)


def train(
    arch: str,
    width: float,
    steps: int,
    out: Path,
    batch: int = 16,
    crop: int = 128,
    lr: float = 3e-3,
    seed: int = 0,
    max_minutes: float | None = None,
    init: Path | None = None,
    threads: int = 2,
) -> None:
    """``max_minutes`` bounds the wall time on a shared machine: the schedule then runs on whichever of
    steps or time is further along, so the learning rate still anneals to zero when time runs out."""
    from fcn_deploy.data import open_dataset
    from fcn_deploy.data.training import TrainingView
    from fcn_deploy.meta import IMAGENET_MEAN, IMAGENET_STD
    from fcn_deploy.train import evaluate

    torch.manual_seed(seed)
    torch.set_num_threads(threads)
    source = open_dataset("synthetic", "train", size=crop, length=4000)
    held_out = open_dataset("synthetic", "val", size=192, length=96)
    num_classes = len(source.class_names)
    model = build(arch, width, num_classes)
    if init is not None:  # continue a run (same arch and width)
        model.load_state_dict(
            {k: v.float() if v.is_floating_point() else v for k, v in torch.load(init, weights_only=True)["state_dict"].items()}
        )
    for module in model.modules():  # torchvision's 0.01 suits ImageNet-length runs; a few hundred steps need faster stats
        if isinstance(module, torch.nn.BatchNorm2d):
            module.momentum = 0.1
    view = TrainingView(source.dataset, crop, IMAGENET_MEAN, IMAGENET_STD, seed=seed)
    optimizer = torch.optim.AdamW(model.parameters(), lr=lr, weight_decay=1e-4)
    warmup = min(100, steps // 10)
    started = time.perf_counter()
    model.train()
    budget_s = max_minutes * 60 if max_minutes else None
    done = 0
    for step in range(steps):
        progress = max(step / steps, (time.perf_counter() - started) / budget_s if budget_s else 0.0)
        if progress >= 1.0:
            break
        done = step + 1
        ids = torch.randint(0, len(view), (batch,), generator=torch.Generator().manual_seed(seed * 100003 + step))
        x, y = zip(*(view[int(i)] for i in ids))
        after_warmup = (progress - warmup / steps) / max(1e-9, 1 - warmup / steps)
        scale = (step + 1) / warmup if step < warmup else 0.5 * (1 + math.cos(math.pi * min(1.0, max(0.0, after_warmup))))
        for group in optimizer.param_groups:
            group["lr"] = lr * scale
        loss = F.cross_entropy(model(torch.stack(x))["out"], torch.stack(y), ignore_index=255)
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()
        if step % 50 == 0 or step == steps - 1:
            print(f"step {step + 1}/{steps} loss {loss.item():.4f} ({time.perf_counter() - started:.0f} s)", flush=True)
    recalibrate_batchnorm(model, view, batch, seed)
    scores = evaluate(Logits(model), held_out, IMAGENET_MEAN, IMAGENET_STD, num_classes)
    seconds = time.perf_counter() - started
    print(f"held-out pixel acc {scores.pixel_accuracy:.4f}, mean IU {scores.mean_iu:.4f} after {done} steps, {seconds:.0f} s")
    state = {k: (v.half() if v.is_floating_point() else v) for k, v in model.state_dict().items()}
    payload = {"arch": arch, "width": width, "num_classes": num_classes, "class_names": source.class_names, "steps": done,
               "held_out": scores.to_dict(), "init": str(init) if init else None, "state_dict": state}  # fmt: skip
    out.parent.mkdir(parents=True, exist_ok=True)
    torch.save(payload, out)
    print(f"wrote {out} ({out.stat().st_size / 1e6:.1f} MB)")


@torch.no_grad()
def recalibrate_batchnorm(model: torch.nn.Module, view, batch: int, seed: int, batches: int = 24) -> None:
    """BatchNorm's running statistics measured afresh on the final weights (an exact average over
    ``batches`` training batches): the moving averages lag behind weights that moved until the last step."""
    norms = [m for m in model.modules() if isinstance(m, torch.nn.BatchNorm2d)]
    for norm in norms:
        norm.reset_running_stats()
        norm.momentum = None
    model.train()
    generator = torch.Generator().manual_seed(seed + 7)
    for _ in range(batches):
        ids = torch.randint(0, len(view), (batch,), generator=generator)
        model(torch.stack([view[int(i)][0] for i in ids]))
    model.eval()


def load(path: Path) -> tuple[torch.nn.Module, dict]:
    payload = torch.load(path, map_location="cpu", weights_only=True)
    model = build(payload["arch"], payload["width"], payload["num_classes"])
    model.load_state_dict({k: v.float() if v.is_floating_point() else v for k, v in payload["state_dict"].items()})
    return Logits(model).eval(), payload


def export(path: Path, out: Path) -> None:
    """The ONNX a user of torchvision would bring: torch's exporter, dynamic batch, height and width."""
    import contextlib
    import io
    import warnings

    import onnx

    model, _ = load(path)
    dims = {0: torch.export.Dim("batch", min=1, max=64), 2: torch.export.Dim("height", min=32, max=4096),
            3: torch.export.Dim("width", min=32, max=4096)}  # fmt: skip
    with warnings.catch_warnings(), contextlib.redirect_stdout(io.StringIO()):
        warnings.simplefilter("ignore")
        program = torch.onnx.export(model, (torch.zeros(2, 3, 128, 128),), dynamo=True, input_names=["input"], output_names=["out"],
                                    dynamic_shapes={"x": dims}, opset_version=20, report=False)  # fmt: skip
    onnx.save(program.model_proto, str(out), save_as_external_data=False)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--arch", choices=ARCHS, default="lraspp")
    parser.add_argument("--width", type=float, default=1.0)
    parser.add_argument("--steps", type=int, default=900)
    parser.add_argument("--batch", type=int, default=16)
    parser.add_argument("--crop", type=int, default=128)
    parser.add_argument("--max-minutes", type=float, help="Stop after this much training time (the schedule anneals to it).")
    parser.add_argument("--init", type=Path, help="Start from this trained state dict (same --arch and --width).")
    parser.add_argument("--threads", type=int, default=2, help="torch threads (1 is faster on an oversubscribed machine).")
    parser.add_argument("--lr", type=float, default=3e-3)
    parser.add_argument("--export", type=Path, help="Export this trained state dict to ONNX instead of training.")
    parser.add_argument("-o", "--out", type=Path, required=True)
    args = parser.parse_args()
    if args.export:
        export(args.export, args.out)
    else:
        train(
            args.arch,
            args.width,
            args.steps,
            args.out,
            batch=args.batch,
            crop=args.crop,
            lr=args.lr,
            max_minutes=args.max_minutes,
            init=args.init,
            threads=args.threads,
        )


if __name__ == "__main__":
    main()
