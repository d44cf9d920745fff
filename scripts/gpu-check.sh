#!/usr/bin/env bash
# The one command a machine with an NVIDIA GPU runs:
#   1. reads the driver's CUDA version from nvidia-smi (before installing anything: without a working
#      driver it exits 2 within seconds, says why, and installs nothing);
#   2. installs, into a virtual environment (.venv-gpu), a torch build for that CUDA version and the
#      matching TensorRT wheel (tensorrt-cu12 / tensorrt-cu13), then fcn-deploy with its dev extras;
#   3. checks that torch sees the GPU and that `import tensorrt` works (`fcn-deploy gpu-check`);
#   4. runs the GPU / TensorRT tests and fails if they fail or if every one of them skipped;
#   5. runs the demo with --backend tensorrt, validates the FP32/FP16/INT8 engines at many sizes, and
#      benchmarks them against PyTorch eager on CUDA (and ONNX Runtime's CUDA provider when installed);
#   6. writes OUT/gpu-check.json: every step, the GPU plan targets (TensorRT FP16 >= 3x PyTorch eager,
#      INT8 >= 1.3x FP16) with pass/fail, and the paths of the detailed reports.
# Exit status: 0 when every step and target passed, 1 when something ran and failed, 2 when the
# machine cannot run the check (no driver, too old a driver, no CUDA device, an install that failed).
# Every run writes OUT/gpu-check.json, the reason included when it stops early.
#
# Offline (--offline, or automatic when the package index does not answer within 5 s): nothing is
# installed and pip is never called.  It uses the interpreter it is run with (PYTHON) and the
# project from this checkout (PYTHONPATH), imports only what is there, and runs the torch-only plan
# (scripts/gpu_report.py --torch-plan: torch CUDA eager FP32 with TF32 off, TF32, FP16 autocast and
# .half(), channels_last, CUDA-graph replay, FP16 masks on the GPU against FP32 on the CPU), says
# which backends exist and why TensorRT is missing; with TensorRT importable it runs the full plan.
#
# Usage: bash scripts/gpu-check.sh [--plan] [--offline] [OUT_DIR]     (default OUT_DIR: gpu-check-out)
#   --plan     print what would be installed for this driver, and stop (installs nothing)
#   --offline  install nothing; use PYTHON's own torch (and TensorRT, if it has it)
# Environment: FCN_GPU_VENV (default .venv-gpu), PYTHON (default python3), TORCH_INDEX_URL and
# TENSORRT_PACKAGE to override the choice, ORT_GPU=1 to also install onnxruntime-gpu,
# FCN_GPU_INDEX_URL (default PIP_INDEX_URL or https://pypi.org/simple/) the index probed for network.
set -uo pipefail

PLAN_ONLY=0
OFFLINE=0
while [ $# -gt 0 ]; do
  case "$1" in
    --plan) PLAN_ONLY=1 ;;
    --offline) OFFLINE=1 ;;
    *) break ;;
  esac
  shift
done
ROOT="$(cd "$(dirname "$0")/.." && pwd)"
OUT="${1:-gpu-check-out}"
VENV="${FCN_GPU_VENV:-$ROOT/.venv-gpu}"
PYTHON="${PYTHON:-python3}"
INDEX_URL="${FCN_GPU_INDEX_URL:-${PIP_INDEX_URL:-https://pypi.org/simple/}}"

json_escape() {  # a string as JSON (backslashes, quotes, control characters)
  printf '%s' "$1" | sed -e 's/\\/\\\\/g' -e 's/"/\\"/g' -e 's/\t/ /g' | tr '\n' ' '
}

die() {  # a reason this machine cannot run the check; writes OUT/gpu-check.json and stops
  echo "gpu-check: error: $*" >&2
  if [ "$PLAN_ONLY" = 0 ] && mkdir -p "$OUT" 2>/dev/null; then
    printf '{"passed": false, "exit_status": 2, "stopped": "%s", "offline": %s, "failed": ["machine"], "steps": []}\n' \
      "$(json_escape "$*")" "$([ "$OFFLINE" = 1 ] && echo true || echo false)" >"$OUT/gpu-check.json"
  fi
  exit 2
}

# ---------------------------------------------------------------- 1. the driver, before any install
DRIVER_CUDA=""
DRIVER_PROBLEM=""
if ! command -v nvidia-smi >/dev/null 2>&1; then
  DRIVER_PROBLEM="nvidia-smi not found: no NVIDIA driver on this machine"
elif ! SMI="$(nvidia-smi 2>&1)"; then
  DRIVER_PROBLEM="nvidia-smi failed (${SMI%%$'\n'*}): the NVIDIA driver is not working"
