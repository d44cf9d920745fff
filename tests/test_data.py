"""Synthetic scenes, VOC-layout folders (read, write, bad input) and the training view."""

from __future__ import annotations

import json
from collections import deque
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from fcn_deploy.cli import main
from fcn_deploy.data import (
    SYNTHETIC_CLASSES,
    SYNTHETIC_PALETTE,
    SYNTHETIC_SEEDS,
    VOID,
    SyntheticScenes,
    VOCSegmentation,
    make_scene,
    open_dataset,
    preprocess,
    write_voc,
)
from fcn_deploy.data.training import TrainingView
from fcn_deploy.errors import FcnDeployError
from fcn_deploy.meta import IMAGENET_MEAN, IMAGENET_STD, default_palette, voc_class_names

# --------------------------------------------------------------------------- synthetic scenes


def test_scenes_are_a_pure_function_of_seed_index_and_size():
    a_img, a_lbl = make_scene(7, 3, 64, 80)
    b_img, b_lbl = make_scene(7, 3, 64, 80)
    np.testing.assert_array_equal(a_img, b_img)
    np.testing.assert_array_equal(a_lbl, b_lbl)
    assert a_img.shape == (64, 80, 3) and a_img.dtype == np.uint8
    assert a_lbl.shape == (64, 80) and a_lbl.dtype == np.uint8
    # the dataset object gives the same scene as the function
    ds_img, ds_lbl = SyntheticScenes(5, (64, 80), seed=7)[3]
    np.testing.assert_array_equal(ds_img, a_img)
    np.testing.assert_array_equal(ds_lbl, a_lbl)
    # any other seed or index gives another scene
    assert not np.array_equal(make_scene(8, 3, 64, 80)[0], a_img)
    assert not np.array_equal(make_scene(7, 4, 64, 80)[0], a_img)


def test_dataset_length_and_bounds():
    ds = SyntheticScenes(3, 32, seed=0)
    assert len(ds) == 3
    with pytest.raises(IndexError):
        ds[3]


def _components(mask: np.ndarray) -> list[tuple[int, int]]:
    """(height, width) of the bounding box of each 4-connected component of ``mask``."""
    seen = np.zeros_like(mask, dtype=bool)
    boxes = []
    h, w = mask.shape
    for y0, x0 in zip(*np.nonzero(mask)):
        if seen[y0, x0]:
            continue
        seen[y0, x0] = True
        queue, ys, xs = deque([(y0, x0)]), [], []
        while queue:
            y, x = queue.popleft()
            ys.append(y)
            xs.append(x)
            for ny, nx in ((y + 1, x), (y - 1, x), (y, x + 1), (y, x - 1)):
                if 0 <= ny < h and 0 <= nx < w and mask[ny, nx] and not seen[ny, nx]:
                    seen[ny, nx] = True
                    queue.append((ny, nx))
        boxes.append((max(ys) - min(ys) + 1, max(xs) - min(xs) + 1))
    return boxes


def test_scenes_show_every_class_in_varied_sizes_and_aspects():
    labels = [make_scene(0, i, 128, 128)[1] for i in range(30)]
    seen = set(np.unique(np.stack(labels)).tolist())
    assert seen == set(range(len(SYNTHETIC_CLASSES))), seen  # all four shapes and background, nothing else
    assert len(SYNTHETIC_CLASSES) == 5
    # objects of whole (not clipped) extent: look only at components away from the border
    boxes = []
    for label in labels:
        for cls in range(1, 5):
            boxes += [b for b in _components(label == cls) if b[0] >= 6 and b[1] >= 6]
    sides = np.array([max(b) for b in boxes])
    aspects = np.array([b[0] / b[1] for b in boxes])
    assert len(boxes) >= 30
    lo, hi = np.percentile(sides, [10, 90])
    assert lo < 32 and hi > 64, (lo, hi)  # small and large objects, not one size
    lo, hi = np.percentile(aspects, [10, 90])
    assert lo < 0.75 and hi > 1.33, (lo, hi)  # tall and wide ones
    # more area, more objects
    small = np.mean([len(np.unique(make_scene(0, i, 64, 64)[1])) for i in range(10)])
    large = np.mean([len(np.unique(make_scene(0, i, 256, 256)[1])) for i in range(10)])
    assert large > small


