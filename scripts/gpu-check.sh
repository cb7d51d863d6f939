#!/usr/bin/env bash
# The GPU check (issue 27), in under 8 minutes on one GPU machine:
#   1. the install of the gpu extra (onnxruntime-gpu in place of the CPU build: both installed, the CPU one wins);
#   2. a provider check that fails loudly when CUDA is not active;
#   3. at 1920x1080: the limit row, the in-process rows, the model-free ceiling and the served WebSocket rows
#      (python -m bench.gpu_check), written to bench/results/gpu.json and docs/gpu.md.
# Without a GPU (nvidia-smi finds none) steps 1 and 2 are reported as skipped and the rows run on CPU, in the
# project's own environment: the harness is checked wherever it runs.
#
#   scripts/gpu-check.sh [ARGS]   ARGS go to bench.gpu_check (--frames N, --streams K.., --json F, --doc F)
#   PYTHON: the interpreter that makes the GPU environment; POSEFLEET_PYTHON: the one that runs without a GPU
set -euo pipefail
cd "$(dirname "$0")/.."

if command -v nvidia-smi >/dev/null 2>&1 && nvidia-smi -L >/dev/null 2>&1; then
  gpu=$(nvidia-smi --query-gpu=name --format=csv,noheader | head -1)
  echo "gpu-check: $gpu" >&2
  env=.venv-gpu
  [ -x "$env/bin/python" ] || "${PYTHON:-python3}" -m venv "$env"
  "$env/bin/pip" install -q -e ".[gpu]"
  # the default install brought the CPU build too, which would win: leave onnxruntime-gpu alone in place
  "$env/bin/pip" uninstall -y -q onnxruntime
  "$env/bin/pip" install -q --force-reinstall --no-deps "$("$env/bin/python" -c \
    'from importlib import metadata; print("onnxruntime-gpu==" + metadata.version("onnxruntime-gpu"))')"
  python="$env/bin/python"
  require=--require-gpu
else
  gpu=""
  echo "gpu-check: no GPU here (nvidia-smi finds none): the gpu extra's install and the CUDA provider check" \
       "are skipped; the rows run on CPU" >&2
  python=${POSEFLEET_PYTHON:-.venv/bin/python}
  [ -x "$python" ] || python=python3
  require=""
fi
exec timeout 470 "$python" -m bench.gpu_check $require --gpu-name "$gpu" "$@"
