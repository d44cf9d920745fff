"""Imports flow one way: from the CLI down to data and models, never back up (lazily or not).

Each top-level module or package of fcn_deploy sits on a layer; a module may import its own layer
and the layers below it.  ``../shared/tools/check-layers.py`` checks the bottom of this (data/ and
models/ import nothing above them); this test checks every layer.
"""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

PACKAGE = Path(__file__).resolve().parents[1] / "fcn_deploy"
#: Lowest first.  A module may import modules of its own layer and of the layers below.
LAYERS = [
    {"__init__", "errors", "events", "fileio", "dtypes", "machine", "meta", "metrics"},
    {"data", "models", "artefacts", "checkpoint", "precisions", "media"},
    {"onnxkit"},
    {"backends"},
    {"validation", "adopt"},
    {"precision"},
    {"engines", "int8_check", "precision_debug", "export", "train", "importer", "conformance"},
    {"inference", "bench", "serve", "evaluate"},
    {"demo"},
    {"render"},
    {"cli"},
]
LAYER_OF = {name: index for index, layer in enumerate(LAYERS) for name in layer}


def top_level(module_file: Path) -> str:
    parts = module_file.relative_to(PACKAGE).with_suffix("").parts
    return parts[0]


def imported(module_file: Path) -> list[tuple[int, str]]:
    """``(line, top-level fcn_deploy module)`` of every import in the file, top-level or inside a function."""
    found = []
    package = module_file.relative_to(PACKAGE.parent).with_suffix("").parts[:-1]
    for node in ast.walk(ast.parse(module_file.read_text())):
        if isinstance(node, ast.ImportFrom):
            if node.level:
                base = list(package[: len(package) - node.level + 1])
                target = [*base, *(node.module.split(".") if node.module else [])]
                names = [target] if node.module else [[*target, alias.name] for alias in node.names]
            elif (node.module or "").startswith("fcn_deploy"):
                names = [node.module.split(".")]
            else:
                continue
            for parts in names:
                if len(parts) > 1:
                    found.append((node.lineno, parts[1]))
        elif isinstance(node, ast.Import):
            for alias in node.names:
                parts = alias.name.split(".")
                if parts[0] == "fcn_deploy" and len(parts) > 1:
                    found.append((node.lineno, parts[1]))
    return found


def test_every_module_is_on_a_layer():
    modules = {top_level(f) for f in PACKAGE.rglob("*.py")}
    assert modules - set(LAYER_OF) == set(), "put new modules on a layer in LAYERS"


@pytest.mark.parametrize("module_file", sorted(PACKAGE.rglob("*.py")), ids=lambda p: str(p.relative_to(PACKAGE)))
def test_imports_flow_downward(module_file):
    own = LAYER_OF[top_level(module_file)]
    upward = [f"line {line}: imports fcn_deploy.{name} (layer {LAYER_OF.get(name)})" for line, name in imported(module_file)
              if LAYER_OF.get(name, -1) > own]  # fmt: skip
    assert not upward, f"{module_file.relative_to(PACKAGE)} (layer {own}) imports upward: {upward}"