def test_synthetic_splits_use_different_seeds_and_do_not_overlap():
    assert len(set(SYNTHETIC_SEEDS.values())) == len(SYNTHETIC_SEEDS)
    train = open_dataset("synthetic", "train", size=48, length=12)
    val = open_dataset("synthetic", "val", size=48, length=12)
    assert train.dataset.seed != val.dataset.seed
    assert train.class_names == val.class_names == list(SYNTHETIC_CLASSES)
    assert train.palette == [list(c) for c in SYNTHETIC_PALETTE]
    train_images = [train.dataset[i][0] for i in range(12)]
    for j in range(12):
        image = val.dataset[j][0]
        assert not any(np.array_equal(image, t) for t in train_images)
    # the default lengths
    assert len(open_dataset("synthetic", "train").dataset) == 4000
    assert len(open_dataset("synthetic", "val").dataset) == 96


# --------------------------------------------------------------------------- VOC layout: round trip


def test_write_voc_round_trip_with_custom_classes(tmp_path):
    rng = np.random.default_rng(0)
    names = ["bg", "cat", "dog"]
    palette = [[1, 2, 3], [200, 10, 20], [30, 220, 40]]
    samples = []
    for h, w in [(24, 40), (33, 17)]:
        image = rng.integers(0, 256, (h, w, 3), dtype=np.uint8)
        label = rng.integers(0, 3, (h, w)).astype(np.uint8)
        label[:2] = VOID
        samples.append((image, label))
    root = write_voc(tmp_path / "voc", {"train": samples, "val": samples[:1]}, names, palette)
    ds = VOCSegmentation(root, "train")
    assert len(ds) == 2 and ds.ids == ["train_00000", "train_00001"]
    assert ds.class_names == names and ds.palette == palette and ds.num_classes == 3
    assert json.loads((root / "classes.json").read_text()) == {"class_names": names, "palette": palette}
    for i, (image, label) in enumerate(samples):
        got_image, got_label = ds[i]
        np.testing.assert_array_equal(got_label, label)  # PNG is lossless, void kept
        assert got_image.shape == image.shape and got_image.dtype == np.uint8  # JPEG decodes, same size
        with Image.open(ds.masks[i]) as png:
            assert png.mode == "P"  # VOC's palette PNG
            assert png.getpalette()[:9] == [c for colour in palette for c in colour]
    assert len(VOCSegmentation(root, "val")) == 1
    source = open_dataset(str(root), "val")
    assert source.class_names == names and source.palette == palette


def test_synth_data_cli_writes_the_voc_layout(tmp_path, capsys):
    out = tmp_path / "synth"
    assert main(["synth-data", str(out), "--train", "3", "--val", "2", "--size", "64"]) == 0
    assert "wrote 3 + 2 scenes" in capsys.readouterr().out
    assert sorted(p.name for p in (out / "JPEGImages").iterdir()) == [
        "train_00000.jpg", "train_00001.jpg", "train_00002.jpg", "val_00000.jpg", "val_00001.jpg",
    ]  # fmt: skip
    assert len(list((out / "SegmentationClass").glob("*.png"))) == 5
    split_dir = out / "ImageSets" / "Segmentation"
    assert (split_dir / "train.txt").read_text().split() == ["train_00000", "train_00001", "train_00002"]
    assert (split_dir / "val.txt").read_text().split() == ["val_00000", "val_00001"]
    assert not list(out.rglob(".*.tmp*"))  # atomic writes leave nothing behind
    val = VOCSegmentation(out, "val")
    assert val.class_names == list(SYNTHETIC_CLASSES)
    assert val.palette == [list(c) for c in SYNTHETIC_PALETTE]
    reference = SyntheticScenes(2, 64, seed=SYNTHETIC_SEEDS["val"])  # the held-out seed
    for i in range(2):
        image, label = val[i]
        ref_image, ref_label = reference[i]
        np.testing.assert_array_equal(label, ref_label)
        assert image.shape == (64, 64, 3)
        assert np.abs(image.astype(int) - ref_image.astype(int)).mean() < 12  # JPEG q95, noisy textures


# --------------------------------------------------------------------------- VOC layout: bad input


@pytest.fixture
def voc(tmp_path) -> Path:
    """A 3-class VOC folder: train_00000..2 and val_00000..1, images 32 high x 40 wide."""
    rng = np.random.default_rng(1)
    samples = [(rng.integers(0, 256, (32, 40, 3), dtype=np.uint8), rng.integers(0, 3, (32, 40)).astype(np.uint8)) for _ in range(3)]
    return write_voc(tmp_path / "voc", {"train": samples, "val": samples[:2]}, ["a", "b", "c"], default_palette(3))


