#!/usr/bin/env bash
# Create .venv and install hwnas with a PyTorch build that suits this machine.
#   - torch already importable in .venv: kept as is
#   - an NVIDIA GPU (nvidia-smi works): the default PyPI torch (CUDA build)
#   - otherwise: torch==2.13.0 (override with TORCH_SPEC=...; to pull a CPU-only wheel from
#     PyTorch's own CPU index on your machine, also set PIP_EXTRA_INDEX_URL to that index)
set -euo pipefail
cd "$(dirname "$0")/.."
PY=${PYTHON:-python3}
VENV=${VENV:-.venv}
[ -x "$VENV/bin/python" ] || "$PY" -m venv "$VENV"
. "$VENV/bin/activate"
export PIP_DISABLE_PIP_VERSION_CHECK=1
if ! python -c "import torch" 2>/dev/null; then
  if [ -n "${TORCH_SPEC:-}" ]; then spec=$TORCH_SPEC
  elif command -v nvidia-smi >/dev/null 2>&1 && nvidia-smi -L >/dev/null 2>&1; then spec="torch>=2.2"
  else spec="torch==2.13.0"; fi
  echo "setup: installing $spec" >&2
  pip install -q "$spec"
fi
# the openvino extra (openvino + nncf, ~190 MB): --format best and hwnas run then also time OpenVINO engines
pip install -q -e ".[test,openvino]"
if [ "${1:-}" = "--test" ]; then
  # Ray (~250 MB): the fleet-profiling and parallel-evaluation tests run on a local instance
  pip install -q -e ".[ray]"
  # OFA's own code, to check that its checkpoints load and compute the same (no extra deps pulled)
  pip install -q --no-deps "ofa==0.1.0.post202307202001"
fi