else
  DRIVER_CUDA="$(printf '%s\n' "$SMI" | sed -n 's/.*CUDA Version: *\([0-9][0-9]*\.[0-9][0-9]*\).*/\1/p' | head -n 1)"
fi

# ---------------------------------------------------------------- offline: the machine's own packages, nothing installed
offline_check() {
  command -v "$PYTHON" >/dev/null 2>&1 \
    || die "offline, and $PYTHON is not found: run with PYTHON=/path/to/a/python that has torch with CUDA (nothing was installed)"
  mkdir -p "$OUT" || die "cannot create $OUT"
  OUT="$(cd "$OUT" && pwd)"
  export PYTHONPATH="$ROOT${PYTHONPATH:+:$PYTHONPATH}"  # the project from this checkout, not installed
  echo "gpu-check: offline: installing nothing; $PYTHON's own packages and this checkout ($ROOT)"
  local line status
  line="$("$PYTHON" "$ROOT/scripts/gpu_torch_plan.py" probe "$OUT" 2>&1)"
  status=$?
  if [ "$status" = 2 ] || { [ "$status" != 0 ] && [ "$status" != 3 ]; }; then
    [ -n "$DRIVER_PROBLEM" ] && line="$line; $DRIVER_PROBLEM"
    die "${line##*$'\n'} (nothing was installed)"
  fi
  echo "gpu-check: $line"
  FCN=("$PYTHON" -m fcn_deploy.cli)
  PY=("$PYTHON")
  STEPS="$OUT/steps.tsv"
  : >"$STEPS"
  if [ "$status" = 3 ]; then
    return 0  # TensorRT is usable: the full plan, with what is installed
  fi
  step torch-plan "$PYTHON" "$ROOT/scripts/gpu_torch_plan.py" run "$OUT"
  step backends "${FCN[@]}" backends
  "$PYTHON" "$ROOT/scripts/gpu_report.py" "$OUT" --offline --driver-cuda "$DRIVER_CUDA"
  exit $?
}

step() {  # step NAME COMMAND...: run it, log to OUT/NAME.log, record its exit status
  local name="$1"
  shift
  echo "gpu-check: $name"
  "$@" 2>&1 | tee "$OUT/$name.log"
  local status="${PIPESTATUS[0]}"
  printf '%s\t%s\t%s\n' "$name" "$status" "$OUT/$name.log" >>"$STEPS"
  return 0
}

FCN=(fcn-deploy)
PY=(python)
if [ "$OFFLINE" = 0 ]; then
[ -z "$DRIVER_PROBLEM" ] || die "$DRIVER_PROBLEM. Run this on a machine with an NVIDIA GPU and its driver, or fix the driver first; --offline uses this machine's own torch (nothing was installed)"
[ -n "$DRIVER_CUDA" ] || die "could not read the driver's CUDA version from nvidia-smi's header (nothing was installed)"
CUDA_MAJOR="${DRIVER_CUDA%%.*}"
CUDA_MINOR="${DRIVER_CUDA#*.}"
CUDA_NUM=$((CUDA_MAJOR * 100 + CUDA_MINOR))

# The newest torch CUDA build the driver can run (a CUDA runtime needs a driver of at least its version).
if [ -n "${TORCH_INDEX_URL:-}" ]; then
  TORCH_BUILD="custom"
elif [ "$CUDA_NUM" -ge 1300 ]; then
  TORCH_BUILD="cu130"
elif [ "$CUDA_NUM" -ge 1208 ]; then
  TORCH_BUILD="cu128"
elif [ "$CUDA_NUM" -ge 1206 ]; then
  TORCH_BUILD="cu126"
else
  die "the driver supports CUDA $DRIVER_CUDA; torch's CUDA builds need 12.6 or newer. Update the NVIDIA driver (R560 or newer; R580+ for CUDA 13), or run with --offline to use this machine's own torch (nothing was installed)"
fi
TORCH_INDEX_URL="${TORCH_INDEX_URL:-https://download.pytorch.org/whl/$TORCH_BUILD}"
TRT_MAJOR="${TORCH_BUILD#cu}"
TRT_MAJOR="${TRT_MAJOR:0:2}"
[ "$TORCH_BUILD" = "custom" ] && TRT_MAJOR="$CUDA_MAJOR"
TENSORRT_PACKAGE="${TENSORRT_PACKAGE:-tensorrt-cu${TRT_MAJOR}>=10.12,<12}"

echo "gpu-check: driver CUDA $DRIVER_CUDA -> torch from $TORCH_INDEX_URL, $TENSORRT_PACKAGE, venv $VENV"
if [ "$PLAN_ONLY" = 1 ]; then
  exit 0
