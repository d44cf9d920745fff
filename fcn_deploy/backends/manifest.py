"""The engine manifest: a JSON sidecar (``<engine>.json``) that says what an engine is.

An engine is opened through its manifest, never by its file suffix.  The manifest names the
backend, lists every file of the engine with its sha256, and records the precision, the profile,
the library versions and device, the source ONNX and calibration hashes, the model metadata, when
and by what it was built, and the command that rebuilds it.  Loading checks the files and the
environment and, on a mismatch, stops with that command.
"""

from __future__ import annotations

import json
import platform
from pathlib import Path
from typing import Any

from .. import __version__
from ..artefacts import manifest_path
from ..errors import FcnDeployError, first_line
from ..fileio import atomic_write_json, sha256_file

MANIFEST_FORMAT = "fcn-deploy-engine/2"
#: Manifests of earlier releases that still open (one engine file, ``engine_sha256``).
READABLE_FORMATS = (MANIFEST_FORMAT, "fcn-deploy-engine/1")


def common_versions() -> dict[str, str]:
    """The versions every manifest records, whatever the backend."""
    import numpy
    import onnx
    import torch

    versions = {
        "fcn_deploy": __version__,
        "onnx": onnx.__version__,
        "torch": torch.__version__,
        "numpy": numpy.__version__,
        "python": platform.python_version(),
    }
    if torch.version.cuda:
        versions["cuda"] = str(torch.version.cuda)
    try:  # the precision transforms (quantization, FP16 ranges) run in ONNX Runtime
        import onnxruntime

        versions["onnxruntime"] = onnxruntime.__version__
    except ImportError:
        pass
    return versions


def file_entries(files: list[Path]) -> list[dict[str, str]]:
    """``[{"name", "sha256", "bytes"}]`` for the engine's files (names relative to the engine's folder)."""
    return [{"name": f.name, "sha256": sha256_file(f), "bytes": f.stat().st_size} for f in files]


def write_manifest(engine: Path, manifest: dict[str, Any]) -> Path:
    return atomic_write_json(manifest_path(engine), manifest)


def read_manifest(engine: str | Path) -> dict[str, Any]:
    """The manifest of ``engine``, or a one-line error saying what to do."""
    engine = Path(engine)
    path = manifest_path(engine)
    if not path.is_file():
        raise FcnDeployError(
            f"{engine}: its manifest {path.name} is missing, and engines open through their manifest; "
            "rebuild it with `fcn-deploy build-engine` (or pass the ONNX file it was built from)"
        )
    try:
        manifest = json.loads(path.read_text())
    except (json.JSONDecodeError, UnicodeDecodeError) as exc:
        raise FcnDeployError(
            f"{path}: manifest is not valid JSON ({first_line(exc)}); rebuild the engine with `fcn-deploy build-engine`"
        ) from exc
    if not isinstance(manifest, dict) or manifest.get("format") not in READABLE_FORMATS:
        raise FcnDeployError(f"{path}: not an fcn-deploy engine manifest; rebuild the engine with `fcn-deploy build-engine`")
    if "files" not in manifest:  # format 1: one file, its hash at the top level
        manifest["files"] = [{"name": manifest.get("engine", engine.name), "sha256": manifest.get("engine_sha256")}]
    return manifest


def rebuild_hint(manifest: dict[str, Any]) -> str:
    return manifest.get("rebuild_command") or "fcn-deploy build-engine ..."


def check_files(engine: Path, manifest: dict[str, Any], expected: list[Path]) -> list[str]:
    """Problems with the engine's files: missing, or not what the manifest hashed."""
    listed = {entry["name"]: entry.get("sha256") for entry in manifest["files"]}
    if engine.name not in listed:
        return [f"the manifest is for {manifest.get('engine')}, not {engine.name}"]
    problems = []
    for path in expected:
        if path.name not in listed:
            problems.append(f"the manifest does not list {path.name}")
        elif not path.is_file():
            problems.append(f"its file {path.name} is missing")
        elif sha256_file(path) != listed[path.name]:
            problems.append(f"{path.name}'s sha256 differs from its manifest (modified or replaced)")
    return problems


def major_minor(version: object) -> str:
    return ".".join(str(version).split(".")[:2])


def refuse(engine: Path, manifest: dict[str, Any], problems: list[str]) -> None:
    if problems:
        raise FcnDeployError(f"{engine}: {'; '.join(problems)}. Rebuild it: {rebuild_hint(manifest)}")
