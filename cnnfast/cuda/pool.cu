// pool.cu -- max and average pooling kernels of cnnfast (forward and backward).
//
// One thread per output element (forward) or input element (average backward), the
// flat index running fastest along the last spatial dim so that a warp reads and
// writes consecutive addresses. Backward passes gather instead of scattering with
// atomics: the results do not depend on scheduling (bit-reproducible).
#include "common.cuh"

struct PoolGeo {
    int NC;
    int I[3], O[3], K[3], S[3], P[3], Q[3], D[3];
    int include_pad, divisor, segments;
    int IP, OP;

    __device__ __forceinline__ void load(const int* g) {
        NC = g[PG_NC];
        for (int d = 0; d < 3; ++d) {
            I[d] = g[PG_I0 + d]; O[d] = g[PG_O0 + d]; K[d] = g[PG_K0 + d];
            S[d] = g[PG_S0 + d]; P[d] = g[PG_P0 + d]; Q[d] = g[PG_Q0 + d];
            D[d] = g[PG_D0 + d];
        }
        include_pad = g[PG_INCLUDE_PAD]; divisor = g[PG_DIVISOR]; segments = g[PG_SEGMENTS];
        IP = I[0] * I[1] * I[2];
        OP = O[0] * O[1] * O[2];
    }
};

__device__ __forceinline__ void pool_decode(int flat, const int* ext, int* a) {
    a[2] = flat % ext[2];
    flat /= ext[2];
    a[1] = flat % ext[1];
    a[0] = flat / ext[1];
}

// Average-pool divisor of output `o`: divisor_override, else the product over dims of
// the taps inside input-plus-padding (count_include_pad; the ceil_mode overhang past
// the trailing padding does not count) or inside the input.
__device__ __forceinline__ int pool_divisor(const PoolGeo& g, const int* o) {
    if (g.divisor > 0) return g.divisor;
    int div = 1;
    for (int d = 0; d < 3; ++d) {
        int start = o[d] * g.S[d] - g.P[d];
        int lo = g.include_pad ? -g.P[d] : 0;
        int hi = g.include_pad ? g.I[d] + g.Q[d] : g.I[d];
        int cnt = 0;
        for (int t = 0; t < g.K[d]; ++t) {
            int c = start + t * g.D[d];
            cnt += (c >= lo && c < hi) ? 1 : 0;
        }
        div *= cnt;
    }
    return div;
}

// Max pooling: scan order is the window's row-major tap order; the first maximum wins
// ties; NaN wins and the first NaN gives the index; a window of only -inf gives its
// first in-bounds cell. Indices are flat offsets into the (n, c) plane.
template <class T>
__global__ void __launch_bounds__(256)
max_pool_fwd(const T* __restrict__ x, T* __restrict__ y, long long* __restrict__ idx,
             const int* __restrict__ geo, int with_indices) {
    PoolGeo g;
    g.load(geo);
    const long long total = (long long)g.NC * g.OP;
    for (long long e = (long long)blockIdx.x * blockDim.x + threadIdx.x; e < total;
         e += (long long)gridDim.x * blockDim.x) {
        long long plane = e / g.OP;
        int o[3];
        pool_decode((int)(e % g.OP), g.O, o);
        const T* xp = x + plane * g.IP;
        T best = T(0);
        int best_i = -1;
        bool best_nan = false;
        for (int t0 = 0; t0 < g.K[0]; ++t0) {
            int i0 = o[0] * g.S[0] - g.P[0] + t0 * g.D[0];
            if (i0 < 0 || i0 >= g.I[0]) continue;
            for (int t1 = 0; t1 < g.K[1]; ++t1) {
                int i1 = o[1] * g.S[1] - g.P[1] + t1 * g.D[1];
                if (i1 < 0 || i1 >= g.I[1]) continue;
                for (int t2 = 0; t2 < g.K[2]; ++t2) {
                    int i2 = o[2] * g.S[2] - g.P[2] + t2 * g.D[2];
                    if (i2 < 0 || i2 >= g.I[2]) continue;
                    int flat = (i0 * g.I[1] + i1) * g.I[2] + i2;
                    T v = xp[flat];
                    bool v_nan = v != v;
                    if (best_i < 0 || (!best_nan && (v_nan || v > best))) {
                        best = v;
                        best_i = flat;
                        best_nan = v_nan;
                    }
                }
            }
        }
        y[e] = best;
        if (with_indices) idx[e] = best_i;
    }
}