def _save_mask(path: Path, mask: np.ndarray, mode: str = "L") -> None:
    Image.fromarray(mask.astype(np.uint8)).convert(mode).save(path)


def test_missing_root(tmp_path):
    root = tmp_path / "nowhere"
    with pytest.raises(FcnDeployError) as err:
        VOCSegmentation(root, "train")
    assert str(err.value) == (f"dataset folder not found: {root} (expected a VOC-layout folder; see `fcn-deploy synth-data`)")
    with pytest.raises(FcnDeployError, match="dataset folder not found"):
        open_dataset(str(root), "train")


@pytest.mark.parametrize("folder", ["JPEGImages", "SegmentationClass"])
def test_missing_image_or_mask_folder(voc, folder):
    import shutil

    shutil.rmtree(voc / folder)
    with pytest.raises(FcnDeployError) as err:
        VOCSegmentation(voc, "train")
    what = "images folder" if folder == "JPEGImages" else "masks folder"
    assert str(err.value) == f"{what} not found: {voc / folder} (the VOC layout needs {folder}/)"


def test_missing_and_empty_split_file(voc):
    split = voc / "ImageSets" / "Segmentation" / "test.txt"
    with pytest.raises(FcnDeployError) as err:
        VOCSegmentation(voc, "test")
    assert str(err.value) == f"split file not found: {split} (list one image id per line)"
    split.write_text("\n  \n")
    with pytest.raises(FcnDeployError) as err:
        VOCSegmentation(voc, "test")
    assert str(err.value) == f"split file is empty: {split}"


def test_images_without_masks_reports_count_and_first_id(voc):
    (voc / "SegmentationClass" / "train_00001.png").unlink()
    (voc / "SegmentationClass" / "train_00002.png").unlink()
    with pytest.raises(FcnDeployError) as err:
        VOCSegmentation(voc, "train")
    assert str(err.value) == (
        f"2 image(s) without a mask in {voc / 'SegmentationClass'} (first: train_00001.png); "
        "add the masks or remove the ids from the split file"
    )
    assert len(VOCSegmentation(voc, "val")) == 2  # the val split is complete and still opens


def test_ids_without_images_reports_count_and_first_id(voc):
    (voc / "JPEGImages" / "train_00002.jpg").unlink()
    with pytest.raises(FcnDeployError) as err:
        VOCSegmentation(voc, "train")
    assert str(err.value) == f"1 image(s) of train.txt missing from {voc / 'JPEGImages'} (first: train_00002)"


def test_mask_label_beyond_num_classes_names_file_and_value(voc):
    mask_path = voc / "SegmentationClass" / "train_00001.png"
    mask = np.zeros((32, 40), np.uint8)
    mask[5, 5], mask[6, 6] = 7, 4
    _save_mask(mask_path, mask)
    ds = VOCSegmentation(voc, "train")
    ds[0]  # the other samples are fine
    with pytest.raises(FcnDeployError) as err:
        ds[1]
    assert str(err.value) == f"{mask_path}: label 7 is beyond num_classes=3 (valid: 0..2, and 255 for void)"


def test_void_label_is_accepted(voc):
    mask = np.full((32, 40), VOID, np.uint8)
    mask[:10] = 2
    _save_mask(voc / "SegmentationClass" / "train_00000.png", mask)
    _, label = VOCSegmentation(voc, "train")[0]
    np.testing.assert_array_equal(label, mask)


def test_without_classes_json_the_21_voc_classes_apply(voc):
    (voc / "classes.json").unlink()
    mask = np.zeros((32, 40), np.uint8)
    mask[0, 0] = 20
    _save_mask(voc / "SegmentationClass" / "train_00000.png", mask)
    ds = VOCSegmentation(voc, "train")
    assert ds.class_names == voc_class_names() and ds.num_classes == 21
    assert ds.palette == default_palette(21)
    assert ds[0][1][0, 0] == 20
    mask[0, 0] = 21
    _save_mask(voc / "SegmentationClass" / "train_00000.png", mask)
    with pytest.raises(FcnDeployError, match="label 21 is beyond num_classes=21"):
        ds[0]


