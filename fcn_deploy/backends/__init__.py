"""The backend registry, ``auto``, and opening any model or engine as a runner.

A backend is a :class:`~.base.Backend` subclass.  fcn-deploy's own are listed in :data:`BUILTIN`;
any installed package adds one through the Python entry-point group ``fcn_deploy.backends``:

.. code-block:: toml

    [project.entry-points."fcn_deploy.backends"]
    my_backend = "my_package.backend:MyBackend"

The entry point's name is the backend's name.  Every command that takes a backend or an engine
(``build-engine --backend``, ``validate``, ``infer``, ``benchmark``, ``serve``, ``export-triton``,
``backends``) reads the registry.  A plugin that fails to load (an import error, a class that is not
a Backend) is listed by :func:`broken` with the reason and never hides the others.  Backend modules
import their runtime (TensorRT, OpenVINO, ONNX Runtime) only when used, so listing costs little.

Engines open through their manifest (``<engine>.json``), which names the backend: a file's suffix
never decides.  Checkpoints and plain ONNX files open as the PyTorch and ONNX Runtime runners.
"""

from __future__ import annotations

import functools
import importlib
from importlib import metadata
from pathlib import Path

from ..artefacts import Kind, has_manifest, is_checkpoint, kind_of, manifest_path
from ..errors import FcnDeployError, first_line, require_file
from ..events import SILENT, Listener
from .base import (
    Backend,
    BackendOption,
    Capabilities,
    CompileOptions,
    Prediction,
    Runner,
    TensorSpec,
    TritonSpec,
    mask_from_logits,
)  # fmt: skip
from .manifest import check_files, read_manifest, refuse
from .profile import Profile, default_profile

#: fcn-deploy's own backends: name -> "module:class".
BUILTIN: dict[str, str] = {
    "tensorrt": "fcn_deploy.backends.tensorrt:TensorRTBackend",
    "openvino": "fcn_deploy.backends.openvino:OpenVinoBackend",
    "onnxruntime": "fcn_deploy.backends.onnxruntime:OnnxRuntimeBackend",
}
#: The backend that runs plain ONNX files (no manifest) as they are.
PLAIN_ONNX = "onnxruntime"
#: The entry-point group other packages register backends in.
ENTRY_POINT_GROUP = "fcn_deploy.backends"

__all__ = [
    "BUILTIN", "ENTRY_POINT_GROUP", "Backend", "BackendOption", "Capabilities", "CompileOptions", "Kind", "Prediction",
    "Profile", "Runner", "TensorSpec", "TritonSpec", "broken", "default_profile", "get", "has_manifest", "is_checkpoint",
    "kind_of", "manifest_path", "mask_from_logits", "names", "open_engine", "open_reference", "open_runner", "plain_onnx_backend",
    "read_manifest", "refresh", "resolve",
]  # fmt: skip


def _load(name: str, target: str) -> type[Backend]:
    module, _, attr = target.partition(":")
    cls = getattr(importlib.import_module(module), attr)
    if not (isinstance(cls, type) and issubclass(cls, Backend)):
        raise TypeError(f"{target} is not a subclass of fcn_deploy.backends.Backend")
    if getattr(cls, "name", None) != name:  # the entry point's name is the backend's name
        cls = type(cls.__name__, (cls,), {"name": name, "__module__": cls.__module__, "__qualname__": cls.__qualname__})
    return cls


@functools.cache
def _discover() -> tuple[dict[str, type[Backend]], dict[str, str]]:
    """``({name: class}, {name: why it is broken})`` of the built-in and the entry-point backends."""
    found: dict[str, type[Backend]] = {}
    failed: dict[str, str] = {}
    targets = [(name, target, "fcn-deploy") for name, target in BUILTIN.items()]
    for entry in metadata.entry_points(group=ENTRY_POINT_GROUP):
        package = entry.dist.name if entry.dist is not None else "?"
        targets.append((entry.name, entry.value, package))
    for name, target, package in targets:
        if name in found or name in failed:
            failed.setdefault(f"{name} ({package})", f"the name {name!r} is already taken by another backend")
            continue
        try:
            found[name] = _load(name, target)
        except Exception as exc:  # noqa: BLE001 - a broken plugin must not break the others
            failed[name] = f"{target} (from {package}) does not load: {exc.__class__.__name__}: {first_line(exc)}"
    return found, failed


