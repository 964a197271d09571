// Kernels that exercise the CUDA emulator itself (tests/test_cuda_emu.py and
// .ci/sanitize_cuda_emu.sh). Plain CUDA: it compiles with NVRTC as well.

// Shared memory + barrier: each block reverses its slice through a shared tile.
template <class T>
__global__ void reverse_block(const T* in, T* out) {
    __shared__ T tile[256];
    int t = threadIdx.x, base = blockIdx.x * blockDim.x;
    tile[t] = in[base + t];
    __syncthreads();
    out[base + t] = tile[blockDim.x - 1 - t];
}

// 2-D blocks: every thread records its flat thread and block ids.
__global__ void ids(int* out) {
    int t = threadIdx.x + blockDim.x * (threadIdx.y + blockDim.y * threadIdx.z);
    int b = blockIdx.x + gridDim.x * (blockIdx.y + gridDim.y * blockIdx.z);
    int nt = blockDim.x * blockDim.y * blockDim.z;
    out[b * nt + t] = b * 10000 + t;
}

// A barrier reached only by some threads (the others exit): a launch error.
__global__ void barrier_partial(int* out, int n) {
    if ((int)threadIdx.x < n) {
        __syncthreads();
    }
    out[threadIdx.x] = 1;
}

// Two different barriers for odd and even threads: a launch error.
__global__ void barrier_mismatch(int* out) {
    if (threadIdx.x % 2) {
        __syncthreads();
    } else {
        __syncthreads();
    }
    out[threadIdx.x] = 1;
}

// Warp collectives, one warp: out[8 * lane + i].
__global__ void warp_ops(const int* in, int* out) {
    int lane = threadIdx.x % 32;
    int v = in[threadIdx.x];
    unsigned full = 0xffffffffu;
    out[8 * threadIdx.x + 0] = __shfl_sync(full, v, 3);
    out[8 * threadIdx.x + 1] = __shfl_up_sync(full, v, 2);
    out[8 * threadIdx.x + 2] = __shfl_down_sync(full, v, 5);
    out[8 * threadIdx.x + 3] = __shfl_xor_sync(full, v, 1);
    out[8 * threadIdx.x + 4] = (int)__ballot_sync(full, v % 3 == 0);
    out[8 * threadIdx.x + 5] = __any_sync(full, v == 7);
    out[8 * threadIdx.x + 6] = __all_sync(full, v >= 0);
    out[8 * threadIdx.x + 7] = __shfl_down_sync(full, v, 1, 8);  // segments of 8 lanes
    (void)lane;
}

// Lane 0 waits at a barrier while lanes 1..31 wait for it in a shuffle: deadlock.
__global__ void warp_deadlock(int* out) {
    int v = threadIdx.x;
    if (threadIdx.x == 0) {
        __syncthreads();
    } else {
        v = __shfl_sync(0xffffffffu, v, 0);
    }
    out[threadIdx.x] = v;
}

__global__ void atomic_count(int* counter, float* fsum) {
    atomicAdd(counter, 1);
    atomicAdd(fsum, 0.5f);
}

// Argument types: an int and a long long scalar.
__global__ void typed_args(int n, long long m, double scale, float* out) {
    out[threadIdx.x] = (float)(n + m * scale);
}

// Data race between CUDA threads of a block: thread t writes tile[t] and reads
// tile[t+1] without a barrier in between. ThreadSanitizer (with the emulator's fiber
// annotations) must report it; race_free adds the missing __syncthreads().
__global__ void racy(float* out) {
    __shared__ float tile[64];
    int t = threadIdx.x;
    tile[t] = (float)t;
    out[t] = tile[(t + 1) % blockDim.x];
}

__global__ void race_free(float* out) {
    __shared__ float tile[64];
    int t = threadIdx.x;
    tile[t] = (float)t;
    __syncthreads();
    out[t] = tile[(t + 1) % blockDim.x];
}

// Out of bounds write by one thread (ASan must report it).
__global__ void out_of_bounds(float* out, int n) {
    out[threadIdx.x + n] = 1.0f;
}
