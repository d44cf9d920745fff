"""One table of element types, with a view per framework.

Every framework names the same types its own way: ONNX by number, ONNX Runtime as
``tensor(float)``, OpenVINO as ``f32``, TensorRT as ``FLOAT``, Triton as ``TYPE_FP32``.  The
toolkit speaks numpy dtype names (``float32``) and translates here, in one place.
"""

from __future__ import annotations

from typing import Any, NamedTuple


class ElementType(NamedTuple):
    numpy: str  # numpy dtype name: what the toolkit speaks
    onnx: int  # onnx.TensorProto data type
    ort: str  # ONNX Runtime's NodeArg.type
    openvino: str  # OpenVINO Type.get_type_name()
    tensorrt: str | None  # trt.DataType name (None: TensorRT has no such I/O type)
    triton: str | None  # Triton model config data_type, without TYPE_


TYPES: tuple[ElementType, ...] = (
    ElementType("float32", 1, "tensor(float)", "f32", "FLOAT", "FP32"),
    ElementType("uint8", 2, "tensor(uint8)", "u8", "UINT8", "UINT8"),
    ElementType("int8", 3, "tensor(int8)", "i8", "INT8", "INT8"),
    ElementType("uint16", 4, "tensor(uint16)", "u16", None, "UINT16"),
    ElementType("int16", 5, "tensor(int16)", "i16", None, "INT16"),
    ElementType("int32", 6, "tensor(int32)", "i32", "INT32", "INT32"),
    ElementType("int64", 7, "tensor(int64)", "i64", "INT64", "INT64"),
    ElementType("string", 8, "tensor(string)", "string", None, "STRING"),
    ElementType("bool", 9, "tensor(bool)", "boolean", "BOOL", "BOOL"),
    ElementType("float16", 10, "tensor(float16)", "f16", "HALF", "FP16"),
    ElementType("float64", 11, "tensor(double)", "f64", None, "FP64"),
    ElementType("uint32", 12, "tensor(uint32)", "u32", None, "UINT32"),
    ElementType("uint64", 13, "tensor(uint64)", "u64", None, "UINT64"),
    ElementType("bfloat16", 16, "tensor(bfloat16)", "bf16", "BF16", "BF16"),
)
FLOAT_TYPES = ("float32", "float16", "float64", "bfloat16")

_BY = {field: {getattr(t, field): t for t in TYPES if getattr(t, field) is not None} for field in ElementType._fields}


def _lookup(field: str, key: Any, default: str | None) -> str:
    found = _BY[field].get(key)
    if found is not None:
        return found.numpy
    if default is not None:
        return default
    raise KeyError(f"unknown {field} element type {key!r}")


def from_onnx(elem_type: int, default: str | None = None) -> str:
    """``1`` -> ``float32``; unknown types give ``default`` (``type<N>`` when None)."""
    return _lookup("onnx", elem_type, default if default is not None else f"type{elem_type}")


def from_ort(type_string: str, default: str | None = None) -> str:
    """``tensor(float)`` -> ``float32``."""
    return _lookup("ort", type_string, default if default is not None else type_string)


def from_openvino(type_name: str, default: str = "?") -> str:
    """``f32`` -> ``float32``."""
    return _lookup("openvino", type_name, default)


def from_tensorrt(type_name: str) -> str | None:
    """``FLOAT`` -> ``float32``; None for a type the toolkit cannot bind."""
    found = _BY["tensorrt"].get(type_name)
    return found.numpy if found else None


def to_onnx(numpy_name: str) -> int:
    return _BY["numpy"][numpy_name].onnx


def triton_type(dtype: Any) -> str:
    """numpy dtype (or its name) -> a Triton model config ``data_type`` (``TYPE_UINT8``, ``TYPE_FP32``, ...)."""
    import numpy as np

    entry = _BY["numpy"].get(np.dtype(dtype).name)
    if entry is None or entry.triton is None:
        raise KeyError(f"Triton has no data type for {np.dtype(dtype).name}")
    return "TYPE_" + entry.triton
