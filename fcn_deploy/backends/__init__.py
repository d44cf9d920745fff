"""The backend registry, ``auto``, and opening any model or engine as a runner.

Adding a backend is one file in this package (a :class:`~.base.Backend` subclass and its
:class:`~.base.Runner`) and one line in :data:`REGISTRY`.  The CLI's ``--backend`` choices,
``auto``, the benchmark's labels and the demo all read the registry.  Entries are import paths, so
listing the registry imports no backend library.

Engines open through their manifest (``<engine>.json``), which names the backend: a file's suffix
never decides.  Checkpoints and plain ONNX files open as the PyTorch and ONNX Runtime runners.
"""

from __future__ import annotations

import functools
import importlib
import zipfile
from pathlib import Path

from ..errors import FcnDeployError, require_file
from .base import Backend, CompileOptions, Prediction, Profile, Runner, TensorSpec, default_profile, mask_from_logits
from .manifest import check_files, has_manifest, manifest_path, read_manifest, refuse

#: name -> "module:class".  One line per backend.
REGISTRY: dict[str, str] = {
    "tensorrt": "fcn_deploy.backends.tensorrt:TensorRTBackend",
    "openvino": "fcn_deploy.backends.openvino:OpenVinoBackend",
    "onnxruntime": "fcn_deploy.backends.onnxruntime:OnnxRuntimeBackend",
}

__all__ = [
    "REGISTRY", "Backend", "CompileOptions", "Prediction", "Profile", "Runner", "TensorSpec", "default_profile",
    "mask_from_logits", "names", "get", "resolve", "open_engine", "open_runner", "open_reference", "manifest_path",
    "read_manifest",
]  # fmt: skip


def names() -> list[str]:
    """Registered backend names, in registry order (the ``--backend`` choices besides ``auto``)."""
    return list(REGISTRY)


@functools.cache
def get(name: str) -> Backend:
    """The backend registered as ``name``, or a one-line error listing the known ones."""
    if name not in REGISTRY:
        raise FcnDeployError(f"unknown backend {name!r}; choose one of {', '.join(['auto', *REGISTRY])}")
    module, _, cls = REGISTRY[name].partition(":")
    return getattr(importlib.import_module(module), cls)()


def resolve(requested: str, log=print) -> Backend:
    """``auto``: the first usable backend by rank (TensorRT on a GPU, then the fastest CPU engine),
    said with the reason; a named backend must be usable here."""
    if requested != "auto":
        backend = get(requested)
        backend.require_usable(f"--backend {requested}")
        return backend
    skipped = []
    for backend in sorted((get(n) for n in REGISTRY), key=lambda b: b.auto_rank):
        usable, why = backend.status()
        if usable:
            passed = f" ({'; '.join(skipped)})" if skipped else ""
            log(f"backend auto -> {backend.name}: {backend.auto_reason}{passed}")
            return backend
        skipped.append(f"{backend.name}: {why}")
    raise FcnDeployError(f"no backend is usable here ({'; '.join(skipped)}); pip install onnxruntime")


def open_engine(path: str | Path, threads: int | None = None) -> Runner:
    """Open an engine through its manifest: check its files and the environment, then the backend
    named there opens it."""
    path = Path(path)
    manifest = read_manifest(path)
    name = manifest.get("backend")
    if name not in REGISTRY:
        raise FcnDeployError(
            f"{manifest_path(path)}: names backend {name!r}, which this fcn-deploy does not know "
            f"(it knows {', '.join(REGISTRY)}); upgrade fcn-deploy or rebuild the engine"
        )
    backend = get(name)
    problems = check_files(path, manifest, backend.engine_files(path))
    usable, why = backend.status()
    if not usable:
        raise FcnDeployError(f"{path}: is a {name} engine, and {name} is not usable here: {why}; {backend.install_hint}")
    refuse(path, manifest, problems + backend.manifest_problems(manifest))
    return backend.open(path, manifest, threads=threads)


def is_checkpoint(path: Path) -> bool:
    return path.suffix in (".pt", ".pth") or zipfile.is_zipfile(path)


def open_runner(path: str | Path, threads: int | None = None, device: str = "cpu") -> Runner:
    """Open a checkpoint (the PyTorch reference), a plain ONNX file, or an engine (by its manifest)."""
    path = require_file(path, "model or engine")
    if has_manifest(path):
        return open_engine(path, threads=threads)
    if is_checkpoint(path):
        from .torch import TorchRunner

        return TorchRunner(path, device=device)
    if path.suffix.lower() != ".onnx":
        read_manifest(path)  # raises: an engine opens through its manifest, and this one has none
    from .onnxruntime import OnnxRuntimeRunner

    return OnnxRuntimeRunner(path, threads=threads)


def open_reference(path: str | Path, engine_meta, threads: int | None = None) -> Runner:
    """The FP32 reference an engine is validated against: a checkpoint (PyTorch), or an FP32 ONNX run
    by ONNX Runtime on the CPU in float32, with or without fcn-deploy metadata (the engine's is used
    when it has none).  Either accepts every size the engine accepts."""
    path = require_file(path, "reference")
    if has_manifest(path):
        raise FcnDeployError(
            f"{path}: is a built engine; the reference must be the FP32 model: the checkpoint (.pt) or the FP32 ONNX "
            "the engine was exported or adopted from"
        )
    if is_checkpoint(path):
        from .torch import TorchRunner

        return TorchRunner(path)
    if path.suffix.lower() != ".onnx":
        raise FcnDeployError(f"{path}: the reference must be a PyTorch checkpoint (.pt) or an FP32 ONNX (.onnx)")
    from .onnxruntime import OnnxReferenceRunner

    return OnnxReferenceRunner(path, engine_meta, threads=threads)
