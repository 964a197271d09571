#!/usr/bin/env bash
# The numba backend's first-call cost in a new process: run it twice with an empty
# cache directory first (cold: compiles) and then again (cached: loads from disk):
#   rm -rf /tmp/nbc; NUMBA_CACHE_DIR=/tmp/nbc bash benchmarks/numba_first_call.sh  # cold
#   NUMBA_CACHE_DIR=/tmp/nbc bash benchmarks/numba_first_call.sh                   # cached
python -c "
import time, numpy as np, cnnfast as cf
x = np.random.rand(8, 64, 56, 56).astype(np.float32); w = np.random.rand(64, 64, 3, 3).astype(np.float32)
t = time.perf_counter(); cf.conv(x, w, padding=1, backend='numba'); a = time.perf_counter() - t
t = time.perf_counter(); cf.max_pool(x, 2, backend='numba'); b = time.perf_counter() - t
print(f'first conv {a:.2f} s, first max_pool {b:.2f} s')"
