"""Every registered backend, entry-point plugins included, for every precision it declares: build,
open through the manifest, validate at the product thresholds, segment, refuse a tampered file,
describe.  TensorRT runs through its stand-in (the plan is its exact ONNX graph, run by ONNX Runtime)."""

from __future__ import annotations

import pytest

from fcn_deploy import backends
from fcn_deploy.conformance import check_backend

import trt_standin

#: How a backend that cannot run on this machine is made to run here (a CPU stand-in).
STANDINS = {"tensorrt": trt_standin.install}
CASES = [(name, precision) for name in backends.names() for precision in backends.get(name).precisions]


def make_usable(name: str, monkeypatch) -> None:
    if not backends.get(name).status()[0]:
        if name not in STANDINS:
            pytest.fail(f"backend {name} is not usable here and has no stand-in: it would go untested")
        STANDINS[name](monkeypatch)


@pytest.mark.parametrize(("name", "precision"), CASES, ids=[f"{n}-{p}" for n, p in CASES])
def test_backend_conforms(name, precision, tiny_checkpoint, tiny_onnx, tiny_calibration, tmp_path, monkeypatch):
    make_usable(name, monkeypatch)
    results = check_backend(name, checkpoint=tiny_checkpoint, onnx_path=tiny_onnx, calib_dir=tiny_calibration,
                            workdir=tmp_path, precision_names=[precision])  # fmt: skip
    assert [r.name for r in results] == ["describe", "build", "validate", "infer", "tampered file refused", "describe engine"]
    failed = [f"{r.precision} {r.name}: {r.detail}" for r in results if not r.passed]
    assert not failed, failed


def test_every_registered_backend_and_precision_is_in_the_suite():
    """The suite's cases are the registry's, plugins included; a backend declaring an unknown precision fails here."""
    from fcn_deploy import precisions

    assert {n for n, _ in CASES} == set(backends.names()) and "myort" in backends.names()
    assert not backends.broken(), backends.broken()
    for name in backends.names():
        unknown = set(backends.get(name).precisions) - set(precisions.names())
        assert not unknown, f"{name} declares unknown precisions {unknown}"
    declared = {p for _, p in CASES}
    assert declared == set(precisions.names()), f"precisions no backend compiles: {set(precisions.names()) - declared}"
