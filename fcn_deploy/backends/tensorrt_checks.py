"""Checks at the door of the TensorRT backend: a one-layer build and run, and bindable buffers.

``smoke_test`` builds and runs an identity network, so ``tensorrt_status`` finds a TensorRT that
imports but cannot build (no CUDA libraries, a driver too old for the wheel) in a second, not after
a long build.  ``aligned_empty`` allocates the buffers TensorRT binds: ``set_tensor_address`` wants
256-byte-aligned pointers, and a tensor handed in at another address is copied into one of them.
"""

from __future__ import annotations

#: The alignment TensorRT requires of a bound tensor's address.
ALIGNMENT = 256


def aligned_empty(torch, shape: tuple[int, ...], dtype, device):
    """An uninitialised tensor of ``shape`` whose address is a multiple of :data:`ALIGNMENT` (torch's
    CUDA allocator aligns to 512 bytes already; the CPU one, used by the stand-in tests, to 64)."""
    count = 1
    for dim in shape:
        count *= int(dim)
    itemsize = torch.empty((), dtype=dtype).element_size()
    raw = torch.empty(count * itemsize + ALIGNMENT, dtype=torch.uint8, device=device)
    offset = (-raw.data_ptr()) % ALIGNMENT
    return raw[offset : offset + count * itemsize].view(dtype).view(shape)


def is_aligned(tensor) -> bool:
    return tensor.data_ptr() % ALIGNMENT == 0


def smoke_test(trt, device: str = "cuda") -> str | None:
    """Build and run a one-layer (identity) network; None when it works, else what failed."""
    import torch

    from .tensorrt import network_flags, trt_logger

    try:
        logger = trt_logger(trt)
        builder = trt.Builder(logger)
        if builder is None:
            return f"TensorRT {trt.__version__} could not create a builder (a driver too old for it, or its CUDA libraries missing)"
        network = builder.create_network(network_flags(trt))
        tensor = network.add_input("x", trt.float32, (1, 4))
        network.mark_output(network.add_identity(tensor).get_output(0))
        plan = builder.build_serialized_network(network, builder.create_builder_config())
        if plan is None:
            return f"TensorRT {trt.__version__} could not build a one-layer network (see the TensorRT log above)"
        engine = trt.Runtime(logger).deserialize_cuda_engine(plan)
        context = engine.create_execution_context() if engine is not None else None
        if context is None:
            return f"TensorRT {trt.__version__} could not load the one-layer engine it built (out of GPU memory?)"
        x = aligned_empty(torch, (1, 4), torch.float32, device)
        x.copy_(torch.arange(1.0, 5.0).reshape(1, 4))
        y = aligned_empty(torch, (1, 4), torch.float32, device)
        y.zero_()
        names = [engine.get_tensor_name(i) for i in range(engine.num_io_tensors)]
        bound = [context.set_tensor_address(name, t.data_ptr()) for name, t in zip(names, (x, y))]
        stream = torch.cuda.Stream() if device == "cuda" else None
        ran = context.execute_async_v3(stream.cuda_stream if stream is not None else 0)
        if stream is not None:
            stream.synchronize()
        if not all(bound) or not ran or not torch.equal(x.cpu(), y.cpu()):
            return f"TensorRT {trt.__version__} built a one-layer network, and running it did not return its input"
    except Exception as exc:  # noqa: BLE001 - any failure here is the reason TensorRT is unusable
        return f"TensorRT {trt.__version__} failed a one-layer build and run: {exc.__class__.__name__}: {exc}"
    return None
