// conv.cu -- convolution kernels of cnnfast (forward, transposed, both gradients).
//
// Three problem modes share one tiled implicit-GEMM kernel (no im2col buffer: the
// operand tiles are gathered straight from the tensors into shared memory):
//
//   MODE_CORR  y[n, g*M+m, p]  = sum_{c,t} w[g*M+m, c, t] * x[n, g*Cg+c, p*s + t*d - pad]
//              (convolution forward; input gradient of a transposed convolution)
//   MODE_ADJ   y[n, g*M+m, q]  = sum_{c,t} w[g*Cg+c, m, t] * x[n, g*Cg+c, (q + pad - t*d)/s]
//              over the taps where the division is exact and in range: the adjoint of
//              MODE_CORR written as a gather (transposed convolution forward; input
//              gradient of a convolution) -- no atomics, deterministic.
//   MODE_WGRAD gw[g*M+m, c, t] = sum_{n,p} gy[n, g*M+m, p] * x[n, g*Cg+c, p*s + t*d - pad]
//              (weight gradient of both; split over K in a fixed number of slices whose
//              partial sums are added in slice order by sum_splits: deterministic).
//
// GEMM view per group g: C[M x NC] = A[M x K] * B[K x NC]; the roles:
//   CORR/ADJ:  M = CO/G, K = (CI/G)*taps, NC = N*out_positions, A = weight, B = data
//   WGRAD:     M = CO/G, K = N*out_positions, NC = (CI/G)*taps,  A = grad_y, B = data
// Tile: BM x BN outputs per block of 16 x 16 threads; each thread keeps a 4 x 4 block of
// accumulators in registers (rows ty + 16i, columns tx + 16j: coalesced stores);
// shared-memory tiles of BK reductions of A and B per step.
#include "common.cuh"

#define MODE_CORR 0
#define MODE_ADJ 1
#define MODE_WGRAD 2

#define GEMM_BM 64
#define GEMM_BN 64
#define GEMM_BK 16
#define GEMM_THREADS 256

// Decoded output (CORR/ADJ: a column is (n, position)) or weight (WGRAD: (c, tap)) column.
struct ColInfo {
    bool valid;
    int n, a0, a1, a2;  // CORR/ADJ: n and output coords; WGRAD: a* = tap coords, n = c
};

__device__ __forceinline__ void decode3(int flat, const int* ext, int& a0, int& a1, int& a2) {
    a2 = flat % ext[2];
    flat /= ext[2];
    a1 = flat % ext[1];
    a0 = flat / ext[1];
}

template <int MODE>
__device__ __forceinline__ ColInfo decode_col(const ConvGeo& g, long long col, long long ncols) {
    ColInfo ci;
    ci.valid = col < ncols;
    if (!ci.valid) { ci.n = ci.a0 = ci.a1 = ci.a2 = 0; return ci; }
    if (MODE == MODE_WGRAD) {
        ci.n = (int)(col / g.KT);
        decode3((int)(col % g.KT), g.K, ci.a0, ci.a1, ci.a2);
    } else {
        ci.n = (int)(col / g.OP);
        decode3((int)(col % g.OP), g.O, ci.a0, ci.a1, ci.a2);
    }
    return ci;
}

// Input coordinate along one dim read by output o with tap t (CORR/WGRAD), or -1.
__device__ __forceinline__ int corr_coord(int o, int t, int s, int p, int d, int n) {
    int i = o * s - p + t * d;
    return (i >= 0 && i < n) ? i : -1;
}
// The input coordinate that output q gathers with tap t in the adjoint, or -1.
__device__ __forceinline__ int adj_coord(int q, int t, int s, int p, int d, int n) {
    int num = q + p - t * d;
    if (num < 0 || num % s) return -1;
    int i = num / s;
    return i < n ? i : -1;
}

