"""Training (checkpoints, history, learning, resume, Ctrl-C) and the `eval` / `train` commands."""

from __future__ import annotations

import json
import re
import shutil
from pathlib import Path

import numpy as np
import pytest
import torch

import fcn_deploy.train as train_module
from fcn_deploy import models
from fcn_deploy.checkpoint import load_checkpoint, save_checkpoint
from fcn_deploy.cli import main
from fcn_deploy.data import SYNTHETIC_CLASSES, open_dataset, preprocess
from fcn_deploy.errors import FcnDeployError
from fcn_deploy.meta import ModelMeta, default_palette
from fcn_deploy.metrics import VOID
from fcn_deploy.train import TrainConfig, last_path, train

TINY = {"width": 0.125}
STEPS, EPOCHS = 20, 2  # 10 steps per epoch
VAL_SIZE, VAL_COUNT = 64, 8


def _config(out: Path, **overrides) -> TrainConfig:
    fields = dict(
        out=out, arch="fcn8s-resnet18", arch_kwargs=dict(TINY), epochs=EPOCHS, steps=STEPS, batch_size=8, lr=5e-3,
        img_size=64, train_count=64, val_count=VAL_COUNT, val_size=VAL_SIZE, device="cpu",
    )  # fmt: skip
    fields.update(overrides)
    return TrainConfig(**fields)


def _temp_files(folder: Path) -> list[Path]:
    return sorted(folder.glob(".*.tmp*"))


@pytest.fixture(scope="module")
def full_run(tmp_path_factory):
    out = tmp_path_factory.mktemp("full") / "tiny.pt"
    result = train(_config(out))
    return out, result


class _InterruptAt:
    """Wraps ``_lr_at`` (called once per optimisation step) to record the steps and raise Ctrl-C at one."""

    def __init__(self, real, at: int | None):
        self.real, self.at, self.steps = real, at, []

    def __call__(self, step, *args):
        if step == self.at:
            raise KeyboardInterrupt
        self.steps.append(step)
        return self.real(step, *args)