fi
if ! "$PYTHON" -c 'import sys, urllib.request; urllib.request.urlopen(sys.argv[1], timeout=5)' "$INDEX_URL" >/dev/null 2>&1; then
  echo "gpu-check: the package index $INDEX_URL does not answer within 5 s: running offline"
  OFFLINE=1
fi
fi

if [ "$OFFLINE" = 1 ]; then
  if [ "$PLAN_ONLY" = 1 ]; then
    echo "gpu-check: offline: nothing would be installed; $PYTHON's own torch (and TensorRT, if it has it) would be used"
    exit 0
  fi
  offline_check  # returns only when TensorRT is usable: the full plan below, nothing installed
else
# ---------------------------------------------------------------- 2. install for this driver
nvidia-smi --query-gpu=name,compute_cap,driver_version,memory.total --format=csv
"$PYTHON" -m venv "$VENV" || die "could not create the virtual environment $VENV with $PYTHON"
# shellcheck disable=SC1091
. "$VENV/bin/activate"
cd "$ROOT" || die "cannot enter $ROOT"
python -m pip install --quiet --upgrade pip || die "pip could not upgrade itself in $VENV"
pip install --quiet --index-url "$TORCH_INDEX_URL" torch torchvision \
  || die "could not install torch and torchvision from $TORCH_INDEX_URL (set TORCH_INDEX_URL to another CUDA build)"
pip install --quiet --extra-index-url https://pypi.nvidia.com -e ".[dev]" "$TENSORRT_PACKAGE" \
  || die "could not install fcn-deploy[dev] and $TENSORRT_PACKAGE (set TENSORRT_PACKAGE, e.g. 'tensorrt-cu12==10.16.*')"
if [ "${ORT_GPU:-0}" = 1 ]; then
  pip uninstall --quiet -y onnxruntime || die "could not uninstall onnxruntime to make room for onnxruntime-gpu"
  pip install --quiet onnxruntime-gpu || die "could not install onnxruntime-gpu"
fi

# ---------------------------------------------------------------- 3. torch sees the GPU, TensorRT imports
python - <<'EOF' || die "the installed torch cannot use this GPU (see above)"
import sys
import torch
if not torch.cuda.is_available():
    sys.exit(f"torch {torch.__version__} (CUDA {torch.version.cuda}) sees no CUDA device: torch.cuda.is_available() is False")
print(f"torch {torch.__version__}, CUDA {torch.version.cuda}, {torch.cuda.get_device_name(0)}")
EOF
python -c "import tensorrt; print('tensorrt', tensorrt.__version__)" || die "import tensorrt failed (see above)"
mkdir -p "$OUT" || die "cannot create $OUT"
OUT="$(cd "$OUT" && pwd)"
STEPS="$OUT/steps.tsv"
: >"$STEPS"
fi

step gpu-status "${FCN[@]}" gpu-check
# ---------------------------------------------------------------- 4. the GPU tests (all skipped = failed)
step gpu-tests "${PY[@]}" -m pytest -m "gpu or tensorrt" -rs -p no:cacheprovider --junitxml "$OUT/gpu-tests.xml"
# ---------------------------------------------------------------- 5. demo, validation, benchmark
DEMO="$OUT/demo"
MODELS="$DEMO/models"
step demo "${FCN[@]}" demo --out "$DEMO" --backend tensorrt
for precision in fp32 fp16 int8; do
  step "validate-$precision" "${FCN[@]}" validate "$MODELS/default.$precision.plan" -r "$MODELS/default.pt" \
    --random-sizes 8 --report "$OUT/validate-$precision.json"
done
ENGINES=("$MODELS/default.fp32.plan" "$MODELS/default.fp16.plan" "$MODELS/default.int8.plan")
if "${PY[@]}" -c "import onnxruntime as o, sys; sys.exit('CUDAExecutionProvider' not in o.get_available_providers())" 2>/dev/null; then
  for precision in fp32 fp16; do
    flag=()
    [ "$precision" = fp16 ] && flag=(--fp16)
    step "build-ort-$precision" "${FCN[@]}" build-engine "$MODELS/default.onnx" --backend onnxruntime "${flag[@]}" \
      --calib "$DEMO/calibration"
    ENGINES+=("$MODELS/default.$precision.ort.onnx")
  done
fi
step benchmark "${FCN[@]}" benchmark "${ENGINES[@]}" -r "$MODELS/default.pt" --sizes 512x512 --warmup 10 --iters 100 \
  --report "$OUT/benchmark.json"

# ---------------------------------------------------------------- 6. one report
"${PY[@]}" "$ROOT/scripts/gpu_report.py" "$OUT" --driver-cuda "$DRIVER_CUDA" --torch-index "$TORCH_INDEX_URL" \
  --tensorrt-package "$TENSORRT_PACKAGE"
