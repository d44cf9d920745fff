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
``max_batch_size`` from its largest batch, ``dynamic_batching``, and ``instance_group`` (GPU for
TensorRT and CUDA-built ONNX Runtime engines, CPU otherwise).  Two backend facts shape it:

* Triton's OpenVINO backend fixes a batching model's batch to ``max_batch_size`` (``ov::set_batch``)
  and pads every smaller batch up to it, so the OpenVINO engine is served without Triton batching
  (``max_batch_size: 0``, batch dim -1); an ensemble may batch around a non-batching model, so the
  interface is unchanged, and OpenVINO scales with ``instance_group`` (its own advice).
* That backend cannot set OpenVINO's inference precision, so on CPUs with bf16 arithmetic (AVX512-BF16,
  AMX) it runs FP32 graphs in bf16, which ``fcn-deploy serve`` avoids; ``validate --server`` measures it.

The engine files are copied and their sha256 checked against the manifest.  The repository is
written under a temporary name next to ``REPO`` and renamed into place, so it appears whole or
not at all.
"""

from __future__ import annotations

import json
import os
import secrets
import shutil
from pathlib import Path
from typing import Any

import numpy as np

from ..backends import Profile, default_profile, manifest_path, read_manifest
from ..backends.base import DEFAULT_MAX_BATCH, UNBOUNDED_MAX
from ..backends.manifest import check_files, refuse
from ..backends.remote import INPUT, OUTPUT, PROFILE_KEY, mask_dtype, published_parameters, triton_type
from ..errors import FcnDeployError, require_file
from ..fileio import ensure_writable_dir, sha256_file
from ..meta import ModelMeta, read_onnx_meta
from ..onnxfile import ELEM_TYPES, dims_of, read_onnx

#: The Triton backend that serves each fcn-deploy backend's engine: (config key, value, model file names).
NATIVE = {
    "tensorrt": ("platform", "tensorrt_plan", ["model.plan"]),
    "onnxruntime": ("platform", "onnxruntime_onnx", ["model.onnx"]),
    "openvino": ("backend", "openvino", ["model.xml", "model.bin"]),
}
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
                lines.append(f'{pad}parameters {{ key: {_quote(name)} value {{ string_value: {_quote(text)} }} }}')
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
    """What the repository needs to know about an engine: its backend, files, profile, metadata and
    the names and types of its input and outputs (read from the graph, not assumed)."""

    def __init__(self, path: Path):
        self.path = require_file(path, "engine")
        if manifest_path(path).is_file():
            manifest = read_manifest(path)
            self.backend = manifest.get("backend", "?")
            if self.backend not in NATIVE:
                raise FcnDeployError(f"{path}: a {self.backend} engine has no Triton backend here (known: {', '.join(NATIVE)})")
            from .. import backends

            files = backends.get(self.backend).engine_files(path)
            refuse(path, manifest, check_files(path, manifest, files))  # no environment check: the container runs it
            self.files = files
            self.meta = ModelMeta.from_dict(manifest["meta"], str(path))
            self.profile = Profile.from_dict(manifest["profile"])
            self.precision = manifest["precision"]
            self.sha256 = {entry["name"]: entry["sha256"] for entry in manifest["files"]}[path.name]
            self.manifest: dict[str, Any] | None = manifest
            self.device = "gpu" if self.backend == "tensorrt" or _gpu_providers(manifest) else "cpu"
        elif path.suffix.lower() == ".onnx":  # a plain export runs on Triton's ONNX Runtime backend as it is
            proto = read_onnx(path, load_data=False)
            self.backend, self.files, self.manifest, self.device = "onnxruntime", [path], None, "cpu"
            self.meta = read_onnx_meta(proto, str(path))
            dims = dims_of(proto.graph.input[0])
            self.profile = default_profile(self.meta, dims if len(dims) == 4 else None)
            self.precision = next((p.value for p in proto.metadata_props if p.key == "fcn_deploy.precision"), "fp32")
            self.sha256 = sha256_file(path)
        else:
            raise FcnDeployError(
                f"{path}: export-triton takes an engine (with its manifest) or an exported ONNX; export a checkpoint "
                "first with `fcn-deploy export`"
            )
        self.inputs, self.outputs = self._io()

    def _io(self) -> tuple[list[tuple[str, str]], list[tuple[str, str]]]:
        """``[(name, numpy dtype name)]`` of the engine's inputs and outputs."""
        if self.backend == "openvino":
            import openvino as ov

            from ..backends.openvino import OV_TYPES

            model = ov.Core().read_model(str(self.files[0]), str(self.files[1]))
            spec = lambda port: (port.get_any_name(), OV_TYPES.get(port.get_element_type().get_type_name(), "?"))  # noqa: E731
            return [spec(p) for p in model.inputs], [spec(p) for p in model.outputs]
        graph = self.path
        if self.backend == "tensorrt":  # a plan keeps the names and types of the ONNX it was built from
            graph = Path(self.manifest.get("precision_onnx", "")) if self.manifest else Path()
            if not graph.is_file():
                raise FcnDeployError(
                    f"{self.path}: its manifest names the graph it was built from, {graph}, which is not here; export-triton "
                    "reads the plan's input and output names from it (copy it back, or rebuild the engine)"
                )
        proto = read_onnx(graph, load_data=False)
        spec = lambda value: (value.name, ELEM_TYPES.get(value.type.tensor_type.elem_type, "?"))  # noqa: E731
        initializers = {init.name for init in proto.graph.initializer}
        return [spec(v) for v in proto.graph.input if v.name not in initializers], [spec(v) for v in proto.graph.output]


