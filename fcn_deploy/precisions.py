"""The precisions: one registry of small objects, each saying everything the pipeline needs to know.

A precision is an ONNX transform (TensorRT 11 is strongly typed, so the precision lives in the
graph), run on the CPU by ONNX Runtime like every other graph, and then compiled by a backend.
Each entry gives:

* its graph's file suffix (``model.fp16.onnx``; INT8 graphs depend on the compiling backend's
  activation encoding, so theirs names the target: ``model.int8-openvino.onnx``);
* whether it needs calibration images, and which build options it uses;
* its transform (``module:function``, imported only when a graph is built);
* its validation limits (the product thresholds) and the arithmetic label of a native engine.

Adding a precision is one :func:`register` call (or one entry below) plus the backends that declare
it in their ``precisions``; ``build-engine --precision NAME`` then accepts it.
"""

from __future__ import annotations

import importlib
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from types import MappingProxyType
from typing import Any

from .errors import FcnDeployError


@dataclass(frozen=True)
class Precision:
    name: str
    description: str
    #: Suffix of the precision graph: ``{stem}.{suffix}.onnx``; ``{target}`` is replaced by the INT8
    #: target backend.  None: the FP32 source graph itself, untransformed.
    graph_suffix: str | None
    #: Calibration images feed the transform (FP16's ranges, INT8's scales).
    needs_calibration: bool = False
    #: ``module:function`` of the transform ``(model, context) -> (model, report)``; None for FP32.
    transform: str | None = None
    #: The build options the transform reads (names of :class:`fcn_deploy.engines.BuildOptions` fields).
    uses: frozenset[str] = frozenset()
    #: The product thresholds: limit name -> value (None turns a gate off); see :mod:`fcn_deploy.validation`.
    limits: Mapping[str, float | None] = field(default_factory=dict)
    #: What a native engine of this precision computes in (runners may report another, e.g. ``fp16-emulated``).
    arithmetic: str = ""
    #: Whether the graph is quantized (Q/DQ): the INT8 check and repair apply to it.
    quantized: bool = False

    def graph_path(self, source: Path, target: str) -> Path:
        """Where the precision graph of ``source`` goes (``source`` itself for FP32)."""
        if self.graph_suffix is None:
            return source
        return source.with_name(f"{source.stem}.{self.graph_suffix.format(target=target)}.onnx")

    def load_transform(self) -> Callable[..., tuple[Any, dict[str, Any]]]:
        if self.transform is None:
            raise FcnDeployError(f"precision {self.name} has no transform: its graph is the FP32 source")
        module, _, function = self.transform.partition(":")
        return getattr(importlib.import_module(module), function)


_REGISTRY: dict[str, Precision] = {}


def register(precision: Precision, *, replace: bool = False) -> Precision:
    """Add ``precision`` to the registry (``replace`` an existing entry of the same name)."""
    if precision.name in _REGISTRY and not replace:
        raise ValueError(f"precision {precision.name!r} is already registered")
    _REGISTRY[precision.name] = precision
    return precision


def unregister(name: str) -> None:
    _REGISTRY.pop(name, None)


def get(name: str) -> Precision:
    """The precision registered as ``name``, or a one-line error listing the known ones."""
    try:
        return _REGISTRY[name]
    except KeyError:
        raise FcnDeployError(f"unknown precision {name!r}; choose one of {', '.join(_REGISTRY)}", options=("precision",)) from None


def names() -> list[str]:
    return list(_REGISTRY)


def all_precisions() -> Mapping[str, Precision]:
    return MappingProxyType(_REGISTRY)


register(Precision(
    name="fp32",
    description="the exported graph as it is",
    graph_suffix=None,
    limits={"pixel_agreement": 0.9999, "size_floor": 0.999, "confident_agreement": 1.0, "confidence_margin": 0.05},
    arithmetic="fp32",
))  # fmt: skip
# FP16 limits come from FP16 arithmetic measured against FP32 (torch float16, ``validate --emulate-fp16``):
# only pixels whose reference top-2 margin is a small fraction of the 0.25 margin flip (README, "FP16").
register(Precision(
    name="fp16",
    description="FP16 weights and activations, FP32 where a calibration run sees values beyond FP16's range; float32 I/O",
    graph_suffix="fp16",
    needs_calibration=True,
    transform="fcn_deploy.precision.fp16:transform",
    uses=frozenset({"calib_dir"}),
    limits={"pixel_agreement": 0.999, "size_floor": 0.995, "confident_agreement": 1.0, "confidence_margin": 0.25},
    arithmetic="fp16",
))  # fmt: skip
register(Precision(
    name="int8",
    description="explicit Q/DQ int8 from post-training calibration, in the compiling backend's activation encoding",
    graph_suffix="int8-{target}",
    needs_calibration=True,
    transform="fcn_deploy.precision.int8:transform",
    uses=frozenset({"calib_dir", "calib_method", "int8_target", "float_nodes", "bias_correction", "int8_repair", "repair_budget", "repair_time_s"}),
    limits={"pixel_agreement": 0.99, "size_floor": 0.98, "confident_agreement": None, "min_mean_iu": 0.97,
            "confidence_margin": 2.0},
    arithmetic="int8",
    quantized=True,
))  # fmt: skip
