"""The ``fcn-deploy`` command line: a thin Typer layer over the Python API, one module per command group.

Commands parse flags into the library's options, pass the console listener, and render what the
library returns (:mod:`fcn_deploy.render`); the library never prints.
"""

from . import bench, build, check, data, debug, infer, serve, system  # noqa: F401 - each module registers its commands
from .app import app, main

__all__ = ["app", "main"]


if __name__ == "__main__":
    import sys

    sys.exit(main())