// Max-pool backward from indices alone (no window geometry): each thread owns one of
// `segments` contiguous slices of an input plane, zeroes it, then scans the plane's
// outputs in order and adds those whose index falls in its slice. No atomics, and
// every input cell sums its contributions in output scan order: deterministic.
template <class T>
__global__ void __launch_bounds__(256)
max_pool_bwd(const T* __restrict__ gy, const long long* __restrict__ idx, T* __restrict__ gx,
             const int* __restrict__ geo) {
    typedef typename AccOf<T>::type Acc;
    PoolGeo g;
    g.load(geo);
    const int segs = g.segments;
    const int seg_len = (g.IP + segs - 1) / segs;
    const long long total = (long long)g.NC * segs;
    for (long long e = (long long)blockIdx.x * blockDim.x + threadIdx.x; e < total;
         e += (long long)gridDim.x * blockDim.x) {
        long long plane = e / segs;
        int lo = (int)(e % segs) * seg_len;
        int hi = imin(lo + seg_len, g.IP);
        T* gxp = gx + plane * g.IP;
        for (int i = lo; i < hi; ++i) gxp[i] = T(0);
        const long long* ip = idx + plane * g.OP;
        const T* gyp = gy + plane * g.OP;
        for (int o = 0; o < g.OP; ++o) {
            long long i = ip[o];
            if (i >= lo && i < hi) gxp[i] = T(Acc(gxp[i]) + Acc(gyp[o]));
        }
    }
}

template <class T>
__global__ void __launch_bounds__(256)
avg_pool_fwd(const T* __restrict__ x, T* __restrict__ y, const int* __restrict__ geo) {
    typedef typename AccOf<T>::type Acc;
    PoolGeo g;
    g.load(geo);
    const long long total = (long long)g.NC * g.OP;
    for (long long e = (long long)blockIdx.x * blockDim.x + threadIdx.x; e < total;
         e += (long long)gridDim.x * blockDim.x) {
        long long plane = e / g.OP;
        int o[3];
        pool_decode((int)(e % g.OP), g.O, o);
        const T* xp = x + plane * g.IP;
        Acc s = Acc(0);
        for (int t0 = 0; t0 < g.K[0]; ++t0) {
            int i0 = o[0] * g.S[0] - g.P[0] + t0 * g.D[0];
            if (i0 < 0 || i0 >= g.I[0]) continue;
            for (int t1 = 0; t1 < g.K[1]; ++t1) {
                int i1 = o[1] * g.S[1] - g.P[1] + t1 * g.D[1];
                if (i1 < 0 || i1 >= g.I[1]) continue;
                for (int t2 = 0; t2 < g.K[2]; ++t2) {
                    int i2 = o[2] * g.S[2] - g.P[2] + t2 * g.D[2];
                    if (i2 < 0 || i2 >= g.I[2]) continue;
                    s += Acc(xp[(i0 * g.I[1] + i1) * g.I[2] + i2]);
                }
            }
        }
        y[e] = T(s / Acc(pool_divisor(g, o)));
    }
}

// Average-pool backward as a gather: input cell i receives gy[o] / divisor(o) from
// every output o whose window holds it, i.e. o*s - pad + t*d == i for some tap t.
template <class T>
__global__ void __launch_bounds__(256)
avg_pool_bwd(const T* __restrict__ gy, T* __restrict__ gx, const int* __restrict__ geo) {
    typedef typename AccOf<T>::type Acc;
    PoolGeo g;
    g.load(geo);
    const long long total = (long long)g.NC * g.IP;
    for (long long e = (long long)blockIdx.x * blockDim.x + threadIdx.x; e < total;
         e += (long long)gridDim.x * blockDim.x) {
        long long plane = e / g.IP;
        int i[3];
        pool_decode((int)(e % g.IP), g.I, i);
        const T* gyp = gy + plane * g.OP;
        Acc s = Acc(0);
        int o[3];
        for (int t0 = 0; t0 < g.K[0]; ++t0) {
            int n0 = i[0] + g.P[0] - t0 * g.D[0];
            if (n0 < 0 || n0 % g.S[0]) continue;
            o[0] = n0 / g.S[0];
            if (o[0] >= g.O[0]) continue;
            for (int t1 = 0; t1 < g.K[1]; ++t1) {
                int n1 = i[1] + g.P[1] - t1 * g.D[1];
                if (n1 < 0 || n1 % g.S[1]) continue;
                o[1] = n1 / g.S[1];
                if (o[1] >= g.O[1]) continue;
                for (int t2 = 0; t2 < g.K[2]; ++t2) {
                    int n2 = i[2] + g.P[2] - t2 * g.D[2];
                    if (n2 < 0 || n2 % g.S[2]) continue;
                    o[2] = n2 / g.S[2];
                    if (o[2] >= g.O[2]) continue;
                    s += Acc(gyp[(o[0] * g.O[1] + o[1]) * g.O[2] + o[2]]) /
                         Acc(pool_divisor(g, o));
                }
            }
        }
        gx[e] = T(s);
    }
}
