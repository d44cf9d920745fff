"""The ``fcn-deploy`` command line: a thin Typer layer over the Python API.

Every command maps to one module.  Errors the user can fix are printed as one ``error:`` line on
stderr with exit code 2; a check that ran and failed (export verification, validation) exits 1.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path
from typing import Annotated, Optional

import typer
from rich.console import Console
from rich.markup import escape
from rich.table import Table

from . import __version__
from .backends import names as backend_names
from .errors import EXIT_FAILED, EXIT_PARTIAL, EXIT_USAGE, FcnDeployError

app = typer.Typer(
    name="fcn-deploy",
    help="Fully Convolutional Networks from PyTorch to verified ONNX Runtime / TensorRT engines.\n\n"
    "Pipeline: train | import -> export -> build-engine -> validate -> infer | benchmark | serve | export-triton.  "
    "An ONNX from elsewhere: inspect -> adopt -> build-engine.  "
    "`fcn-deploy demo` runs all of it on the embedded synthetic default.",
    no_args_is_help=True,
    add_completion=False,
    rich_markup_mode="rich",
    pretty_exceptions_enable=False,
)
#: Logs and CI capture stdout: give tables room there instead of rich's 80-column default.
console = Console(soft_wrap=True, highlight=False, width=None if sys.stdout.isatty() else 140)
err_console = Console(stderr=True, soft_wrap=True, highlight=False)
#: The --backend choices besides auto, from the registry (listing it imports no backend library).
BACKEND_CHOICES = ", ".join(backend_names())


def _version(value: bool) -> None:
    if value:
        console.print(f"fcn-deploy {__version__}")
        raise typer.Exit()


@app.callback()
def _root(
    version: Annotated[
        bool, typer.Option("--version", callback=_version, is_eager=True, help="Print the version and exit.")
    ] = False,
) -> None:
    """fcn-deploy."""


def parse_hw(text: str | None, flag: str) -> tuple[int, int] | None:
    if text is None:
        return None
    from .validate import parse_sizes

    try:
        sizes = parse_sizes(text)
    except FcnDeployError as exc:
        raise FcnDeployError(f"{flag}: {exc}") from None
    if len(sizes) != 1:
        raise FcnDeployError(f"{flag} {text!r}: give one HEIGHTxWIDTH, e.g. 512x512")
    return sizes[0]


def parse_batch(text: str | None) -> tuple[int, int, int] | None:
    if text is None:
        return None
    try:
        values = [int(v) for v in text.split(",")]
    except ValueError:
        raise FcnDeployError(f"--batch {text!r}: write N (static) or MIN,OPT,MAX, e.g. 1,4,8") from None
    if len(values) == 1:
        values *= 3
    if len(values) != 3 or min(values) < 1:
        raise FcnDeployError(f"--batch {text!r}: write N (static) or MIN,OPT,MAX with positive integers")
    return values[0], values[1], values[2]


def check_report(path: Path | None, *models: Path | None) -> None:
    """Refuse a --report path that would replace an engine's manifest, or make a model look like an
    engine (``<model>.json`` is where a manifest goes): checked before the run, so no work is wasted."""
    if path is None:
        return
    from .backends.manifest import READABLE_FORMATS, manifest_path

    target = path.resolve()
    for model in filter(None, models):
        if target == manifest_path(model).resolve():
            raise FcnDeployError(f"--report {path}: {path.name} is where {Path(model).name}'s engine manifest goes; "
                                 "choose another report name")  # fmt: skip
    if path.is_file():
        try:
            existing = json.loads(path.read_text())
        except (ValueError, OSError):
            return
        if isinstance(existing, dict) and existing.get("format") in READABLE_FORMATS:
            raise FcnDeployError(f"--report {path}: is an engine manifest, and replacing it would orphan its engine; "
                                 "choose another report name")  # fmt: skip


def write_report(path: Path | None, data: dict) -> None:
    if path is None:
        return
    from .fileio import atomic_write_json

    check_report(path)
    atomic_write_json(path, data)
    console.print(f"report: {path}")


#: The --html and --overwrite options of validate, benchmark and demo.
HtmlOption = Annotated[
    Optional[Path],
    typer.Option("--html", help="Also write a self-contained HTML page (plots, pictures) here.", metavar="PAGE.html"),
]
OverwriteOption = Annotated[bool, typer.Option("--overwrite", help="Replace an existing --html page.")]


def check_html(path: Path | None, overwrite: bool) -> None:
    """Refuse a bad --html path before the run starts, so no work is wasted."""
    if path is not None:
        from .report import check_page_path

        check_page_path(path, overwrite)


def write_html(path: Path | None, page: str) -> None:
    if path is None:
        return
    from .report import write_page

    write_page(path, page)
    console.print(f"page: {path}")


# --------------------------------------------------------------------------- models / data


@app.command("models")
def models_command(
    as_json: Annotated[bool, typer.Option("--json", help="Machine-readable output.")] = False,
) -> None:
    """List the architectures with their parameters and minimum input size."""
    import torch

    from . import models

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
    table = Table(title="fcn-deploy architectures (21 classes)")
    for column in ("name", "parameters", "min input", "stride", "description"):
        table.add_column(column, justify="right" if column in ("parameters", "min input", "stride") else "left")
    for row in rows:
        table.add_row(
            row["name"], f"{row['parameters'] / 1e6:.1f}M", f"{row['min_size']}x{row['min_size']}",
            str(row["output_stride"]), row["description"],
        )  # fmt: skip
    console.print(table)


@app.command("synth-data")
def synth_data_command(
    out: Annotated[Path, typer.Argument(help="Folder to write (VOC layout).")],
    train_count: Annotated[int, typer.Option("--train", min=1, help="Training scenes.")] = 400,
    val_count: Annotated[int, typer.Option("--val", help="Validation scenes (held-out seed).")] = 100,
    size: Annotated[int, typer.Option(help="Scene side in pixels.")] = 256,
) -> None:
    """Write the synthetic dataset to disk in PASCAL VOC layout."""
    from .data import SYNTHETIC_CLASSES, SYNTHETIC_PALETTE, open_dataset, write_voc

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
    from .data.calibration import generate_default_calibration

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
    from . import models
    from .train import TrainConfig, train

    kwargs: dict = {}
    if width != 1.0:
        kwargs["width"] = width
    if learnable_upsample:
        kwargs["learnable_upsample"] = True
    models.spec(arch)
    result = train(
        TrainConfig(
            out=out, data=data, arch=arch, arch_kwargs=kwargs, epochs=epochs, steps=steps, batch_size=batch_size,
            lr=lr, img_size=img_size, seed=seed, resume=resume, init_from=init,
        ),
        console=console,
    )  # fmt: skip
    console.print(
        f"best mean IU {result['best_mean_iu']:.4f} -> {result['checkpoint']} ({result['seconds']:.0f} s, {result['steps']} steps)"
    )


@app.command("eval")
def eval_command(
    checkpoint: Annotated[Path, typer.Argument(help="Checkpoint (.pt).")],
    data: Annotated[str, typer.Option(help="'synthetic' or a VOC-layout folder.")] = "synthetic",
    split: Annotated[str, typer.Option(help="Split to score.")] = "val",
    size: Annotated[int, typer.Option(help="Synthetic scene side.")] = 192,
    count: Annotated[int, typer.Option(help="Synthetic scenes.")] = 96,
    report: Annotated[Optional[Path], typer.Option(help="Write the scores as JSON.")] = None,
) -> None:
    """Score a checkpoint with the paper's metrics (pixel acc, mean acc, mean IU, f.w. IU)."""
    from .checkpoint import load_checkpoint
    from .data import open_dataset
    from .train import evaluate

    ckpt = load_checkpoint(checkpoint)
    source = open_dataset(data, split, size=size, length=count)
    if len(source.class_names) != ckpt.meta.num_classes:
        raise FcnDeployError(
            f"{checkpoint}: has {ckpt.meta.num_classes} classes, dataset {data} has {len(source.class_names)}"
        )
    scores = evaluate(ckpt.build_model(), source, ckpt.meta.mean, ckpt.meta.std, ckpt.meta.num_classes)
    table = Table(title=f"{checkpoint.name} on {source.name}")
    table.add_column("class")
    table.add_column("IU", justify="right")
    for name, iu in zip(ckpt.meta.class_names, scores.per_class_iu):
        table.add_row(name, "n/a" if iu != iu else f"{iu:.4f}")
    console.print(table)
    console.print(
        f"pixel acc {scores.pixel_accuracy:.4f}  mean acc {scores.mean_accuracy:.4f}  "
        f"mean IU {scores.mean_iu:.4f}  f.w. IU {scores.fw_iu:.4f}"
    )
    write_report(report, {"checkpoint": str(checkpoint), "data": source.name, **scores.to_dict()})


