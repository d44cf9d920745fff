"""export-triton: a model repository for NVIDIA's Triton Inference Server container.

The repository serves the engine natively, with no fcn-deploy inside the container::

    REPO/
      NAME/                 the ensemble clients call: image UINT8 [n, H, W, 3] -> mask [n, H, W]
        config.pbtxt          (the same interface and published parameters as `fcn-deploy serve`)
        1/
      NAME_preprocess/      Python backend: fit to the profile, normalise
        config.pbtxt
        1/model.py
      NAME_engine/          the engine on its own backend
        config.pbtxt          tensorrt_plan | onnxruntime_onnx | openvino
        1/model.plan | model.onnx | model.xml + model.bin
        fcn-deploy-manifest.json
      NAME_postprocess/     Python backend: argmax, resize the mask back
        config.pbtxt
        1/model.py
      README.txt            how to run it

Each ``config.pbtxt`` comes from the manifest: the dims from the profile (-1 where it is dynamic),
``max_batch_size`` from its largest batch, ``dynamic_batching``, and ``instance_group``.  How
Triton serves the engine is the backend's own fact (:meth:`~fcn_deploy.backends.Backend.triton_spec`):
the Triton backend and model file names, whether it batches, GPU or CPU instances, its parameters,
the Triton release to run and what to know before serving it there.  For example:

* Triton's OpenVINO backend fixes a batching model's batch to ``max_batch_size`` (``ov::set_batch``)
  and pads every smaller batch up to it, so the OpenVINO engine is served without Triton batching
  (``max_batch_size: 0``, batch dim -1); an ensemble may batch around a non-batching model, so the
  interface is unchanged, and OpenVINO scales with ``instance_group`` (its own advice).
* That backend cannot set OpenVINO's inference precision, so on CPUs with bf16 arithmetic (AVX512-BF16,
  AMX) it runs FP32 graphs in bf16, which ``fcn-deploy serve`` avoids; ``validate --server`` measures it.

The engine's input and output names and types are read from the engine by its backend
(:meth:`~fcn_deploy.backends.Backend.engine_io`); a plain exported ONNX is served by the backend
that runs plain ONNX files (:func:`~fcn_deploy.backends.plain_onnx_backend`).

The engine files are copied and their sha256 checked against the manifest.  The repository is
written into a staging folder next to ``REPO`` and swapped into place in one step
(:func:`fcn_deploy.fileio.atomic_dir`), so ``REPO`` holds the old repository or the new one, whole,
whenever the command stops.
"""

from __future__ import annotations

import json
import re
import shutil
from pathlib import Path
from typing import Any

import numpy as np

from .. import backends, dtypes
from ..artefacts import Kind, kind_of
from ..backends import Profile, TritonSpec, default_profile, read_manifest
from ..backends.manifest import check_files, refuse
from ..backends.profile import DEFAULT_MAX_BATCH, UNBOUNDED_MAX
from ..backends.remote import INPUT, OUTPUT, PROFILE_KEY, mask_dtype, published_parameters
from ..errors import FcnDeployError
from ..events import SILENT, Listener
from ..fileio import atomic_dir, sha256_file
from ..meta import ModelMeta, read_onnx_meta, read_onnx_props
from ..onnxkit import dims_of, graph_inputs, read_onnx

PYTHON_MODEL = Path(__file__).with_name("prepost_model.py")


class Enum(str):
    """A protobuf enum value: written bare in text format (``KIND_GPU``), not quoted."""


def to_pbtxt(message: dict[str, Any], indent: int = 0) -> str:
    """A dict as protobuf text format: nested dicts are messages, lists repeated fields, and a
    ``parameters`` dict Triton's ``map<string, ModelParameter>``."""
    pad = "  " * indent
    lines = []
    for key, value in message.items():
        if value is None:
            continue
        if key == "parameters" and isinstance(value, dict):
            for name, text in value.items():
                lines.append(f"{pad}parameters {{ key: {_quote(name)} value {{ string_value: {_quote(text)} }} }}")
            continue
        for item in value if isinstance(value, list) and (not value or isinstance(value[0], dict)) else [value]:
            if isinstance(item, dict):
                lines.append(f"{pad}{key} {{\n{to_pbtxt(item, indent + 1)}{pad}}}")
            else:
                lines.append(f"{pad}{key}: {_scalar(item)}")
    return "".join(line + "\n" for line in lines)


def _quote(text: str) -> str:
    return '"' + str(text).replace("\\", "\\\\").replace('"', '\\"').replace("\n", "\\n") + '"'


def _scalar(value: Any) -> str:
    if isinstance(value, Enum):
        return str(value)
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, (int, np.integer)):
        return str(int(value))
    if isinstance(value, list):
        return "[ " + ", ".join(_scalar(v) for v in value) + " ]"
    return _quote(value)


