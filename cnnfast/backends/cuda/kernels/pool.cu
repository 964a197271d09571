// pool.cu -- max and average pooling kernels of cnnfast (forward and backward).
//
// Index math is 32-bit: the host rejects tensors of 2**31 elements or more, so every
// flat index (batch and channel included) fits an unsigned int, and a grid-stride
// step (< 2**28) never wraps it. 64-bit integer division is a ~100-instruction
// software routine on GPUs; 32-bit division by a runtime value is ~20.
//
// Index divisions by invariant extents are multiply-shifts (FastDiv, dividers computed
// on the host). Grids are capped and the kernels loop, so a thread's ~50 geometry
// loads are spread over several elements.
//
// Forward: one thread per output (flat index fastest along the last spatial dim, so
// a warp's stores are consecutive; windows up to 3x3 in the last two dims unrolled
// so that their loads issue together), or one warp per output for large windows with
// few outputs: lanes stride over the window, then a fixed-order shuffle reduction.
// Backward passes never use float atomics: each input cell's contributions are summed
// in a fixed order, so the results are bit-reproducible. Average backward gathers
// per run of cells along the last dim; max backward: see its section below.
#include "common.cuh"

// BLOCK_THREADS (256) threads, at least 4 blocks per SM: at most 64 registers. Bare
// __launch_bounds__(256) made ptxas cap these kernels near 48 registers and spill
// (ptxas -v); 64 holds them without spills at half occupancy, plenty for these
// gather/stream kernels.
#define POOL_BOUNDS __launch_bounds__(BLOCK_THREADS, 4)

// Division by an invariant n-bit divisor d as a multiply and a shift (Granlund and
// Montgomery): for every numerator n < 2**31, floor(n / d) == (n * m) >> s with
// m = ceil(2**(31 + l) / d), s = 31 + l, l = ceil(log2 d) (m = 1, s = l for powers of
// two). The host computes m and s (pool_launch._fast_div); a variable 32-bit
// division costs ~20 instructions on a GPU, this 3.
struct FastDiv {
    unsigned m;
    int s;
    __device__ __forceinline__ void load(const int* g, int fm, int fs) {
        m = (unsigned)g[fm];
        s = g[fs];
    }
    __device__ __forceinline__ unsigned operator()(unsigned n) const {
        return (unsigned)(((unsigned long long)n * m) >> s);
    }
};

struct PoolGeo {
    int NC;
    int I[3], O[3], K[3], S[3], P[3], Q[3], D[3];
    int include_pad, divisor, segments, mode;
    int IP, OP;
    FastDiv dI[3], dO[3], dS[3], dIP, dOP;

    __device__ __forceinline__ void load(const int* g) {
        NC = g[PG_NC];
        for (int d = 0; d < 3; ++d) {
            I[d] = g[PG_I0 + d]; O[d] = g[PG_O0 + d]; K[d] = g[PG_K0 + d];
            S[d] = g[PG_S0 + d]; P[d] = g[PG_P0 + d]; Q[d] = g[PG_Q0 + d];
            D[d] = g[PG_D0 + d];
            dI[d].load(g, PG_MI0 + d, PG_HI0 + d);
            dO[d].load(g, PG_MO0 + d, PG_HO0 + d);
            dS[d].load(g, PG_MS0 + d, PG_HS0 + d);
        }
        include_pad = g[PG_INCLUDE_PAD]; divisor = g[PG_DIVISOR]; segments = g[PG_SEGMENTS];
        mode = g[PG_MODE];
        dIP.load(g, PG_MIP, PG_HIP);
        dOP.load(g, PG_MOP, PG_HOP);
        IP = I[0] * I[1] * I[2];
        OP = O[0] * O[1] * O[2];
    }
};

// A thread's unit in the gather kernels: a run of up to `run` cells along the last
// dim of one input row. Element e is run (e mod chunks) of row (e / chunks); rows run
// over (plane, i0, i1). `dch` divides by `chunks` (host constants PG_MCH/PG_HCH).
struct RunPos {
    unsigned plane;
    int i0, i1, c0, n;  // row coordinates, first cell, cells in the run
};

__device__ __forceinline__ RunPos run_position(const PoolGeo& g, const FastDiv& dch,
                                               unsigned e, unsigned chunks, int run) {
    RunPos r;
    const unsigned row = dch(e);
    r.c0 = (int)(e - row * chunks) * run;
    r.n = imin(run, g.I[2] - r.c0);
    const unsigned q = g.dI[1](row);
    r.i1 = (int)(row - q * (unsigned)g.I[1]);
    r.plane = g.dI[0](q);
    r.i0 = (int)(q - r.plane * (unsigned)g.I[0]);
    return r;
}

// In-plane flat offset -> 3-D position (ext: the extents, dv: their dividers); lifted
// rank-1/2 problems (leading extents 1) skip what they do not need (uniform branches).
__device__ __forceinline__ void pool_decode(unsigned flat, const int* ext, const FastDiv* dv,
                                            int* a) {
    if (ext[0] == 1 && ext[1] == 1) {
        a[0] = 0; a[1] = 0; a[2] = (int)flat;
        return;
    }
    unsigned q = dv[2](flat);
    a[2] = (int)(flat - q * (unsigned)ext[2]);
    if (ext[0] == 1) {
        a[0] = 0; a[1] = (int)q;
        return;
    }
    unsigned q2 = dv[1](q);
    a[1] = (int)(q - q2 * (unsigned)ext[1]);
    a[0] = (int)q2;
}