@app.command("import")
def import_command(
    source: Annotated[Optional[Path], typer.Argument(help="torchvision fcn_resnet50/101 or vgg16 state dict.")] = None,
    out: Annotated[Path, typer.Option("--out", "-o", help="Checkpoint to write (.pt).")] = Path("models/imported.pt"),
    pretrained: Annotated[
        Optional[str], typer.Option(help="Download torchvision weights: fcn_resnet50, fcn_resnet101 or vgg16.")
    ] = None,
    arch: Annotated[str, typer.Option(help="For a VGG16 classifier: fcn32s-vgg16, fcn16s-vgg16 or fcn8s-vgg16.")] = "fcn8s-vgg16",
    num_classes: Annotated[int, typer.Option(help="For a VGG16 classifier: classes of the new FCN.")] = 21,
    classes: Annotated[Optional[Path], typer.Option(help="classes.json with class_names (and palette).")] = None,
) -> None:
    """Convert torchvision FCN or VGG16 weights into an fcn-deploy checkpoint."""
    from .importer import import_weights

    path, meta = import_weights(out, source, pretrained, arch, num_classes, classes)
    console.print(f"wrote {path}: {meta.arch}, {meta.num_classes} classes ({meta.metrics.get('kind')})")


# --------------------------------------------------------------------------- export / build / validate


