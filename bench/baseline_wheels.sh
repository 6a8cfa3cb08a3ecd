#!/usr/bin/env bash
# Download the baseline optimizers' wheels (pure Python) into .whl/ (git-ignored) so that they can travel to a
# GPU machine without network; bench/gpu_check.sh installs whatever .whl/ holds into a private folder first.
# Run here, where PyPI is reachable:  bash bench/baseline_wheels.sh   (then carry ".whl" with the device call)
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."
PYTHON="${PYTHON:-$( [[ -x .venv/bin/python ]] && echo .venv/bin/python || echo python3 )}"
# Versions pinned so that GPU results name exactly what they compared against; their dependencies (torch,
# numpy, opt-einsum) are preinstalled on the GPU machine.
"$PYTHON" -m pip download --no-deps --only-binary=:all: --python-version 3.12 --implementation cp \
  --platform manylinux_2_28_x86_64 --platform manylinux2014_x86_64 -d .whl \
  "pytorch_optimizer==4.1.0" "heavyball==3.2.1"
ls -la .whl
