"""Checkpoints (round trip, safe loading, bad files, atomic writes) and `import` of torchvision weights."""

from __future__ import annotations

import json
import shutil
import socket
import urllib.error
from pathlib import Path

import numpy as np
import pytest
import torch
import torchvision
from torch import nn

from fcn_deploy import __version__, models
from fcn_deploy.checkpoint import FORMAT, Checkpoint, load_checkpoint, save_checkpoint
from fcn_deploy.cli import main
from fcn_deploy.errors import FcnDeployError
from fcn_deploy.importer import import_vgg16_classifier, import_weights
from fcn_deploy.meta import ModelMeta, default_palette, voc_class_names

TINY = {"width": 0.125}


def _tiny_meta(**overrides) -> ModelMeta:
    fields = dict(
        arch="fcn8s-resnet18", num_classes=3, class_names=["sky", "road", "car"],
        palette=[[10, 20, 30], [40, 50, 60], [70, 80, 90]], mean=[0.5, 0.4, 0.3], std=[0.2, 0.25, 0.3],
        min_size=48, train_size=96, arch_kwargs=dict(TINY), metrics={"mean_iu": 0.5, "epoch": 3},
    )  # fmt: skip
    fields.update(overrides)
    return ModelMeta(**fields)


@pytest.fixture(scope="module")
def tiny_model() -> nn.Module:
    torch.manual_seed(0)
    model = models.build("fcn8s-resnet18", 3, **TINY)
    with torch.no_grad():  # non-trivial BatchNorm statistics, so a forgotten buffer would show
        for module in model.modules():
            if isinstance(module, nn.BatchNorm2d):
                module.running_mean.uniform_(-0.1, 0.1)
                module.running_var.uniform_(0.5, 1.5)
    return model.eval()


@pytest.fixture
def scratch(tmp_path):
    """``tmp_path`` for the big (100-550 MB) weight files, removed afterwards rather than kept by pytest."""
    yield tmp_path
    shutil.rmtree(tmp_path, ignore_errors=True)


@pytest.fixture
def saved(tmp_path, tiny_model) -> Path:
    return save_checkpoint(tmp_path / "model.pt", tiny_model, _tiny_meta())


# --------------------------------------------------------------------------- checkpoints


def test_round_trip_keeps_weights_and_metadata(saved, tiny_model):
    ckpt = load_checkpoint(saved)
    assert isinstance(ckpt, Checkpoint) and ckpt.path == saved and ckpt.train_state is None
    assert ckpt.meta.to_dict() == _tiny_meta().to_dict()
    meta = ckpt.meta
    assert (meta.arch, meta.num_classes, meta.class_names) == ("fcn8s-resnet18", 3, ["sky", "road", "car"])
    assert meta.palette == [[10, 20, 30], [40, 50, 60], [70, 80, 90]]
    assert (meta.mean, meta.std) == ([0.5, 0.4, 0.3], [0.2, 0.25, 0.3])
    assert (meta.min_size, meta.train_size, meta.arch_kwargs) == (48, 96, TINY)
    assert meta.metrics == {"mean_iu": 0.5, "epoch": 3}
    assert meta.fcn_deploy_version == __version__
    reference = tiny_model.state_dict()
    assert set(ckpt.state_dict) == set(reference)
    for key, value in reference.items():
        assert torch.equal(ckpt.state_dict[key], value), key
    rebuilt = ckpt.build_model()
    assert not rebuilt.training
    x = torch.randn(2, 3, 64, 80, generator=torch.Generator().manual_seed(1))
    with torch.no_grad():
        torch.testing.assert_close(rebuilt(x), tiny_model(x), rtol=0, atol=0)


def test_train_state_round_trips(tmp_path, tiny_model):
    state = {"epoch": 2, "step": 17, "best_miou": 0.25, "history": [{"epoch": 1, "loss": 1.0}]}
    path = save_checkpoint(tmp_path / "x.last.pt", tiny_model, _tiny_meta(), train_state=state)
    assert load_checkpoint(path).train_state == state
    raw = torch.load(path, weights_only=True)
    assert raw["format"] == FORMAT and set(raw) == {"format", "meta", "state_dict", "train_state"}