@app.command("export")
def export_command(
    checkpoint: Annotated[Path, typer.Argument(help="Checkpoint (.pt).")],
    out: Annotated[Optional[Path], typer.Option("--out", "-o", help="ONNX file (default: next to the checkpoint).")] = None,
    opset: Annotated[int, typer.Option(help="ONNX opset (17..23).")] = 20,
    static_batch: Annotated[bool, typer.Option("--static-batch", help="Fix the batch to 1.")] = False,
    simplify: Annotated[bool, typer.Option("--simplify", help="Simplify with onnxslim (verified again).")] = False,
    mask_output: Annotated[bool, typer.Option("--mask-output", help="Add an int64 argmax 'mask' output.")] = False,
    report: Annotated[Optional[Path], typer.Option(help="Write the check as JSON.")] = None,
) -> None:
    """Export to ONNX (dynamic N, H, W) and verify ONNX Runtime against PyTorch at many sizes."""
    from .export import ExportOptions, export_onnx

    out = out or checkpoint.with_suffix(".onnx")
    check_report(report, out)
    result = export_onnx(checkpoint, out, ExportOptions(opset, static_batch, simplify, mask_output), console=console)
    write_report(report, result)


@app.command("inspect")
def inspect_command(
    model: Annotated[Path, typer.Argument(help="Any .onnx, an engine (with its manifest) or a .pt checkpoint.")],
    run: Annotated[bool, typer.Option("--run/--no-run", help="Run an ONNX once in ONNX Runtime to see its real output shapes.")] = True,
    report: Annotated[Optional[Path], typer.Option(help="Write everything shown as JSON.")] = None,
) -> None:
    """Show a model's inputs/outputs, opset, ops, parameters and metadata, and whether it fits the toolkit."""
    from .adopt import inspect_model, print_inspection

    check_report(report, model)
    result = inspect_model(model, run=run)
    print_inspection(console, result)
    write_report(report, result)


