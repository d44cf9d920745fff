"""System shared memory between ``fcn-deploy serve`` and clients on its host.

A client on the server's host need not copy each image into a gRPC message and each mask out of
one: it writes the image into a shared-memory region the server has mapped, and the server writes
the mask into another.  The requests then carry only the regions' names.  That saves the
serialisation, the copies and the loopback transfer of about a megabyte per 512x512 request, on
the same cores the engine needs.

Triton's shared-memory API stays restricted: registering a region makes the server map it, so only
a client holding the server's access token may.  ``serve`` writes the token to a file only its own
user can read (:func:`publish_token`; a folder of mode 0700 in ``$XDG_RUNTIME_DIR`` or the temporary
folder, named after the gRPC port) and removes it when it stops.  That user could already stop or
trace the server, so the file gives nobody a power they lacked.  A client of another user, of
another host, or of a server that published no token (another server, an older fcn-deploy) sends
its data over gRPC as before.  Region names are random, and the API that lists them is restricted,
so no other client can read or overwrite a region in use.
"""

from __future__ import annotations

import contextlib
import json
import os
import queue
import secrets
import stat
import tempfile
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

#: The header Triton checks on its restricted APIs (PyTriton's name for it), as gRPC metadata
#: (Triton expects its gRPC protocol prefix there).
TOKEN_HEADER = "triton-access-token"
GRPC_TOKEN_HEADER = f"triton-grpc-protocol-{TOKEN_HEADER}"
_LOOPBACK = ("127.", "localhost", "[::1]", "::1")


def token_folder() -> Path:
    """Where this user's servers publish their tokens: a folder of this user's, mode 0700."""
    base = os.environ.get("XDG_RUNTIME_DIR") or tempfile.gettempdir()
    return Path(base) / f"fcn-deploy-{os.getuid()}"


def token_path(grpc_port: int) -> Path:
    return token_folder() / f"grpc-{grpc_port}.json"


def _private(path: Path, mode: int) -> bool:
    """``path`` is this user's and nobody else may read or write it (another user could otherwise
    plant a folder or a token in a shared temporary folder)."""
    try:
        info = path.lstat()
    except OSError:
        return False
    return info.st_uid == os.getuid() and stat.S_IMODE(info.st_mode) & 0o077 == 0 and stat.S_IMODE(info.st_mode) & mode == mode