# --------------------------------------------------------------------------- the engine


class EngineSource:
    """What the repository needs to know about an engine: its backend and how Triton serves it, its
    files, profile and metadata, and the names and types of its input and outputs (read from the
    engine, not assumed)."""

    def __init__(self, path: Path):
        self.path = Path(path)
        kind = kind_of(self.path, "engine")
        if kind is Kind.ENGINE:
            manifest = read_manifest(self.path)
            backend = backends.engine_backend(self.path, manifest)
            spec = _triton_spec(self.path, backend, manifest)
            files = backend.engine_files(self.path)
            refuse(self.path, manifest, check_files(self.path, manifest, files))  # no environment check: the container runs it
            self.files = files
            self.meta = ModelMeta.from_dict(manifest["meta"], str(self.path))
            self.profile = Profile.from_dict(manifest["profile"])
            self.precision = manifest["precision"]
            self.sha256 = {entry["name"]: entry["sha256"] for entry in manifest["files"]}[self.path.name]
            self.manifest: dict[str, Any] | None = manifest
        elif kind is Kind.ONNX:  # a plain export runs on Triton's backend for the runtime that runs plain ONNX files
            backend = backends.plain_onnx_backend()
            spec = _triton_spec(self.path, backend, {})
            proto = read_onnx(self.path, load_data=False)
            self.files, self.manifest = [self.path], None
            self.meta = read_onnx_meta(proto, str(self.path))
            fed = graph_inputs(proto)
            dims = dims_of(fed[0]) if fed else []
            self.profile = default_profile(self.meta, dims if len(dims) == 4 else None)
            self.precision = read_onnx_props(proto).get("fcn_deploy.precision", "fp32")
            self.sha256 = sha256_file(self.path)
        else:
            raise FcnDeployError(
                f"{self.path}: export-triton takes an engine (with its manifest) or an exported ONNX; export a checkpoint "
                "first with `fcn-deploy export`"
            )
        self.backend: str = backend.name
        self.spec: TritonSpec = spec
        if len(spec.model_files) != len(self.files):
            raise FcnDeployError(
                f"{self.path}: {backend.name}'s Triton spec names {len(spec.model_files)} model file(s) for an engine of "
                f"{len(self.files)} file(s); the backend's triton_spec and engine_files disagree"
            )
        #: ``[(name, numpy dtype name)]`` of the engine's inputs and outputs.
        self.inputs, self.outputs = backend.engine_io(self.path, self.manifest or {})


def _triton_spec(path: Path, backend: backends.Backend, manifest: dict[str, Any]) -> TritonSpec:
    spec = backend.triton_spec(manifest)
    if spec is None:
        raise FcnDeployError(f"{path}: {backend.name} has no Triton backend; serve it with `fcn-deploy serve` instead")
    return spec


# --------------------------------------------------------------------------- the configs


def _data_type(source: EngineSource, dtype: Any) -> Enum:
    """A Triton ``data_type`` for one of the engine's tensor types, or a one-line error naming the engine."""
    try:
        return Enum(dtypes.triton_type(dtype))
    except (KeyError, TypeError):
        raise FcnDeployError(f"{source.path}: has a {dtype} tensor, which Triton has no data type for") from None


def _dims(profile: Profile) -> tuple[int, int]:
    """Height and width dims: fixed where the profile is, -1 where it ranges."""
    return tuple(lo if lo == hi else -1 for lo, hi in zip(profile.min[1:], profile.max[1:]))  # type: ignore[return-value]