@app.command("adopt")
def adopt_command(
    model: Annotated[Path, typer.Argument(help="A segmentation ONNX exported elsewhere (FP32).", metavar="MODEL.onnx")],
    out: Annotated[Path, typer.Option("--out", "-o", help="The adopted ONNX to write (one file, with fcn-deploy metadata).")],
    num_classes: Annotated[Optional[int], typer.Option("--num-classes", min=2, help="Classes (checked against the logits' C).")] = None,
    classes: Annotated[
        Optional[str], typer.Option(help="Class names a,b,c, or a file (.json list / {class_names, palette}, or one per line).")
    ] = None,
    mean: Annotated[Optional[str], typer.Option(help="Normalisation mean r,g,b in 0..1 (default ImageNet's 0.485,0.456,0.406).")] = None,
    std: Annotated[Optional[str], typer.Option(help="Normalisation std r,g,b in 0..1 (default ImageNet's 0.229,0.224,0.225).")] = None,
    palette: Annotated[Optional[str], typer.Option(help="Colours r,g,b;r,g,b (0..255) or a JSON file (default: VOC colour map).")] = None,
    output: Annotated[Optional[str], typer.Option("--output", help="The logits output to keep, when there are several.")] = None,
    min_size: Annotated[Optional[int], typer.Option("--min-size", min=2, help="Smallest input side (default: found by running).")] = None,
    input_name: Annotated[Optional[str], typer.Option("--input-name", help="The image input, when the graph lists several.")] = None,
    report: Annotated[Optional[Path], typer.Option(help="Write what adopt did as JSON.")] = None,
) -> None:
    """Bring a foreign segmentation ONNX in: verify it runs at many sizes, write a copy every command takes."""
    from .adopt import AdoptOptions, adopt, parse_class_names, parse_palette, parse_rgb_floats

    check_report(report, out, model)
    names, file_palette = parse_class_names(classes) if classes is not None else (None, None)
    options = AdoptOptions(
        num_classes=num_classes, class_names=names, palette=parse_palette(palette) if palette is not None else file_palette,
        mean=parse_rgb_floats(mean, "--mean") if mean is not None else None,
        std=parse_rgb_floats(std, "--std") if std is not None else None, output=output, input_name=input_name, min_size=min_size,
    )  # fmt: skip
    with console.status(f"adopting {model.name}"):
        result = adopt(model, out, options, log=lambda line: console.print(escape(line)))
    console.print(f"[green]wrote[/] {out} ({out.stat().st_size / 1e6:.1f} MB); next: fcn-deploy build-engine {out}")
    write_report(report, result)


@app.command("build-engine")
def build_engine_command(
    onnx_path: Annotated[Path, typer.Argument(help="Exported FP32 ONNX.", metavar="MODEL.onnx")],
    out: Annotated[Optional[Path], typer.Option("--out", "-o", help="Engine path (default: next to the ONNX).")] = None,
    fp16: Annotated[bool, typer.Option("--fp16", help="FP16 graph (FP32 kept where values overflow).")] = False,
    int8: Annotated[bool, typer.Option("--int8", help="INT8 Q/DQ graph from calibration.")] = False,
    calib: Annotated[Optional[Path], typer.Option(help="Calibration images (default: calibration/).")] = None,
    calib_method: Annotated[str, typer.Option(help="minmax, entropy or percentile.")] = "minmax",
    backend: Annotated[str, typer.Option(help=f"auto or one of: {BACKEND_CHOICES}.")] = "auto",
    int8_target: Annotated[
        Optional[str],
        typer.Option("--int8-target", help="Build the INT8 graph with this backend's activation encoding (default: the compiling backend's)."),
    ] = None,
    min_shape: Annotated[Optional[str], typer.Option("--min-shape", help="HxW (default: the arch minimum).")] = None,
    opt_shape: Annotated[Optional[str], typer.Option("--opt-shape", help="HxW (default: the training size).")] = None,
    max_shape: Annotated[Optional[str], typer.Option("--max-shape", help="HxW (default: the recommended max).")] = None,
    batch: Annotated[Optional[str], typer.Option(help="N or MIN,OPT,MAX (default 1,1,8).")] = None,
    workspace: Annotated[float, typer.Option(help="TensorRT workspace limit, GiB.")] = 4.0,
    timing_cache: Annotated[Optional[Path], typer.Option("--timing-cache", help="TensorRT timing cache file (reused).")] = None,
) -> None:
    """Build an FP32, FP16 or INT8 engine (any registered backend) with a JSON manifest."""
    from .backends import manifest_path
    from .engines import BuildOptions, build_engine

    if fp16 and int8:
        raise FcnDeployError("choose one of --fp16 and --int8")
    precision = "fp16" if fp16 else "int8" if int8 else "fp32"
    opts = BuildOptions(
        precision=precision, backend=backend, min_shape=parse_hw(min_shape, "--min-shape"),
        opt_shape=parse_hw(opt_shape, "--opt-shape"), max_shape=parse_hw(max_shape, "--max-shape"),
        batch=parse_batch(batch), calib_dir=calib, calib_method=calib_method, int8_target=int8_target, workspace_gib=workspace,
        timing_cache=timing_cache,
    )  # fmt: skip
    manifest = build_engine(onnx_path, out, opts, log=console.print)
    engine = onnx_path.with_name(manifest["engine"]) if out is None else out
    profile = manifest["profile"]
    files = ", ".join(f["name"] for f in manifest["files"])
    console.print(
        f"[green]built[/] {engine} ({manifest['backend']}, {precision}; files {files}; profile N,H,W "
        f"{profile['min']} .. {profile['max']}, opt {profile['opt']}); manifest {manifest_path(engine)}"
    )


