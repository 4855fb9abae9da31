#!/usr/bin/env bash
# Create the virtual environment and install glacierflow with its test extras.
# Torch: with no NVIDIA GPU visible we install the CPU build first (TORCH_SPEC, default torch==2.13.0,
# which these build machines hold as a local CPU wheel); with a GPU, pip resolves torch normally.
set -euo pipefail
PYTHON=${PYTHON:-python3}
VENV=${VENV:-.venv}
"$PYTHON" -c 'import sys; sys.exit(0 if sys.version_info >= (3, 11) else "glacierflow needs Python >= 3.11")'
[ -x "$VENV/bin/python" ] || "$PYTHON" -m venv "$VENV"
"$VENV/bin/python" -m pip install -q --upgrade pip
if ! command -v nvidia-smi >/dev/null 2>&1 && ! "$VENV/bin/python" -c 'import torch' 2>/dev/null; then
  "$VENV/bin/python" -m pip install -q "${TORCH_SPEC:-torch==2.13.0}"
fi
"$VENV/bin/python" -m pip install -q -e ".[test]"
"$VENV/bin/glacierflow" --help >/dev/null
echo "glacierflow installed in $VENV"
