#!/usr/bin/env bash
# The GPU check (bench/gpu_check.py): prints a header (keras and jax versions, the backend, jax.devices(),
# whether it fell back to CPU), RAX-Net training throughput in slices/s in float32 and mixed_float16 and
# their ratio, and tri-planar inference seconds per 197x233x189 volume.
# Needs no TensorFlow and no network: Keras on its JAX backend (forced here, whatever KERAS_BACKEND says) and
# this repository. ${PYTHON:-python3} must have jax, numpy, scipy, pandas and tqdm. Keras (with namex and
# optree) and nibabel, which a JAX-only machine may lack, are taken from bench/wheels/ when that folder
# holds wheels (`make gpu-wheels` fills it where PyPI is reachable; carry it to the machine with the
# working tree): they are installed offline (pip --no-index) into a temporary folder that is removed at
# the end, never into the interpreter. A package still missing is named in one line (exit 1).
#
# Usage: bash bench/gpu_check.sh [--batch 32] [--steps 20] [--warmup 3] [--volumes 2] [--width 1.0] [--cpu] [--quick]
#        PYTHON=/path/to/python bash bench/gpu_check.sh --quick --cpu     # smoke run on a CPU
set -euo pipefail

root="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
python="${PYTHON:-python3}"
wheels="${STROKESEG_WHEELS:-${root}/bench/wheels}"
export KERAS_BACKEND=jax
# Prepended, not replaced: the repository's package first, then whatever the caller put there (still
# ahead of site-packages, so a test can shadow a module).
export PYTHONPATH="${root}${PYTHONPATH:+:${PYTHONPATH}}"

if compgen -G "${wheels}/*.whl" > /dev/null && ! "${python}" -c "import keras, nibabel" 2> /dev/null; then
    target="$(mktemp -d)"
    trap 'rm -rf "${target}"' EXIT
    PIP_ROOT_USER_ACTION=ignore "${python}" -m pip install --quiet --no-index --no-deps --target "${target}" "${wheels}"/*.whl
    export PYTHONPATH="${PYTHONPATH}:${target}"
fi
"${python}" "${root}/bench/gpu_check.py" "$@"