@app.command("validate")
def validate_command(
    engine: Annotated[Optional[Path], typer.Argument(help="Engine, or any ONNX file (or --server).")] = None,
    reference: Annotated[
        Optional[Path],
        typer.Option("--reference", "-r", help="The FP32 reference: the PyTorch checkpoint (.pt) or an FP32 ONNX (e.g. the original an adopted model came from)."),
    ] = None,
    sizes: Annotated[Optional[str], typer.Option(help="Comma-separated HxW list, e.g. 97x129,333x517.")] = None,
    random_sizes: Annotated[int, typer.Option("--random-sizes", help="Extra seeded random sizes.")] = 4,
    images: Annotated[Optional[Path], typer.Option(help="Real images (fitted to each size).")] = None,
    batch: Annotated[int, typer.Option(min=1, help="Batch size per case.")] = 1,
    precision: Annotated[Optional[str], typer.Option(help="Threshold set (default: the engine's).")] = None,
    min_agreement: Annotated[Optional[float], typer.Option("--min-agreement", help="Pixel agreement over all sizes (0..1).")] = None,
    min_size_agreement: Annotated[
        Optional[float], typer.Option("--min-size-agreement", help="Floor on each size's pixel agreement (0..1).")
    ] = None,
    min_confident: Annotated[Optional[float], typer.Option("--min-confident", help="Confident-pixel agreement.")] = None,
    min_miou: Annotated[Optional[float], typer.Option("--min-miou", help="Mean IU vs the reference, over all sizes.")] = None,
    margin: Annotated[Optional[float], typer.Option(help="Logit margin above which a pixel is confident.")] = None,
    max_side: Annotated[Optional[int], typer.Option("--max-side", help="Cap the default sizes' largest side.")] = None,
    seed: Annotated[int, typer.Option(help="Seed of the random sizes.")] = 0,
    report: Annotated[Optional[Path], typer.Option(help="Write the JSON report here.")] = None,
    html: HtmlOption = None,
    overwrite: OverwriteOption = False,
    emulate_fp16: Annotated[
        bool, typer.Option("--emulate-fp16", help="ENGINE is a checkpoint: run it in float16 and judge it by the FP16 thresholds.")
    ] = False,
    server: Annotated[
        Optional[str], typer.Option("--server", help="Validate the model a Triton server serves: HOST:PORT (gRPC).")
    ] = None,
    model: Annotated[str, typer.Option("--model", help="With --server: the served model's name.")] = "fcn",
) -> None:
    """Check the engine's masks against the FP32 reference (checkpoint or ONNX) at many sizes (exit 1 on failure)."""
    from .validate import ExampleKeeper, validate_engine

    if (engine is None) == (server is None):
        raise FcnDeployError("give an ENGINE to validate, or --server HOST:PORT to validate a served model")
    if emulate_fp16 and server:
        raise FcnDeployError("--emulate-fp16 runs a checkpoint in float16 here; it does not apply to --server")
    check_report(report, engine, reference)
    if reference is None:
        raise FcnDeployError("--reference is required: the FP32 model the engine is checked against (a .pt checkpoint or an FP32 ONNX)")
    check_html(html, overwrite)
    keeper = ExampleKeeper() if html else None
    result = validate_engine(
        engine, reference, sizes=sizes, random_sizes=random_sizes, images=images, batch=batch, precision=precision,
        min_agreement=min_agreement, min_confident=min_confident, min_miou=min_miou, margin=margin,
        max_side=max_side, seed=seed, console=console, min_size_agreement=min_size_agreement, keep_examples=keeper,
        emulate_fp16=emulate_fp16, server=server, model=model,
    )  # fmt: skip
    write_report(report, result.to_dict())
    if html:
        from .report import validation_page

        write_html(html, validation_page(result.to_dict(), keeper))
    if not result.passed:
        raise typer.Exit(EXIT_FAILED)