def build_configs(source: EngineSource, name: str, max_batch: int, queue_delay_us: int, instances: int) -> dict[str, dict[str, Any]]:
    """The four model configs (as dicts for :func:`to_pbtxt`), by model name."""
    meta, profile = source.meta, source.profile
    (input_name, input_dtype), *extra_inputs = source.inputs
    if extra_inputs:
        raise FcnDeployError(f"{source.path}: has {len(source.inputs)} inputs; an fcn-deploy engine has one image input")
    outputs = dict(source.outputs)
    engine_output = "mask" if "mask" in outputs else "logits" if "logits" in outputs else None
    if engine_output is None:
        raise FcnDeployError(f"{source.path}: has neither a 'logits' nor a 'mask' output (outputs: {', '.join(outputs)})")
    height, width = _dims(profile)
    spec = source.spec
    batching = spec.batching
    lead = [] if batching else [-1 if profile.min[0] != profile.max[0] else profile.min[0]]
    output_dims = [*lead, meta.num_classes, height, width] if engine_output == "logits" else [*lead, height, width]
    kind = Enum("KIND_GPU" if spec.device == "gpu" else "KIND_CPU")
    data_type = lambda dtype: _data_type(source, dtype)  # noqa: E731
    engine_name, pre_name, post_name = f"{name}_engine", f"{name}_preprocess", f"{name}_postprocess"
    engine = {
        "name": engine_name, spec.key: spec.value, "max_batch_size": max_batch if batching else 0,
        "input": [{"name": input_name, "data_type": data_type(input_dtype), "dims": [*lead, 3, height, width]}],
        "output": [{"name": engine_output, "data_type": data_type(outputs[engine_output]), "dims": output_dims}],
        "dynamic_batching": {"max_queue_delay_microseconds": queue_delay_us} if batching else None,
        "instance_group": [{"kind": kind, "count": instances}],
        "parameters": dict(spec.parameters) if spec.parameters else None,
    }  # fmt: skip
    served = published_parameters(meta, profile, source.precision, source.backend, source.path.name, source.sha256)
    python_parameters = {
        "fcn_deploy.meta": served["fcn_deploy.meta"], PROFILE_KEY: served[PROFILE_KEY], "largest_request": served["largest_request"],
        "engine_input_dtype": input_dtype, "engine_output": engine_output, "mask_dtype": np.dtype(mask_dtype(meta.num_classes)).name,
    }  # fmt: skip
    mask_type = data_type(mask_dtype(meta.num_classes))
    cpu = [{"kind": Enum("KIND_CPU"), "count": instances}]
    preprocess = {
        "name": pre_name, "backend": "python", "max_batch_size": max_batch,
        "input": [{"name": INPUT, "data_type": Enum("TYPE_UINT8"), "dims": [-1, -1, 3]}],
        "output": [{"name": "preprocessed", "data_type": data_type(input_dtype), "dims": [3, -1, -1]},
                   {"name": "original_size", "data_type": Enum("TYPE_INT32"), "dims": [2]}],
        "instance_group": cpu, "parameters": {**python_parameters, "fcn_deploy.role": "preprocess"},
    }  # fmt: skip
    post_dims = [meta.num_classes, -1, -1] if engine_output == "logits" else [-1, -1]
    postprocess = {
        "name": post_name, "backend": "python", "max_batch_size": max_batch,
        "input": [{"name": engine_output, "data_type": data_type(outputs[engine_output]), "dims": post_dims},
                  {"name": "original_size", "data_type": Enum("TYPE_INT32"), "dims": [2]}],
        "output": [{"name": OUTPUT, "data_type": mask_type, "dims": [-1, -1]}],
        "instance_group": cpu, "parameters": {**python_parameters, "fcn_deploy.role": "postprocess"},
    }  # fmt: skip

    def step(model: str, inputs: dict[str, str], outputs: dict[str, str]) -> dict[str, Any]:
        return {"model_name": model, "model_version": -1,
                "input_map": [{"key": k, "value": v} for k, v in inputs.items()],
                "output_map": [{"key": k, "value": v} for k, v in outputs.items()]}  # fmt: skip

    ensemble = {
        "name": name, "platform": "ensemble", "max_batch_size": max_batch,
        "input": [{"name": INPUT, "data_type": Enum("TYPE_UINT8"), "dims": [-1, -1, 3]}],
        "output": [{"name": OUTPUT, "data_type": mask_type, "dims": [-1, -1]}],
        "ensemble_scheduling": {"step": [
            step(pre_name, {INPUT: INPUT}, {"preprocessed": "preprocessed", "original_size": "original_size"}),
            step(engine_name, {input_name: "preprocessed"}, {engine_output: "engine_output"}),
            step(post_name, {engine_output: "engine_output", "original_size": "original_size"}, {OUTPUT: OUTPUT}),
        ]},
        "parameters": served,
    }  # fmt: skip
    return {name: ensemble, pre_name: preprocess, engine_name: engine, post_name: postprocess}


# --------------------------------------------------------------------------- writing


def _readme(source: EngineSource, name: str, repo: Path) -> str:
    image = "nvcr.io/nvidia/tritonserver:<YY.MM>-py3"
    gpus = "--gpus all " if source.spec.device == "gpu" else ""
    return (
        f"fcn-deploy model repository for {source.path.name} ({source.backend}, {source.precision}, sha256 {source.sha256}).\n\n"
        f"Run it with NVIDIA's Triton container, {source.spec.release}:\n\n"
        f"  docker run {gpus}--rm -p 8000:8000 -p 8001:8001 -p 8002:8002 -v {repo.resolve()}:/models {image} \\\n"
        '    bash -c "pip install pillow && tritonserver --model-repository=/models"\n\n'
        f"Clients call model '{name}': input 'image' UINT8 [n, H, W, 3] -> output 'mask' [n, H, W], as `fcn-deploy serve`:\n\n"
        f"  fcn-deploy infer VIDEO --server HOST:8001 --model {name}\n"
        f"  fcn-deploy validate --server HOST:8001 --model {name} --reference CHECKPOINT.pt\n"
    )


