"""Every validation gate seen failing alone: a constructed case passes every other gate and fails
exactly one, through ``validate`` and through ``fcn-deploy validate`` (exit 1); relaxing that one
limit makes the same case pass (exit 0), so the failure is that gate's and no other's.

The runners are stand-ins that return constructed logits per size; everything from ``validate`` on
(metrics, pooling, gates, report, CLI) is the product's code.  A last test breaks a real engine
subtly (one zeroed feature channel) and shows the FP32 thresholds catch it.
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

from fcn_deploy.backends import Profile, Runner
from fcn_deploy.cli import main
from fcn_deploy.meta import ModelMeta
from fcn_deploy.validation import Thresholds, ValidateOptions, validate, validate_engine

from helpers import perturbed_copy

C = 3
META = ModelMeta(arch="fake", num_classes=C, class_names=["bg", "a", "b"], palette=[[0, 0, 0], [200, 0, 0], [0, 200, 0]])
CONFIDENT, SOFT = 3.0, 0.1  # reference top-1 minus top-2 margins (the confidence margin below is 0.5)
#: The limits every case is judged by; a case fails exactly one of them.
LIMITS = {"pixel_agreement": 0.99, "size_floor": 0.95, "confident_agreement": 1.0, "confidence_margin": 0.5,
          "min_mean_iu": 0.9, "max_rel_logit_diff": 0.25}  # fmt: skip
#: Per gate: the relaxed limit under which the same case passes.
RELAXED = {"pixel_agreement": 0.98, "size_floor": 0.9, "confident_agreement": 0.99, "min_mean_iu": 0.5, "max_rel_logit_diff": 0.5}
CLI_FLAGS = {"pixel_agreement": "--min-agreement", "size_floor": "--min-size-agreement", "confident_agreement": "--min-confident",
             "min_mean_iu": "--min-miou", "confidence_margin": "--margin"}  # fmt: skip


class Scene:
    """One size: the reference's mask and margins, and the engine's mask and logit offsets."""

    def __init__(self, h: int, w: int, tiny_b: bool = False):
        self.mask = np.zeros((1, h, w), np.int64)
        self.mask[0, h // 4 : 3 * h // 4, w // 8 : w // 2] = 1
        if tiny_b:  # class "b" is a 5x6 patch (a rare class: mean IU weighs it like the others)
            self.mask[0, 2:7, w - 8 : w - 2] = 2
        else:
            self.mask[0, h // 4 : 3 * h // 4, w // 2 : 7 * w // 8] = 2
        self.margin = np.full((1, h, w), CONFIDENT, np.float32)
        self.engine_mask = self.mask.copy()
        self.offset = np.zeros((1, C, h, w), np.float32)  # added to the engine's logits (the mask unchanged)

    def flip(self, where, to: int, margin: float = SOFT) -> Scene:
        """The engine labels ``where`` as ``to``; the reference's margin there is ``margin``."""
        self.margin[0][where] = margin
        self.engine_mask[0][where] = to
        return self

    def reference_logits(self) -> np.ndarray:
        logits = np.zeros((1, C, *self.mask.shape[1:]), np.float32)
        np.put_along_axis(logits, self.mask[:, None], self.margin[:, None], axis=1)
        return logits

    def engine_logits(self) -> np.ndarray:
        """The reference's logits with the engine's class raised just above the reference's top where they differ."""
        logits = self.reference_logits() + self.offset
        changed = self.engine_mask != self.mask
        n, ys, xs = np.nonzero(changed)
        logits[n, self.engine_mask[changed], ys, xs] = self.margin[changed] + 0.01
        return logits


def pooled_agreement_case():
    """Each size 98.5-98.75 % (above the 95 % floor), pooled 98.6 % (below 99 %); disagreements are near-ties."""
    return [Scene(40, 40).flip((slice(10, 13), slice(5, 13)), 2), Scene(40, 48).flip((slice(10, 13), slice(6, 14)), 2)]


def size_floor_case():
    """One small size at 94.75 % (below the 95 % floor), drowned in a large exact one: pooled 99.95 %."""
    return [Scene(20, 20).flip((slice(5, 8), slice(3, 11)), 2), Scene(200, 200)]


def confident_case():
    """One pixel whose reference margin (0.6) is above the confidence margin (0.5) disagrees."""
    return [Scene(100, 100).flip((slice(50, 51), slice(30, 31)), 2, margin=0.6), Scene(64, 64)]


def mean_iu_case():
    """The rare class is missed at one size (30 px of 10,000: 99.7 % agreement), so pooled over both
    sizes its IU is 0.5 and mean IU vs the reference 0.83."""
    return [Scene(100, 100, tiny_b=True).flip((slice(2, 7), slice(92, 98)), 1), Scene(64, 64, tiny_b=True)]


def logit_case():
    """Identical masks, but one logit is off by 1.0 where the limit is 0.25 x max |reference logit| (3) = 0.75."""
    scene = Scene(64, 64)
    scene.offset[0, 0, 30, 20] = 1.0  # a class-1 pixel: class 0 goes from 0 to 1, still below 3
    return [scene, Scene(48, 48)]


CASES = {
    "pixel_agreement": (pooled_agreement_case, "pixel agreement over all sizes 0.98636 < 0.99", "pooled"),
    "size_floor": (size_floor_case, "pixel agreement 0.94750 < the per-size floor 0.95", "20x20"),
    "confident_agreement": (confident_case, "confident-pixel agreement 0.99990 < 1.0 (margin > 0.5)", "100x100"),
    "min_mean_iu": (mean_iu_case, "mean IU vs reference over all sizes 0.8296 < 0.9", "pooled"),
    "max_rel_logit_diff": (logit_case, "max |logit diff| 1 > 0.75", "64x64"),
}


