"""serve: a real Triton Inference Server for any engine, ONNX file or checkpoint the toolkit opens.

This process writes a one-model repository (:func:`write_repository`) and starts NVIDIA's
``tritonserver`` on it, the binary bundled in the ``nvidia-pytriton`` wheel, through PyTriton's
server lifecycle.  The model runs on Triton's Python backend: each of ``--instances`` is a stub
process that opens the engine itself (:mod:`.in_triton`) and runs the batches Triton's dynamic
batcher forms through the same :class:`~fcn_deploy.inference.Segmenter` as ``infer``, so
out-of-profile sizes are fitted exactly as ``infer`` fits them.  Triton owns the HTTP/gRPC
endpoints, health and readiness, the batcher, the Prometheus metrics and the statistics API.  The
interface is :mod:`fcn_deploy.backends.remote`'s.

Python is in the data path once: Triton hands each batch to the stub through shared memory.  (A
model bound with PyTriton's ``bind`` has a second hop: Triton's stub forwards every request to the
process that bound the function, and back.)  This process only reads the engine's facts, starts and
stops the server, and relays what the instances report (refusals, failures, counts).

Three traps, each met here:

* The Python backend's stub links the system's ``libpython3.X``; an interpreter of another build
  (pyenv, conda) then fails to load the model with ``'_thread.RLock' object has no attribute
  '_recursion_count'``.  The server starts with this interpreter's ``LIBDIR`` first on
  ``LD_LIBRARY_PATH``.
* ``Triton.run()`` returns at once (``serve()`` blocks): this module waits for a signal itself.
* A terminal's Ctrl-C reaches the whole process group, and a child that died of it would fail
  every request in flight, so the children start with SIGINT/SIGTERM ignored (tritonserver installs
  its own handlers; the stubs it starts survive a group's SIGINT, tested by hand with 40 requests in
  flight).  On SIGINT or SIGTERM this process stops Triton, which refuses new
  requests, waits for the ones in flight (its ``exit_timeout``, 30 s) and exits; then this exits 0.

Triton's own log goes to a file (``triton_log``; by default a temporary one, shown when the
server fails to start), because at its default level it fills a terminal with tables and CUDA
warnings that mean nothing on a CPU-only machine.
"""

from __future__ import annotations

import contextlib
import errno
import json
import logging
import os
import re
import secrets
import signal
import socket
import sysconfig
import tempfile
import threading
import time
import warnings
from pathlib import Path
from typing import Any

import numpy as np

from .. import dtypes
from ..artefacts import has_manifest
from ..backends import Runner, open_runner, read_manifest
from ..backends.profile import DEFAULT_MAX_BATCH, UNBOUNDED_MAX
from ..backends.remote import INPUT, INSTALL_HINT, OUTPUT, largest_request, mask_dtype, published_parameters
from ..backends.remote_shm import publish_token, withdraw_token
from ..errors import FcnDeployError
from ..events import SILENT, Listener
from ..fileio import sha256_file
from .in_triton import COUNT_KEYS, ENGINE_KEY, EVENTS_KEY, MASK_DTYPE_KEY, SETTINGS_FILE, THREADS_KEY
from .repository import Enum, check_model_name, to_pbtxt

#: Triton's restricted endpoints, less ``statistics``: the server benchmark reads it, and it only
#: reads counts.  The repository (load/unload), shared-memory, trace and logging APIs stay behind
#: the access token, which only this user's clients on this host can read (:mod:`..backends.remote_shm`).
RESTRICTED_ENDPOINTS = ["shared-memory", "model-repository", "trace", "logging"]
#: Seconds Triton waits for in-flight requests when it stops (Triton's default).
DRAIN_TIMEOUT_S = 30
_POLL_S = 0.5


def import_pytriton():
    try:
        import pytriton  # noqa: F401
        from pytriton.triton import Triton  # noqa: F401
    except ImportError as exc:
        raise FcnDeployError(f"PyTriton is not installed: {INSTALL_HINT}") from exc


def python_libdir_first() -> None:
    """Put this interpreter's libpython first on ``LD_LIBRARY_PATH`` (the Python backend stub's trap)."""
    libdir = sysconfig.get_config_var("LIBDIR")
    if not libdir or not Path(libdir).is_dir():
        return
    paths = [p for p in os.environ.get("LD_LIBRARY_PATH", "").split(os.pathsep) if p and p != libdir]
    os.environ["LD_LIBRARY_PATH"] = os.pathsep.join([libdir, *paths])