#: What marks a folder as a repository export-triton wrote (only such a folder is ever replaced).
MARKER = ".fcn-deploy-repository.json"
MODEL_NAME = re.compile(r"[A-Za-z0-9._-]+")


def check_model_name(name: str) -> None:
    """Triton model names here: letters, digits, dots, dashes and underscores (a folder name, a URL part)."""
    if not MODEL_NAME.fullmatch(name):
        raise FcnDeployError(f"model name {name!r}: use letters, digits, dots, dashes and underscores", options=("name",))


def _check_target(engine: Path, repo: Path, overwrite: bool) -> None:
    """``repo`` may be written: absent or empty, or (with ``overwrite``) a repository export-triton wrote."""
    if engine.resolve().is_relative_to(repo.resolve()):
        raise FcnDeployError(f"repository folder {repo} holds the engine {engine} itself; choose another folder", options=("repo",))
    if not repo.exists() or (repo.is_dir() and not any(repo.iterdir())):
        return
    if not overwrite:
        raise FcnDeployError(f"{repo} already exists; allow overwriting it, or choose another repository folder",
                             options=("overwrite", "repo"))  # fmt: skip
    if not (repo / MARKER).is_file():
        raise FcnDeployError(f"{repo} is not a repository export-triton wrote (no {MARKER}), so it is never overwritten; "
                             "choose another repository folder", options=("repo",))  # fmt: skip


def _write(folder: Path, source: EngineSource, configs: dict[str, dict[str, Any]], name: str, repo: Path) -> str:
    """The repository's files in ``folder`` (which becomes ``repo``); returns the README's text."""
    for model, config in configs.items():
        version = folder / model / "1"
        version.mkdir(parents=True)
        (folder / model / "config.pbtxt").write_text(to_pbtxt(config))
        if config.get("backend") == "python":
            shutil.copyfile(PYTHON_MODEL, version / "model.py")
    engine_dir = folder / f"{name}_engine"
    for src, target in zip(source.files, source.spec.model_files):
        shutil.copyfile(src, engine_dir / "1" / target)
        if source.manifest and sha256_file(engine_dir / "1" / target) != sha256_file(src):
            raise FcnDeployError(f"{src}: its copy in the repository differs from it (disk error?); run export-triton again")
    if source.manifest:
        (engine_dir / "fcn-deploy-manifest.json").write_text(json.dumps(source.manifest, indent=2) + "\n")
    readme = _readme(source, name, repo)
    (folder / "README.txt").write_text(readme)
    (folder / MARKER).write_text(json.dumps({"engine": str(source.path.resolve()), "model": name}) + "\n")
    return readme


def export_triton(
    engine: str | Path, repo: str | Path, *, name: str = "fcn", max_batch: int | None = None, queue_delay_us: int = 0,
    instances: int = 1, overwrite: bool = False, listener: Listener = SILENT,
) -> dict[str, Any]:  # fmt: skip
    """Write the repository for ``engine`` at ``repo``, whole or not at all (an existing one is
    replaced in one step, see :func:`fcn_deploy.fileio.atomic_dir`); returns what it wrote."""
    engine, repo = Path(engine), Path(repo)
    check_model_name(name)
    if instances < 1:
        raise FcnDeployError(f"{instances} instances per model: give at least 1", options=("instances",))
    if queue_delay_us < 0:
        raise FcnDeployError(f"queue delay {queue_delay_us} us: give 0 or more", options=("queue_delay_us",))
    _check_target(engine, repo, overwrite)
    source = EngineSource(engine)
    profile = source.profile
    if profile.min[0] > 1:
        raise FcnDeployError(
            f"{engine}: its profile needs batches of at least {profile.min[0]}, and Triton sends batches from 1; rebuild it "
            f"with `fcn-deploy build-engine` and a batch range from 1 (1,{profile.opt[0]},{profile.max[0]})"
        )
    largest = profile.max[0] if profile.max[0] < UNBOUNDED_MAX[0] else DEFAULT_MAX_BATCH
    batch = max_batch or largest
    if not 1 <= batch <= largest:
        raise FcnDeployError(f"max batch {max_batch}: the engine's profile runs batches of 1 to {largest}", options=("max_batch",))
    configs = build_configs(source, name, batch, queue_delay_us, instances)
    with atomic_dir(repo) as folder:
        readme = _write(folder, source, configs, name, repo)
    for note in source.spec.notes:
        listener.note(note, level="note")
    return {
        "repo": str(repo), "model": name, "models": list(configs), "engine": str(engine), "backend": source.backend,
        "platform": source.spec.value, "precision": source.precision, "max_batch_size": batch, "instances": instances,
        "notes": list(source.spec.notes), "readme": readme,
    }  # fmt: skip
