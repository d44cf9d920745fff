"""The INT8 calibration cache: activation ranges reused when nothing they depend on changed.

The key hashes everything the ranges depend on: the model's bytes, the calibration images' names
and contents, their shapes after fitting to the profile, the method, the activation encoding, the
ONNX Runtime version, the quantized op types and the placement.  A change to any of them is a
miss.  A cache file is reused only when its bytes still match the sha256 written beside it when it
was stored (``<file>.sha256``) and it parses as ONNX Runtime's tensor-range JSON; any other file
(truncated, edited, or with no checksum) is measured again and replaced, never silently reused.
"""

from __future__ import annotations

import hashlib
import json
from pathlib import Path

from ..data.calibration import CalibrationSet
from ..errors import first_line
from ..fileio import atomic_path, ensure_writable_dir, sha256_bytes


def _ort_version() -> str:
    import onnxruntime

    return onnxruntime.__version__


def calibration_cache_key(model_bytes: bytes, calibration: CalibrationSet, method: str, encoding: dict, op_types: list[str],
                          placement: str) -> str:  # fmt: skip
    """Hash of everything the ranges depend on (see the module docstring)."""
    payload = json.dumps(
        {
            "model": sha256_bytes(model_bytes),
            "images": calibration.sha256,
            "method": method,
            "encoding": encoding,
            "onnxruntime": _ort_version(),
            "shapes": [list(s) for s in calibration.shapes],
            "int8_ops": op_types,
            "placement": placement,
        },
        sort_keys=True,
    )
    return hashlib.sha256(payload.encode()).hexdigest()[:32]


def cache_file(cache_dir: Path, encoding: str, method: str, key: str) -> Path:
    return Path(cache_dir) / f"calib-{encoding}-{method}-{key}.json"


def checksum_file(path: Path) -> Path:
    return path.with_name(path.name + ".sha256")


def readable_cache(path: Path | None) -> tuple[bool, str]:
    """``(usable, why not)``: whether ``path`` holds the ranges it was stored with, loadable by ONNX Runtime."""
    if path is None or not path.is_file():
        return False, "no cache"
    try:
        recorded = checksum_file(path).read_text().strip()
    except OSError:
        return False, "it has no checksum file"
    if recorded != sha256_bytes(path.read_bytes()):
        return False, "its contents changed since it was written (checksum mismatch)"
    try:
        from onnxruntime.quantization.calibrate import load_tensors_data

        data = load_tensors_data(path)
        if not data.data:
            return False, "it holds no ranges"
    except Exception as exc:  # noqa: BLE001 - any unreadable file means: measure again
        return False, f"{exc.__class__.__name__}: {first_line(exc)}"
    return True, ""


def store(path: Path, data: bytes) -> None:
    """Write the ranges, then their checksum (a cache without a matching checksum is never read)."""
    ensure_writable_dir(path.parent)
    with atomic_path(path) as tmp:
        tmp.write_bytes(data)
    with atomic_path(checksum_file(path)) as tmp:
        tmp.write_text(sha256_bytes(data) + "\n")