// The same with hardware division, for per-thread extents (window sizes).
__device__ __forceinline__ void pool_decode_var(unsigned flat, const int* ext, int* a) {
    unsigned q = flat / (unsigned)ext[2];
    a[2] = (int)(flat - q * (unsigned)ext[2]);
    unsigned q2 = q / (unsigned)ext[1];
    a[1] = (int)(q - q2 * (unsigned)ext[1]);
    a[0] = (int)q2;
}

// The taps t in [0, k) with lo <= start + t*d < hi, as the range [t0, t1) (empty when
// t1 <= t0). Closed form: no loop over the window.
__device__ __forceinline__ void tap_range(int start, int k, int d, int lo, int hi, int& t0,
                                          int& t1) {
    if (d == 1) {
        t0 = imax(0, lo - start);
        t1 = imin(k, hi - start);
        return;
    }
    t0 = start >= lo ? 0 : (lo - start + d - 1) / d;
    t1 = start >= hi ? 0 : imin(k, (hi - 1 - start) / d + 1);
}

// Taps of output position o along dim d that lie inside the input.
__device__ __forceinline__ void window_dim(const PoolGeo& g, int d, int o, int& start, int& t0,
                                           int& t1) {
    start = o * g.S[d] - g.P[d];
    tap_range(start, g.K[d], g.D[d], 0, g.I[d], t0, t1);
}

// Average-pool divisor factor of dim d at output position o: the taps inside
// input-plus-padding (count_include_pad; the ceil_mode overhang past the trailing
// padding does not count) or inside the input.
__device__ __forceinline__ int divisor_dim(const PoolGeo& g, int d, int o) {
    int t0, t1;
    int lo = g.include_pad ? -g.P[d] : 0;
    int hi = g.include_pad ? g.I[d] + g.Q[d] : g.I[d];
    tap_range(o * g.S[d] - g.P[d], g.K[d], g.D[d], lo, hi, t0, t1);
    return imax(0, t1 - t0);
}

__device__ __forceinline__ int pool_divisor(const PoolGeo& g, const int* o) {
    if (g.divisor > 0) return g.divisor;
    return divisor_dim(g, 0, o[0]) * divisor_dim(g, 1, o[1]) * divisor_dim(g, 2, o[2]);
}

// Max-pool candidate order: NaN beats any number and, among NaNs, the earlier index
// wins; among numbers the larger wins and ties go to the earlier index (so a window of
// -inf gives its first cell). Taps in row-major window order have increasing flat
// indices, so "take v when it beats the best so far" is the sequential scan rule --
// and the rule is a total order, so a reduction in any grouping gives the same winner.
template <class A>
__device__ __forceinline__ bool max_beats(A v, int i, A best, int best_i) {
    bool vn = v != v, bn = best != best;
    if (vn != bn) return vn;
    if (vn || v == best) return i < best_i;
    return v > best;
}

// The sequential scan's step (indices increasing): take v when it beats the best so
// far, i.e. v > best, or v is the first NaN. Cheaper than max_beats, same winner.
template <class A>
__device__ __forceinline__ bool max_takes(A v, A best) {
    return !(v <= best) && best == best;
}

// Small windows (at most KM taps in each of the last two dims) in the forward
// kernels: each plane of the window fully unrolled, its loads issued together
// (predicated at the borders), then scanned in order. With runtime loop bounds each
// tap's load latency would be exposed in turn.
template <int KM, class T, class A>
__device__ __forceinline__ void max_scan_small(const PoolGeo& g, const T* xp, const int* st,
                                               const int* a, const int* b, A& best,
                                               T& best_t, int& best_i) {
    for (int t0 = a[0]; t0 < b[0]; ++t0) {
        const int r0 = (st[0] + t0 * g.D[0]) * g.I[1];
        T v[KM][KM];
#pragma unroll
        for (int u1 = 0; u1 < KM; ++u1)
#pragma unroll
            for (int u2 = 0; u2 < KM; ++u2) {
                int f = (r0 + st[1] + (a[1] + u1) * g.D[1]) * g.I[2] + st[2] + (a[2] + u2) * g.D[2];
                v[u1][u2] = (a[1] + u1 < b[1] && a[2] + u2 < b[2]) ? xp[f] : T(0.0f);
            }
#pragma unroll
        for (int u1 = 0; u1 < KM; ++u1)
#pragma unroll
            for (int u2 = 0; u2 < KM; ++u2) {
                int f = (r0 + st[1] + (a[1] + u1) * g.D[1]) * g.I[2] + st[2] + (a[2] + u2) * g.D[2];
                A vv = A(v[u1][u2]);
                if (a[1] + u1 < b[1] && a[2] + u2 < b[2] && max_takes(vv, best)) {
                    best = vv;
                    best_t = v[u1][u2];
                    best_i = f;
                }
            }
    }
}

