"""Commands for models and data: models, synth-data, calib-data, train, eval, import."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Annotated, Optional

import typer

from .app import app, console, listener
from .options import check_report, write_report


@app.command("models")
def models_command(
    as_json: Annotated[bool, typer.Option("--json", help="Machine-readable output.")] = False,
) -> None:
    """List the architectures with their parameters and minimum input size."""
    import torch

    from .. import models

    rows = []
    for name in models.names():
        spec = models.spec(name)
        with torch.device("meta"):  # shapes only: counting needs no weights in memory
            parameters = models.count_parameters(models.build(name, 21))
        rows.append(
            {
                "name": name,
                "parameters": parameters,
                "min_size": spec.min_size,
                "output_stride": spec.output_stride,
                "description": spec.description,
            }
        )
    if as_json:
        console.print_json(json.dumps(rows))
        return
    from ..render.data import print_models

    print_models(console, rows)


@app.command("synth-data")
def synth_data_command(
    out: Annotated[Path, typer.Argument(help="Folder to write (VOC layout).")],
    train_count: Annotated[int, typer.Option("--train", min=1, help="Training scenes.")] = 400,
    val_count: Annotated[int, typer.Option("--val", help="Validation scenes (held-out seed).")] = 100,
    size: Annotated[int, typer.Option(help="Scene side in pixels.")] = 256,
) -> None:
    """Write the synthetic dataset to disk in PASCAL VOC layout."""
    from ..data import SYNTHETIC_CLASSES, SYNTHETIC_PALETTE, open_dataset, write_voc

    splits = {
        "train": open_dataset("synthetic", "train", size=size, length=train_count).dataset,
        "val": open_dataset("synthetic", "val", size=size, length=val_count).dataset,
    }
    write_voc(out, splits, list(SYNTHETIC_CLASSES), [list(c) for c in SYNTHETIC_PALETTE])
    console.print(f"wrote {train_count} + {val_count} scenes to {out} (VOC layout)")


@app.command("calib-data")
def calib_data_command(
    out: Annotated[Path, typer.Argument(help="Calibration folder.")] = Path("calibration"),
    count: Annotated[int, typer.Option(min=1, help="Number of images.")] = 32,
    size: Annotated[int, typer.Option(help="Image side in pixels.")] = 256,
) -> None:
    """Generate the default calibration set (synthetic scenes from a held-out seed)."""
    from ..data.calibration import generate_default_calibration

    generate_default_calibration(out, count, size)
    console.print(f"wrote {count} calibration images to {out}")


# --------------------------------------------------------------------------- train / eval / import


@app.command("train")
def train_command(
    out: Annotated[Path, typer.Option("--out", "-o", help="Best checkpoint path (.pt).")],
    data: Annotated[str, typer.Option(help="'synthetic' or a VOC-layout folder.")] = "synthetic",
    arch: Annotated[str, typer.Option(help="Architecture (see `fcn-deploy models`).")] = "fcn8s-resnet18",
    width: Annotated[float, typer.Option(help="Channel width multiplier.")] = 1.0,
    epochs: Annotated[int, typer.Option(min=1, help="Epochs (validation + checkpoint after each).")] = 5,
    steps: Annotated[Optional[int], typer.Option(min=1, help="Total steps (overrides epochs x dataset size).")] = None,
    batch_size: Annotated[int, typer.Option("--batch-size", min=1, help="Batch size.")] = 16,
    lr: Annotated[float, typer.Option(help="Peak learning rate (AdamW, warm-up + cosine).")] = 3e-3,
    img_size: Annotated[int, typer.Option("--img-size", min=1, help="Training crop side.")] = 128,
    learnable_upsample: Annotated[bool, typer.Option(help="Learn the bilinear upsampling.")] = False,
    resume: Annotated[Optional[Path], typer.Option(help="Resume from a checkpoint (e.g. OUT.last.pt).")] = None,
    init: Annotated[Optional[Path], typer.Option(help="Start from an imported checkpoint's weights.")] = None,
    seed: Annotated[int, typer.Option(help="Random seed.")] = 0,
) -> None:
    """Train an FCN; validates each epoch and keeps the best checkpoint."""
    from .. import models
    from ..train import TrainConfig, train

    kwargs: dict = {}
    if width != 1.0:
        kwargs["width"] = width
    if learnable_upsample:
        kwargs["learnable_upsample"] = True
    models.spec(arch)
    config = TrainConfig(
        out=out, data=data, arch=arch, arch_kwargs=kwargs, epochs=epochs, steps=steps, batch_size=batch_size,
        lr=lr, img_size=img_size, seed=seed, resume=resume, init_from=init,
    )  # fmt: skip
    try:
        result = train(config, listener=listener)
    except KeyboardInterrupt:
        from ..train import last_path

        if last_path(out).exists():
            console.print(f"resume with: fcn-deploy train -o {out} --resume {last_path(out)} (and the same options)")
        raise
    console.print(
        f"best mean IU {result['best_mean_iu']:.4f} -> {result['checkpoint']} ({result['seconds']:.0f} s, {result['steps']} steps)"
    )


@app.command("eval")
def eval_command(
    model: Annotated[Path, typer.Argument(help="A checkpoint (.pt), an ONNX graph or any engine.", metavar="MODEL_OR_ENGINE")],
    data: Annotated[str, typer.Option(help="'synthetic' or a VOC-layout folder.")] = "synthetic",
    split: Annotated[str, typer.Option(help="Split to score.")] = "val",
    size: Annotated[int, typer.Option(help="Synthetic scene side.")] = 192,
    count: Annotated[int, typer.Option(help="Synthetic scenes.")] = 96,
    report: Annotated[Optional[Path], typer.Option(help="Write the scores as JSON.")] = None,
) -> None:
    """Score a model or engine on ground truth with the paper's metrics (pixel acc, mean acc, mean IU, f.w. IU)."""
    from ..data import open_dataset
    from ..evaluate import evaluate_model
    from ..render.data import print_scores

    check_report(report, model)
    result = evaluate_model(model, open_dataset(data, split, size=size, length=count), listener=listener)
    print_scores(console, result, title=f"{model.name} ({result['backend']}, {result['precision']}) on {result['data']}")
    write_report(report, {"checkpoint": str(model), **result})


@app.command("import")
def import_command(
    source: Annotated[Optional[Path], typer.Argument(help="torchvision fcn_resnet50/101 or vgg16 state dict.")] = None,
    out: Annotated[Path, typer.Option("--out", "-o", help="Checkpoint to write (.pt).")] = Path("models/imported.pt"),
    pretrained: Annotated[Optional[str], typer.Option(help="Download torchvision weights: fcn_resnet50, fcn_resnet101 or vgg16.")] = None,
    arch: Annotated[str, typer.Option(help="For a VGG16 classifier: fcn32s-vgg16, fcn16s-vgg16 or fcn8s-vgg16.")] = "fcn8s-vgg16",
    num_classes: Annotated[int, typer.Option(help="For a VGG16 classifier: classes of the new FCN.")] = 21,
    classes: Annotated[Optional[Path], typer.Option(help="classes.json with class_names (and palette).")] = None,
) -> None:
    """Convert torchvision FCN or VGG16 weights into an fcn-deploy checkpoint."""
    from ..importer import import_weights

    path, meta = import_weights(out, source, pretrained, arch, num_classes, classes)
    console.print(f"wrote {path}: {meta.arch}, {meta.num_classes} classes ({meta.metrics.get('kind')})")
