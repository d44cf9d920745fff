"""Errors: what a user can fix, kept apart from bugs in fcn-deploy.

Every failure a user can cause (a missing file, a bad option, a corrupt checkpoint, a graph a
runtime refuses) is raised as :class:`FcnDeployError` with a one-line message that names the file
and says what to do.  The CLI prints that line and exits non-zero; it never shows a traceback for
these.  Anything else is a bug, and surfaces as one, with its traceback.

Library messages speak in library terms.  An error about an option names it in ``options`` (the
Python parameter names, e.g. ``("min_shape",)``); the CLI puts the matching ``--flags`` in front.
"""

from __future__ import annotations

import contextlib
import importlib
import traceback
from collections.abc import Iterator
from pathlib import Path
from types import ModuleType

#: Exit codes shared by every command.
EXIT_OK = 0
EXIT_FAILED = 1  # the command ran and its check failed (validation below threshold, ...)
EXIT_USAGE = 2  # bad input: flags, files, environment
EXIT_PARTIAL = 3  # the command finished but skipped some input (infer: unreadable inputs, listed in --report)

_PACKAGE_DIR = Path(__file__).resolve().parent


class FcnDeployError(Exception):
    """An error caused by input the user can fix; ``str(err)`` is the whole message.

    ``options`` names the options (Python parameter names) the message is about, so that the CLI
    can name its flags for them.
    """

    exit_code = EXIT_USAGE

    def __init__(self, message: str, *, options: tuple[str, ...] | list[str] = ()):
        super().__init__(message)
        self.options = tuple(options)


class CheckFailed(FcnDeployError):
    """A verification (export check, validation, INT8 repair) ran and did not pass."""

    exit_code = EXIT_FAILED


def first_line(exc: BaseException, limit: int = 240) -> str:
    """The first non-empty line of an exception's message (its class name when the message is
    empty), cut to ``limit`` characters: what a one-line error quotes from a library."""
    lines = [line.strip() for line in str(exc).splitlines() if line.strip()]
    text = lines[0] if lines else exc.__class__.__name__
    return text if len(text) <= limit else text[: limit - 3] + "..."


def optional_import(module: str, hint: str, what: str | None = None) -> ModuleType:
    """``import module``, or a one-line error saying how to install it (``hint``)."""
    try:
        return importlib.import_module(module)
    except ImportError as exc:
        raise FcnDeployError(f"{what or module} is not installed ({first_line(exc)}): {hint}") from exc


def raised_in_fcn_deploy(exc: BaseException) -> bool:
    """Whether ``exc`` was raised by fcn-deploy's own code (a bug, unless it is an FcnDeployError)
    rather than inside a library it called (a graph or file the library refused)."""
    frames = traceback.extract_tb(exc.__traceback__)
    if not frames:
        return False
    return Path(frames[-1].filename).resolve().is_relative_to(_PACKAGE_DIR)


@contextlib.contextmanager
def library_errors(where: str | Path, doing: str, advice: str) -> Iterator[None]:
    """Turn an exception raised inside a third-party library (ONNX, ONNX Runtime, OpenVINO, ...)
    into one line: ``{where}: {doing} failed ({Type}: first line); {advice}``.  Exceptions raised
    by fcn-deploy's own code are bugs and propagate unchanged, with their tracebacks."""
    try:
        yield
    except FcnDeployError:
        raise
    except Exception as exc:  # noqa: BLE001 - libraries raise many kinds; our own bugs are re-raised below
        if raised_in_fcn_deploy(exc):
            raise
        raise FcnDeployError(f"{where}: {doing} failed ({exc.__class__.__name__}: {first_line(exc)}); {advice}") from exc


def require_file(path: str | Path, what: str, hint: str = "") -> Path:
    """Return ``path`` as a Path, or raise a clear error if it is not an existing file."""
    path = Path(path)
    if not path.exists():
        raise FcnDeployError(f"{what} not found: {path}" + (f" ({hint})" if hint else ""))
    if not path.is_file():
        raise FcnDeployError(f"{what} is not a file: {path}" + (f" ({hint})" if hint else ""))
    return path


def require_dir(path: str | Path, what: str, hint: str = "") -> Path:
    """Return ``path`` as a Path, or raise a clear error if it is not an existing directory."""
    path = Path(path)
    if not path.is_dir():
        state = "is not a directory" if path.exists() else "not found"
        raise FcnDeployError(f"{what} {state}: {path}" + (f" ({hint})" if hint else ""))
    return path