# --------------------------------------------------------------------------- infer / benchmark / demo


@app.command("infer")
def infer_command(
    source: Annotated[Path, typer.Argument(help="Video file, image, or folder of images.")],
    engine: Annotated[Optional[Path], typer.Option("--engine", "-e", help="Engine, ONNX file or checkpoint.")] = None,
    out: Annotated[Optional[Path], typer.Option("--out", "-o", help="Output video / folder.")] = None,
    alpha: Annotated[float, typer.Option(help="Mask overlay opacity (0..1).")] = 0.5,
    save_masks: Annotated[Optional[Path], typer.Option("--save-masks", help="Also write per-frame label PNGs.")] = None,
    batch: Annotated[
        Optional[int], typer.Option(min=1, help="Frames per inference batch (default 1; with --server: frames in flight, default 8).")
    ] = None,
    max_frames: Annotated[Optional[int], typer.Option("--max-frames", help="Stop after N frames.")] = None,
    overwrite: Annotated[bool, typer.Option("--overwrite", help="Replace an existing output.")] = False,
    convert_rgb: Annotated[bool, typer.Option("--convert-rgb", help="Convert grayscale/RGBA images to RGB.")] = False,
    strict: Annotated[
        bool, typer.Option("--strict", help="Stop at the first unreadable image (default: skip it with a warning, exit 3).")
    ] = False,
    report: Annotated[Optional[Path], typer.Option(help="Write the timing summary (and any skipped images) as JSON.")] = None,
    server: Annotated[
        Optional[str], typer.Option("--server", help="Run on a Triton server instead: HOST:PORT of its gRPC endpoint.")
    ] = None,
    model: Annotated[str, typer.Option("--model", help="With --server: the served model's name.")] = "fcn",
) -> None:
    """Segment a video (overlay video out) or images (mask PNGs + overlays), locally or on a Triton server;
    exit 3 when images were skipped."""
    from .backends.remote import DEFAULT_IN_FLIGHT
    from .video import run_infer

    if (engine is None) == (server is None):
        raise FcnDeployError("give --engine ENGINE to run locally, or --server HOST:PORT to run on a Triton server")
    check_report(report, engine, source)
    summary = run_infer(
        source, engine, out=out, alpha=alpha, save_masks=save_masks, batch=batch or (DEFAULT_IN_FLIGHT if server else 1),
        max_frames=max_frames, overwrite=overwrite, convert_rgb=convert_rgb, console=console, strict=strict,
        server=server, model=model,
    )  # fmt: skip
    write_report(report, summary)
    if summary.get("skipped"):
        raise typer.Exit(EXIT_PARTIAL)