// B(k, col) for CORR/ADJ: k = (c, tap); the data tensor x has CI channels.
template <class T, int MODE>
__device__ __forceinline__ T load_b(const T* __restrict__ x, const ConvGeo& g, int grp, int k,
                                    const ColInfo& ci) {
    int cg = g.CI / g.G;
    int c = k / g.KT, t = k % g.KT;
    int t0, t1, t2;
    decode3(t, g.K, t0, t1, t2);
    int i0, i1, i2;
    if (MODE == MODE_CORR) {
        i0 = corr_coord(ci.a0, t0, g.S[0], g.P[0], g.D[0], g.I[0]);
        i1 = corr_coord(ci.a1, t1, g.S[1], g.P[1], g.D[1], g.I[1]);
        i2 = corr_coord(ci.a2, t2, g.S[2], g.P[2], g.D[2], g.I[2]);
    } else {
        i0 = adj_coord(ci.a0, t0, g.S[0], g.P[0], g.D[0], g.I[0]);
        i1 = adj_coord(ci.a1, t1, g.S[1], g.P[1], g.D[1], g.I[1]);
        i2 = adj_coord(ci.a2, t2, g.S[2], g.P[2], g.D[2], g.I[2]);
    }
    if ((i0 | i1 | i2) < 0) return T(0);
    i64 off = ((i64)ci.n * g.CI + (i64)grp * cg + c) * g.IP + ((i64)i0 * g.I[1] + i1) * g.I[2] + i2;
    return x[off];
}

// B(k, col) for WGRAD: k = (n, output position), col = (c, tap).
template <class T>
__device__ __forceinline__ T load_b_wgrad(const T* __restrict__ x, const ConvGeo& g, int grp,
                                          long long k, const ColInfo& ci) {
    int cg = g.CI / g.G;
    int n = (int)(k / g.OP);
    int o0, o1, o2;
    decode3((int)(k % g.OP), g.O, o0, o1, o2);
    int i0 = corr_coord(o0, ci.a0, g.S[0], g.P[0], g.D[0], g.I[0]);
    int i1 = corr_coord(o1, ci.a1, g.S[1], g.P[1], g.D[1], g.I[1]);
    int i2 = corr_coord(o2, ci.a2, g.S[2], g.P[2], g.D[2], g.I[2]);
    if ((i0 | i1 | i2) < 0) return T(0);
    i64 off = ((i64)n * g.CI + (i64)grp * cg + ci.n) * g.IP + ((i64)i0 * g.I[1] + i1) * g.I[2] + i2;
    return x[off];
}

// A(m, k): the weight (CORR/ADJ) or grad_y (WGRAD).
template <class T, int MODE>
__device__ __forceinline__ T load_a(const T* __restrict__ a, const ConvGeo& g, int grp, int m,
                                    long long k, int M, long long K) {
    if (MODE == MODE_CORR) {
        return a[((i64)grp * M + m) * K + k];  // w[(g*M + m), (c, t)] is a contiguous row
    } else if (MODE == MODE_ADJ) {
        int cg = g.CI / g.G;
        int c = (int)(k / g.KT), t = (int)(k % g.KT);
        return a[(((i64)grp * cg + c) * M + m) * g.KT + t];
    } else {
        int n = (int)(k / g.OP), p = (int)(k % g.OP);
        return a[((i64)n * g.CO + (i64)grp * M + m) * g.OP + p];
    }
}