def publish_token(grpc_port: int, token: str) -> Path | None:
    """Write ``token`` for clients of this user on this host; None where the folder is not private
    (then clients use plain gRPC).  Written under a temporary name and renamed into place."""
    folder = token_folder()
    with contextlib.suppress(FileExistsError):
        folder.mkdir(mode=0o700, parents=False)
    if not _private(folder, 0o700):
        return None
    path = token_path(grpc_port)
    temporary = folder / f".{path.name}.{secrets.token_hex(4)}"
    fd = os.open(temporary, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    with os.fdopen(fd, "w") as fh:
        json.dump({"token": token, "pid": os.getpid(), "grpc_port": grpc_port}, fh)
    os.replace(temporary, path)
    return path


def withdraw_token(path: Path | None) -> None:
    if path is not None:
        with contextlib.suppress(OSError):
            path.unlink()


def read_token(address: str) -> str | None:
    """The access token of this user's server at ``address`` (``host:port``) on this host, or None."""
    host, _, port = address.rpartition(":")
    if not host.startswith(_LOOPBACK) or not port.isdigit():
        return None
    path = token_path(int(port))
    if not (_private(token_folder(), 0o700) and _private(path, 0o600)):
        return None
    try:
        record = json.loads(path.read_text())
        os.kill(int(record["pid"]), 0)  # a file a killed server left behind is not trusted
        return str(record["token"])
    except (OSError, ValueError, KeyError, TypeError):
        return None


@dataclass
class RegionPair:
    """An input and an output region, registered with the server under random names."""

    name: str
    image: Any
    mask: Any
    image_bytes: int
    mask_bytes: int


class SharedMemoryPool:
    """Region pairs for the requests one client has in flight, each reused and grown as needed.

    ``open`` registers a first pair to find out whether the server takes this client's token; it
    returns None where it does not, and the caller sends its data over gRPC."""

    def __init__(self, client, token: str):
        import tritonclient.utils.shared_memory as shm

        self._shm, self._client = shm, client
        self._headers = {GRPC_TOKEN_HEADER: token}
        self._free: queue.SimpleQueue[RegionPair] = queue.SimpleQueue()
        self._all: list[RegionPair] = []

    @classmethod
    def open(cls, client, address: str) -> SharedMemoryPool | None:
        token = read_token(address)
        if token is None:
            return None
        try:
            pool = cls(client, token)
            pool.release(pool._create(1, 1))
        except Exception:  # noqa: BLE001 - refused, or no shared memory here: plain gRPC then
            return None
        return pool

    def _create(self, image_bytes: int, mask_bytes: int) -> RegionPair:
        name = f"fcn-deploy-{os.getpid()}-{secrets.token_hex(8)}"
        pair = RegionPair(name, None, None, image_bytes, mask_bytes)
        try:
            pair.image = self._shm.create_shared_memory_region(f"{name}-image", f"/{name}-image", image_bytes)
            pair.mask = self._shm.create_shared_memory_region(f"{name}-mask", f"/{name}-mask", mask_bytes)
            self._client.register_system_shared_memory(f"{name}-image", f"/{name}-image", image_bytes, headers=self._headers)
            self._client.register_system_shared_memory(f"{name}-mask", f"/{name}-mask", mask_bytes, headers=self._headers)
        except Exception:
            self._destroy(pair)
            raise
        self._all.append(pair)
        return pair

    def _destroy(self, pair: RegionPair) -> None:
        for suffix, handle in (("image", pair.image), ("mask", pair.mask)):
            with contextlib.suppress(Exception):
                self._client.unregister_system_shared_memory(f"{pair.name}-{suffix}", headers=self._headers)
            if handle is not None:
                with contextlib.suppress(Exception):
                    self._shm.destroy_shared_memory_region(handle)

    def acquire(self, image_bytes: int, mask_bytes: int) -> RegionPair:
        """A free pair of at least these sizes (a smaller free one is replaced by a larger one, once
        the larger one exists)."""
        try:
            pair = self._free.get_nowait()
        except queue.Empty:
            return self._create(image_bytes, mask_bytes)
        if pair.image_bytes >= image_bytes and pair.mask_bytes >= mask_bytes:
            return pair
        try:
            larger = self._create(max(image_bytes, pair.image_bytes), max(mask_bytes, pair.mask_bytes))
        except Exception:
            self._free.put(pair)  # it still serves the smaller requests
            raise
        self._all.remove(pair)
        self._destroy(pair)
        return larger

    def release(self, pair: RegionPair) -> None:
        self._free.put(pair)

    def request(self, grpc, pair: RegionPair, batch: np.ndarray, mask_dtype: type, input_name: str, output_name: str):
        """The inputs and outputs of a request for ``batch`` (``uint8 NxHxWx3``) through ``pair``."""
        self._shm.set_shared_memory_region(pair.image, [batch])
        tensor = grpc.InferInput(input_name, list(batch.shape), "UINT8")
        tensor.set_shared_memory(f"{pair.name}-image", batch.nbytes)
        output = grpc.InferRequestedOutput(output_name)
        output.set_shared_memory(f"{pair.name}-mask", self.mask_bytes(batch, mask_dtype))
        return [tensor], [output]

    @staticmethod
    def mask_bytes(batch: np.ndarray, mask_dtype: type) -> int:
        return int(np.prod(batch.shape[:3])) * np.dtype(mask_dtype).itemsize

    def masks(self, pair: RegionPair, batch: np.ndarray, mask_dtype: type) -> np.ndarray:
        """The masks the server wrote for ``batch``, copied out of the region."""
        return self._shm.get_contents_as_numpy(pair.mask, np.dtype(mask_dtype), list(batch.shape[:3])).copy()

    def close(self) -> None:
        for pair in self._all:
            self._destroy(pair)
        self._all.clear()
