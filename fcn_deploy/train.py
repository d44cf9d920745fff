"""Training and evaluation.

``train(config)`` runs epochs of AdamW training (warm-up, then cosine decay) reporting progress (loss, lr) to a listener,
evaluates on the validation split after every epoch, keeps the best checkpoint at ``config.out``
and the latest at ``<out>.last.pt`` (both written atomically), and resumes from either.  Ctrl-C
stops between steps and leaves both files as they were after the last completed epoch.
"""

from __future__ import annotations

import math
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F

from . import models
from .checkpoint import load_checkpoint, save_checkpoint
from .data import VOID, DataSource, open_dataset, preprocess
from .data.training import TrainingView
from .errors import FcnDeployError
from .events import SILENT, Listener
from .fileio import ensure_writable_dir
from .meta import ModelMeta
from .metrics import ConfusionMeter, Scores


@dataclass
class TrainConfig:
    out: Path
    data: str = "synthetic"
    arch: str = "fcn8s-resnet18"
    arch_kwargs: dict[str, Any] = field(default_factory=dict)
    epochs: int = 5
    #: Total optimisation steps; overrides ``epochs`` when set (an epoch is then ``steps/epochs``).
    steps: int | None = None
    batch_size: int = 16
    lr: float = 3e-3
    weight_decay: float = 1e-4
    img_size: int = 128
    #: Synthetic only: scenes per epoch and in the held-out validation split.
    train_count: int = 4000
    val_count: int = 96
    val_size: int = 192
    seed: int = 0
    resume: Path | None = None
    #: Initialise from these weights (an fcn-deploy checkpoint), e.g. after ``import``.
    init_from: Path | None = None
    #: "auto" trains on CUDA when torch sees a GPU, else on the CPU.
    device: str = "auto"


def last_path(out: Path) -> Path:
    return out.with_name(out.stem + ".last" + out.suffix)


@torch.no_grad()
def evaluate(
    model: torch.nn.Module,
    source: DataSource,
    mean,
    std,
    num_classes: int,
    batch_size: int = 8,
    on_batch: Callable[[int], None] | None = None,
    device: torch.device | str = "cpu",
) -> Scores:
    """The paper's scores over a whole split (one confusion matrix, void ignored)."""
    model.eval()
    meter = ConfusionMeter(num_classes)
    dataset = source.dataset
    pending: list[tuple[np.ndarray, np.ndarray]] = []

    def flush() -> None:
        images = np.stack([p[0] for p in pending])
        logits = model(torch.from_numpy(preprocess(images, mean, std)).to(device))
        for (_, label), pred in zip(pending, logits.argmax(1).cpu().numpy()):
            meter.update(label, pred)
        if on_batch:
            on_batch(len(pending))
        pending.clear()

    for index in range(len(dataset)):  # type: ignore[arg-type]
        image, label = dataset[index]  # type: ignore[index]
        if pending and (pending[0][0].shape != image.shape or len(pending) == batch_size):
            flush()
        pending.append((image, label))
    if pending:
        flush()
    return meter.scores()


def _lr_at(step: int, total: int, base: float, warmup: int) -> float:
    if step < warmup:
        return base * (step + 1) / warmup
    progress = (step - warmup) / max(1, total - warmup)
    return base * 0.5 * (1 + math.cos(math.pi * min(1.0, progress)))