def test_malformed_classes_json_is_named(voc):
    (voc / "classes.json").write_text('{"names": ["a"]}')
    with pytest.raises(FcnDeployError) as err:
        VOCSegmentation(voc, "train")
    assert str(err.value).startswith(f"{voc / 'classes.json'}: expected JSON with a 'class_names' list")


@pytest.mark.parametrize("damage", ["garbage", "truncated"])
def test_corrupt_image_is_an_error_naming_it_not_a_skip(voc, damage):
    path = voc / "JPEGImages" / "train_00001.jpg"
    data = path.read_bytes()
    path.write_bytes(b"this is not a jpeg" if damage == "garbage" else data[: len(data) // 3])
    ds = VOCSegmentation(voc, "train")  # found, but not decodable: reported when read
    ds[0]
    with pytest.raises(FcnDeployError) as err:
        ds[1]
    assert str(err.value).startswith(f"{path}: not a readable image (")
    assert str(err.value).endswith("); replace or remove it")


def test_corrupt_image_fails_evaluation_through_the_cli(voc, tmp_path, capsys):
    """Documented behaviour: an unreadable image stops `eval` with an error naming it (exit 2)."""
    from fcn_deploy import models
    from fcn_deploy.checkpoint import save_checkpoint
    from fcn_deploy.meta import ModelMeta

    ckpt = tmp_path / "m.pt"
    meta = ModelMeta("fcn8s-resnet18", 3, ["a", "b", "c"], default_palette(3), arch_kwargs={"width": 0.125})
    save_checkpoint(ckpt, models.build("fcn8s-resnet18", 3, width=0.125), meta)
    bad = voc / "JPEGImages" / "val_00001.jpg"
    bad.write_bytes(b"\xff\xd8 broken")
    assert main(["eval", str(ckpt), "--data", str(voc), "--split", "val"]) == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith("error: ") and "\n" not in err
    assert f"{bad}: not a readable image" in err


def test_corrupt_or_non_label_masks_are_errors(voc):
    path = voc / "SegmentationClass" / "train_00000.png"
    path.write_bytes(b"\x89PNG not really")
    with pytest.raises(FcnDeployError) as err:
        VOCSegmentation(voc, "train")[0]
    assert str(err.value).startswith(f"{path}: not a readable mask PNG (")
    _save_mask(path, np.zeros((32, 40), np.uint8), mode="RGB")
    with pytest.raises(FcnDeployError) as err:
        VOCSegmentation(voc, "train")[0]
    assert str(err.value).startswith(f"{path}: mask is mode RGB; masks must be palette (P) or grayscale (L)")


def test_mask_image_size_mismatch(voc):
    path = voc / "SegmentationClass" / "train_00002.png"
    _save_mask(path, np.zeros((40, 32), np.uint8))  # transposed
    with pytest.raises(FcnDeployError) as err:
        VOCSegmentation(voc, "train")[2]
    assert str(err.value) == f"{path}: mask is 32x40 but its image is 40x32; they must match"


# --------------------------------------------------------------------------- training view


def test_training_view_pads_small_images_with_void_and_preprocesses_like_inference():
    rng = np.random.default_rng(3)
    image = rng.integers(0, 256, (40, 50, 3), dtype=np.uint8)
    label = rng.integers(0, 5, (40, 50)).astype(np.uint8)
    view = TrainingView([(image, label)], crop=64, mean=IMAGENET_MEAN, std=IMAGENET_STD, augment=False)
    x, y = view[0]
    assert x.shape == (3, 64, 64) and y.shape == (64, 64)
    np.testing.assert_array_equal(y[:40, :50].numpy(), label)
    assert (y[40:] == VOID).all() and (y[:, 50:] == VOID).all()
    np.testing.assert_allclose(x[:, :40, :50].numpy(), preprocess(image, IMAGENET_MEAN, IMAGENET_STD)[0])
    # augmented crops of a larger scene: deterministic per (seed, epoch, index), varying over epochs
    big = SyntheticScenes(1, 96, seed=0)
    view = TrainingView(big, crop=48, mean=IMAGENET_MEAN, std=IMAGENET_STD, seed=5)
    a, b = view[0], view[0]
    assert a[0].shape == (3, 48, 48)
    assert np.array_equal(a[1].numpy(), b[1].numpy()) and np.array_equal(a[0].numpy(), b[0].numpy())
    crops = set()
    for epoch in range(6):
        view.epoch = epoch
        crops.add(view[0][1].numpy().tobytes())
    assert len(crops) > 1
