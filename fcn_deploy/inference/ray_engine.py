"""Engines for nodes that do not share the driver's filesystem.

The driver reads each engine's files (its manifest and every file the manifest lists, or a lone
ONNX / checkpoint) into one :class:`Shipment`, which goes to the object store once (``ray.put``).
On each node, the first actor to need it writes the files into a per-node cache folder named by
the shipment's digest, each checked against its sha256 on arrival and written atomically, so
actors that start together, or later on the same node, reuse it.  The engine then opens through
its manifest, which checks the hashes again and refuses an engine this node cannot run (another
TensorRT version or GPU kind): with several engines shipped, an actor opens the first its node
accepts, which is how a mixed GPU cluster runs one TensorRT plan per GPU kind.
"""

from __future__ import annotations

import hashlib
import os
import tempfile
from dataclasses import dataclass
from pathlib import Path

from ..artefacts import has_manifest, manifest_path
from ..errors import FcnDeployError
from ..fileio import atomic_write_bytes, sha256_bytes, sha256_file

#: Where nodes keep shipped engines (``FCN_DEPLOY_ENGINE_CACHE`` moves it).
CACHE_ENV = "FCN_DEPLOY_ENGINE_CACHE"


@dataclass(frozen=True)
class ShippedFile:
    name: str
    sha256: str
    data: bytes


@dataclass(frozen=True)
class Shipment:
    """One engine's files, with the name it opens by (the first file with a manifest is the manifest)."""

    engine: str
    files: tuple[ShippedFile, ...]

    @property
    def digest(self) -> str:
        return hashlib.sha256("".join(f"{f.name}:{f.sha256};" for f in self.files).encode()).hexdigest()[:24]


def pack_engine(engine: Path) -> Shipment:
    """The engine's files as bytes, with the hashes they must arrive with: the manifest's own
    listing for the engine files (so a file changed since the build is caught on the driver)."""
    engine = Path(engine)
    if not engine.is_file():
        raise FcnDeployError(f"engine not found: {engine}", options=("engine",))
    if not has_manifest(engine):
        data = engine.read_bytes()
        return Shipment(engine.name, (ShippedFile(engine.name, sha256_bytes(data), data),))
    from ..backends.manifest import read_manifest

    manifest_file = manifest_path(engine)
    manifest = read_manifest(engine)
    files = [ShippedFile(manifest_file.name, sha256_file(manifest_file), manifest_file.read_bytes())]
    for entry in manifest["files"]:
        path = engine.parent / entry["name"]
        if not path.is_file():
            raise FcnDeployError(f"{engine}: its file {entry['name']} is missing; rebuild the engine", options=("engine",))
        data = path.read_bytes()
        if entry.get("sha256") and sha256_bytes(data) != entry["sha256"]:
            raise FcnDeployError(f"{engine}: {entry['name']}'s sha256 differs from its manifest (modified or replaced); rebuild the engine")
        files.append(ShippedFile(entry["name"], sha256_bytes(data), data))
    return Shipment(engine.name, tuple(files))


def cache_root(node_id: str) -> Path:
    base = Path(os.environ.get(CACHE_ENV) or Path(tempfile.gettempdir()) / "fcn-deploy-engines")
    return base / node_id[:16]


def unpack_engine(shipment: Shipment, node_id: str) -> Path:
    """The engine's path in this node's cache, its files checked by sha256 as they arrive."""
    folder = cache_root(node_id) / shipment.digest
    for shipped in shipment.files:
        if sha256_bytes(shipped.data) != shipped.sha256:
            raise FcnDeployError(f"{shipment.engine}: {shipped.name} arrived corrupted (sha256 mismatch); rerun")
        target = folder / shipped.name
        if not (target.is_file() and sha256_file(target) == shipped.sha256):
            atomic_write_bytes(target, shipped.data)
    return folder / shipment.engine