class SceneRunner(Runner):
    """Returns the constructed logits of the scene of the input's size (the reference's or the engine's)."""

    def __init__(self, scenes: list[Scene], engine: bool, path: str = "fake"):
        super().__init__(path, META, Profile((1, 16, 16), (1, 64, 64), (1, 256, 256)), "fp32")
        self.scenes = {s.mask.shape[1:]: s for s in scenes}
        self.engine = engine
        self.backend = "fake"

    @property
    def inputs(self):
        return []

    @property
    def outputs(self):
        return []

    def infer_impl(self, batch, need_logits):
        scene = self.scenes[batch.shape[2:]]
        return {"logits": scene.engine_logits() if self.engine else scene.reference_logits()}


def sizes_of(scenes: list[Scene]) -> list[tuple[int, int]]:
    return [s.mask.shape[1:] for s in scenes]


def all_failures(report) -> list[str]:
    return list(report.failures) + [f for case in report.cases for f in case.failures]


@pytest.mark.parametrize("gate", list(CASES))
def test_each_gate_fails_alone(gate):
    build, reason, where = CASES[gate]
    scenes = build()
    report = validate(SceneRunner(scenes, True), SceneRunner(scenes, False), sizes_of(scenes), Thresholds(**LIMITS))
    assert report.passed is False
    failures = all_failures(report)
    assert len(failures) == 1, failures
    assert failures[0].startswith(reason) and "\n" not in failures[0]
    if where == "pooled":
        assert report.failures == failures and all(c.passed for c in report.cases)
    else:
        assert report.failing_sizes == [where] and not report.failures
    relaxed = validate(
        SceneRunner(scenes, True), SceneRunner(scenes, False), sizes_of(scenes), Thresholds(**{**LIMITS, gate: RELAXED[gate]})
    )
    assert relaxed.passed is True, all_failures(relaxed)


@pytest.fixture
def fake_files(tmp_path, monkeypatch):
    """``install(scenes)``: the CLI's engine and reference opened as scene runners."""
    engine, reference = tmp_path / "engine.fake", tmp_path / "reference.onnx"
    engine.write_bytes(b"x")
    reference.write_bytes(b"x")

    def install(scenes):
        monkeypatch.setattr("fcn_deploy.validation.run.open_engine_under_test", lambda path, options: SceneRunner(scenes, True, str(path)))
        monkeypatch.setattr("fcn_deploy.backends.open_reference", lambda path, meta, threads=None: SceneRunner(scenes, False, str(path)))
        return engine, reference

    return install


def cli_args(engine: Path, reference: Path, scenes, limits: dict, report: Path) -> list[str]:
    args = ["validate", str(engine), "-r", str(reference), "--precision", "fp32", "--report", str(report),
            "--sizes", ",".join(f"{h}x{w}" for h, w in sizes_of(scenes))]  # fmt: skip
    for name, value in limits.items():
        args += [CLI_FLAGS[name], str(value)] if name in CLI_FLAGS else ["--threshold", f"{name}={value}"]
    return args


@pytest.mark.parametrize("gate", list(CASES))
def test_each_gate_fails_the_cli_with_exit_1(gate, fake_files, tmp_path, capsys):
    build, reason, _ = CASES[gate]
    scenes = build()
    engine, reference = fake_files(scenes)
    report = tmp_path / "report.json"
    assert main(cli_args(engine, reference, scenes, LIMITS, report)) == 1
    data = json.loads(report.read_text())
    assert data["passed"] is False
    failures = data["failures"] + [f for case in data["cases"] for f in case["failures"]]
    assert len(failures) == 1 and failures[0].startswith(reason)
    assert reason in capsys.readouterr().out.replace("\n", " ")
    assert main(cli_args(engine, reference, scenes, {**LIMITS, gate: RELAXED[gate]}, tmp_path / "relaxed.json")) == 0
    assert json.loads((tmp_path / "relaxed.json").read_text())["passed"] is True


def test_product_fp32_defaults_gate_every_figure_the_cases_break():
    """The cases above are judged by explicit limits; the FP32 product thresholds fail each of the
    mask cases too (the logit tolerance is export's, off for engines)."""
    for gate in ("pixel_agreement", "size_floor", "confident_agreement"):
        scenes = CASES[gate][0]()
        report = validate(
            SceneRunner(scenes, True),
            SceneRunner(scenes, False),
            sizes_of(scenes),
            Thresholds(pixel_agreement=0.9999, size_floor=0.999, confident_agreement=1.0, confidence_margin=0.05),
        )
        assert report.passed is False, gate


# --- a subtle breakage of a real engine ------------------------------------------------------


def zero_one_channel(weights: np.ndarray) -> np.ndarray:
    out = weights.copy()
    out[3] = 0  # one output channel of a 3x3 convolution
    return out


def test_a_zeroed_feature_channel_fails_the_fp32_thresholds(tiny_onnx, tiny_checkpoint, tmp_path):
    convs = []
    broken = perturbed_copy(
        tiny_onnx, tmp_path / "zeroed.onnx",
        pick=lambda i: len(i.dims) == 4 and i.dims[2] == 3 and i.dims[0] >= 16 and (convs.append(i.name) or len(convs) == 6),
        edit=zero_one_channel,
    )  # fmt: skip
    options = ValidateOptions(sizes=[(64, 64), (97, 129)], precision="fp32")
    report = validate_engine(broken, tiny_checkpoint, options)
    assert report.passed is False
    assert report.pixel_agreement > 0.9, "the breakage is meant to be subtle"
    assert report.failures or report.failing_sizes
