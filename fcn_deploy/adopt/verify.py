"""The proof ``adopt`` gives before writing anything: the edited graph runs in ONNX Runtime at the
minimum size, odd sizes and batch 2, with output H x W equal to the input's."""

from __future__ import annotations

from pathlib import Path

import numpy as np

from ..errors import FcnDeployError
from ..events import SILENT, Listener
from ..onnxkit import ort_message
from .contract import OUTPUT_NAMES, shape_text, stride_candidates
from .edit import Candidate, with_low_output
from .probe import Probe

#: Minimum sizes tried, smallest first, when no minimum size is given.
MIN_SIZE_CANDIDATES = (32, 64, 128, 256)


class BatchFailed(FcnDeployError):
    """Batch 2 failed on a graph whose batch was fixed: retry with the batch kept fixed."""


def verify(built: Candidate, min_size: int | None, first: tuple[int, int, int], *, src: Path, kind: str, num_classes: int,
           strides: set[int], mean, std, static, fixed_batch: bool, listener: Listener = SILENT, task: str = "adopt",
           ) -> tuple[list[list[int]], int, set[int], np.ndarray]:  # fmt: skip
    """Run the edited graph at the minimum size (found by running when None), odd sizes and batch 2.

    Returns the shapes verified, the minimum size, the strides still consistent, and the output at
    the first probe size (``first``).  Each run advances ``listener``'s ``task``.
    """
    probe = Probe(with_low_output(built), src, mean, std)
    wanted = [OUTPUT_NAMES[kind]] + ([built.low_name] if built.low_name else [])
    strides = set(strides)

    def check(n: int, h: int, w: int) -> np.ndarray:
        nonlocal strides
        listener.advance(task, 1, description=f"adopting {src.name}: {n}x3x{h}x{w}")
        try:
            results = probe.run(n, h, w, wanted)
        except Exception as exc:
            if n > 1 and fixed_batch:
                raise BatchFailed(ort_message(exc)) from exc
            raise fails_at(src, static, n, h, w, ort_message(exc)) from exc
        value = results[wanted[0]]
        expected = (n, num_classes, h, w) if kind == "logits" else (n, h, w)
        if value.shape != expected:
            raise fails_at(src, static, n, h, w, f"output {'x'.join(map(str, value.shape))}, expected {'x'.join(map(str, expected))}")
        if kind == "logits" and not np.isfinite(value).all():
            raise FcnDeployError(f"{src}: produces NaN or infinite logits at {n}x3x{h}x{w}; check the model's weights and normalisation")
        if kind == "mask" and value.size and (value.min() < 0 or value.max() >= num_classes):
            raise FcnDeployError(f"{src}: its mask holds class {int(value.max())} at {n}x3x{h}x{w}, beyond the "
                                 f"{num_classes} classes given; give the right number of classes", options=("num_classes",))  # fmt: skip
        if built.low_name:
            low = results[built.low_name].shape[2:]
            strides = strides & stride_candidates((h, w), tuple(low))
            if not strides:
                raise fails_at(src, static, n, h, w, f"logits come out at {low[0]}x{low[1]}, not a fixed fraction "
                                                     "of the input as at the other sizes")  # fmt: skip
        return value

    if min_size is None:
        tried = []
        for size in MIN_SIZE_CANDIDATES:
            try:
                check(1, size, size)
            except BatchFailed:
                raise
            except FcnDeployError as exc:
                tried.append(exc)
                continue
            min_size = size
            break
        if min_size is None:
            last = tried[-1]
            raise FcnDeployError(f"{last} (also tried {', '.join(f'{s}x{s}' for s in MIN_SIZE_CANDIDATES)})", options=last.options)
    base = max(min_size, 64)
    sizes = [(min_size, min_size), (min_size + 1, 2 * min_size + 1), (base + 33, base + 65), (base + 67, base + 3)]
    shapes: list[list[int]] = []
    for h, w in dict.fromkeys(sizes):
        check(1, h, w)
        shapes.append([1, h, w])
    if built.batch_dynamic:
        check(2, *sizes[2])
        shapes.append([2, *sizes[2]])
    first_out = check(*first)
    if list(first) not in shapes:
        shapes.append(list(first))
    return shapes, min_size, strides, first_out


def fails_at(src: Path, static, n: int, h: int, w: int, why: str) -> FcnDeployError:
    """The error for a graph that does not run (or gives the wrong shape) at ``n x 3 x h x w``."""
    if static is not None:
        return FcnDeployError(
            f"{src}: its input is fixed at {shape_text(static)}, and the graph does not work at other sizes once height "
            f"and width are made dynamic (at {n}x3x{h}x{w}: {why}); re-export it with dynamic height and width, e.g. "
            "torch.onnx.export(..., dynamic_axes={'input': {0: 'N', 2: 'H', 3: 'W'}})"
        )
    return FcnDeployError(
        f"{src}: does not work at {n}x3x{h}x{w} ({why}); fcn-deploy runs any size from the minimum up: if only small "
        "sizes fail, give a larger minimum size; if the model needs multiples of its stride, re-export it with the padding inside",
        options=("min_size",),
    )