// The same for the average: the sum keeps the tap order (adding the zeros of
// out-of-bounds taps changes nothing).
template <int KM, class A, class T>
__device__ __forceinline__ A avg_sum_small(const PoolGeo& g, const T* xp, const int* st,
                                           const int* a, const int* b) {
    A s = A(0);
    for (int t0 = a[0]; t0 < b[0]; ++t0) {
        const int r0 = (st[0] + t0 * g.D[0]) * g.I[1];
        A v[KM][KM];
#pragma unroll
        for (int u1 = 0; u1 < KM; ++u1)
#pragma unroll
            for (int u2 = 0; u2 < KM; ++u2) {
                int f = (r0 + st[1] + (a[1] + u1) * g.D[1]) * g.I[2] + st[2] + (a[2] + u2) * g.D[2];
                v[u1][u2] = (a[1] + u1 < b[1] && a[2] + u2 < b[2]) ? A(xp[f]) : A(0);
            }
#pragma unroll
        for (int u1 = 0; u1 < KM; ++u1)
#pragma unroll
            for (int u2 = 0; u2 < KM; ++u2) s += v[u1][u2];
    }
    return s;
}

// Max pooling, one thread per output. Indices are flat offsets into the (n, c) plane.
template <class T>
__global__ void POOL_BOUNDS
max_pool_fwd(const T* __restrict__ x, T* __restrict__ y, long long* __restrict__ idx,
             const int* __restrict__ geo, int with_indices) {
    typedef typename AccOf<T>::type Acc;
    PoolGeo g;
    g.load(geo);
    const unsigned total = (unsigned)g.NC * (unsigned)g.OP;
    for (unsigned e = blockIdx.x * blockDim.x + threadIdx.x; e < total;
         e += gridDim.x * blockDim.x) {
        unsigned plane = g.dOP(e);
        int o[3], st[3], a[3], b[3];
        pool_decode(e - plane * (unsigned)g.OP, g.O, g.dO, o);
        for (int d = 0; d < 3; ++d) window_dim(g, d, o[d], st[d], a[d], b[d]);
        const T* xp = x + (size_t)plane * (unsigned)g.IP;
        // Every window holds an input cell (params.py rejects the others): the first
        // in-bounds tap seeds the scan.
        int best_i = ((st[0] + a[0] * g.D[0]) * g.I[1] + st[1] + a[1] * g.D[1]) * g.I[2] +
                     st[2] + a[2] * g.D[2];
        T best_t = xp[best_i];
        Acc best = Acc(best_t);
        if (g.K[1] <= 2 && g.K[2] <= 2) {
            max_scan_small<2>(g, xp, st, a, b, best, best_t, best_i);
            y[e] = best_t;
            if (with_indices) idx[e] = best_i;
            continue;
        }
        if (g.K[1] <= 3 && g.K[2] <= 3) {
            max_scan_small<3>(g, xp, st, a, b, best, best_t, best_i);
            y[e] = best_t;
            if (with_indices) idx[e] = best_i;
            continue;
        }
        for (int t0 = a[0]; t0 < b[0]; ++t0) {
            const int r0 = (st[0] + t0 * g.D[0]) * g.I[1];
            for (int t1 = a[1]; t1 < b[1]; ++t1) {
                const int r1 = (r0 + st[1] + t1 * g.D[1]) * g.I[2] + st[2];
                for (int t2 = a[2]; t2 < b[2]; ++t2) {
                    int flat = r1 + t2 * g.D[2];
                    T vt = xp[flat];
                    Acc v = Acc(vt);
                    if (max_takes(v, best)) {
                        best = v;
                        best_t = vt;
                        best_i = flat;
                    }
                }
            }
        }
        y[e] = best_t;
        if (with_indices) idx[e] = best_i;
    }
}

// Average pooling, one thread per output.
template <class T>
__global__ void POOL_BOUNDS
avg_pool_fwd(const T* __restrict__ x, T* __restrict__ y, const int* __restrict__ geo) {
    typedef typename AccOf<T>::type Acc;
    PoolGeo g;
    g.load(geo);
    const unsigned total = (unsigned)g.NC * (unsigned)g.OP;
    for (unsigned e = blockIdx.x * blockDim.x + threadIdx.x; e < total;
         e += gridDim.x * blockDim.x) {
        unsigned plane = g.dOP(e);
        int o[3], st[3], a[3], b[3];
        pool_decode(e - plane * (unsigned)g.OP, g.O, g.dO, o);
        for (int d = 0; d < 3; ++d) window_dim(g, d, o[d], st[d], a[d], b[d]);
        const T* xp = x + (size_t)plane * (unsigned)g.IP;
        Acc s = Acc(0);
        if (g.K[1] <= 2 && g.K[2] <= 2) {
            s = avg_sum_small<2, Acc>(g, xp, st, a, b);
        } else if (g.K[1] <= 3 && g.K[2] <= 3) {
            s = avg_sum_small<3, Acc>(g, xp, st, a, b);
        } else {
            for (int t0 = a[0]; t0 < b[0]; ++t0) {
                const int r0 = (st[0] + t0 * g.D[0]) * g.I[1];
                for (int t1 = a[1]; t1 < b[1]; ++t1) {
                    const int r1 = (r0 + st[1] + t1 * g.D[1]) * g.I[2] + st[2];
                    for (int t2 = a[2]; t2 < b[2]; ++t2) s += Acc(xp[r1 + t2 * g.D[2]]);
                }
            }
        }
        y[e] = T(s / Acc(pool_divisor(g, o)));
    }
}