@app.command("benchmark")
def benchmark_command(
    engines: Annotated[Optional[list[Path]], typer.Argument(help="Engines / ONNX files to time.", metavar="ENGINE...")] = None,
    reference: Annotated[Optional[Path], typer.Option("--reference", "-r", help="Checkpoint for the PyTorch eager baseline.")] = None,
    sizes: Annotated[str, typer.Option(help="Comma-separated HxW list.")] = "512x512",
    batch: Annotated[int, typer.Option(min=1, help="Batch size.")] = 1,
    warmup: Annotated[int, typer.Option(min=0, help="Untimed warm-up runs.")] = 3,
    iters: Annotated[int, typer.Option(min=1, help="Timed runs (median and p90 reported; with --server: per client).")] = 20,
    threads: Annotated[Optional[int], typer.Option(help="CPU threads for torch and ORT (default: all cores).")] = None,
    report: Annotated[Optional[Path], typer.Option(help="Write the JSON report here.")] = None,
    html: HtmlOption = None,
    overwrite: OverwriteOption = False,
    server: Annotated[
        Optional[str], typer.Option("--server", help="Measure a Triton server instead: HOST:PORT of its gRPC endpoint.")
    ] = None,
    model: Annotated[str, typer.Option("--model", help="With --server: the served model's name.")] = "fcn",
    concurrency: Annotated[str, typer.Option(help="With --server: concurrent clients per level, e.g. 1,4,16.")] = "1,4,16",
) -> None:
    """Time engines against the PyTorch eager FP32 baseline, in one run; or a Triton server under concurrency (--server)."""
    from .validate import parse_sizes

    check_html(html, overwrite)
    check_report(report, *(engines or []), reference)
    if server:
        from .serve.benchmark import parse_concurrency, run_server_benchmark

        if engines or reference:
            raise FcnDeployError("--server measures a running server: drop the ENGINE arguments and --reference")
        if html:
            raise FcnDeployError("--html pages cover local engines; with --server, write --report JSON")
        result = run_server_benchmark(
            server, model, parse_concurrency(concurrency), parse_sizes(sizes), warmup=warmup, iters=iters, console=console
        )
        write_report(report, result)
        return
    from .bench import run_benchmark

    result = run_benchmark(
        engines or [], reference=reference, sizes=parse_sizes(sizes), batch=batch, warmup=warmup, iters=iters,
        threads=threads, console=console,
    )  # fmt: skip
    write_report(report, result)
    if html:
        from .report import benchmark_page

        write_html(html, benchmark_page(result))


@app.command("serve")
def serve_command(
    engine: Annotated[Path, typer.Argument(help="Engine, ONNX file or checkpoint to serve.")],
    name: Annotated[str, typer.Option(help="Model name clients ask for.")] = "fcn",
    host: Annotated[str, typer.Option(help="Address to listen on (0.0.0.0: every interface).")] = "127.0.0.1",
    http_port: Annotated[int, typer.Option("--http-port", help="HTTP/REST endpoint (KServe v2).")] = 8000,
    grpc_port: Annotated[int, typer.Option("--grpc-port", help="gRPC endpoint.")] = 8001,
    metrics_port: Annotated[int, typer.Option("--metrics-port", help="Prometheus metrics (/metrics).")] = 8002,
    max_batch: Annotated[
        Optional[int], typer.Option("--max-batch", help="Largest batch Triton forms (default: the profile's).")
    ] = None,
    queue_delay_us: Annotated[int, typer.Option("--queue-delay-us", help="How long Triton holds a request to fill a batch.")] = 0,
    instances: Annotated[int, typer.Option(help="Engine instances running batches in parallel.")] = 1,
    threads: Annotated[Optional[int], typer.Option(help="CPU threads per instance (default: cores / instances).")] = None,
    triton_log: Annotated[Optional[Path], typer.Option("--triton-log", help="Keep Triton's own log in this file.")] = None,
) -> None:
    """Serve an engine with NVIDIA's Triton Inference Server (UINT8 image in, mask out) until Ctrl-C / SIGTERM."""
    from .serve.triton import serve

    serve(
        engine, name=name, host=host, http_port=http_port, grpc_port=grpc_port, metrics_port=metrics_port,
        max_batch=max_batch, queue_delay_us=queue_delay_us, instances=instances, threads=threads, triton_log=triton_log,
        console=console,
    )  # fmt: skip


@app.command("export-triton")
def export_triton_command(
    engine: Annotated[Path, typer.Argument(help="Engine (TensorRT, ONNX Runtime or OpenVINO) or exported ONNX.")],
    repo: Annotated[Path, typer.Option("--repo", help="Model repository folder to write.")],
    name: Annotated[str, typer.Option(help="Model name clients ask for (the ensemble).")] = "fcn",
    max_batch: Annotated[Optional[int], typer.Option("--max-batch", help="max_batch_size (default: the profile's).")] = None,
    queue_delay_us: Annotated[int, typer.Option("--queue-delay-us", help="Dynamic batcher queue delay.")] = 0,
    instances: Annotated[int, typer.Option(help="instance_group count of each model.")] = 1,
    overwrite: Annotated[bool, typer.Option("--overwrite", help="Replace an existing repository.")] = False,
) -> None:
    """Write a Triton model repository (engine served natively + pre/post-processing + ensemble) for NVIDIA's container."""
    from .serve.repository import export_triton

    result = export_triton(
        engine, repo, name=name, max_batch=max_batch, queue_delay_us=queue_delay_us, instances=instances, overwrite=overwrite,
        log=console.print,
    )  # fmt: skip
    console.print(escape(result["readme"]))