template <class T, int MODE>
__global__ void __launch_bounds__(GEMM_THREADS)
conv_gemm(const T* __restrict__ a, const T* __restrict__ x, const T* __restrict__ bias,
          T* __restrict__ out, const int* __restrict__ geo) {
    typedef typename AccOf<T>::type Acc;
    __shared__ T As[GEMM_BK][GEMM_BM + 1];
    __shared__ T Bs[GEMM_BK][GEMM_BN];

    ConvGeo g;
    g.load(geo);
    const int M = g.CO / g.G;
    long long K, NC;
    if (MODE == MODE_WGRAD) {
        K = (long long)g.N * g.OP;
        NC = (long long)(g.CI / g.G) * g.KT;
    } else {
        K = (long long)(g.CI / g.G) * g.KT;
        NC = (long long)g.N * g.OP;
    }
    const int grp = blockIdx.z / g.splits;
    const int split = blockIdx.z % g.splits;
    long long kbeg = 0, kend = K;
    if (MODE == MODE_WGRAD) {
        kbeg = (long long)split * g.kchunk;
        kend = kbeg + g.kchunk < K ? kbeg + g.kchunk : K;
    }
    const int tid = threadIdx.x;
    const int tx = tid % 16, ty = tid / 16;
    const int m0 = blockIdx.y * GEMM_BM;
    const long long n0 = (long long)blockIdx.x * GEMM_BN;

    // The B column this thread loads is fixed (GEMM_THREADS is a multiple of GEMM_BN):
    // decode it once. Likewise the A reduction offset it loads.
    const int b_col = tid % GEMM_BN, b_k = tid / GEMM_BN;           // + 4r per round
    const ColInfo bci = decode_col<MODE>(g, n0 + b_col, NC);
    const int a_k = tid % GEMM_BK, a_m = tid / GEMM_BK;             // + 16r per round

    Acc acc[4][4];
    for (int i = 0; i < 4; ++i)
        for (int j = 0; j < 4; ++j) acc[i][j] = Acc(0);

    for (long long k0 = kbeg; k0 < kend; k0 += GEMM_BK) {
        for (int r = 0; r < (GEMM_BM * GEMM_BK) / GEMM_THREADS; ++r) {
            int mm = a_m + r * (GEMM_THREADS / GEMM_BK);
            int m = m0 + mm;
            long long k = k0 + a_k;
            As[a_k][mm] = (m < M && k < kend) ? load_a<T, MODE>(a, g, grp, m, k, M, K) : T(0);
        }
        for (int r = 0; r < (GEMM_BN * GEMM_BK) / GEMM_THREADS; ++r) {
            int kk = b_k + r * (GEMM_THREADS / GEMM_BN);
            long long k = k0 + kk;
            T v = T(0);
            if (bci.valid && k < kend) {
                if (MODE == MODE_WGRAD) v = load_b_wgrad<T>(x, g, grp, k, bci);
                else v = load_b<T, MODE>(x, g, grp, (int)k, bci);
            }
            Bs[kk][b_col] = v;
        }
        __syncthreads();
        for (int kk = 0; kk < GEMM_BK; ++kk) {
            Acc av[4], bv[4];
            for (int i = 0; i < 4; ++i) av[i] = Acc(As[kk][ty + 16 * i]);
            for (int j = 0; j < 4; ++j) bv[j] = Acc(Bs[kk][tx + 16 * j]);
            for (int i = 0; i < 4; ++i)
                for (int j = 0; j < 4; ++j) acc[i][j] += av[i] * bv[j];
        }
        __syncthreads();
    }

    for (int i = 0; i < 4; ++i) {
        int m = m0 + ty + 16 * i;
        if (m >= M) continue;
        for (int j = 0; j < 4; ++j) {
            long long col = n0 + tx + 16 * j;
            if (col >= NC) continue;
            if (MODE == MODE_WGRAD) {
                // (g*M + m) rows of NC columns; slice `split` of the split-K workspace.
                i64 off = (i64)split * g.CO * NC + ((i64)grp * M + m) * NC + col;
                out[off] = T(acc[i][j]);
            } else {
                int n = (int)(col / g.OP), p = (int)(col % g.OP);
                Acc v = acc[i][j];
                if (g.has_bias) v += Acc(bias[grp * M + m]);
                out[((i64)n * g.CO + (i64)grp * M + m) * g.OP + p] = T(v);
            }
        }
    }
}