#define NO_TAP 0x7fffffff  // a lane without a candidate (NVRTC has no <climits>)

// Large windows, few outputs (global pooling): one warp per output. Lane l takes the
// in-bounds taps l, l+32, ... of the window (row-major), then a butterfly reduction.
// The warp loop bound is warp-uniform, so every shuffle has all 32 lanes.
template <class T>
__global__ void POOL_BOUNDS
max_pool_fwd_warp(const T* __restrict__ x, T* __restrict__ y, long long* __restrict__ idx,
                  const int* __restrict__ geo, int with_indices) {
    typedef typename AccOf<T>::type Acc;
    PoolGeo g;
    g.load(geo);
    const unsigned total = (unsigned)g.NC * (unsigned)g.OP;
    const unsigned lane = threadIdx.x & 31u;
    const unsigned nwarps = (gridDim.x * blockDim.x) >> 5;
    for (unsigned e = (blockIdx.x * blockDim.x + threadIdx.x) >> 5; e < total; e += nwarps) {
        unsigned plane = g.dOP(e);
        int o[3], st[3], a[3], b[3], n[3];
        pool_decode(e - plane * (unsigned)g.OP, g.O, g.dO, o);
        for (int d = 0; d < 3; ++d) {
            window_dim(g, d, o[d], st[d], a[d], b[d]);
            n[d] = b[d] - a[d];  // >= 1: every window holds an input cell
        }
        const T* xp = x + (size_t)plane * (unsigned)g.IP;
        const unsigned taps = (unsigned)(n[0] * n[1] * n[2]);
        Acc best = Acc(0);
        int best_i = NO_TAP;  // no candidate yet: loses to any real one
        for (unsigned w = lane; w < taps; w += 32u) {
            int u[3];
            pool_decode_var(w, n, u);
            int flat = ((st[0] + (a[0] + u[0]) * g.D[0]) * g.I[1] + st[1] +
                        (a[1] + u[1]) * g.D[1]) * g.I[2] + st[2] + (a[2] + u[2]) * g.D[2];
            Acc v = Acc(xp[flat]);
            if (best_i == NO_TAP || max_beats(v, flat, best, best_i)) {
                best = v;
                best_i = flat;
            }
        }
        for (int m = 16; m >= 1; m >>= 1) {
            Acc ov = __shfl_xor_sync(0xffffffffu, best, m);
            int oi = __shfl_xor_sync(0xffffffffu, best_i, m);
            if (oi != NO_TAP && (best_i == NO_TAP || max_beats(ov, oi, best, best_i))) {
                best = ov;
                best_i = oi;
            }
        }
        if (lane == 0) {
            y[e] = xp[best_i];  // the stored value itself (exact for every T)
            if (with_indices) idx[e] = best_i;
        }
    }
}

template <class T>
__global__ void POOL_BOUNDS
avg_pool_fwd_warp(const T* __restrict__ x, T* __restrict__ y, const int* __restrict__ geo) {
    typedef typename AccOf<T>::type Acc;
    PoolGeo g;
    g.load(geo);
    const unsigned total = (unsigned)g.NC * (unsigned)g.OP;
    const unsigned lane = threadIdx.x & 31u;
    const unsigned nwarps = (gridDim.x * blockDim.x) >> 5;
    for (unsigned e = (blockIdx.x * blockDim.x + threadIdx.x) >> 5; e < total; e += nwarps) {
        unsigned plane = g.dOP(e);
        int o[3], st[3], a[3], b[3], n[3];
        pool_decode(e - plane * (unsigned)g.OP, g.O, g.dO, o);
        for (int d = 0; d < 3; ++d) {
            window_dim(g, d, o[d], st[d], a[d], b[d]);
            n[d] = b[d] - a[d];
        }
        const T* xp = x + (size_t)plane * (unsigned)g.IP;
        const unsigned taps = (unsigned)(n[0] * n[1] * n[2]);
        Acc s = Acc(0);
        for (unsigned w = lane; w < taps; w += 32u) {
            int u[3];
            pool_decode_var(w, n, u);
            s += Acc(xp[((st[0] + (a[0] + u[0]) * g.D[0]) * g.I[1] + st[1] +
                         (a[1] + u[1]) * g.D[1]) * g.I[2] + st[2] + (a[2] + u[2]) * g.D[2]]);
        }
        for (int m = 16; m >= 1; m >>= 1) s += __shfl_xor_sync(0xffffffffu, s, m);
        if (lane == 0) y[e] = T(s / Acc(pool_divisor(g, o)));
    }
}

