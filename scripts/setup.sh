#!/usr/bin/env bash
# Set up cnnfast from a fresh clone: the Fashion-MNIST data (Debian package, where apt
# exists), a virtual environment in .venv, PyTorch's CPU build (the test and benchmark
# reference; pinned so that pip takes the local CPU wheel, not a multi-GB CUDA build),
# and cnnfast itself, built from source with its C++ extension.
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
.venv/bin/python -m pip install -q --upgrade pip 2>&1 | grep -v "^WARNING: Location" || true
.venv/bin/python -m pip install -q torch==2.13.0 2>&1 | grep -v "^WARNING: Location" || true
.venv/bin/python -m pip install -q -e ".[dev,bench,jax]" 2>&1 | grep -v "^WARNING: Location" || true
.venv/bin/python -c "import cnnfast, cnnfast.backends.cpp._cpp, torch; print('cnnfast', cnnfast.__version__, 'ready; backends:', ', '.join(cnnfast.available_backends()))"