_CALLED: list[str] = []


def _payload_was_run(tag: str) -> None:
    _CALLED.append(tag)


class Payload:
    """An object whose unpickling would run code (``__reduce__`` calls a function)."""

    def __reduce__(self):
        return (_payload_was_run, ("unpickled!",))


def test_arbitrary_pickled_objects_are_refused_and_never_run(tmp_path, tiny_model):
    path = tmp_path / "evil.pt"
    good = torch.load(save_checkpoint(tmp_path / "good.pt", tiny_model, _tiny_meta()), weights_only=True)
    torch.save({**good, "extra": Payload()}, path)
    _CALLED.clear()
    with pytest.raises(FcnDeployError) as err:
        load_checkpoint(path)
    assert str(err.value) == (
        f"{path}: refused: the file needs arbitrary pickled code to load (weights_only=True); re-save it as a plain state dict"
    )
    assert _CALLED == []  # the payload never ran
    # ... while an unsafe load really would have run it: the test's payload is live
    torch.load(path, weights_only=False)
    assert _CALLED == ["unpickled!"]


def _corrupt_bytes(kind: str, good: bytes) -> bytes:
    return {
        "random": np.random.default_rng(0).bytes(4096),
        "empty": b"",
        "text": b"hello world, not a checkpoint\n",
        "truncated": good[: len(good) // 2],
    }[kind]


@pytest.mark.parametrize("kind", ["random", "empty", "text", "truncated"])
def test_corrupt_file_gives_a_clear_error(saved, kind):
    saved.write_bytes(_corrupt_bytes(kind, saved.read_bytes()))
    with pytest.raises(FcnDeployError) as err:  # never a bare IndexError / KeyError / UnpicklingError
        load_checkpoint(saved)
    message = str(err.value)
    assert message.startswith(f"{saved}: not a readable PyTorch checkpoint (")
    assert message.endswith("is it corrupt?")


def test_missing_file_and_folder(tmp_path):
    with pytest.raises(FcnDeployError) as err:
        load_checkpoint(tmp_path / "nope.pt")
    assert str(err.value) == f"checkpoint not found: {tmp_path / 'nope.pt'}"
    with pytest.raises(FcnDeployError) as err:
        load_checkpoint(tmp_path)
    assert str(err.value) == f"checkpoint is not a file: {tmp_path}"


def test_plain_state_dict_is_not_a_checkpoint(tmp_path, tiny_model):
    path = tmp_path / "sd.pt"
    torch.save(tiny_model.state_dict(), path)
    with pytest.raises(FcnDeployError) as err:
        load_checkpoint(path)
    assert str(err.value) == (f"{path}: not an fcn-deploy checkpoint; bring torchvision or VGG weights in with `fcn-deploy import`")


def _rewrite_meta(path: Path, **changes) -> None:
    data = torch.load(path, weights_only=True)
    data["meta"].update(changes)
    torch.save(data, path)


def test_weights_for_another_architecture_are_reported(saved, tmp_path, capsys):
    _rewrite_meta(saved, arch="fcn32s-vgg16")  # arch_kwargs width 0.125 keeps the VGG small
    ckpt = load_checkpoint(saved)
    with pytest.raises(FcnDeployError) as err:
        ckpt.build_model()
    message = str(err.value)
    assert message.startswith(f"{saved}: weights do not fit architecture fcn32s-vgg16 (")
    assert message.endswith("is this a checkpoint for a different architecture?")
    assert "\n" not in message
    # the CLI says the same, as one line, exit 2 (5 classes, so that the synthetic data fits)
    five = tmp_path / "five.pt"
    meta = _tiny_meta(num_classes=5, class_names=list("abcde"), palette=default_palette(5))
    save_checkpoint(five, models.build("fcn8s-resnet18", 5, **TINY), meta)
    _rewrite_meta(five, arch="fcn32s-vgg16")
    assert main(["eval", str(five), "--size", "32", "--count", "1"]) == 2
    err_text = capsys.readouterr().err.strip()
    assert err_text.startswith("error: ") and "different architecture" in err_text and "\n" not in err_text


def test_unknown_architecture_in_metadata(saved):
    _rewrite_meta(saved, arch="fcn4s-mystery")
    with pytest.raises(FcnDeployError) as err:
        load_checkpoint(saved)
    assert str(err.value) == f"unknown architecture 'fcn4s-mystery'; choose one of: {', '.join(models.names())}"


def test_save_is_atomic(tmp_path, tiny_model, monkeypatch):
    path = save_checkpoint(tmp_path / "a.pt", tiny_model, _tiny_meta())
    assert sorted(p.name for p in tmp_path.iterdir()) == ["a.pt"]  # no .a.pt.*.tmp.pt left behind
    before = path.read_bytes()

    real_save = torch.save

    def failing_save(obj, f, *args, **kwargs):
        real_save({"partial": torch.zeros(10)}, f)  # half-written data under the temporary name ...
        raise RuntimeError("disk full")  # ... then the write fails

    monkeypatch.setattr(torch, "save", failing_save)
    with pytest.raises(RuntimeError, match="disk full"):
        save_checkpoint(tmp_path / "b.pt", tiny_model, _tiny_meta())
    with pytest.raises(RuntimeError, match="disk full"):
        save_checkpoint(path, tiny_model, _tiny_meta(metrics={"changed": True}))
    assert sorted(p.name for p in tmp_path.iterdir()) == ["a.pt"]  # nothing under b.pt, no temp files
    assert path.read_bytes() == before  # the previous good file is untouched
    monkeypatch.undo()
    assert load_checkpoint(path).meta.metrics == {"mean_iu": 0.5, "epoch": 3}


# --------------------------------------------------------------------------- import: torchvision FCN


def test_import_torchvision_fcn_resnet50_with_aux(scratch, torchvision_fcn):
    tv = torchvision_fcn(50, aux=True)
    source = scratch / "fcn_resnet50.pth"
    torch.save(tv.state_dict(), source)
    out, meta = import_weights(scratch / "imported.pt", source)
    assert out == scratch / "imported.pt"
    ckpt = load_checkpoint(out)
    assert ckpt.meta.to_dict() == meta.to_dict()
    assert ckpt.meta.arch == "fcn-resnet50" and ckpt.meta.num_classes == 21
    assert ckpt.meta.arch_kwargs == {"aux": True}
    assert ckpt.meta.metrics["kind"] == "torchvision-fcn"
    assert ckpt.meta.metrics["imported_from"] == str(source)
    assert ckpt.meta.class_names == voc_class_names() and ckpt.meta.palette == default_palette(21)
    assert any(k.startswith("aux_classifier.") for k in ckpt.state_dict)  # aux head kept
    model = ckpt.build_model()
    x = torch.randn(1, 3, 72, 88, generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        expected = tv(x)
        main_out, aux_out = model.forward_with_aux(x)
        torch.testing.assert_close(model(x), expected["out"], rtol=1e-4, atol=1e-4)
        torch.testing.assert_close(main_out, expected["out"], rtol=1e-4, atol=1e-4)
        torch.testing.assert_close(aux_out, expected["aux"], rtol=1e-4, atol=1e-4)


def test_import_cli_torchvision_fcn_resnet50_without_aux(scratch, capsys, torchvision_fcn):
    tv = torchvision_fcn(50, aux=False)
    source = scratch / "fcn_resnet50_noaux.pth"
    torch.save({"model": tv.state_dict()}, source)  # a common wrapper: {"model": state_dict}
    out = scratch / "imported.pt"
    assert main(["import", str(source), "-o", str(out)]) == 0
    assert f"wrote {out}: fcn-resnet50, 21 classes (torchvision-fcn)" in capsys.readouterr().out
    ckpt = load_checkpoint(out)
    assert ckpt.meta.arch_kwargs == {"aux": False}
    assert not any(k.startswith("aux_classifier.") for k in ckpt.state_dict)
    x = torch.randn(2, 3, 64, 64, generator=torch.Generator().manual_seed(1))
    with torch.no_grad():
        torch.testing.assert_close(ckpt.build_model()(x), tv(x)["out"], rtol=1e-4, atol=1e-4)


# --------------------------------------------------------------------------- import: VGG16 classifier


@pytest.fixture(scope="module")
def vgg16_weights(tmp_path_factory, vgg16_classifier):
    state = vgg16_classifier.state_dict()
    path = tmp_path_factory.mktemp("vgg") / "vgg16.pth"
    torch.save(state, path)
    yield path, state
    path.unlink()


def _check_convolutionalized(ckpt_state: dict, vgg_state: dict) -> None:
    for key, value in vgg_state.items():
        if key.startswith("features."):
            assert torch.equal(ckpt_state[key], value), key
    assert torch.equal(ckpt_state["fc6.weight"], vgg_state["classifier.0.weight"].view(4096, 512, 7, 7))
    assert torch.equal(ckpt_state["fc6.bias"], vgg_state["classifier.0.bias"])
    assert torch.equal(ckpt_state["fc7.weight"], vgg_state["classifier.3.weight"].view(4096, 4096, 1, 1))
    assert torch.equal(ckpt_state["fc7.bias"], vgg_state["classifier.3.bias"])
    assert not any(k.startswith("classifier.") for k in ckpt_state)  # fc8 (ImageNet classes) dropped


def test_import_cli_vgg16_as_fcn8s(vgg16_weights, scratch, capsys):
    source, state = vgg16_weights
    out = scratch / "fcn8s.pt"
    rc = main(["import", str(source), "-o", str(out), "--arch", "fcn8s-vgg16", "--num-classes", "5"])
    assert rc == 0, capsys.readouterr().err
    assert f"wrote {out}: fcn8s-vgg16, 5 classes (vgg16)" in capsys.readouterr().out
    ckpt = load_checkpoint(out)
    assert ckpt.meta.arch == "fcn8s-vgg16" and ckpt.meta.num_classes == 5
    assert ckpt.meta.class_names == [f"class_{i}" for i in range(5)]
    assert ckpt.meta.metrics["kind"] == "vgg16"
    _check_convolutionalized(ckpt.state_dict, state)
    for layer, channels in (("score_fr", 4096), ("score_pool4", 512), ("score_pool3", 256)):
        weight, bias = ckpt.state_dict[f"{layer}.weight"], ckpt.state_dict[f"{layer}.bias"]
        assert weight.shape == (5, channels, 1, 1) and bias.shape == (5,)
        assert not weight.any() and not bias.any(), layer  # zero-initialised, as in the paper


def test_import_vgg16_as_fcn32s_with_classes_file(vgg16_weights, tmp_path):
    _, state = vgg16_weights
    classes = tmp_path / "classes.json"
    names = ["background", "ellipse", "rectangle", "triangle", "cross"]
    classes.write_text(json.dumps({"class_names": names}))
    model, meta = import_vgg16_classifier(state, "fcn32s-vgg16", 5, classes)
    assert meta.arch == "fcn32s-vgg16" and meta.class_names == names and meta.palette == default_palette(5)
    fcn_state = model.state_dict()
    _check_convolutionalized(fcn_state, state)
    assert not any(k.startswith("score_pool") for k in fcn_state)
    assert fcn_state["score_fr.weight"].shape == (5, 4096, 1, 1) and not fcn_state["score_fr.weight"].any()
    with pytest.raises(FcnDeployError) as err:
        import_vgg16_classifier(state, "fcn8s-resnet18", 5)
    assert str(err.value) == ("a VGG16 classifier converts to fcn32s-vgg16, fcn16s-vgg16 or fcn8s-vgg16, not fcn8s-resnet18")


# --------------------------------------------------------------------------- import: bad input


def test_unrecognised_state_dict(tmp_path, tiny_model):
    path = tmp_path / "weird.pth"
    torch.save({"encoder.weight": torch.zeros(3), "decoder.bias": torch.ones(2)}, path)
    with pytest.raises(FcnDeployError) as err:
        import_weights(tmp_path / "o.pt", path)
    assert str(err.value) == (
        "unrecognised weights: expected a torchvision fcn_resnet50/101 or vgg16 state dict (for fcn-deploy checkpoints no import is needed)"
    )
    # an fcn-deploy checkpoint is not something to import either
    ours = save_checkpoint(tmp_path / "ours.pt", tiny_model, _tiny_meta())
    with pytest.raises(FcnDeployError, match="for fcn-deploy checkpoints no import is needed"):
        import_weights(tmp_path / "o.pt", ours)
    # nor a list of numbers
    torch.save([1, 2, 3], path)
    with pytest.raises(FcnDeployError) as err:
        import_weights(tmp_path / "o.pt", path)
    assert str(err.value) == f"{path}: expected a state dict (parameter name -> tensor); save model.state_dict()"
    assert not (tmp_path / "o.pt").exists()


def test_import_cli_refuses_a_pickled_full_model(tmp_path, capsys):
    path = tmp_path / "model.pth"
    torch.save(nn.Sequential(nn.Conv2d(3, 4, 1)), path)  # the whole module, not its state dict
    out = tmp_path / "o.pt"
    assert main(["import", str(path), "-o", str(out)]) == 2
    captured = capsys.readouterr()
    assert captured.err.strip() == (
        f"error: {path}: refused: the file needs arbitrary pickled code to load (weights_only=True); re-save it as a plain state dict"
    )
    assert not out.exists()


def test_import_cli_missing_file_and_bad_arguments(tmp_path, capsys):
    out = tmp_path / "o.pt"
    assert main(["import", str(tmp_path / "missing.pth"), "-o", str(out)]) == 2
    assert capsys.readouterr().err.strip() == f"error: weights file not found: {tmp_path / 'missing.pth'}"
    assert main(["import", "-o", str(out)]) == 2
    assert capsys.readouterr().err.strip() == "error: give either a weights FILE or --pretrained NAME"
    assert main(["import", "--pretrained", "resnet9", "-o", str(out)]) == 2
    assert capsys.readouterr().err.strip() == ("error: unknown --pretrained 'resnet9'; choose one of: fcn_resnet50, fcn_resnet101, vgg16")
    assert not out.exists()


def test_error_lines_keep_brackets_in_paths(tmp_path, capsys):
    """Paths are printed verbatim: '[v1]' in a folder name is not console markup."""
    missing = tmp_path / "[v1]" / "weights.pth"
    assert main(["import", str(missing), "-o", str(tmp_path / "o.pt")]) == 2
    assert capsys.readouterr().err.strip() == f"error: weights file not found: {missing}"


@pytest.mark.parametrize(
    "name, enum",
    [
        ("fcn_resnet50", torchvision.models.segmentation.FCN_ResNet50_Weights),
        ("vgg16", torchvision.models.VGG16_Weights),
    ],
)
def test_pretrained_offline_names_the_url_and_the_way_out(name, enum, tmp_path, monkeypatch, capsys):
    monkeypatch.setenv("TORCH_HOME", str(tmp_path / "torch-home"))  # no cached download to fall back on
    calls = []

    def offline(*args, **kwargs):
        calls.append(args)
        raise urllib.error.URLError("no network in this test")

    monkeypatch.setattr(torch.hub, "urlopen", offline)
    timeout_before = socket.getdefaulttimeout()
    out = tmp_path / "o.pt"
    assert main(["import", "--pretrained", name, "-o", str(out)]) == 2
    assert calls, "the download was attempted"
    url = enum.DEFAULT.url
    assert capsys.readouterr().err.strip() == (
        f"error: could not download {name} weights from {url} (URLError: <urlopen error no network in this test>); "
        "this machine may be offline: download that file elsewhere, then run `fcn-deploy import FILE -o OUT.pt`"
    )
    assert socket.getdefaulttimeout() == timeout_before  # the temporary socket timeout is restored
    assert not out.exists()