// Average-pool backward as a gather: input cell i receives gy[o] / divisor(o) from
// every output o whose window holds it, i.e. o*s - pad + t*d == i for a tap t < k.
// Per dim the candidates are a closed-form range of o; they are visited in decreasing
// o, i.e. increasing tap order (the order of the reference's tap-by-tap scatter).
// Undilated windows: a thread owns a run of POOL_RUN cells along the last dim, and
// each candidate's gy[o] / divisor(o) is computed once for the cells it covers (each
// cell still sums its own contributions in the order above). Dilated windows: one
// thread per cell, with a divisibility test per candidate.
#define POOL_RUN 8  // pool_launch.py reads it (AVG_BWD_RUN) to size the grid

// Stores a run's n <= N results at out: one vector store when the run is whole and
// aligned (rows of a multiple of N cells), else element by element.
template <int N, class T, class A>
__device__ __forceinline__ void store_run(T* out, int n, const A* acc) {
    struct alignas(N * sizeof(T)) Vec { T v[N]; };
    if (n == N && ((size_t)out & (N * sizeof(T) - 1)) == 0) {
        Vec w;
#pragma unroll
        for (int u = 0; u < N; ++u) w.v[u] = T(acc[u]);
        *reinterpret_cast<Vec*>(out) = w;
        return;
    }
#pragma unroll
    for (int u = 0; u < N; ++u)
        if (u < n) out[u] = T(acc[u]);
}

// Candidate outputs along dim d of input position i: [lo, hi] (lo > hi: none).
__device__ __forceinline__ void avg_range(const PoolGeo& g, int d, int i, int& lo, int& hi) {
    // o*s <= i + pad (tap 0) and o*s >= i + pad - (k-1)*dil (last tap).
    const int n = i + g.P[d];
    const int first = n - (g.K[d] - 1) * g.D[d];
    lo = first <= 0 ? 0 : (int)g.dS[d]((unsigned)(first + g.S[d] - 1));
    hi = imin(g.O[d] - 1, (int)g.dS[d]((unsigned)n));
}

template <class T>
__global__ void POOL_BOUNDS
avg_pool_bwd(const T* __restrict__ gy, T* __restrict__ gx, const int* __restrict__ geo) {
    typedef typename AccOf<T>::type Acc;
    PoolGeo g;
    g.load(geo);
    const unsigned stride = gridDim.x * blockDim.x;
    // The divisor is a product of per-dim factors (or the override): each factor is
    // computed in its own loop level.
    const bool over = g.divisor > 0;
    if (g.D[0] == 1 && g.D[1] == 1 && g.D[2] == 1) {
        FastDiv dch;
        dch.load(geo, PG_MCH, PG_HCH);
        const int I2 = g.I[2];
        const unsigned chunks = (unsigned)((I2 + POOL_RUN - 1) / POOL_RUN);
        const unsigned total = (unsigned)g.NC * (unsigned)(g.I[0] * g.I[1]) * chunks;
        for (unsigned e = blockIdx.x * blockDim.x + threadIdx.x; e < total; e += stride) {
            const RunPos rp = run_position(g, dch, e, chunks, POOL_RUN);
            const unsigned plane = rp.plane;
            const int i0 = rp.i0, i1 = rp.i1, c0 = rp.c0, n = rp.n;
            int lo0, hi0, lo1, hi1, lo2, hi2, unused;
            avg_range(g, 0, i0, lo0, hi0);
            avg_range(g, 1, i1, lo1, hi1);
            avg_range(g, 2, c0, lo2, unused);          // the run's union: lo of its
            avg_range(g, 2, c0 + n - 1, unused, hi2);  // first cell, hi of its last
            const T* gyp = gy + (size_t)plane * (unsigned)g.OP;
            Acc acc[POOL_RUN];
#pragma unroll
            for (int u = 0; u < POOL_RUN; ++u) acc[u] = Acc(0);
            for (int o0 = hi0; o0 >= lo0; --o0) {
                const int f0 = over ? g.divisor : divisor_dim(g, 0, o0);
                for (int o1 = hi1; o1 >= lo1; --o1) {
                    const int f01 = over ? f0 : f0 * divisor_dim(g, 1, o1);
                    const int orow = (o0 * g.O[1] + o1) * g.O[2];
                    for (int o2 = hi2; o2 >= lo2; --o2) {
                        const int div = over ? f01 : f01 * divisor_dim(g, 2, o2);
                        const Acc v = Acc(gyp[orow + o2]) / Acc(div);
                        // Cells c0 + u inside this output's window along dim 2.
                        const int w0 = o2 * g.S[2] - g.P[2] - c0;
                        const int w1 = w0 + g.K[2];
#pragma unroll
                        for (int u = 0; u < POOL_RUN; ++u)
                            if (w0 <= u && u < w1) acc[u] += v;
                    }
                }
            }
            T* out = gx + (size_t)plane * (unsigned)g.IP + (i0 * g.I[1] + i1) * I2 + c0;
            store_run<POOL_RUN>(out, n, acc);
        }
        return;
    }
    const unsigned total = (unsigned)g.NC * (unsigned)g.IP;
    for (unsigned e = blockIdx.x * blockDim.x + threadIdx.x; e < total; e += stride) {
        unsigned plane = g.dIP(e);
        int i[3], lo[3], hi[3];
        pool_decode(e - plane * (unsigned)g.IP, g.I, g.dI, i);
        for (int d = 0; d < 3; ++d) avg_range(g, d, i[d], lo[d], hi[d]);
        const T* gyp = gy + (size_t)plane * (unsigned)g.OP;
        Acc s = Acc(0);
        for (int o0 = hi[0]; o0 >= lo[0]; --o0) {
            if ((i[0] + g.P[0] - o0 * g.S[0]) % g.D[0]) continue;
            const int f0 = over ? g.divisor : divisor_dim(g, 0, o0);
            for (int o1 = hi[1]; o1 >= lo[1]; --o1) {
                if ((i[1] + g.P[1] - o1 * g.S[1]) % g.D[1]) continue;
                const int f01 = over ? f0 : f0 * divisor_dim(g, 1, o1);
                const int orow = (o0 * g.O[1] + o1) * g.O[2];
                for (int o2 = hi[2]; o2 >= lo[2]; --o2) {
                    if ((i[2] + g.P[2] - o2 * g.S[2]) % g.D[2]) continue;
                    const int div = over ? f01 : f01 * divisor_dim(g, 2, o2);
                    s += Acc(gyp[orow + o2]) / Acc(div);
                }
            }
        }
        gx[e] = T(s);
    }
}

