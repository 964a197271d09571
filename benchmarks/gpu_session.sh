#!/usr/bin/env bash
# What a session with a lent GPU runs for the cupy backend (issue 5), in one go:
# environment, kernel-cache check, the GPU tests, the benchmark against torch/cuDNN.
#
#   bash benchmarks/gpu_session.sh OUTDIR [STEPS]
#
# STEPS is a comma list of: env, cache, test, bench, adhoc, overhead, paths, suite (run
# in that order; default: all but suite). Logs go to OUTDIR/<step>.log
# (the cache check appends to env.log); the benchmark writes OUTDIR/gpu.{json,md,png}.
# Meant for a machine that already has CuPy and a CUDA torch (the lent H100/H200 image
# does); elsewhere: pip install -e .[gpu,dev] first.
set -u
out=${1:?usage: gpu_session.sh OUTDIR [STEPS]}
steps=${2:-env,cache,test,bench,adhoc,overhead,paths}
mkdir -p "$out"
py=${PYTHON:-python3}
export PYTHONPATH=$PWD${PYTHONPATH:+:$PYTHONPATH} PYTHONUNBUFFERED=1
export CUPY_CACHE_DIR=${CUPY_CACHE_DIR:-$PWD/.cupy_cache}
want() { [[ ",$steps," == *",$1,"* ]]; }
step() { echo "== $1 ($(date -u +%T))"; }

if want env; then
    step env
    { nvidia-smi; $py -V
      $py -c "import cupy, numpy, torch; print('cupy', cupy.__version__, 'runtime', cupy.cuda.runtime.runtimeGetVersion(), 'cc', cupy.cuda.Device().compute_capability); print('torch', torch.__version__, torch.version.cuda, 'cudnn', torch.backends.cudnn.version()); print('numpy', numpy.__version__)"
      $py -c "from cnnfast.backends.cuda import cupy_backend as c; print('availability:', c.availability())"
    } 2>&1 | tee "$out/env.log"
fi

if want cache; then
    step cache
    probe=$(mktemp -d)
    { CUPY_CACHE_DIR=$probe $py -c "from cnnfast.backends.cuda import cupy_backend as c; print('cold warmup s', round(c.warmup(), 3))"
      n1=$(find "$probe" -type f | wc -l)
      CUPY_CACHE_DIR=$probe $py -c "from cnnfast.backends.cuda import cupy_backend as c; print('warm warmup s', round(c.warmup(), 3))"
      n2=$(find "$probe" -type f | wc -l)
      echo "cache files after first run $n1, after second $n2"
    } 2>&1 | tee -a "$out/env.log"
    # Fill the shared cache so test workers do not all compile.
    $py -c "from cnnfast.backends.cuda import cupy_backend as c; c.warmup()"
fi

if want test; then
    step test
    { timeout 420 $py -m pytest -p no:cacheprovider -q -n 8 tests/test_backend_grid.py -k cupy
      timeout 120 $py -m pytest -p no:cacheprovider -q tests/test_cuda_cupy.py tests/test_cuda_nvrtc.py
      # the fused activation (issue 16) and DLPack/torch CUDA tensors (issue 17) on the device
      timeout 180 $py -m pytest -p no:cacheprovider -q tests/test_cuda_activation.py \
          tests/test_activation.py tests/test_dlpack.py tests/test_torch_ops.py -k "cupy or cuda"
      # The differential fuzzer on the GPU (tests/fuzz.py; the seed is printed): the
      # long run of issue 13 that no CPU-only session can do for cupy.
      timeout 240 $py tests/fuzz.py --backend cupy --cases ${FUZZ_CASES:-20000}
    } > "$out/test.log" 2>&1
    tail -n 15 "$out/test.log"
fi

if want bench; then
    step bench
    timeout 420 $py -m cnnfast bench --backend cupy,torch-cuda --json "$out/gpu.json" \
        --markdown "$out/gpu.md" --plot "$out/gpu.png" > "$out/bench.log" 2>&1
    echo "bench exit $?"
    cat "$out/gpu.md" 2>/dev/null | head -n 90
fi

if want adhoc; then
    step adhoc
    timeout 240 $py benchmarks/gpu_crosscheck.py > "$out/adhoc.log" 2>&1
    cat "$out/adhoc.log"
fi

if want overhead; then
    step overhead
    # host microseconds per call against CuPy's floor (issue 18 item 1), and a profile
    timeout 120 $py benchmarks/gpu_probe.py overhead > "$out/overhead.log" 2>&1
    head -n 12 "$out/overhead.log"
fi

if want paths; then
    step paths
    # gemm vs winograd on the 3x3 stride-1 layers, direct vs depthwise-tiled on
    # depthwise ones, each against cuDNN (issue 18: the automatic choice of
    # conv_launch.choose_path waits for these figures)
    timeout 300 $py benchmarks/gpu_probe.py paths > "$out/paths.log" 2>&1
    cat "$out/paths.log"
fi

if want suite; then
    step suite
    timeout 480 $py -m pytest -p no:cacheprovider -q -n 16 > "$out/suite.log" 2>&1
    tail -n 15 "$out/suite.log"
fi
