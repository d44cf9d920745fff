"""User-facing errors.

Every failure a user can cause (a missing file, a bad flag, a corrupt checkpoint) is raised as
:class:`FcnDeployError` with a one-line message that names the file and says what to do.  The CLI
prints that line and exits non-zero; it never shows a traceback for these.
"""

from __future__ import annotations

from pathlib import Path

#: Exit codes shared by every command.
EXIT_OK = 0
EXIT_FAILED = 1  # the command ran and its check failed (validation below threshold, ...)
EXIT_USAGE = 2  # bad input: flags, files, environment
EXIT_PARTIAL = 3  # the command finished but skipped some input (infer: unreadable images, listed in --report)


class FcnDeployError(Exception):
    """An error caused by input the user can fix; ``str(err)`` is the whole message."""

    exit_code = EXIT_USAGE


class CheckFailed(FcnDeployError):
    """A verification (export check, validation) ran and did not pass."""

    exit_code = EXIT_FAILED


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
