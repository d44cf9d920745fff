"""Reading and writing ONNX files: clear errors for what is not one, external data, one-file saves.

Files exported elsewhere come as text files named ``.onnx``, truncated downloads, and weights in a
separate ``.onnx.data`` file that did not travel with them; each gets a one-line error.
"""

from __future__ import annotations

from pathlib import Path

from ..errors import FcnDeployError, first_line, require_file
from .graph import iter_tensors

_TWO_GB = 2 * 1024**3


def _looks_like_text(head: bytes) -> bool:
    if not head:
        return True
    try:
        text = head.decode("utf-8")
    except UnicodeDecodeError:
        return False
    return all(c.isprintable() or c in "\r\n\t" for c in text)


def external_data_files(model, base: Path) -> dict[str, int]:
    """``{location: bytes needed}`` of the external data the model refers to (paths relative to ``base``)."""
    needed: dict[str, int] = {}
    for tensor in iter_tensors(model.graph):
        if tensor.data_location != 1:  # TensorProto.EXTERNAL
            continue
        entries = {e.key: e.value for e in tensor.external_data}
        location = entries.get("location", "")
        end = int(entries.get("offset", 0) or 0) + int(entries.get("length", 0) or 0)
        needed[location] = max(needed.get(location, 0), end)
    return needed


def read_onnx(path: str | Path, load_data: bool = True, what: str = "ONNX model"):
    """The ModelProto at ``path``, its external data loaded (``load_data``), or a one-line error that
    says what the file is and what to do: a text file, a truncated or corrupt file, a missing or
    short external data file."""
    import onnx

    path = require_file(path, what)
    with open(path, "rb") as fh:
        head = fh.read(1024)
    if _looks_like_text(head):
        raise FcnDeployError(
            f"{path}: is {'empty' if not head else 'a text file'}, not an ONNX model; pass the binary .onnx file "
            "(re-export it with torch.onnx.export)"
        )
    try:
        model = onnx.load(str(path), load_external_data=False)
    except Exception as exc:  # DecodeError and friends: the protobuf does not parse
        owner = path.with_name(path.stem)
        if owner.suffix.lower() == ".onnx" and owner.is_file():
            raise FcnDeployError(f"{path}: is the external weights file of {owner.name}; pass {owner} instead") from exc
        raise FcnDeployError(
            f"{path}: not a readable ONNX model, truncated or corrupt ({exc.__class__.__name__}); copy it again or re-export it"
        ) from exc
    if model.ir_version == 0 or not model.graph.output:
        raise FcnDeployError(f"{path}: not an ONNX model (no IR version or no graph outputs); pass the exported .onnx file")
    if load_data:
        load_external_data(model, path)
    return model


def load_external_data(model, path: Path) -> None:
    """Load the external data of ``model`` (read from ``path``) into it, or say which file is missing or short."""
    import onnx

    for location, needed in external_data_files(model, path.parent).items():
        data = path.parent / location
        if not data.is_file():
            raise FcnDeployError(
                f"{path}: its weights are stored in a separate file {location!r}, which is missing (looked for {data}); "
                "put it next to the model, or re-export the model as one file"
            )
        if data.stat().st_size < needed:
            raise FcnDeployError(
                f"{path}: its external data file {data.name} has {data.stat().st_size} bytes, the model needs "
                f"{needed}; it is truncated: copy it again or re-export the model"
            )
    try:
        onnx.load_external_data_for_model(model, str(path.parent))
    except Exception as exc:
        raise FcnDeployError(f"{path}: cannot read its external data ({first_line(exc)}); re-export the model") from exc


def check_size(model, path: Path | str) -> None:
    if model.ByteSize() >= _TWO_GB:
        raise FcnDeployError(f"{path}: the model is over 2 GB, which a single-file ONNX cannot hold; fcn-deploy needs a smaller model")


def save_onnx(model, path: str | Path) -> Path:
    """Write ``model`` as one file (weights inside, never external data) under a temporary name, then
    rename it into place."""
    import onnx

    from ..fileio import atomic_path

    check_size(model, path)
    with atomic_path(path) as tmp:
        onnx.save(model, str(tmp), save_as_external_data=False)
    return Path(path)