def check_ports(host: str, ports: dict[str, int]) -> None:
    """Each endpoint's port (``{"http": 8000, ...}``) is valid, distinct and free on ``host``, or a
    one-line error naming the option (``http_port``, ...)."""
    seen: dict[int, str] = {}
    for label, port in ports.items():
        if not 0 < port < 65536:
            raise FcnDeployError(f"{label} port {port}: give a port between 1 and 65535", options=(f"{label}_port",))
        if port in seen:
            raise FcnDeployError(f"{label} port {port} is also the {seen[port]} port; give each endpoint its own port",
                                 options=(f"{label}_port", f"{seen[port]}_port"))  # fmt: skip
        seen[port] = label
    for label, port in ports.items():
        try:
            family, kind, proto, _, address = socket.getaddrinfo(host, port, type=socket.SOCK_STREAM)[0]
        except socket.gaierror as exc:
            raise FcnDeployError(f"host {host}: cannot resolve it ({exc.strerror}); give an address such as 127.0.0.1",
                                 options=("host",)) from None  # fmt: skip
        with socket.socket(family, kind, proto) as probe:
            probe.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)  # as servers do: TIME_WAIT is no conflict
            try:
                probe.bind(address)
            except OSError as exc:
                if exc.errno == errno.EADDRINUSE:
                    raise FcnDeployError(
                        f"port {port} on {host} is in use (the {label} endpoint's); stop what listens there or choose another "
                        f"{label} port", options=(f"{label}_port",),
                    ) from None  # fmt: skip
                raise FcnDeployError(f"cannot listen on {host}:{port} ({exc.strerror}); check the host and the {label} port",
                                     options=("host", f"{label}_port")) from None  # fmt: skip


def engine_facts(engine: Path, runner: Runner) -> tuple[str, str]:
    """The engine's file name and sha256: the manifest's record for an engine, else the file's own hash."""
    if has_manifest(engine):
        manifest = read_manifest(engine)
        listed = {entry["name"]: entry.get("sha256") for entry in manifest["files"]}
        return engine.name, listed.get(engine.name) or sha256_file(engine)
    return engine.name, sha256_file(engine)


def default_max_batch(runner: Runner) -> int:
    """The profile's largest batch; a model that is not a compiled engine has none, so the default profile's."""
    return runner.profile.max[0] if runner.profile.max[0] < UNBOUNDED_MAX[0] else DEFAULT_MAX_BATCH


STUB_MODEL = """\"\"\"Written by fcn-deploy serve: the served model is fcn_deploy.serve.in_triton's.\"\"\"
import sys

if {package_root!r} not in sys.path:  # the stub's interpreter is this one; an editable install may not be on its path
    sys.path.append({package_root!r})
from fcn_deploy.serve.in_triton import TritonPythonModel  # noqa: E402,F401
"""


def write_repository(folder: Path, name: str, engine: Path, runner: Runner, parameters: dict[str, str], *, max_batch: int,
                     queue_delay_us: int, instances: int, threads: int | None, events: Path) -> Path:  # fmt: skip
    """The one-model repository ``serve`` hands Triton: the Python backend, whose stub opens the
    engine itself (:mod:`.in_triton`), the published parameters in its config, and the settings
    only the stub reads (the engine's path, threads, the events file) in a file beside ``model.py``,
    so clients reading the config never see a path on this machine."""
    dtype = mask_dtype(runner.meta.num_classes)
    version = folder / name / "1"
    version.mkdir(parents=True)
    package_root = str(Path(__file__).resolve().parents[2])
    (version / "model.py").write_text(STUB_MODEL.format(package_root=package_root))
    settings = {ENGINE_KEY: str(engine.resolve()), THREADS_KEY: str(threads or 0), EVENTS_KEY: str(events),
                MASK_DTYPE_KEY: np.dtype(dtype).name}  # fmt: skip
    (version / SETTINGS_FILE).write_text(json.dumps(settings))
    config = {
        "name": name, "backend": "python", "max_batch_size": max_batch,
        "input": [{"name": INPUT, "data_type": Enum("TYPE_UINT8"), "dims": [-1, -1, 3]}],
        "output": [{"name": OUTPUT, "data_type": Enum(dtypes.triton_type(dtype)), "dims": [-1, -1]}],
        "dynamic_batching": {"max_queue_delay_microseconds": queue_delay_us},
        "instance_group": [{"count": instances, "kind": Enum("KIND_CPU")}],
        "parameters": parameters,
    }  # fmt: skip
    (folder / name / "config.pbtxt").write_text(to_pbtxt(config))
    return folder


def _stop(triton) -> None:
    """Stop Triton (it drains in-flight requests), without PyTriton's warning about a workspace it
    could not clean: the workspace lives in a temporary folder this process removes."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        triton.stop()


def _stop_quietly(triton) -> None:
    """Stop Triton if it still runs; after a failed start, PyTriton's own clean-up can raise, and the
    start's error is the one to report."""
    with contextlib.suppress(Exception):
        _stop(triton)


