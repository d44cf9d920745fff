"""Run a validation: the engine and the FP32 reference on the same image-like inputs at every size.

:func:`validate` compares two open runners; :func:`validate_engine` (``fcn-deploy validate``) opens
them from files (or a Triton server), picks the sizes and the thresholds, and returns the report.
Neither prints: progress and notes go to the ``listener``.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path

from ..artefacts import has_manifest, is_checkpoint
from ..backends import Runner, read_manifest
from ..data.images import preprocess
from ..errors import FcnDeployError
from ..events import SILENT, Listener
from ..fileio import sha256_file
from .examples import ExampleKeeper
from .inputs import InputSource
from .report import CaseResult, ValidationReport, compare
from .sizes import parse_sizes, spread_sizes
from .thresholds import Thresholds, thresholds_for


def validate(
    engine: Runner,
    reference: Runner,
    sizes: Sequence[tuple[int, int]],
    thresholds: Thresholds,
    *,
    inputs: InputSource | None = None,
    batch: int = 1,
    batch_sizes: dict[tuple[int, int], int] | None = None,
    keep_examples: ExampleKeeper | None = None,
    listener: Listener = SILENT,
) -> ValidationReport:
    """Run ``engine`` and ``reference`` on the same inputs at every size; compare the masks.
    ``keep_examples`` keeps a few images and a margin histogram for the HTML page."""
    inputs = inputs or InputSource()
    meta = engine.meta
    cases: list[CaseResult] = []
    if keep_examples is not None:
        keep_examples.palette = [list(colour) for colour in meta.palette]
    listener.start("validate", total=len(sizes), description="validating")
    for index, (height, width) in enumerate(sizes):
        n = (batch_sizes or {}).get((height, width), batch)
        engine.profile.check(n, height, width)
        images = inputs.batch(height, width, n, index)
        x = preprocess(images, meta.mean, meta.std)
        reference_prediction, engine_prediction = reference.infer(x), engine.infer(x)
        case = compare(reference_prediction, engine_prediction, meta.num_classes, thresholds)
        case.arithmetic = engine.arithmetic
        cases.append(case)
        if keep_examples is not None:
            keep_examples.offer(case, images, reference_prediction, engine_prediction)
        listener.result("validation_case", case)
        listener.advance("validate", description=f"validated {height}x{width}")
    listener.finish("validate")
    return ValidationReport(
        engine=engine.path, backend=engine.backend, precision=engine.precision, reference=reference.path,
        thresholds=thresholds, cases=cases, num_classes=meta.num_classes, class_names=list(meta.class_names),
        arithmetic=engine.arithmetic,
    )  # fmt: skip


@dataclass
class ValidateOptions:
    """What ``validate_engine`` runs: the sizes (given, or spread over the profile) and the thresholds."""

    #: Sizes as ``[(h, w), ...]`` or ``"97x129,333x517"``; None: a spread over the engine's profile.
    sizes: Sequence[tuple[int, int]] | str | None = None
    random_sizes: int = 4
    #: Cap on the largest side of the spread (keeps CPU checks quick).
    max_side: int | None = None
    seed: int = 0
    #: A folder of real images (fitted to each size) instead of synthetic scenes.
    images: str | Path | None = None
    batch: int = 1
    #: Judge by this precision's thresholds (default: the engine's).
    precision: str | None = None
    #: Limit overrides by name (``pixel_agreement``, ``size_floor``, ``min_mean_iu``, ...).
    limits: Mapping[str, float | None] = field(default_factory=dict)
    #: The engine is a checkpoint, run in float16 (torch) and judged by the FP16 thresholds.
    emulate_fp16: bool = False
    #: Validate model ``model`` on this Triton server (``HOST:PORT``) instead of an engine file.
    server: str | None = None
    model: str = "fcn"
    keep_examples: ExampleKeeper | None = None


def open_engine_under_test(engine_path: str | Path | None, options: ValidateOptions) -> Runner:
    from ..backends import open_runner

    if options.server:
        from ..backends.remote import RemoteRunner

        return RemoteRunner(options.server, options.model)
    if options.emulate_fp16:
        if not is_checkpoint(Path(engine_path)):
            raise FcnDeployError(f"{engine_path}: FP16 emulation runs a PyTorch checkpoint in float16, and this is not a checkpoint (.pt)",
                                 options=("emulate_fp16",))  # fmt: skip
        from ..backends.torch import TorchRunner

        return TorchRunner(engine_path, precision="fp16")
    return open_runner(engine_path)


def validate_engine(
    engine_path: str | Path | None, reference_path: str | Path, options: ValidateOptions | None = None, *, listener: Listener = SILENT
) -> ValidationReport:
    """Open the engine (or served model) and the FP32 reference, pick sizes and thresholds, compare."""
    from ..backends import open_reference

    options = options or ValidateOptions()
    with open_engine_under_test(engine_path, options) as engine, open_reference(reference_path, engine.meta) as reference:
        engine_name = engine.path if options.server else engine_path
        if (reference.meta.arch, reference.meta.num_classes) != (engine.meta.arch, engine.meta.num_classes):
            raise FcnDeployError(
                f"{reference_path} is {reference.meta.arch} with {reference.meta.num_classes} classes but {engine_name} "
                f"was built from {engine.meta.arch} with {engine.meta.num_classes}; pass the engine's own reference "
                "(its checkpoint, or the ONNX it was exported or adopted from)"
            )
        if engine.meta.source_sha256 and reference.path:
            own = reference.meta.source_sha256 if getattr(reference, "has_own_meta", True) else ""
            if engine.meta.source_sha256 not in (sha256_file(reference.path), own):
                what, verb = ("ONNX", "adopted") if engine.meta.adopted else ("checkpoint", "exported")
                listener.note(f"{reference_path} is not the {what} {engine_name} was {verb} from", level="warning")
        thresholds = thresholds_for(options.precision or engine.precision, **dict(options.limits))
        if isinstance(options.sizes, str):
            size_list = parse_sizes(options.sizes)
        elif options.sizes:
            size_list = list(options.sizes)
        else:
            size_list = spread_sizes(engine.profile, options.random_sizes, options.seed, cap=options.max_side)
        listener.result("validation_plan", {"sizes": size_list, "thresholds": thresholds})
        report = validate(
            engine, reference, size_list, thresholds, inputs=InputSource(options.images), batch=options.batch,
            keep_examples=options.keep_examples, listener=listener,
        )  # fmt: skip
        if engine_path is not None and not options.server and has_manifest(engine_path):
            report.int8_check = read_manifest(engine_path).get("int8_check")
        return report
