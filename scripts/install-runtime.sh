#!/usr/bin/env bash
# Creates the serving environment in $1 from requirements/runtime.txt, exactly as pinned, with
# nothing resolved on the fly (so no torch can sneak in). The Dockerfile's base-cpu and
# base-cuda stages run this very script; tests/e2e/test_image_steps.py runs it into a scratch
# folder.
#   scripts/install-runtime.sh VENV [cpu]    the CPU build of onnxruntime
#   scripts/install-runtime.sh VENV cuda     onnxruntime-gpu in its place (CUDA 12, cuDNN 9)
set -euo pipefail
venv=${1:?usage: install-runtime.sh VENV [cuda]}
flavour=${2:-cpu}
here=$(cd "$(dirname "$0")/.." && pwd)
ORT_GPU=onnxruntime-gpu==1.31.1  # the newest onnxruntime-gpu on PyPI; the CPU build is 1.32.0

python3 -m venv "$venv"
pip=("$venv/bin/pip" install --no-cache-dir --disable-pip-version-check --quiet --no-deps)
if [[ $flavour == cuda ]]; then
  "${pip[@]}" -r <(grep -v '^onnxruntime==' "$here/requirements/runtime.txt") "$ORT_GPU"
else
  "${pip[@]}" -r "$here/requirements/runtime.txt"
fi
"$venv/bin/pip" check --disable-pip-version-check
