#!/usr/bin/env bash
# Create ./.venv and install mlff into it (sourced by example.sh and test.sh).
# torch comes first: a CPU build (served from local disk on our machines) unless the machine has
# an NVIDIA GPU, so a CPU-only machine never downloads a multi-GB CUDA build.
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."
PYTHON="${PYTHON:-python3}"
if [ ! -x .venv/bin/python ]; then
    "$PYTHON" -m venv .venv
fi
# shellcheck disable=SC1091
. .venv/bin/activate
if ! python -c "import torch" 2>/dev/null; then
    if command -v nvidia-smi >/dev/null 2>&1; then
        python -m pip install -q "torch>=2.2"
    else
        python -m pip install -q "torch==2.13.0"
    fi
fi
python -m pip install -q -e ".[test]"