// ------------------------------------------------------------------ max-pool backward
//
// max_pool_backward(grad_y, indices, x_shape) knows no window geometry. Reference map
// f_d(o) = floor(o * I_d / O_d) puts each output near its window along every dim; the
// reach R_d = max over all outputs of |i_d(idx[o]) - f_d(o_d)| bounds how far a
// winner lies from it (a window's extent plus the map's slack for real indices;
// arbitrary indices only widen it). Pass 1 (max_pool_bwd_reach) computes R with
// integer atomicMax, which is order-independent. Pass 2 (max_pool_bwd): input cell i
// visits only the outputs with f_d(o_d) in [i_d - R_d, i_d + R_d] (the inverse of a
// monotone floor map is a range) in increasing flat order and sums gy[o] where
// idx[o] == i (per run of MPB_RUN cells, which share one union box). Or, when
// outputs are far fewer than inputs, max_pool_bwd_scatter: per output, over a zeroed
// grad_x, the first output of each winner sums the box's matches and writes them.
// When the box is large (indices far from any window) both instead let each thread
// own a contiguous slice of a plane and scan all the plane's outputs once. Every way
// each cell sums its contributions in increasing output order: the same bits.

// floor(a * b / c) for non-negative ints (dc divides by c): a multiply and a shift
// when the product is under 2**31, else a 64-bit division.
__device__ __forceinline__ long long muldiv(int a, int b, int c, const FastDiv& dc) {
    unsigned long long p = (unsigned long long)(unsigned)a * (unsigned)b;
    if (p < (1ull << 31)) return (long long)dc((unsigned)p);
    return (long long)(p / (unsigned)c);
}


template <class T>
__global__ void POOL_BOUNDS
max_pool_bwd_reach(const long long* __restrict__ idx, int* __restrict__ reach,
                   const int* __restrict__ geo) {
    PoolGeo g;
    g.load(geo);
    const unsigned total = (unsigned)g.NC * (unsigned)g.OP;
    const unsigned stride = gridDim.x * blockDim.x;  // <= 2**21: e + 3*stride cannot wrap
    int r[3] = {0, 0, 0};
    // Four elements per step, their index loads issued together (a bounded grid of
    // threads, each with one load in flight, would be latency-bound).
    for (unsigned e0 = blockIdx.x * blockDim.x + threadIdx.x; e0 < total; e0 += 4 * stride) {
        long long v[4];
#pragma unroll
        for (int u = 0; u < 4; ++u) v[u] = e0 + u * stride < total ? idx[e0 + u * stride] : 0;
#pragma unroll
        for (int u = 0; u < 4; ++u) {
            const unsigned e = e0 + u * stride;
            if (e >= total) break;
            unsigned plane = g.dOP(e);
            int o[3], i[3];
            pool_decode(e - plane * (unsigned)g.OP, g.O, g.dO, o);
            pool_decode((unsigned)v[u], g.I, g.dI, i);  // in [0, IP): checked by the API
            for (int d = 0; d < 3; ++d) {
                int f = g.O[d] == g.I[d] ? o[d] : (int)muldiv(o[d], g.I[d], g.O[d], g.dO[d]);
                int dist = i[d] >= f ? i[d] - f : f - i[d];
                r[d] = imax(r[d], dist);
            }
        }
    }
    // Block maximum (warp shuffles, then one warp over the warps' results), then
    // one atomicMax per block and dim.
    __shared__ int part[3][32];
    const int lane = threadIdx.x & 31, warp = threadIdx.x >> 5;
    for (int d = 0; d < 3; ++d) {
        for (int m = 16; m >= 1; m >>= 1) r[d] = imax(r[d], __shfl_xor_sync(0xffffffffu, r[d], m));
        if (lane == 0) part[d][warp] = r[d];
    }
    __syncthreads();
    if (warp == 0) {
        const int nw = (int)(blockDim.x >> 5);
        for (int d = 0; d < 3; ++d) {
            int v = lane < nw ? part[d][lane] : 0;
            for (int m = 16; m >= 1; m >>= 1) v = imax(v, __shfl_xor_sync(0xffffffffu, v, m));
            if (lane == 0 && v > 0) atomicMax(&reach[d], v);
        }
    }
}

