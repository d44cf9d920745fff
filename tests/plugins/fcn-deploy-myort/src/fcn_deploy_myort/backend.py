"""``myort``: ONNX Runtime under another name, as a plugin would write it.

It subclasses fcn-deploy's ONNX Runtime backend and changes what a plugin typically changes: its
engine's name, its rank for ``auto`` (never first), and one build option of its own, which the
manifest records and the rebuild command repeats.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from fcn_deploy.backends import BackendOption, CompileOptions, Profile
from fcn_deploy.backends.onnxruntime import OnnxRuntimeBackend
from fcn_deploy.events import SILENT, Listener
from fcn_deploy.meta import ModelMeta


class MyOrtBackend(OnnxRuntimeBackend):
    name = "myort"
    auto_rank = 90
    auto_reason = "a test plugin"
    engine_suffix = "myort.onnx"
    options = (BackendOption("myort_tag", "--myort-tag", str, "plain", "A label the myort plugin records in its build info."),)

    def compile(self, precision_onnx: Path, engine: Path, profile: Profile, meta: ModelMeta, options: CompileOptions,
                listener: Listener = SILENT) -> dict[str, Any]:  # fmt: skip
        info = super().compile(precision_onnx, engine, profile, meta, options, listener=listener)
        return {**info, "myort_tag": self.option_values(options.backend_options)["myort_tag"]}
