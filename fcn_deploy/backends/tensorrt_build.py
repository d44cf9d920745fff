"""Building a strongly typed TensorRT plan from the precision ONNX (see :mod:`.tensorrt`)."""

from __future__ import annotations

import time
from pathlib import Path

from ..errors import FcnDeployError
from ..events import SILENT, Listener
from ..fileio import atomic_path, atomic_write_bytes
from .profile import Profile


def network_flags(trt) -> int:
    """``create_network`` flags for a strongly typed network: 11.x is always strongly typed (its
    ``STRONGLY_TYPED`` is deprecated, ignored, and 0); 10.x opts in with ``1 << STRONGLY_TYPED`` (1)."""
    if int(str(trt.__version__).split(".")[0]) >= 11:
        return 0
    strongly_typed = getattr(trt.NetworkDefinitionCreationFlag, "STRONGLY_TYPED", None)
    if strongly_typed is None:
        raise FcnDeployError(f"TensorRT {trt.__version__} cannot build strongly typed networks; install TensorRT 10.x or 11.x")
    return 1 << int(strongly_typed)


def builder_settings(trt, config) -> dict[str, object]:
    """What the manifest records about the builder: every flag that is set, TF32, the optimisation level."""
    members = getattr(trt.BuilderFlag, "__members__", {})
    flags = sorted(name for name, flag in members.items() if config.get_flag(flag))
    settings: dict[str, object] = {"flags": flags, "tf32": "TF32" in flags}
    level = getattr(config, "builder_optimization_level", None)
    if level is not None:
        settings["builder_optimization_level"] = int(level)
    return settings


def build_plan(
    onnx_path: str | Path,
    plan_path: str | Path,
    profile: Profile,
    workspace_gib: float = 4.0,
    timing_cache: str | Path | None = None,
    listener: Listener = SILENT,
) -> dict[str, object]:
    """Parse ``onnx_path``, build a serialised plan for ``profile`` and write it atomically."""
    from .tensorrt import import_tensorrt, trt_logger

    trt = import_tensorrt()
    logger = trt_logger(trt)
    builder = trt.Builder(logger)
    flags = network_flags(trt)
    network = builder.create_network(flags)
    parser = trt.OnnxParser(network, logger)
    if not parser.parse_from_file(str(onnx_path)):
        errors = []
        for i in range(parser.num_errors):
            err = parser.get_error(i)
            node = f"node {err.node()} ({err.node_name()}, {err.node_operator()})" if hasattr(err, "node_name") else ""
            errors.append(f"{node}: {err.desc()}".strip(": "))
        raise FcnDeployError(f"{onnx_path}: TensorRT could not parse the ONNX: " + " | ".join(errors or ["unknown error"]))
    config = builder.create_builder_config()
    config.set_memory_pool_limit(trt.MemoryPoolType.WORKSPACE, int(workspace_gib * (1 << 30)))
    if hasattr(trt.BuilderFlag, "TF32"):  # on by default: FP32 tensors would be multiplied with 10-bit mantissas
        config.clear_flag(trt.BuilderFlag.TF32)
    opt_profile = builder.create_optimization_profile()
    name = network.get_input(0).name
    shapes = [(n, 3, h, w) for n, h, w in (profile.min, profile.opt, profile.max)]
    opt_profile.set_shape(name, *shapes)
    config.add_optimization_profile(opt_profile)
    cache_bytes = b""
    if timing_cache is not None and Path(timing_cache).is_file():
        cache_bytes = Path(timing_cache).read_bytes()
    cache = config.create_timing_cache(cache_bytes)
    reused = bool(cache_bytes)
    if cache is None or not config.set_timing_cache(cache, ignore_mismatch=False):
        listener.note(f"timing cache {timing_cache} does not match this TensorRT/GPU; starting a new one", level="warning")
        reused = False
        cache = config.create_timing_cache(b"")
        if cache is None or not config.set_timing_cache(cache, ignore_mismatch=True):
            raise FcnDeployError(f"TensorRT {trt.__version__} could not start a timing cache; build without one", options=("timing_cache",))
    listener.note(f"building TensorRT {trt.__version__} engine for {shapes[0]}..{shapes[2]} (opt {shapes[1]})")
    started = time.perf_counter()
    plan = builder.build_serialized_network(network, config)
    if plan is None:
        raise FcnDeployError(f"{onnx_path}: TensorRT failed to build an engine (see the TensorRT log above)")
    with atomic_path(plan_path) as tmp:
        tmp.write_bytes(bytes(plan))
    written = b""
    if timing_cache is not None:
        written = bytes(config.get_timing_cache().serialize())
        atomic_write_bytes(timing_cache, written)
    return {
        "build_seconds": time.perf_counter() - started,
        "tensorrt": trt.__version__,
        "network_flags": flags,
        "strongly_typed": True,
        "builder": builder_settings(trt, config),
        "workspace_bytes": int(workspace_gib * (1 << 30)),
        "timing_cache": str(timing_cache or ""),
        "timing_cache_bytes_read": len(cache_bytes),
        "timing_cache_reused": reused,
        "timing_cache_bytes_written": len(written),
    }
