"""Atomic artefact writes and content hashes.

Artefacts (checkpoints, ONNX files, engines, reports, videos) are written under a temporary name in
the destination directory and renamed into place, so an interrupted run never leaves a half-written
file under its final name.  Folders (a Triton model repository) are written the same way by
:func:`atomic_dir`, and replace an existing folder in one step.
"""

from __future__ import annotations

import contextlib
import ctypes
import errno
import hashlib
import json
import os
import secrets
import shutil
import signal
import sys
import threading
from collections.abc import Iterator, Sequence
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
def replaced_together(paths: Sequence[str | Path]) -> Iterator[None]:
    """Files that are only valid as a set (an engine's files and its manifest), each written
    atomically inside the block.  If the block fails (an error, Ctrl-C) after it created or
    replaced any of them, every one is removed: what is left is the old complete set or nothing."""
    paths = [Path(p) for p in paths]

    def state(path: Path):
        try:
            info = path.stat()
        except FileNotFoundError:
            return None
        return info.st_ino, info.st_mtime_ns, info.st_size

    before = [state(p) for p in paths]
    try:
        yield
    except BaseException:
        if [state(p) for p in paths] != before:
            for path in paths:
                with contextlib.suppress(FileNotFoundError):
                    path.unlink()
        raise


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


# --------------------------------------------------------------------------- folders


@contextlib.contextmanager
def atomic_dir(final: str | Path) -> Iterator[Path]:
    """Yield an empty folder to fill; when the block succeeds, it becomes ``final`` in one step,
    replacing the folder there (the caller decides whether one may be replaced).

    Interrupted at any point (an exception, Ctrl-C, SIGTERM), ``final`` is the old folder or the new
    one, whole, and nothing else is left behind: the new folder is built inside a hidden staging
    folder next to ``final``, the two are swapped by :func:`exchange_paths` (one ``renameat2``
    call on Linux; elsewhere two renames that put the old folder back if the second does not
    happen), the old folder lands in the staging folder, and the staging folder is removed.
    SIGINT and SIGTERM wait while the swap and the clean-up run, and take effect right after.
    """
    final = Path(final)
    ensure_writable_dir(final.parent)
    staging: Path | None = None
    try:
        while True:  # named before it exists, so that an interrupt right after the mkdir still removes it
            staging = final.parent / f".{final.name}.{secrets.token_hex(4)}.tmp"
            try:
                staging.mkdir()
                break
            except FileExistsError:  # another writer's: not ours to remove
                staging = None
        new = staging / final.name
        new.mkdir()
        yield new
        with signals_deferred():
            _install(new, final, staging)
    finally:
        if staging is not None:
            with signals_deferred():
                _discard(staging)


def _install(new: Path, final: Path, staging: Path) -> None:
    """Put ``new`` at ``final``; an existing ``final`` ends up in ``staging``."""
    if not os.path.lexists(final):
        os.replace(new, final)
        return
    if exchange_paths(new, final):
        return
    aside = staging / ".old"
    try:
        os.replace(final, aside)
        os.replace(new, final)
    finally:
        if not os.path.lexists(final) and os.path.lexists(aside):  # the new one did not arrive: the old one goes back
            os.replace(aside, final)


def _discard(path: Path) -> None:
    """Remove the folder ``path``; an interrupt raised meanwhile is raised again once it is gone."""
    interrupted: BaseException | None = None
    for _ in range(3):
        try:
            shutil.rmtree(path, ignore_errors=True)
            break
        except BaseException as exc:  # noqa: BLE001 - KeyboardInterrupt and the like: finish first, then raise
            interrupted = exc
    if interrupted is not None:
        raise interrupted


_AT_FDCWD = -100
_RENAME_EXCHANGE = 2
#: What renameat2 answers where the kernel, the C library, a sandbox or the file system lacks RENAME_EXCHANGE.
_NO_EXCHANGE = {errno.ENOSYS, errno.EINVAL, errno.EOPNOTSUPP, errno.ENOTSUP, errno.EPERM}


def exchange_paths(a: str | Path, b: str | Path) -> bool:
    """Swap two existing paths in one atomic step (Linux ``renameat2(RENAME_EXCHANGE)``); False,
    changing nothing, where the system or the file system cannot."""
    if not sys.platform.startswith("linux"):
        return False
    try:
        renameat2 = ctypes.CDLL(None, use_errno=True).renameat2  # glibc 2.28+, musl 1.2.2+
    except (OSError, AttributeError):
        return False
    renameat2.argtypes = [ctypes.c_int, ctypes.c_char_p, ctypes.c_int, ctypes.c_char_p, ctypes.c_uint]
    renameat2.restype = ctypes.c_int
    if renameat2(_AT_FDCWD, os.fsencode(a), _AT_FDCWD, os.fsencode(b), _RENAME_EXCHANGE) == 0:
        return True
    code = ctypes.get_errno()
    if code in _NO_EXCHANGE:
        return False
    raise OSError(code, os.strerror(code), str(a), None, str(b))


@contextlib.contextmanager
def signals_deferred(signals: tuple[int, ...] = (signal.SIGINT, signal.SIGTERM)) -> Iterator[None]:
    """Hold SIGINT and SIGTERM back for the block (in the main thread, where Python runs signal
    handlers), then deliver each one that arrived to the handler that was there before."""
    if threading.current_thread() is not threading.main_thread():
        yield
        return
    arrived: list[int] = []
    previous = {}
    try:
        for sig in signals:
            handler = signal.getsignal(sig)
            if handler is not None:  # None: a handler installed outside Python, which cannot be put back
                previous[sig] = signal.signal(sig, lambda signum, frame: arrived.append(signum))
        yield
    finally:
        for sig, handler in previous.items():
            signal.signal(sig, handler)
        for signum in dict.fromkeys(arrived):
            signal.raise_signal(signum)