def train(config: TrainConfig, *, listener: Listener = SILENT) -> dict[str, Any]:
    """Train per ``config``; return a summary (best metrics, paths, timing).  Progress (loss, lr,
    it/s) and one note per epoch go to ``listener``."""
    torch.manual_seed(config.seed)
    out = Path(config.out)
    ensure_writable_dir(out.parent)
    train_src = open_dataset(config.data, "train", size=config.img_size, length=config.train_count)
    val_src = open_dataset(config.data, "val", size=config.val_size, length=config.val_count)
    spec = models.spec(config.arch)
    num_classes = len(train_src.class_names)

    state: dict[str, Any] = {"epoch": 0, "step": 0, "best_miou": -1.0, "history": []}
    resume = load_checkpoint(config.resume) if config.resume else None
    if resume is not None:
        meta = resume.meta
        if meta.num_classes != num_classes:
            raise FcnDeployError(f"{config.resume}: checkpoint has {meta.num_classes} classes, dataset {config.data} has {num_classes}")
        model = resume.build_model(eval_mode=False)
        state.update(resume.train_state or {})
    else:
        meta = ModelMeta(
            arch=config.arch,
            num_classes=num_classes,
            class_names=train_src.class_names,
            palette=train_src.palette,
            min_size=spec.min_size,
            train_size=config.img_size,
            arch_kwargs=dict(config.arch_kwargs),
        )
        model = models.build(config.arch, num_classes, **config.arch_kwargs)
        if config.init_from:
            init = load_checkpoint(config.init_from)
            if init.meta.arch != config.arch:
                raise FcnDeployError(f"{config.init_from}: is a {init.meta.arch} checkpoint, not {config.arch}")
            if init.meta.num_classes != num_classes:
                raise FcnDeployError(
                    f"{config.init_from}: checkpoint has {init.meta.num_classes} classes, dataset {config.data} has "
                    f"{num_classes}; import it with {num_classes} classes",
                    options=("init",),
                )
            model = init.build_model(eval_mode=False)
            meta.arch_kwargs = dict(init.meta.arch_kwargs)

    device = torch.device(
        "cuda" if config.device == "auto" and torch.cuda.is_available() else "cpu" if config.device == "auto" else config.device
    )
    model = model.to(device)
    view = TrainingView(train_src.dataset, config.img_size, meta.mean, meta.std, seed=config.seed)
    steps_per_epoch = max(1, len(view) // config.batch_size)
    if config.steps:
        steps_per_epoch = max(1, math.ceil(config.steps / max(1, config.epochs)))
        total_steps = config.steps
    else:
        total_steps = steps_per_epoch * config.epochs
    params = [p for p in model.parameters() if p.requires_grad]
    optimizer = torch.optim.AdamW(params, lr=config.lr, weight_decay=config.weight_decay)
    if resume is not None and resume.train_state and "optimizer" in resume.train_state:
        optimizer.load_state_dict(resume.train_state["optimizer"])
    warmup = min(100, total_steps // 10)
    has_aux = getattr(model, "aux_classifier", None) is not None

    listener.note(
        f"training {config.arch} on {train_src.name} ({len(view)} samples, crop {config.img_size}), "
        f"{total_steps} steps of batch {config.batch_size}, validating on {val_src.name}"
    )
    started = time.perf_counter()
    step = int(state["step"])
    try:
        listener.start("train", total=total_steps, description="train", unit="steps")
        listener.advance("train", step)
        while step < total_steps:
            epoch = int(state["epoch"])
            view.epoch = epoch
            order = torch.randperm(len(view), generator=torch.Generator().manual_seed(config.seed * 1000 + epoch))
            model.train()
            smoothed = None
            epoch_end = min(total_steps, (epoch + 1) * steps_per_epoch)
            batch_index = 0
            while step < epoch_end:
                start = batch_index * config.batch_size
                ids = order[torch.arange(start, start + config.batch_size) % len(view)]
                batch_index += 1
                x, y = zip(*(view[int(i)] for i in ids))
                images, labels = torch.stack(x).to(device), torch.stack(y).to(device)
                lr = _lr_at(step, total_steps, config.lr, warmup)
                for group in optimizer.param_groups:
                    group["lr"] = lr
                if has_aux:
                    out_main, out_aux = model.forward_with_aux(images)
                    loss = F.cross_entropy(out_main, labels, ignore_index=VOID) + 0.5 * F.cross_entropy(out_aux, labels, ignore_index=VOID)
                else:
                    loss = F.cross_entropy(model(images), labels, ignore_index=VOID)
                optimizer.zero_grad(set_to_none=True)
                loss.backward()
                optimizer.step()
                step += 1
                value = loss.item()
                if not math.isfinite(value):
                    raise FcnDeployError(f"training diverged at step {step} (loss {value}); lower the learning rate", options=("lr",))
                smoothed = value if smoothed is None else 0.9 * smoothed + 0.1 * value
                listener.advance("train", 1, loss=smoothed, lr=lr)
            scores = evaluate(model, val_src, meta.mean, meta.std, num_classes, device=device)
            state["epoch"] = epoch + 1
            state["step"] = step
            record = {"epoch": epoch + 1, "step": step, "loss": smoothed, **scores.to_dict()}
            state["history"] = [*state.get("history", []), record]
            improved = scores.mean_iu > float(state["best_miou"])
            if improved:
                state["best_miou"] = scores.mean_iu
                meta.metrics = {"split": val_src.name, "epoch": epoch + 1, **scores.to_dict()}
                save_checkpoint(out, model, meta)
            train_state = {**state, "optimizer": optimizer.state_dict()}
            save_checkpoint(last_path(out), model, meta, train_state=train_state)
            listener.note(
                f"epoch {epoch + 1}: loss {smoothed:.4f}  mean IU {scores.mean_iu:.4f}  "
                f"pixel acc {scores.pixel_accuracy:.4f}" + ("  best, saved" if improved else ""),
                level="success" if improved else "info",
            )
        listener.finish("train")
    except KeyboardInterrupt:
        listener.finish("train")
        if last_path(out).exists():
            listener.note(f"interrupted at step {step}; best checkpoint {out} and last {last_path(out)} are intact "
                          f"(resume from {last_path(out)})", level="warning")  # fmt: skip
        else:
            listener.note(f"interrupted at step {step}, before the first epoch ended; no checkpoint was written", level="warning")
        raise
    elapsed = time.perf_counter() - started
    if not state["history"]:
        raise FcnDeployError(f"no training steps ran (epochs={config.epochs}, steps={config.steps}); nothing was written")
    return {
        "checkpoint": str(out),
        "last": str(last_path(out)),
        "best_mean_iu": float(state["best_miou"]),
        "steps": step,
        "seconds": elapsed,
        "history": state["history"],
    }
