"""The one place ONNX Runtime sessions are made.

Runners, references, probes, the FP16 range pass and the ORT compile step all need a session with
the same few choices (threads, providers, the optimisation level, where the optimised graph goes,
quiet logs) and the same one-line error when ONNX Runtime refuses the model.
"""

from __future__ import annotations

import re
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any, Literal

from ..errors import FcnDeployError, first_line

Optimization = Literal["all", "extended", "basic", "disabled"]
CPU = ("CPUExecutionProvider",)


def ort_message(exc: BaseException, limit: int = 240) -> str:
    """One line of an ONNX Runtime exception; a kernel failure is shortened to the node and the reason."""
    text = re.sub(r"^\[ONNXRuntimeError\] : \d+ : \w+ : ", "", first_line(exc, limit=10_000))
    failed = re.search(r"running (\w+) node\. Name:'([^']*)' Status Message: (.*)", text)
    if failed:
        op, node, why = failed.groups()
        why = why.split(" was false. ", 1)[-1]
        text = f"its {op} node {node!r} failed: {why}" if node else f"a {op} node failed: {why}"
    return text if len(text) <= limit else text[: limit - 3] + "..."


def create_session(
    model: str | Path | bytes,
    *,
    where: str | Path | None = None,
    providers: Sequence[str] = CPU,
    threads: int | None = None,
    optimization: Optimization = "all",
    optimized_path: str | Path | None = None,
    log_severity: int = 3,
    spin: bool | None = None,
) -> Any:
    """An ``onnxruntime.InferenceSession`` over ``model`` (a path or serialized bytes).

    ``threads`` sets the intra-op pool (None: ONNX Runtime's default, every core); ``spin=False``
    stops its workers spinning after a run (they otherwise take cores from whatever runs next);
    ``optimized_path`` makes ONNX Runtime write the optimised graph there.  A model ONNX Runtime
    refuses is a one-line error naming ``where`` (the file, by default).
    """
    import onnxruntime as ort

    options = ort.SessionOptions()
    options.graph_optimization_level = {
        "all": ort.GraphOptimizationLevel.ORT_ENABLE_ALL,
        "extended": ort.GraphOptimizationLevel.ORT_ENABLE_EXTENDED,
        "basic": ort.GraphOptimizationLevel.ORT_ENABLE_BASIC,
        "disabled": ort.GraphOptimizationLevel.ORT_DISABLE_ALL,
    }[optimization]
    if threads:
        options.intra_op_num_threads = int(threads)
    if spin is not None:
        options.add_session_config_entry("session.intra_op.allow_spinning", "1" if spin else "0")
    if optimized_path is not None:
        options.optimized_model_filepath = str(optimized_path)
    options.log_severity_level = log_severity
    source = model if isinstance(model, bytes) else str(model)
    try:
        return ort.InferenceSession(source, options, providers=list(providers))
    except Exception as exc:  # noqa: BLE001 - ORT raises its own exception types for every refusal
        name = where if where is not None else ("the model" if isinstance(model, bytes) else model)
        raise FcnDeployError(f"{name}: ONNX Runtime cannot load it ({ort_message(exc)})") from exc


#: Runs a graph on one batch and returns some of its tensors by name.
TensorRunner = Callable[[Any], dict[str, Any]]


def with_outputs(model: Any, names: Sequence[str]) -> Any:
    """A copy of ``model`` (an ``onnx.ModelProto``) with the tensors ``names`` added as graph outputs."""
    import onnx

    probe = onnx.ModelProto()
    probe.CopyFrom(model)
    existing = {o.name for o in probe.graph.output}
    for name in names:
        if name not in existing:
            probe.graph.output.add().name = name
    return probe


def onnxruntime_outputs(model: Any, names: Sequence[str]) -> TensorRunner:
    """A function that runs ``model`` on a batch in ONNX Runtime (CPU) and returns the tensors ``names``
    (those the graph has), e.g. to compare a Q/DQ graph's intermediate tensors with the FP32 graph's."""
    session = create_session(with_outputs(model, names).SerializeToString(), where="the graph with its intermediate tensors as outputs",
                             optimization="basic")  # fmt: skip
    available = {o.name for o in session.get_outputs()}
    wanted = [n for n in names if n in available]
    input_name = session.get_inputs()[0].name
    return lambda batch: dict(zip(wanted, session.run(wanted, {input_name: batch})))