// Direct kernel for grouped/depthwise convolutions where a group has few output
// channels (a GEMM tile of 64 rows would idle): one thread per output element gathers
// its window; consecutive threads write consecutive positions (coalesced).
template <class T, int MODE>
__global__ void __launch_bounds__(256)
conv_direct(const T* __restrict__ w, const T* __restrict__ x, const T* __restrict__ bias,
            T* __restrict__ y, const int* __restrict__ geo) {
    typedef typename AccOf<T>::type Acc;
    ConvGeo g;
    g.load(geo);
    const int M = g.CO / g.G, cg = g.CI / g.G;
    const long long total = (long long)g.N * g.CO * g.OP;
    for (long long e = (long long)blockIdx.x * blockDim.x + threadIdx.x; e < total;
         e += (long long)gridDim.x * blockDim.x) {
        int p = (int)(e % g.OP);
        long long nc = e / g.OP;
        int co = (int)(nc % g.CO), n = (int)(nc / g.CO);
        int grp = co / M, m = co % M;
        int o0, o1, o2;
        decode3(p, g.O, o0, o1, o2);
        Acc acc = g.has_bias ? Acc(bias[co]) : Acc(0);
        for (int c = 0; c < cg; ++c) {
            const T* xc = x + ((i64)n * g.CI + (i64)grp * cg + c) * g.IP;
            const T* wc = (MODE == MODE_CORR) ? w + ((i64)co * cg + c) * g.KT
                                              : w + (((i64)grp * cg + c) * M + m) * g.KT;
            for (int t0 = 0; t0 < g.K[0]; ++t0) {
                int i0 = (MODE == MODE_CORR) ? corr_coord(o0, t0, g.S[0], g.P[0], g.D[0], g.I[0])
                                             : adj_coord(o0, t0, g.S[0], g.P[0], g.D[0], g.I[0]);
                if (i0 < 0) continue;
                for (int t1 = 0; t1 < g.K[1]; ++t1) {
                    int i1 = (MODE == MODE_CORR) ? corr_coord(o1, t1, g.S[1], g.P[1], g.D[1], g.I[1])
                                                 : adj_coord(o1, t1, g.S[1], g.P[1], g.D[1], g.I[1]);
                    if (i1 < 0) continue;
                    for (int t2 = 0; t2 < g.K[2]; ++t2) {
                        int i2 = (MODE == MODE_CORR) ? corr_coord(o2, t2, g.S[2], g.P[2], g.D[2], g.I[2])
                                                     : adj_coord(o2, t2, g.S[2], g.P[2], g.D[2], g.I[2]);
                        if (i2 < 0) continue;
                        acc += Acc(wc[(t0 * g.K[1] + t1) * g.K[2] + t2]) *
                               Acc(xc[((i64)i0 * g.I[1] + i1) * g.I[2] + i2]);
                    }
                }
            }
        }
        y[e] = T(acc);
    }
}

// Adds the split-K slices of the weight gradient in slice order (deterministic).
template <class T>
__global__ void __launch_bounds__(256)
sum_splits(const T* __restrict__ ws, T* __restrict__ out, int splits, long long count) {
    typedef typename AccOf<T>::type Acc;
    for (long long e = (long long)blockIdx.x * blockDim.x + threadIdx.x; e < count;
         e += (long long)gridDim.x * blockDim.x) {
        Acc s = Acc(0);
        for (int k = 0; k < splits; ++k) s += Acc(ws[(i64)k * count + e]);
        out[e] = T(s);
    }
}

// Bias gradient: one block per channel sums grad_y over (n, position) in a fixed
// order -- strided per-thread sums, a shared-memory tree, then a warp shuffle.
template <class T>
__global__ void __launch_bounds__(256)
channel_sum(const T* __restrict__ gy, T* __restrict__ out, int n_batch, int channels,
            long long plane) {
    typedef typename AccOf<T>::type Acc;
    __shared__ Acc part[256];
    const int c = blockIdx.x;
    const int tid = threadIdx.x;
    Acc s = Acc(0);
    for (int n = 0; n < n_batch; ++n) {
        const T* row = gy + ((i64)n * channels + c) * plane;
        for (long long p = tid; p < plane; p += 256) s += Acc(row[p]);
    }
    part[tid] = s;
    __syncthreads();
    for (int stride = 128; stride >= 32; stride /= 2) {
        if (tid < stride) part[tid] += part[tid + stride];
        __syncthreads();
    }
    if (tid < 32) {
        Acc v = part[tid];
        for (int off = 16; off > 0; off /= 2) v += __shfl_down_sync(0xffffffffu, v, off);
        if (tid == 0) out[c] = T(v);
    }
}