// Candidate outputs along one dim, the inverse of the monotone map f(o) = floor(o*I/O):
// the smallest o with f(o) >= a, and the largest o < O with f(o) <= b, i.e.
// ceil(a*O/I) and floor(((b+1)*O - 1)/I).
__device__ __forceinline__ int reach_lo(int a, int I, int O, const FastDiv& dI) {
    if (a <= 0) return 0;
    long long q = muldiv(a, O, I, dI);  // a < I, so the result is <= O
    return (int)q + (q * I == (long long)a * O ? 0 : 1);
}

__device__ __forceinline__ int reach_hi(long long b, int I, int O, const FastDiv& dI) {
    if (b + 1 >= I) return O - 1;   // f(o) < I <= b + 1 for every o
    long long h = muldiv((int)b + 1, O, I, dI);
    if (h * I == (b + 1) * O) h -= 1;
    return (int)(h < O - 1 ? h : O - 1);
}

// Modes of the max-pool backward kernels (PG_MODE): automatic, or forced for tests
// (pool_launch.py reads the values).
enum { MPB_AUTO = 0, MPB_BOX = 1, MPB_SEGMENTS = 2 };

// Whether to visit the candidate boxes (gather or scatter) rather than scan whole
// planes: the box holds about prod_d ((2R_d+1) O_d / I_d + 1) outputs per input cell;
// the scan costs segments * OP / IP output reads per input cell.
__device__ __forceinline__ bool max_bwd_use_box(const PoolGeo& g, const int* R) {
    if (g.mode != MPB_AUTO) return g.mode == MPB_BOX;
    float box = 1.0f;
    for (int d = 0; d < 3; ++d)
        box *= fminf((float)g.O[d], (2.0f * R[d] + 1.0f) * (float)g.O[d] / (float)g.I[d] + 1.0f);
    return box <= fmaxf(16.0f, 4.0f * g.segments * (float)g.OP / (float)g.IP);
}

// The plane scan (indices far from any window): thread e owns slice (e mod segments)
// of plane (e / segments): it zeroes it, then makes one pass over the plane's outputs
// in order.
template <class T>
__device__ __forceinline__ void max_bwd_segments(const T* __restrict__ gy,
                                                 const long long* __restrict__ idx,
                                                 T* __restrict__ gx, const PoolGeo& g) {
    typedef typename AccOf<T>::type Acc;
    const unsigned stride = gridDim.x * blockDim.x;
    const unsigned total = (unsigned)g.NC * (unsigned)g.segments;
    const int seg_len = (g.IP + g.segments - 1) / g.segments;
    for (unsigned e = blockIdx.x * blockDim.x + threadIdx.x; e < total; e += stride) {
        const unsigned plane = e / (unsigned)g.segments;
        const int lo = (int)(e - plane * (unsigned)g.segments) * seg_len;
        const int hi = imin(lo + seg_len, g.IP);
        const long long* ip = idx + (size_t)plane * (unsigned)g.OP;
        const T* gyp = gy + (size_t)plane * (unsigned)g.OP;
        T* gxp = gx + (size_t)plane * (unsigned)g.IP;
        for (int c = lo; c < hi; ++c) gxp[c] = T(0);
        for (int o = 0; o < g.OP; ++o) {
            long long c = ip[o];
            if (c >= lo && c < hi) gxp[c] = T(Acc(gxp[c]) + Acc(gyp[o]));
        }
    }
}


// Input cells per thread along the last dim in the gather: the run's candidate
// outputs (the union of its cells' boxes) are read once, and the index decoding and
// box arithmetic are shared by the run. 4 measured faster than 8 here (an H100, 2-D
// 3x3/2: 176 vs 213 us); pool_launch.py reads it (MAX_BWD_RUN) to size the grid.
#define MPB_RUN 4  // the accumulation below is written for 4