@app.command("demo")
def demo_command(
    out: Annotated[Path, typer.Option("--out", "-o", help="Where everything goes.")] = Path("demo-out"),
    force: Annotated[bool, typer.Option("--force", help="Rebuild everything, even what exists.")] = False,
    train_steps: Annotated[int, typer.Option("--train-steps", help="Training steps for the default model.")] = 0,
    backend: Annotated[str, typer.Option(help=f"auto (every usable backend) or one of: {BACKEND_CHOICES}.")] = "auto",
    html: Annotated[
        Optional[Path], typer.Option("--html", help="Also copy the page (always written to OUT/report.html) here.", metavar="PAGE.html")
    ] = None,
    overwrite: OverwriteOption = False,
) -> None:
    """The main job: data, train, eval, export, FP32/FP16/INT8 engines, validate, video, benchmark; OUT/report.html."""
    from .demo import run_demo

    check_html(html, overwrite)
    result = run_demo(out, force=force, train_steps=train_steps or None, backend=backend, console=console, html=html)
    if not result.get("passed", False):
        raise typer.Exit(EXIT_FAILED)


@app.command("backends")
def backends_command(
    as_json: Annotated[bool, typer.Option("--json", help="Machine-readable output.")] = False,
) -> None:
    """List the registered backends: usable here or not (and why), and what `auto` picks."""
    from . import backends

    rows = []
    for name in backends.names():
        backend = backends.get(name)
        usable, why = backend.status()
        rows.append({"name": name, "usable": usable, "why": why, "device": backend.device, "int8_encoding": backend.int8_encoding,
                     "engine_suffix": backend.engine_suffix, "auto_rank": backend.auto_rank})  # fmt: skip
    if as_json:
        console.print_json(json.dumps(rows))
        return
    table = Table(title="fcn-deploy backends (auto picks the first usable, top to bottom)")
    for column in ("name", "usable", "device", "INT8 activations", "engine", "why"):
        table.add_column(column)
    for row in sorted(rows, key=lambda r: r["auto_rank"]):
        table.add_row(row["name"], "[green]yes[/]" if row["usable"] else "[yellow]no[/]", row["device"], row["int8_encoding"],
                      f"*.{row['engine_suffix']}", escape(row["why"]))  # fmt: skip
    console.print(table)


@app.command("gpu-check")
def gpu_check_command() -> None:
    """Say whether TensorRT and a CUDA device are usable here, and why not (exit 2 when they are not).

    scripts/gpu-check.sh runs the rest: install for the driver, GPU tests, demo, validation, benchmark."""
    from . import backends
    from .backends.onnxruntime import choose_providers
    from .backends.tensorrt import gpu_info
    from .engines import library_versions

    tensorrt = backends.get("tensorrt")
    usable, why = tensorrt.status()
    console.print(f"TensorRT: {'[green]usable[/]' if usable else '[yellow]not usable[/]'} ({why})")
    console.print(f"GPU: {gpu_info() or 'none'}")
    console.print(f"ONNX Runtime providers (auto): {choose_providers('auto')}")
    console.print(f"versions: {library_versions(tensorrt)}")
    if not usable:
        raise FcnDeployError(f"TensorRT is not usable here: {why}; {tensorrt.install_hint}")


def main(argv: list[str] | None = None) -> int:
    """Console-script entry point: runs the app and maps errors to exit codes."""
    try:
        app(args=argv, prog_name="fcn-deploy")  # standalone mode: usage errors print and exit 2
    except SystemExit as exc:
        return exc.code if isinstance(exc.code, int) else (0 if exc.code is None else EXIT_USAGE)
    except FcnDeployError as exc:
        err_console.print(f"[red]error:[/] {escape(str(exc))}")
        return exc.exit_code
    except OSError as exc:  # disk full, permissions, ... met while writing or reading artefacts
        where = f"{exc.filename}: " if exc.filename else ""
        err_console.print(f"[red]error:[/] {escape(where + (exc.strerror or str(exc)))}; check the path, its permissions and free space")
        return EXIT_USAGE
    return 0


if __name__ == "__main__":
    sys.exit(main())