def refresh() -> None:
    """Forget what was discovered (after installing a plugin into a running process)."""
    _discover.cache_clear()
    get.cache_clear()


def names() -> list[str]:
    """Registered backend names, built-ins first (the ``--backend`` choices besides ``auto``)."""
    return list(_discover()[0])


def broken() -> dict[str, str]:
    """Backends whose plugin failed to load, with the reason."""
    return dict(_discover()[1])


@functools.cache
def get(name: str) -> Backend:
    """The backend registered as ``name``, or a one-line error listing the known ones."""
    found, failed = _discover()
    if name in failed:
        raise FcnDeployError(f"backend {name!r} is installed but broken: {failed[name]}", options=("backend",))
    if name not in found:
        raise FcnDeployError(f"unknown backend {name!r}; choose one of {', '.join(['auto', *found])}", options=("backend",))
    return found[name]()


def resolve(requested: str, listener: Listener = SILENT) -> Backend:
    """``auto``: the first usable backend by rank (TensorRT on a GPU, then the fastest CPU engine),
    said with the reason; a named backend must be usable here."""
    if requested != "auto":
        backend = get(requested)
        backend.require_usable()
        return backend
    skipped = []
    for backend in sorted((get(n) for n in names()), key=lambda b: b.auto_rank):
        usable, why = backend.status()
        if usable:
            passed = f" ({'; '.join(skipped)})" if skipped else ""
            listener.note(f"backend auto -> {backend.name}: {backend.auto_reason}{passed}")
            return backend
        skipped.append(f"{backend.name}: {why}")
    raise FcnDeployError(f"no backend is usable here ({'; '.join(skipped)}); pip install onnxruntime")


def engine_backend(path: str | Path, manifest: dict | None = None) -> Backend:
    """The backend an engine's manifest names (a one-line error when fcn-deploy does not know it)."""
    manifest = manifest if manifest is not None else read_manifest(path)
    name = manifest.get("backend")
    if name not in names():
        known = ", ".join(names())
        why = f" (installed but broken: {broken()[name]})" if name in broken() else ""
        raise FcnDeployError(
            f"{manifest_path(path)}: names backend {name!r}, which this fcn-deploy does not know{why} (it knows {known}); "
            "install the package that provides it, upgrade fcn-deploy, or rebuild the engine"
        )
    return get(name)


def plain_onnx_backend() -> Backend:
    """The backend that runs a plain ONNX file (an export or an adoption, no manifest) as it is:
    :func:`open_runner` opens such files with it, and ``export-triton`` serves them on its Triton backend."""
    return get(PLAIN_ONNX)


def open_engine(path: str | Path, threads: int | None = None) -> Runner:
    """Open an engine through its manifest: check its files and the environment, then the backend
    named there opens it."""
    path = Path(path)
    manifest = read_manifest(path)
    backend = engine_backend(path, manifest)
    problems = check_files(path, manifest, backend.engine_files(path))
    usable, why = backend.status()
    if not usable:
        raise FcnDeployError(f"{path}: is a {backend.name} engine, and {backend.name} is not usable here: {why}; {backend.install_hint}")
    refuse(path, manifest, problems + backend.manifest_problems(manifest))
    runner = backend.open(path, manifest, threads=threads)
    runner.backend = backend.name
    return runner


def open_runner(path: str | Path, threads: int | None = None, device: str = "cpu") -> Runner:
    """Open a checkpoint (the PyTorch reference), a plain ONNX file, or an engine (by its manifest)."""
    kind = kind_of(path)
    if kind is Kind.ENGINE:
        return open_engine(path, threads=threads)
    if kind is Kind.CHECKPOINT:
        from .torch import TorchRunner

        return TorchRunner(path, device=device)
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
