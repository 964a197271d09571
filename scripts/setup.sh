#!/usr/bin/env bash
# Set up cnnfast from a fresh clone: the Fashion-MNIST data (Debian package, where apt
# exists), a virtual environment in .venv, PyTorch's CPU build (the test and benchmark
# reference), cnnfast itself built from source with its C++ extension, and the tools
# CI uses (pyproject.toml's dependency group "ci").
set -euo pipefail
cd "$(dirname "$0")/.."

if [ ! -d /usr/share/datasets/fashion-mnist ]; then
    if command -v apt-get >/dev/null 2>&1 && [ "$(id -u)" = 0 ]; then
        apt-get update -qq && apt-get install -y -qq dataset-fashion-mnist >/dev/null
    else
        echo "note: Fashion-MNIST not found; install the Debian package" \
             "dataset-fashion-mnist, or put the four IDX files in a folder and pass" \
             "--data DIR (or set CNNFAST_DATA)" >&2
    fi
fi

[ -x .venv/bin/python ] || python3 -m venv .venv
# pip quiet, without the notices about this machine's local package folders; the
# pipeline fails when pip does (pipefail).
pip_install() {
    .venv/bin/python -m pip install -q "$@" 2>&1 |
        { grep -v -e "^WARNING: Location" -e "^WARNING: Retrying" || true; }
}
# pip >= 25.1 reads dependency groups (--group, pyproject.toml's [dependency-groups]).
pip_install --upgrade "pip>=25.1"
# PyPI's Linux torch is the multi-GB CUDA build: pinned, pip takes the CPU wheel this
# machine's pip configuration provides (2.13.0+cpu); elsewhere set TORCH_INDEX_URL to
# PyTorch's CPU index (https://download.pytorch.org/whl/cpu).
pip_install torch==2.13.0 ${TORCH_INDEX_URL:+--extra-index-url "$TORCH_INDEX_URL"}
# cnnfast from source (editable, its C++ extension compiled) with the bench and jax
# extras, and the CI tools: pytest, build/cibuildwheel/auditwheel, NVRTC for the CUDA
# compile check, mpi4py + MPICH (pyproject.toml's dependency group "ci").
pip_install -e ".[bench,jax]" --group ci
.venv/bin/python -c "import cnnfast, cnnfast.backends.cpp._cpp, torch; print('cnnfast', cnnfast.__version__, 'ready; backends:', ', '.join(cnnfast.available_backends()))"