def _gpu_providers(manifest: dict[str, Any]) -> bool:
    providers = manifest.get("build", {}).get("providers") or []
    return any(p in providers for p in ("CUDAExecutionProvider", "TensorrtExecutionProvider"))


# --------------------------------------------------------------------------- the configs


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
    batching = source.backend != "openvino"
    lead = [] if batching else [-1 if profile.min[0] != profile.max[0] else profile.min[0]]
    key, value, _ = NATIVE[source.backend]
    output_dims = [*lead, meta.num_classes, height, width] if engine_output == "logits" else [*lead, height, width]
    kind = Enum("KIND_GPU" if source.device == "gpu" else "KIND_CPU")
    engine_name, pre_name, post_name = f"{name}_engine", f"{name}_preprocess", f"{name}_postprocess"
    engine = {
        "name": engine_name, key: value, "max_batch_size": max_batch if batching else 0,
        "input": [{"name": input_name, "data_type": Enum(triton_type(input_dtype)), "dims": [*lead, 3, height, width]}],
        "output": [{"name": engine_output, "data_type": Enum(triton_type(outputs[engine_output])), "dims": output_dims}],
        "dynamic_batching": {"max_queue_delay_microseconds": queue_delay_us} if batching else None,
        "instance_group": [{"kind": kind, "count": instances}],
        "parameters": {"PERFORMANCE_HINT": "LATENCY"} if source.backend == "openvino" else None,
    }  # fmt: skip
    served = published_parameters(meta, profile, source.precision, source.backend, source.path.name, source.sha256)
    python_parameters = {
        "fcn_deploy.meta": served["fcn_deploy.meta"], PROFILE_KEY: served[PROFILE_KEY], "largest_request": served["largest_request"],
        "engine_input_dtype": input_dtype, "engine_output": engine_output, "mask_dtype": np.dtype(mask_dtype(meta.num_classes)).name,
    }  # fmt: skip
    mask_type = Enum(triton_type(mask_dtype(meta.num_classes)))
    cpu = [{"kind": Enum("KIND_CPU"), "count": instances}]
    preprocess = {
        "name": pre_name, "backend": "python", "max_batch_size": max_batch,
        "input": [{"name": INPUT, "data_type": Enum("TYPE_UINT8"), "dims": [-1, -1, 3]}],
        "output": [{"name": "preprocessed", "data_type": Enum(triton_type(input_dtype)), "dims": [3, -1, -1]},
                   {"name": "original_size", "data_type": Enum("TYPE_INT32"), "dims": [2]}],
        "instance_group": cpu, "parameters": {**python_parameters, "fcn_deploy.role": "preprocess"},
    }  # fmt: skip
    post_dims = [meta.num_classes, -1, -1] if engine_output == "logits" else [-1, -1]
    postprocess = {
        "name": post_name, "backend": "python", "max_batch_size": max_batch,
        "input": [{"name": engine_output, "data_type": Enum(triton_type(outputs[engine_output])), "dims": post_dims},
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
    versions = (source.manifest or {}).get("versions", {})
    image = "nvcr.io/nvidia/tritonserver:<YY.MM>-py3"
    pin = {
        "tensorrt": f"the Triton release whose TensorRT is {versions.get('tensorrt', 'the one that built the plan')} "
        "(a plan runs only "
        "on the TensorRT version and GPU it was built for; see NVIDIA's framework support matrix)",
        "onnxruntime": f"a Triton release whose ONNX Runtime is {versions.get('onnxruntime', '1.27')} or newer",
        "openvino": f"a Triton release whose OpenVINO is {versions.get('openvino', '2024.0')} or newer",
    }[source.backend]
    gpus = "--gpus all " if source.device == "gpu" else ""
    return (
        f"fcn-deploy model repository for {source.path.name} ({source.backend}, {source.precision}, sha256 {source.sha256}).\n\n"
        f"Run it with NVIDIA's Triton container, {pin}:\n\n"
        f"  docker run {gpus}--rm -p 8000:8000 -p 8001:8001 -p 8002:8002 -v {repo.resolve()}:/models {image} \\\n"
        '    bash -c "pip install pillow && tritonserver --model-repository=/models"\n\n'
        f"Clients call model '{name}': input 'image' UINT8 [n, H, W, 3] -> output 'mask' [n, H, W], as `fcn-deploy serve`:\n\n"
        f"  fcn-deploy infer VIDEO --server HOST:8001 --model {name}\n"
        f"  fcn-deploy validate --server HOST:8001 --model {name} --reference CHECKPOINT.pt\n"
    )


#: What marks a folder as a repository export-triton wrote (only such a folder is replaced by --overwrite).
MARKER = ".fcn-deploy-repository.json"


def export_triton(
    engine: str | Path, repo: str | Path, name: str = "fcn", max_batch: int | None = None, queue_delay_us: int = 0,
    instances: int = 1, overwrite: bool = False, log=print,
) -> dict[str, Any]:  # fmt: skip
    """Write the repository for ``engine`` at ``repo`` (atomically); returns what it wrote."""
    import re

    repo = Path(repo)
    if not re.fullmatch(r"[A-Za-z0-9._-]+", name):
        raise FcnDeployError(f"--name {name!r}: use letters, digits, dots, dashes and underscores")
    if instances < 1 or queue_delay_us < 0:
        raise FcnDeployError("--instances must be at least 1 and --queue-delay-us 0 or more")
    if Path(engine).resolve().is_relative_to(repo.resolve()):
        raise FcnDeployError(f"--repo {repo} holds the engine {engine} itself; choose another --repo")
    if repo.exists() and not (repo.is_dir() and not any(repo.iterdir())):
        if not overwrite:
            raise FcnDeployError(f"{repo} already exists; pass --overwrite to replace it, or choose another --repo")
        if not (repo / MARKER).is_file():
            raise FcnDeployError(
                f"{repo} is not a repository export-triton wrote (no {MARKER}), so --overwrite will not replace it; "
                "choose another --repo"
            )
    source = EngineSource(Path(engine))
    profile = source.profile
    if profile.min[0] > 1:
        raise FcnDeployError(
            f"{engine}: its profile needs batches of at least {profile.min[0]}, and Triton sends batches from 1; rebuild it "
            f"with --batch 1,{profile.opt[0]},{profile.max[0]}"
        )
    largest = profile.max[0] if profile.max[0] < UNBOUNDED_MAX[0] else DEFAULT_MAX_BATCH
    batch = max_batch or largest
    if not 1 <= batch <= largest:
        raise FcnDeployError(f"--max-batch {max_batch}: the engine's profile runs batches of 1 to {largest}")
    configs = build_configs(source, name, batch, queue_delay_us, instances)
    ensure_writable_dir(repo.parent)
    tmp = repo.parent / f".{repo.name}.{secrets.token_hex(4)}.tmp"
    try:
        for model, config in configs.items():
            version = tmp / model / "1"
            version.mkdir(parents=True)
            (tmp / model / "config.pbtxt").write_text(to_pbtxt(config))
            if config.get("backend") == "python":
                shutil.copyfile(PYTHON_MODEL, version / "model.py")
        engine_dir = tmp / f"{name}_engine"
        for src, target in zip(source.files, NATIVE[source.backend][2]):
            shutil.copyfile(src, engine_dir / "1" / target)
            if source.manifest and sha256_file(engine_dir / "1" / target) != sha256_file(src):
                raise FcnDeployError(f"{src}: its copy in the repository differs from it (disk error?); run export-triton again")
        if source.manifest:
            (engine_dir / "fcn-deploy-manifest.json").write_text(json.dumps(source.manifest, indent=2) + "\n")
        (tmp / "README.txt").write_text(_readme(source, name, repo))
        (tmp / MARKER).write_text(json.dumps({"engine": str(Path(engine).resolve()), "model": name}) + "\n")
        if repo.exists():
            old = repo.parent / f".{repo.name}.{secrets.token_hex(4)}.old"
            os.replace(repo, old)
            os.replace(tmp, repo)
            shutil.rmtree(old, ignore_errors=True)
        else:
            os.replace(tmp, repo)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    log(f"[green]wrote[/] {repo}: model {name} = {name}_preprocess -> {name}_engine ({NATIVE[source.backend][1]}, "
        f"{source.precision}) -> {name}_postprocess; max batch {batch}, {instances} instance(s) per model")  # fmt: skip
    if source.backend == "openvino":
        log("[yellow]note: Triton's OpenVINO backend cannot pin the inference precision: on CPUs with bf16 arithmetic it runs "
            "FP32 graphs in bf16; check the served masks with `fcn-deploy validate --server`[/]")  # fmt: skip
    return {"repo": str(repo), "models": list(configs), "backend": source.backend, "platform": NATIVE[source.backend][1],
            "max_batch_size": batch, "readme": (repo / "README.txt").read_text()}  # fmt: skip
