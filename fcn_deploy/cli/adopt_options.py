"""The adopt command's flag texts: normalisation, class names and palettes, parsed into AdoptOptions values.

These parse what a person types after a flag (or the file it names), so their errors name the flag.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from ..errors import FcnDeployError


def parse_rgb_floats(text: str, flag: str) -> list[float]:
    """``"0.485,0.456,0.406"`` -> three floats in 0..1 (torchvision's units); ``flag`` is ``--mean`` or ``--std``."""
    try:
        values = [float(v) for v in text.split(",")]
    except ValueError:
        raise FcnDeployError(f"{flag} {text!r}: write three numbers r,g,b, e.g. 0.485,0.456,0.406") from None
    if len(values) != 3:
        raise FcnDeployError(f"{flag} {text!r}: write three numbers r,g,b (one per channel)")
    if any(not 0.0 <= v <= 1.0 for v in values):
        raise FcnDeployError(f"{flag} {text!r}: give 0..1 units as torchvision does (divide 0..255 values by 255)")
    if flag == "--std" and any(v <= 0 for v in values):
        raise FcnDeployError(f"--std {text!r}: standard deviations must be positive")
    return values


def parse_class_names(text: str) -> tuple[list[str], list[list[int]] | None]:
    """``--classes``: ``"a,b,c"``, or a file: JSON (a list, or ``{"class_names": [...], "palette": [...]}``)
    or text (one name per line).  Returns the names and the file's palette, if it has one."""
    path = Path(text)
    palette = None
    if path.is_file():
        if path.suffix.lower() == ".json":
            data = _read_json_file(path, "--classes")
            if isinstance(data, dict):
                names, palette = data.get("class_names"), data.get("palette")
            else:
                names = data
            if not isinstance(names, list) or not all(isinstance(n, str) for n in names):
                raise FcnDeployError(f'--classes {path}: give a JSON list of names or {{"class_names": [...]}}')
            palette = parse_palette(json.dumps(palette)) if palette is not None else None
        else:
            names = [line.strip() for line in path.read_text().splitlines() if line.strip()]
    else:
        names = [name.strip() for name in text.split(",")]
    if not names or any(not n for n in names):
        raise FcnDeployError(f"--classes {text!r}: give the class names separated by commas (or a file), with no empty name")
    if len(set(names)) != len(names):
        raise FcnDeployError(f"--classes {text!r}: class names must be unique")
    return names, palette


def parse_palette(text: str) -> list[list[int]]:
    """``--palette``: ``"r,g,b;r,g,b"`` or a JSON file (a list of ``[r, g, b]``, or ``{"palette": [...]}``), values 0..255."""
    path = Path(text)
    if path.is_file():
        data = _read_json_file(path, "--palette")
        data = data.get("palette") if isinstance(data, dict) else data
    elif text.lstrip().startswith("["):
        data = _read_json_text(text, "--palette")
    else:
        try:
            data = [[int(v) for v in item.split(",")] for item in text.split(";") if item.strip()]
        except ValueError:
            raise FcnDeployError(f"--palette {text!r}: write r,g,b;r,g,b (0..255) or give a JSON file") from None
    if (
        not isinstance(data, list) or not data
        or not all(isinstance(c, list) and len(c) == 3 and all(isinstance(v, int) and 0 <= v <= 255 for v in c) for c in data)
    ):  # fmt: skip
        raise FcnDeployError(f"--palette {text!r}: give one r,g,b colour (integers 0..255) per class")
    return data


def _read_json_file(path: Path, flag: str) -> Any:
    try:
        return json.loads(path.read_text())
    except (json.JSONDecodeError, UnicodeDecodeError) as exc:
        raise FcnDeployError(f"{flag} {path}: not valid JSON ({exc})") from exc


def _read_json_text(text: str, flag: str) -> Any:
    try:
        return json.loads(text)
    except json.JSONDecodeError as exc:
        raise FcnDeployError(f"{flag} {text!r}: not valid JSON ({exc})") from exc