@pytest.fixture(scope="module")
def interrupted_run(tmp_path_factory):
    """The same run as ``full_run``, stopped by Ctrl-C at the first step of epoch 2."""
    out = tmp_path_factory.mktemp("interrupted") / "tiny.pt"
    hook = _InterruptAt(train_module._lr_at, at=STEPS // EPOCHS)
    with pytest.MonkeyPatch.context() as mp:
        mp.setattr(train_module, "_lr_at", hook)
        with pytest.raises(KeyboardInterrupt):
            train(_config(out))
    assert hook.steps == list(range(STEPS // EPOCHS))
    return out


def _val_predictions(model: torch.nn.Module, mean, std):
    source = open_dataset("synthetic", "val", size=VAL_SIZE, length=VAL_COUNT)
    labels, preds = [], []
    with torch.no_grad():
        for i in range(len(source.dataset)):
            image, label = source.dataset[i]
            logits = model(torch.from_numpy(preprocess(image, mean, std)))
            labels.append(label)
            preds.append(logits.argmax(1)[0].numpy())
    return np.stack(labels), np.stack(preds)


def _mean_iu(labels: np.ndarray, preds: np.ndarray, num_classes: int) -> float:
    """Mean IU by set counting over the whole split (void ignored; absent classes left out)."""
    valid = labels != VOID
    ious = []
    for c in range(num_classes):
        g, p = (labels == c) & valid, (preds == c) & valid
        union = np.count_nonzero(g | p)
        if union:
            ious.append(np.count_nonzero(g & p) / union)
    return float(np.mean(ious))


# --------------------------------------------------------------------------- a whole run


def test_train_writes_best_and_last_checkpoints_and_history(full_run):
    out, result = full_run
    last = last_path(out)
    assert last == out.with_name("tiny.last.pt")
    assert result["checkpoint"] == str(out) and result["last"] == str(last)
    assert result["steps"] == STEPS
    history = result["history"]
    assert [h["epoch"] for h in history] == [1, 2] and [h["step"] for h in history] == [10, 20]
    for record in history:
        assert {"loss", "pixel_accuracy", "mean_accuracy", "mean_iu", "fw_iu", "per_class_iu"} <= set(record)
        assert len(record["per_class_iu"]) == len(SYNTHETIC_CLASSES)
    best_epoch = max(history, key=lambda h: h["mean_iu"])
    assert result["best_mean_iu"] == pytest.approx(best_epoch["mean_iu"])

    best = load_checkpoint(out)
    assert best.train_state is None
    meta = best.meta
    assert meta.arch == "fcn8s-resnet18" and meta.arch_kwargs == TINY and meta.train_size == 64
    assert meta.num_classes == 5 and meta.class_names == list(SYNTHETIC_CLASSES)
    assert meta.metrics["split"] == "synthetic:val" and meta.metrics["epoch"] == best_epoch["epoch"]
    assert meta.metrics["mean_iu"] == pytest.approx(best_epoch["mean_iu"])
    assert meta.metrics["per_class_iu"] == pytest.approx(best_epoch["per_class_iu"], nan_ok=True)

    resume_state = load_checkpoint(last).train_state
    assert resume_state["epoch"] == EPOCHS and resume_state["step"] == STEPS
    assert resume_state["best_miou"] == pytest.approx(best_epoch["mean_iu"])
    assert len(resume_state["history"]) == 2 and "optimizer" in resume_state
    assert _temp_files(out.parent) == []


def test_checkpoint_metrics_are_reproduced_by_independent_scoring(full_run):
    out, _ = full_run
    ckpt = load_checkpoint(out)
    labels, preds = _val_predictions(ckpt.build_model(), ckpt.meta.mean, ckpt.meta.std)
    assert ckpt.meta.metrics["mean_iu"] == pytest.approx(_mean_iu(labels, preds, 5), abs=1e-9)
    assert ckpt.meta.metrics["pixel_accuracy"] == pytest.approx(np.mean(labels == preds), abs=1e-9)


def test_training_learns(full_run):
    out, result = full_run
    history = result["history"]
    assert history[-1]["loss"] < 0.9 * history[0]["loss"]
    # better than predicting "background" everywhere on the held-out split
    source = open_dataset("synthetic", "val", size=VAL_SIZE, length=VAL_COUNT)
    labels = np.stack([source.dataset[i][1] for i in range(VAL_COUNT)])
    trivial = _mean_iu(labels, np.zeros_like(labels), 5)
    assert result["best_mean_iu"] > trivial + 0.05, (result["best_mean_iu"], trivial)


# --------------------------------------------------------------------------- Ctrl-C and resume


def test_ctrl_c_leaves_the_last_good_checkpoints(interrupted_run):
    out = interrupted_run
    best, last = load_checkpoint(out), load_checkpoint(last_path(out))
    assert best.meta.metrics["epoch"] == 1
    assert last.train_state["epoch"] == 1 and last.train_state["step"] == STEPS // EPOCHS
    assert [h["epoch"] for h in last.train_state["history"]] == [1]
    best.build_model(), last.build_model()  # both loadable
    assert _temp_files(out.parent) == []


def test_ctrl_c_during_a_checkpoint_write_keeps_the_previous_files(tmp_path, monkeypatch):
    out = tmp_path / "tiny.pt"
    real_save, calls = torch.save, []

    def save(obj, f, *args, **kwargs):
        calls.append(f)
        if len(calls) == 3:  # the first save of epoch 2 (epoch 1 wrote best, then last)
            real_save({"half": torch.zeros(3)}, f)
            raise KeyboardInterrupt
        return real_save(obj, f, *args, **kwargs)

    monkeypatch.setattr(torch, "save", save)
    with pytest.raises(KeyboardInterrupt):
        train(_config(out))
    monkeypatch.undo()
    assert sorted(p.name for p in tmp_path.iterdir()) == ["tiny.last.pt", "tiny.pt"]  # no temp files
    assert load_checkpoint(out).meta.metrics["epoch"] == 1
    assert load_checkpoint(last_path(out)).train_state["step"] == STEPS // EPOCHS


def test_resume_continues_from_the_saved_step(interrupted_run, full_run, tmp_path, monkeypatch):
    out = tmp_path / "tiny.pt"
    shutil.copy(interrupted_run, out)
    shutil.copy(last_path(interrupted_run), last_path(out))
    before = load_checkpoint(last_path(out)).train_state
    hook = _InterruptAt(train_module._lr_at, at=None)
    monkeypatch.setattr(train_module, "_lr_at", hook)
    result = train(_config(out, resume=last_path(out)))
    assert hook.steps == list(range(STEPS // EPOCHS, STEPS))  # only epoch 2's steps ran
    assert result["steps"] == STEPS
    assert [h["epoch"] for h in result["history"]] == [1, 2]
    assert result["history"][0] == before["history"][0]
    after = load_checkpoint(last_path(out)).train_state
    assert after["epoch"] == EPOCHS and after["step"] == STEPS
    # and it lands where the uninterrupted run did
    resumed = load_checkpoint(last_path(out)).state_dict
    reference = load_checkpoint(last_path(full_run[0])).state_dict
    for key, value in reference.items():
        torch.testing.assert_close(resumed[key], value, rtol=1e-4, atol=1e-5, msg=key)


def test_resume_refuses_a_checkpoint_with_other_classes(tmp_path):
    other = tmp_path / "three.pt"
    meta = ModelMeta("fcn8s-resnet18", 3, ["a", "b", "c"], default_palette(3), arch_kwargs=dict(TINY))
    save_checkpoint(other, models.build("fcn8s-resnet18", 3, **TINY), meta, train_state={"epoch": 1, "step": 5})
    out = tmp_path / "new.pt"
    with pytest.raises(FcnDeployError) as err:
        train(_config(out, resume=other))
    assert str(err.value) == f"{other}: checkpoint has 3 classes, dataset synthetic has 5"
    assert not out.exists() and not last_path(out).exists()


def test_init_from_refuses_another_architecture(tmp_path):
    init = tmp_path / "init.pt"
    meta = ModelMeta("fcn8s-resnet18", 5, list(SYNTHETIC_CLASSES), default_palette(5), arch_kwargs=dict(TINY))
    save_checkpoint(init, models.build("fcn8s-resnet18", 5, **TINY), meta)
    with pytest.raises(FcnDeployError) as err:
        train(_config(tmp_path / "o.pt", arch="fcn32s-vgg16", init_from=init))
    assert str(err.value) == f"{init}: is a fcn8s-resnet18 checkpoint, not fcn32s-vgg16"


def test_init_from_refuses_a_checkpoint_with_other_classes(tmp_path):
    """`import` makes 21-class checkpoints by default; starting a 5-class run from one must not
    silently train (and save) a 21-output model labelled as 5 classes."""
    init = tmp_path / "init7.pt"
    meta = ModelMeta("fcn8s-resnet18", 7, list("abcdefg"), default_palette(7), arch_kwargs=dict(TINY))
    save_checkpoint(init, models.build("fcn8s-resnet18", 7, **TINY), meta)
    out = tmp_path / "o.pt"
    with pytest.raises(FcnDeployError) as err:
        train(_config(out, init_from=init, steps=1, epochs=1, val_count=1))
    assert str(init) in str(err.value)
    assert re.search(r"\b7 classes\b", str(err.value)) and "5" in str(err.value)
    assert not out.exists()


# --------------------------------------------------------------------------- CLI


def test_eval_cli_prints_the_table_and_writes_the_report(full_run, tmp_path, capsys):
    out, _ = full_run
    report = tmp_path / "scores.json"
    rc = main(["eval", str(out), "--size", str(VAL_SIZE), "--count", str(VAL_COUNT), "--report", str(report)])
    assert rc == 0, capsys.readouterr().err
    stdout = capsys.readouterr().out
    for name in SYNTHETIC_CLASSES:
        assert name in stdout
    data = json.loads(report.read_text())
    assert {"pixel_accuracy", "mean_accuracy", "mean_iu", "fw_iu", "per_class_iu"} <= set(data)
    assert len(data["per_class_iu"]) == 5
    meta = load_checkpoint(out).meta
    # the same split as training's validation: the same scores as recorded in the checkpoint
    assert data["mean_iu"] == pytest.approx(meta.metrics["mean_iu"], abs=1e-9)
    assert data["fw_iu"] == pytest.approx(meta.metrics["fw_iu"], abs=1e-9)
    assert f"mean IU {data['mean_iu']:.4f}" in stdout
    assert f"pixel acc {data['pixel_accuracy']:.4f}" in stdout
    assert f"report: {report}" in stdout


def test_eval_cli_unknown_synthetic_split_is_a_usage_error(full_run, capsys):
    out, _ = full_run
    assert main(["eval", str(out), "--split", "holdout", "--size", "32", "--count", "1"]) == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith("error: ") and "holdout" in err and "val" in err and "\n" not in err


def test_train_cli_unknown_arch_lists_the_architectures(tmp_path, capsys):
    out = tmp_path / "o.pt"
    assert main(["train", "-o", str(out), "--arch", "fcn4s-nope"]) == 2
    assert capsys.readouterr().err.strip() == (f"error: unknown architecture 'fcn4s-nope'; choose one of: {', '.join(models.names())}")
    assert not out.exists()


def test_train_cli_ctrl_c_exits_130_and_says_how_to_resume(tmp_path, capsys, monkeypatch):
    monkeypatch.setattr(train_module, "_lr_at", _InterruptAt(train_module._lr_at, at=0))
    out = tmp_path / "o.pt"
    assert main(["train", "-o", str(out), "--width", "0.125", "--steps", "2", "--batch-size", "2"]) == 130
    stdout = capsys.readouterr().out
    assert "interrupted at step 0, before the first epoch ended; no checkpoint was written" in stdout
    assert not out.exists() and not last_path(out).exists() and "--resume" not in stdout  # nothing to resume from
