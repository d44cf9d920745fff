"""Independent oracles: the product's preprocessing, masks and scores against code that shares
nothing with it (torchvision's transforms, a bare ONNX Runtime session fed numpy written here, a
set-counting scorer), so a mean/std swap, an RGB/BGR slip or a transposed confusion matrix fails."""

from __future__ import annotations

import numpy as np
import onnx
import pytest
from PIL import Image

from fcn_deploy.cli import main
from fcn_deploy.data import open_dataset
from fcn_deploy.data.images import preprocess
from fcn_deploy.evaluate import evaluate_model
from fcn_deploy.meta import read_onnx_meta

from helpers import IMAGENET_MEAN_INDEPENDENT as MEAN
from helpers import IMAGENET_STD_INDEPENDENT as STD
from helpers import direct_mask, independent_scores


def test_preprocess_matches_torchvision():
    import torch
    from torchvision.transforms.functional import normalize, to_tensor

    rng = np.random.default_rng(0)
    images = rng.integers(0, 256, (2, 37, 53, 3), dtype=np.uint8)
    images[0, 0, 0] = (255, 0, 0)  # a pure red pixel: channel order shows
    mean, std = [0.485, 0.456, 0.406], [0.229, 0.224, 0.225]
    ours = preprocess(images, mean, std)
    expected = torch.stack([normalize(to_tensor(image), mean, std) for image in images]).numpy()
    assert ours.shape == (2, 3, 37, 53) and ours.dtype == np.float32
    np.testing.assert_allclose(ours, expected, atol=1e-5)
    # not symmetric in mean and std, nor in the channels: a swap of either would not match
    assert not np.allclose(preprocess(images, std, mean), expected, atol=1e-2)
    assert not np.allclose(preprocess(images[..., ::-1].copy(), mean, std), expected, atol=1e-2)
    # one image (HxWx3) is a batch of one
    np.testing.assert_allclose(preprocess(images[1], mean, std), expected[1:], atol=1e-5)


def test_infer_mask_matches_a_bare_onnxruntime_session(tiny_onnx, tmp_path):
    meta = read_onnx_meta(onnx.load(str(tiny_onnx)))
    assert np.allclose(meta.mean, MEAN) and np.allclose(meta.std, STD)
    image, _ = open_dataset("synthetic", "test", size=72, length=1).dataset[0]
    image = image[:, :88] if image.shape[1] > 88 else image
    source = tmp_path / "scene.png"
    Image.fromarray(image).save(source)
    out = tmp_path / "out"
    assert main(["infer", str(source), "-e", str(tiny_onnx), "-o", str(out)]) == 0
    masks = list(out.rglob("masks/*.png"))
    assert len(masks) == 1
    ours = np.asarray(Image.open(masks[0]))
    expected = direct_mask(tiny_onnx, image)
    assert ours.shape == expected.shape == image.shape[:2]
    assert len(np.unique(expected)) >= 2, "the scene must hold more than background"
    assert np.mean(ours == expected) >= 0.9999
    # the oracle is sharp: BGR input gives another mask
    assert np.mean(direct_mask(tiny_onnx, image[..., ::-1].copy()) == expected) < 0.999


def test_eval_scores_match_an_independent_scorer(tiny_onnx):
    source = open_dataset("synthetic", "val", size=64, length=6)
    report = evaluate_model(tiny_onnx, source, batch_size=4)
    labels, predictions = [], []
    for index in range(len(source.dataset)):
        image, label = source.dataset[index]
        labels.append(label.ravel())
        predictions.append(direct_mask(tiny_onnx, image).ravel())
    expected = independent_scores(np.concatenate(labels), np.concatenate(predictions), len(source.class_names))
    for key in ("pixel_accuracy", "mean_accuracy", "mean_iu", "fw_iu"):
        assert report[key] == pytest.approx(expected[key], abs=1e-4), key
    assert 0.3 < report["mean_iu"] < 1.0  # a trained model: not a trivial score
