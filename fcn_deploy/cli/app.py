"""The ``fcn-deploy`` app: the Typer object, the console, and the entry point that maps errors to exit codes.

Errors the user can fix are printed as one ``error:`` line on stderr with exit code 2 (a check that
ran and failed exits 1).  A library error that names options gets this CLI's flags for them in front.
Any other exception is a bug in fcn-deploy: its traceback is printed, with a line saying so.
"""

from __future__ import annotations

import sys
import traceback
from typing import Annotated

import typer
from rich.console import Console
from rich.markup import escape

from .. import __version__
from ..backends import names as backend_names
from ..errors import EXIT_USAGE, FcnDeployError
from ..render.console import ConsoleListener

app = typer.Typer(
    name="fcn-deploy",
    help="Fully Convolutional Networks from PyTorch to verified ONNX Runtime / OpenVINO / TensorRT engines.\n\n"
    "Pipeline: train | import -> export -> build-engine -> validate -> infer | benchmark | serve | export-triton.  "
    "An ONNX from elsewhere: inspect -> adopt -> build-engine.  "
    "`fcn-deploy demo` runs all of it on the embedded synthetic default.",
    no_args_is_help=True,
    add_completion=False,
    rich_markup_mode="rich",
    pretty_exceptions_enable=False,
)
#: Logs and CI capture stdout: give tables room there instead of rich's 80-column default.
console = Console(soft_wrap=True, highlight=False, width=None if sys.stdout.isatty() else 140)
err_console = Console(stderr=True, soft_wrap=True, highlight=False)
#: What the library's events become on this console (progress bars, notes).
listener = ConsoleListener(console)
#: The --backend choices besides auto, from the registry.
BACKEND_CHOICES = ", ".join(backend_names())


def _version(value: bool) -> None:
    if value:
        console.print(f"fcn-deploy {__version__}")
        raise typer.Exit()


@app.callback()
def _root(
    version: Annotated[bool, typer.Option("--version", callback=_version, is_eager=True, help="Print the version and exit.")] = False,
) -> None:
    """fcn-deploy."""


def error_line(exc: FcnDeployError) -> str:
    """The library's message, with the flags of the options it names in front."""
    from .options import flags_for

    flags = flags_for(exc.options)
    message = str(exc)
    return f"{flags}: {message}" if flags and not message.startswith(flags) else message


def main(argv: list[str] | None = None) -> int:
    """Console-script entry point: runs the app and maps errors to exit codes."""
    argv = list(sys.argv[1:] if argv is None else argv)
    if "--ray" in argv:
        from .infer import normalise_ray_flag

        argv = normalise_ray_flag(argv)
    try:
        app(args=argv, prog_name="fcn-deploy")  # standalone mode: usage errors print and exit 2
    except SystemExit as exc:
        return exc.code if isinstance(exc.code, int) else (0 if exc.code is None else EXIT_USAGE)
    except FcnDeployError as exc:
        listener.close()
        err_console.print(f"[red]error:[/] {escape(error_line(exc))}")
        return exc.exit_code
    except OSError as exc:  # disk full, permissions, ... met while writing or reading artefacts
        listener.close()
        where = f"{exc.filename}: " if exc.filename else ""
        err_console.print(f"[red]error:[/] {escape(where + (exc.strerror or str(exc)))}; check the path, its permissions and free space")
        return EXIT_USAGE
    except KeyboardInterrupt:
        listener.close()
        err_console.print("[yellow]interrupted[/]: complete outputs were kept, nothing half-written was left")
        return 130
    except Exception:
        listener.close()
        err_console.print(escape(traceback.format_exc()))
        err_console.print(
            "[red]internal error[/]: this is a bug in fcn-deploy, not in your input; please report it with the traceback above"
        )
        return 70
    finally:
        listener.close()
    return 0