def _log_errors(log_file: Path) -> str:
    """The error lines of Triton's log (its lines start with E), for a one-line failure message."""
    try:
        text = log_file.read_text(errors="replace")
    except OSError:
        return ""
    errors = [line for line in text.splitlines() if line.startswith("E") and "CudaDriverHelper" not in line]
    errors = [re.sub(r"^E\d{4} [\d:.]+ \d+ \S+\] ", "", line).strip().strip('"').strip() for line in errors]
    return "; ".join(errors[-2:])


def serve(
    engine: str | Path,
    *,
    name: str = "fcn",
    host: str = "127.0.0.1",
    http_port: int = 8000,
    grpc_port: int = 8001,
    metrics_port: int = 8002,
    max_batch: int | None = None,
    queue_delay_us: int = 0,
    instances: int = 1,
    threads: int | None = None,
    triton_log: Path | None = None,
    listener: Listener = SILENT,
) -> dict[str, Any]:
    """Serve ``engine`` until SIGINT or SIGTERM, then drain and return what was served.

    The listener hears where it serves once the model is up, each refused or failed batch (a
    warning, an error) and when it starts draining."""
    engine = Path(engine)
    check_model_name(name)
    if instances < 1:
        raise FcnDeployError(f"{instances} instances: give at least 1", options=("instances",))
    if queue_delay_us < 0:
        raise FcnDeployError(f"queue delay {queue_delay_us} us: give 0 or more", options=("queue_delay_us",))
    if max_batch is not None and max_batch < 1:
        raise FcnDeployError(f"max batch {max_batch}: give at least 1", options=("max_batch",))
    check_ports(host, {"http": http_port, "grpc": grpc_port, "metrics": metrics_port})
    import_pytriton()
    if threads is None and instances > 1:
        threads = max(1, (os.cpu_count() or 1) // instances)

    with contextlib.ExitStack() as stack:
        # the facts clients are told, read here; the engine itself runs in Triton's stub processes
        with open_runner(engine, threads=threads) as runner:
            batch = max_batch or default_max_batch(runner)
            engine_name, sha256 = engine_facts(engine, runner)
            parameters = published_parameters(runner.meta, runner.profile, runner.precision, runner.backend, engine_name, sha256)
            lines = _serving_lines(runner, name, host, (http_port, grpc_port, metrics_port), batch, queue_delay_us, instances)
            described = f"{runner.backend}-{runner.precision}"
            # PyTriton's workspace (sockets, a copy of tritonserver) and the repository, in a folder this
            # process removes whatever happens: PyTriton's own clean-up races its rglob and can leave it behind.
            scratch = Path(stack.enter_context(tempfile.TemporaryDirectory(prefix="fcn-deploy-triton-", ignore_cleanup_errors=True)))
            events = EventsReader(scratch / "events.jsonl", listener)
            repository = write_repository(scratch / "repository", name, engine, runner, parameters, max_batch=batch,
                                          queue_delay_us=queue_delay_us, instances=instances, threads=threads,
                                          events=events.path)  # fmt: skip
        log_file = Path(triton_log) if triton_log else scratch / "triton.log"
        log_file.parent.mkdir(parents=True, exist_ok=True)

        python_libdir_first()
        logging.getLogger("pytriton").setLevel(logging.ERROR)
        from pytriton.triton import Triton, TritonConfig, TritonSecurityConfig

        config = TritonConfig(
            model_repository=repository, http_address=host, http_port=http_port, grpc_address=host, grpc_port=grpc_port,
            metrics_address=host, metrics_port=metrics_port, log_file=log_file, exit_timeout_secs=DRAIN_TIMEOUT_S,
            allow_gpu_metrics=Path("/proc/driver/nvidia").exists(),  # else Triton prints an NVML error on CPU-only hosts
        )  # fmt: skip
        token = secrets.token_urlsafe(32)  # the restricted APIs' token; same-host clients of this user read it
        security = TritonSecurityConfig(access_token=token, restricted_endpoints=list(RESTRICTED_ENDPOINTS))
        triton = Triton(config=config, workspace=scratch / "workspace", security_config=security)
        stop = threading.Event()
        main_thread = threading.current_thread() is threading.main_thread()
        handled = (signal.SIGINT, signal.SIGTERM)
        previous = {sig: signal.signal(sig, signal.SIG_IGN) for sig in handled} if main_thread else {}
        stack.callback(lambda: [signal.signal(sig, handler) for sig, handler in previous.items()])
        stack.callback(_stop_quietly, triton)
        listener.note(f"starting Triton for {engine.name}")
        try:
            triton.run()  # its children inherit the ignored signals (see the module docstring)
        except Exception as exc:  # noqa: BLE001 - PyTriton raises several kinds; the log says why
            _stop_quietly(triton)  # the server has written its last words once it is gone
            events.read()
            why = _log_errors(log_file) or f"{exc.__class__.__name__}: {exc}"
            if triton_log:
                raise FcnDeployError(f"Triton failed to start for {engine}: {why} (its log: {triton_log})") from None
            raise FcnDeployError(f"Triton failed to start for {engine}: {why} (its log was temporary: give a log file to keep it)",
                                 options=("triton_log",)) from None  # fmt: skip
        for sig in previous:
            signal.signal(sig, lambda signum, frame: stop.set())
        published = publish_token(grpc_port, token)
        stack.callback(withdraw_token, published)

        listener.note(f"serving {engine} as model {name} ({described}, sha256 {sha256})", level="success")
        for line in lines:
            listener.note(line)
        if published:
            listener.note(f"  clients of this user on this host send images through system shared memory (token: {published})")
        if triton_log:
            listener.note(f"  Triton's log: {triton_log}")
        while not stop.wait(_POLL_S):
            events.read()
            if not triton.is_alive():
                why = _log_errors(log_file)
                raise FcnDeployError(f"the Triton server stopped unexpectedly{': ' + why if why else ''}")
        listener.note("stopping: draining in-flight requests")
        start = time.perf_counter()
        _stop(triton)  # Triton unloads the model once drained: each instance writes its counts
        drain_s = time.perf_counter() - start
        events.read()
        counts = events.counts
        executions = counts["executions"]
        images = counts["images"]
        stage_ms = {stage: 1000 * seconds / images for stage, seconds in events.stage_seconds.items() if seconds and images}
        return {"model": name, "engine": str(engine), "engine_sha256": sha256, **counts, "drain_s": drain_s,
                "average_batch": images / executions if executions else None, "stage_ms_per_image": stage_ms}  # fmt: skip


class EventsReader:
    """Reads the stub instances' events file as it grows: notes go to the listener (a note marked
    ``once`` only the first time), and the instances' counts add up."""

    def __init__(self, path: Path, listener: Listener):
        self.path, self.listener, self.offset = path, listener, 0
        self.path.touch()
        self.counts = dict.fromkeys(COUNT_KEYS, 0)
        self.stage_seconds: dict[str, float] = {}
        self._once: set[str] = set()

    def read(self) -> None:
        with open(self.path, "rb") as handle:
            handle.seek(self.offset)
            data = handle.read()
        complete = data[: data.rfind(b"\n") + 1]
        self.offset += len(complete)
        for line in complete.decode(errors="replace").splitlines():
            record = json.loads(line)
            if "counts" in record:
                for key, value in record["counts"].items():
                    self.counts[key] = max(self.counts[key], value) if key == "largest_batch" else self.counts[key] + value
                for stage, seconds in record.get("stage_seconds", {}).items():
                    self.stage_seconds[stage] = self.stage_seconds.get(stage, 0.0) + seconds
            elif not record.get("once") or record["note"] not in self._once:
                self._once.add(record["note"])
                self.listener.note(record["note"], level=record.get("level", "info"))


def _serving_lines(runner: Runner, name: str, host: str, ports: tuple[int, int, int], batch: int, queue_delay_us: int,
                   instances: int) -> list[str]:  # fmt: skip
    """What a person needs once the model is up: where it listens, its interface, its classes, how to probe it."""
    http_port, grpc_port, metrics_port = ports
    address = "127.0.0.1" if host in ("0.0.0.0", "::") else host
    (_, min_h, min_w), (_, max_h, max_w) = runner.profile.min, runner.profile.max
    big_h, big_w = largest_request(runner.profile)
    dtype = np.dtype(mask_dtype(runner.meta.num_classes)).name.upper()
    classes = ", ".join(f"{n} {tuple(c)}" for n, c in zip(runner.meta.class_names, runner.meta.palette))
    return [
        f"  gRPC {address}:{grpc_port}   HTTP {address}:{http_port}   metrics http://{address}:{metrics_port}/metrics",
        f"  {INPUT} UINT8 [n, H, W, 3] -> {OUTPUT} {dtype} [n, H, W]; engine profile {min_h}x{min_w} to {max_h}x{max_w} "
        f"(other sizes are fitted, up to {big_h}x{big_w}); dynamic batching up to {batch}, queue delay {queue_delay_us} us; "
        f"{instances} instance(s)",
        f"  {runner.meta.num_classes} classes: {classes}",
        # Triton answers /v2/health/ready before PyTriton has loaded the model: probe the model itself
        f"  ready: curl -sf http://{address}:{http_port}/v2/models/{name}/ready; Ctrl-C or SIGTERM drains and stops",
    ]