template <class T>
__global__ void POOL_BOUNDS
max_pool_bwd(const T* __restrict__ gy, const long long* __restrict__ idx, T* __restrict__ gx,
             const int* __restrict__ reach, const int* __restrict__ geo) {
    typedef typename AccOf<T>::type Acc;
    PoolGeo g;
    g.load(geo);
    const int R[3] = {reach[0], reach[1], reach[2]};
    if (!max_bwd_use_box(g, R)) {
        max_bwd_segments(gy, idx, gx, g);
        return;
    }
    const unsigned stride = gridDim.x * blockDim.x;
    // Thread element e: run (e mod chunks) of row (e / chunks), rows over
    // (plane, i0, i1) and runs of MPB_RUN cells along i2.
    FastDiv dch;
    dch.load(geo, PG_MCH, PG_HCH);
    const int I2 = g.I[2];
    const unsigned chunks = (unsigned)((I2 + MPB_RUN - 1) / MPB_RUN);
    const unsigned total = (unsigned)g.NC * (unsigned)(g.I[0] * g.I[1]) * chunks;
    for (unsigned e = blockIdx.x * blockDim.x + threadIdx.x; e < total; e += stride) {
        const RunPos rp = run_position(g, dch, e, chunks, MPB_RUN);
        const unsigned plane = rp.plane;
        const int i0 = rp.i0, i1 = rp.i1, c0 = rp.c0, n = rp.n;
        const int lo0 = reach_lo(i0 - R[0], g.I[0], g.O[0], g.dI[0]);
        const int hi0 = reach_hi((long long)i0 + R[0], g.I[0], g.O[0], g.dI[0]);
        const int lo1 = reach_lo(i1 - R[1], g.I[1], g.O[1], g.dI[1]);
        const int hi1 = reach_hi((long long)i1 + R[1], g.I[1], g.O[1], g.dI[1]);
        const int lo2 = reach_lo(c0 - R[2], I2, g.O[2], g.dI[2]);
        const int hi2 = reach_hi((long long)c0 + n - 1 + R[2], I2, g.O[2], g.dI[2]);
        const int base = (i0 * g.I[1] + i1) * I2 + c0;  // in-plane offset of the run
        const long long* ip = idx + (size_t)plane * (unsigned)g.OP;
        const T* gyp = gy + (size_t)plane * (unsigned)g.OP;
        // Each cell's sum runs over its outputs in increasing flat order.
        Acc acc[MPB_RUN];
#pragma unroll
        for (int u = 0; u < MPB_RUN; ++u) acc[u] = Acc(0);
        for (int o0 = lo0; o0 <= hi0; ++o0) {
            for (int o1 = lo1; o1 <= hi1; ++o1) {
                const int orow = (o0 * g.O[1] + o1) * g.O[2];
                // Chunks of 4 candidates: their loads issue together (predicated
                // at the end of the range), then the matches add up in order.
                for (int o2 = lo2; o2 <= hi2; o2 += 4) {
                    unsigned c[4];
                    T v[4];
#pragma unroll
                    for (int u = 0; u < 4; ++u) {
                        const bool in = o2 + u <= hi2;
                        // Indices lie in [0, IP) (checked by the API): int arithmetic.
                        c[u] = in ? (unsigned)((int)ip[orow + o2 + u] - base) : ~0u;
                        v[u] = in ? gyp[orow + o2 + u] : T(0.0f);
                    }
#pragma unroll
                    for (int u = 0; u < 4; ++u) {
                        const Acc w = Acc(v[u]);
                        // (The form of the fastest variant measured on an H100.)
                        if (c[u] == 0) acc[0] += w;
                        else if (c[u] == 1) acc[1] += w;
                        else if (c[u] == 2) acc[2] += w;
                        else if (c[u] == 3) acc[3] += w;
                    }
                }
            }
        }
        T* out = gx + (size_t)plane * (unsigned)g.IP + base;
        store_run<MPB_RUN>(out, n, acc);
    }
}

template <class T>
__global__ void POOL_BOUNDS
max_pool_bwd_scatter(const T* __restrict__ gy, const long long* __restrict__ idx,
                     T* __restrict__ gx, const int* __restrict__ reach,
                     const int* __restrict__ geo) {
    typedef typename AccOf<T>::type Acc;
    PoolGeo g;
    g.load(geo);
    const int R[3] = {reach[0], reach[1], reach[2]};
    if (!max_bwd_use_box(g, R)) {
        max_bwd_segments(gy, idx, gx, g);
        return;
    }
    const unsigned total = (unsigned)g.NC * (unsigned)g.OP;
    for (unsigned e = blockIdx.x * blockDim.x + threadIdx.x; e < total;
         e += gridDim.x * blockDim.x) {
        const unsigned plane = g.dOP(e);
        const int r = (int)(e - plane * (unsigned)g.OP);
        const long long* ip = idx + (size_t)plane * (unsigned)g.OP;
        const T* gyp = gy + (size_t)plane * (unsigned)g.OP;
        const int target = (int)ip[r];  // in [0, IP): checked by the API
        int i[3], lo[3], hi[3];
        pool_decode((unsigned)target, g.I, g.dI, i);
        for (int d = 0; d < 3; ++d) {
            lo[d] = reach_lo(i[d] - R[d], g.I[d], g.O[d], g.dI[d]);
            hi[d] = reach_hi((long long)i[d] + R[d], g.I[d], g.O[d], g.dI[d]);
        }
        Acc acc = Acc(0);
        bool first = true;  // no output before r points at target
        for (int o0 = lo[0]; o0 <= hi[0] && first; ++o0) {
            for (int o1 = lo[1]; o1 <= hi[1] && first; ++o1) {
                const int orow = (o0 * g.O[1] + o1) * g.O[2];
                for (int o2 = lo[2]; o2 <= hi[2]; ++o2) {
                    const int oc = orow + o2;
                    if ((int)ip[oc] != target) continue;
                    if (oc < r) {
                        first = false;
                        break;
                    }
                    acc += Acc(gyp[oc]);
                }
            }
        }
        if (first) gx[(size_t)plane * (unsigned)g.IP + target] = T(acc);
    }
}
