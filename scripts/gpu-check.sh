#!/usr/bin/env bash
# One command for a machine with an NVIDIA GPU:
#   1. installs fcn-deploy with the tensorrt extra (TensorRT 10.x or 11.x from NVIDIA's index);
#   2. runs the GPU / TensorRT tests (which skip everywhere else);
#   3. runs the whole pipeline end to end with TensorRT: `fcn-deploy demo` picks the TensorRT backend
#      when `tensorrt` imports and a CUDA device exists, so it trains, exports, builds FP32/FP16/INT8
#      TensorRT engines, validates them against PyTorch at many sizes, runs the video and benchmarks.
#
# Usage: bash scripts/gpu-check.sh [OUT_DIR]      (default OUT_DIR: gpu-check-out)
set -euo pipefail
cd "$(dirname "$0")/.."
OUT="${1:-gpu-check-out}"

if ! command -v nvidia-smi >/dev/null 2>&1 || ! nvidia-smi >/dev/null 2>&1; then
  echo "error: no NVIDIA GPU here (nvidia-smi failed); run this on a GPU machine" >&2
  exit 2
fi
nvidia-smi --query-gpu=name,compute_cap,driver_version,memory.total --format=csv

python3 -m venv .venv-gpu
. .venv-gpu/bin/activate
python -m pip install --quiet --upgrade pip
pip install --quiet torch==2.14.1 torchvision==0.29.1
# TensorRT built for the CUDA major version torch uses (tensorrt-cu12 / tensorrt-cu13).
CUDA_MAJOR=$(python -c "import torch; print((torch.version.cuda or '13').split('.')[0])")
pip install --quiet --extra-index-url https://pypi.nvidia.com -e ".[dev]" "tensorrt-cu${CUDA_MAJOR}>=10"

fcn-deploy gpu-check
python -m pytest -m "gpu or tensorrt" -rs
fcn-deploy demo --out "$OUT" --backend tensorrt
echo "gpu-check: done; reports under $OUT (report.json)"
