"""Atomic artefact writes and content hashes.

Artefacts (checkpoints, ONNX files, engines, reports, videos) are written under a temporary name in
the destination directory and renamed into place, so an interrupted run never leaves a half-written
file under its final name.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
import secrets
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from .errors import FcnDeployError


def ensure_writable_dir(path: str | Path) -> Path:
    """Create ``path`` (a directory) if needed and check that it is writable."""
    path = Path(path)
    try:
        path.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise FcnDeployError(f"cannot create output directory {path}: {exc.strerror}; choose another path") from exc
    if not os.access(path, os.W_OK):
        raise FcnDeployError(f"output directory is not writable: {path}; choose another path or fix its permissions")
    return path


@contextlib.contextmanager
def atomic_path(final: str | Path) -> Iterator[Path]:
    """Yield a temporary path next to ``final``; rename it onto ``final`` only if the block succeeds.

    The temporary name keeps ``final``'s extension, because some writers (video muxers, ONNX
    savers) choose the format from it.
    """
    final = Path(final)
    if final.is_dir():
        raise FcnDeployError(f"{final} is a directory; give a file path to write")
    ensure_writable_dir(final.parent)
    while True:  # like mkstemp, but created 0666 & ~umask, the mode any artefact gets
        tmp = final.parent / f".{final.name}.{secrets.token_hex(4)}.tmp{final.suffix}"
        try:
            os.close(os.open(tmp, os.O_CREAT | os.O_EXCL | os.O_WRONLY, 0o666))
            break
        except FileExistsError:
            continue
    try:
        yield tmp
        os.replace(tmp, final)
    except BaseException:
        with contextlib.suppress(FileNotFoundError):
            tmp.unlink()
        raise


def atomic_write_bytes(final: str | Path, data: bytes) -> Path:
    with atomic_path(final) as tmp:
        tmp.write_bytes(data)
    return Path(final)


def atomic_write_json(final: str | Path, obj: Any) -> Path:
    text = json.dumps(obj, indent=2, sort_keys=False, default=_json_default) + "\n"
    return atomic_write_bytes(final, text.encode())


def _json_default(obj: Any) -> Any:
    import numpy as np

    if isinstance(obj, (np.integer,)):
        return int(obj)
    if isinstance(obj, (np.floating,)):
        return float(obj)
    if isinstance(obj, np.ndarray):
        return obj.tolist()
    if isinstance(obj, Path):
        return str(obj)
    raise TypeError(f"not JSON serialisable: {type(obj).__name__}")


def sha256_file(path: str | Path, chunk: int = 1 << 20) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as fh:
        while block := fh.read(chunk):
            digest.update(block)
    return digest.hexdigest()


def sha256_bytes(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()
