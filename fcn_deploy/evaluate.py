"""eval: any model or engine scored on ground truth with the paper's four metrics.

Validation compares an engine with its FP32 reference; this says what each precision costs in task
accuracy.  The model (a checkpoint, an ONNX graph or any engine, through its manifest) segments every
image of a split through the same :class:`~fcn_deploy.inference.Segmenter` as ``infer`` (images
outside the engine's profile are fitted to it and the masks resized back), and one confusion matrix
accumulates over the whole split, void ignored: pixel accuracy, mean accuracy, mean IU, f.w. IU.
"""

from __future__ import annotations

from pathlib import Path

from .backends import open_runner
from .data import DataSource
from .errors import FcnDeployError
from .events import SILENT, Listener
from .inference import Segmenter
from .metrics import ConfusionMeter, Scores


def score(segmenter: Segmenter, source: DataSource, *, batch_size: int = 8, listener: Listener = SILENT) -> Scores:
    """The paper's scores of ``segmenter`` over every image of ``source``."""
    num_classes = segmenter.meta.num_classes
    if len(source.class_names) != num_classes:
        raise FcnDeployError(
            f"{segmenter.runner.path}: has {num_classes} classes, dataset {source.name} has {len(source.class_names)}; "
            "score it on data with its own classes", options=("data",),
        )  # fmt: skip
    meter = ConfusionMeter(num_classes)
    dataset = source.dataset
    total = len(dataset)  # type: ignore[arg-type]
    listener.start("eval", total=total, description=f"scoring on {source.name}", unit="images")
    pending: list = []

    def flush() -> None:
        for (_, label), mask in zip(pending, segmenter.predict_batch([image for image, _ in pending])):
            meter.update(label, mask)
        listener.advance("eval", len(pending))
        pending.clear()

    for index in range(total):
        image, label = dataset[index]  # type: ignore[index]
        if pending and (pending[0][0].shape != image.shape or len(pending) == batch_size):
            flush()
        pending.append((image, label))
    if pending:
        flush()
    listener.finish("eval")
    return meter.scores()


def evaluate_model(path: str | Path, source: DataSource, *, batch_size: int = 8, threads: int | None = None,
                   listener: Listener = SILENT) -> dict[str, object]:  # fmt: skip
    """``eval``: open ``path`` (checkpoint, ONNX or engine) and score it; returns the report."""
    with Segmenter(open_runner(path, threads=threads)) as segmenter:
        scores = score(segmenter, source, batch_size=min(batch_size, segmenter.profile.max[0]), listener=listener)
        runner = segmenter.runner
        return {"model": str(path), "backend": runner.backend, "precision": runner.precision, "data": source.name,
                "class_names": list(segmenter.meta.class_names), "resized_images": segmenter.resized_frames, **scores.to_dict()}  # fmt: skip
