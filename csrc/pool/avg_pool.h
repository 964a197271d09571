// Average pooling and its gradient.
// A part of the per-ISA kernels, in namespace cnnfast::CNNFAST_KNS: included by
// kernels_impl.h (compiled once per ISA, see there), not on its own.
#pragma once

#include "kernels.h"
#include "common/denormal.h"
#include "common/index.h"
#include "common/scratch.h"
#include "common/simd.h"

namespace cnnfast {
namespace CNNFAST_KNS {

// Pooling planes are independent; see pool/max_pool.h for the sweep order.

// Row o in [a, e): acc[o] += xs[o*sx] (gather) or, SCATTER, xs[o*sx] += acc[o].
// Strides 1 and 2 are constants so that the vectoriser deinterleaves instead of
// using gathers.
template <class T, int SX, bool SCATTER>
static inline void strided_add(T* acc, T* xs_, long a, long e, long sx_rt) {
    const long sx = SX ? SX : sx_rt;
    if (SCATTER) {
        for (long o = a; o < e; ++o) xs_[o * sx] += acc[o];
    } else {
        for (long o = a; o < e; ++o) acc[o] += xs_[o * sx];
    }
}
template <class T, int SX, bool SCATTER>
static inline void strided_add(T* acc, const T* xs, long a, long e, long sx_rt) {
    strided_add<T, SX, SCATTER>(acc, const_cast<T*>(xs), a, e, sx_rt);
}

template <class T>
static inline T divisor_at(const double* cz, const double* cy, const double* cx, double ov,
                           long oz, long oy, long ox) {
    if (ov > 0) return T(ov);
    return T(cz[oz]) * T(cy[oy]) * T(cx[ox]);
}

// Global pooling: one output whose window is the whole plane, unpadded and undilated.
static inline bool whole_plane_window(const PoolGeo& g) {
    if (g.Pout() != 1) return false;
    for (int d = 0; d < 3; ++d)
        if (g.lo[d] != 0 || g.k[d] != g.in[d] || g.d[d] != 1) return false;
    return true;
}

// Sum of a contiguous run: vector partial sums (a single running sum is a chain of
// dependent adds), their lanes in a fixed order, then the scalar tail. The partial
// sums live in registers: folding the tail into them (an array indexed at run time)
// kept them in memory, and the global pooling of 4096 planes of 49 ran 1.6x slower.
template <class T>
static inline T sum_run(const T* p, long n) {
    constexpr int L = DV<T>::L;
    typename DV<T>::v part = dsplat<T>(T(0));
    long i = 0;
    for (; i + L <= n; i += L) part += dload<T>(p + i);
    T tail = T(0);
    for (; i < n; ++i) tail += p[i];
    return dhsum<T>(part) + tail;
}

// Global pooling: the sums, then one vectorised division pass over each thread's
// planes (the same static schedule, so nowait is safe). Dividing plane by plane in
// the first loop cost ~1/3 of the kernel (8x512x7x7: 30 -> 20 us on one thread).
template <class T>
static void global_avg_pool(const PoolGeo& g, const T* x, T div, T* y, int nt) {
    const long Pin = g.Pin();
#pragma omp parallel num_threads(nt)
    {
        DenormalGuard fp;
#pragma omp for schedule(static) nowait
        for (long pl = 0; pl < g.planes; ++pl) y[pl] = sum_run<T>(x + pl * Pin, Pin);
#pragma omp for schedule(static)
        for (long pl = 0; pl < g.planes; ++pl) y[pl] /= div;
    }
}

template <class T>
static void avg_pool(const PoolGeo& g, const T* x, const double* cz, const double* cy,
                     const double* cx, double ov, T* y, int nt) {
    if (whole_plane_window(g))
        return global_avg_pool<T>(g, x, divisor_at<T>(cz, cy, cx, ov, 0, 0, 0), y, nt);
    const long Pin = g.Pin(), Pout = g.Pout(), W = g.out[2];
#pragma omp parallel num_threads(nt)
    {
        DenormalGuard fp;
#pragma omp for schedule(static)
        for (long pl = 0; pl < g.planes; ++pl) {
            const T* xp = x + pl * Pin;
            for (long oz = 0; oz < g.out[0]; ++oz)
                for (long oy = 0; oy < g.out[1]; ++oy) {
                    T* acc = y + pl * Pout + (oz * g.out[1] + oy) * W;
                    fill<T>(acc, W, T(0));
                    for (long kz = 0; kz < g.k[0]; ++kz) {
                        const long iz = oz * g.s[0] + kz * g.d[0] - g.lo[0];
                        if (iz < 0 || iz >= g.in[0]) continue;
                        for (long ky = 0; ky < g.k[1]; ++ky) {
                            const long iy = oy * g.s[1] + ky * g.d[1] - g.lo[1];
                            if (iy < 0 || iy >= g.in[1]) continue;
                            const T* xr = xp + (iz * g.in[1] + iy) * g.in[2];
                            if (W == 1 && g.d[2] == 1) {
                                // One output per row (global pooling): the row's taps are
                                // contiguous; a per-tap loop would cost more than the adds.
                                const long a = 0;  // the only window starts at -lo <= 0
                                const long e = g.k[2] - g.lo[2] < g.in[2] ? g.k[2] - g.lo[2] : g.in[2];
                                T sum = T(0);
                                for (long i = a; i < e; ++i) sum += xr[i];
                                acc[0] += sum;
                                continue;
                            }
                            for (long kx = 0; kx < g.k[2]; ++kx) {
                                const long off = kx * g.d[2] - g.lo[2];
                                long a, e;
                                valid_range(W, g.s[2], off, g.in[2], a, e);
                                const long sx = g.s[2];
                                if (sx == 1)
                                    strided_add<T, 1, false>(acc, xr + off, a, e, 1);
                                else if (sx == 2)
                                    strided_add<T, 2, false>(acc, xr + off, a, e, 2);
                                else
                                    strided_add<T, 0, false>(acc, xr + off, a, e, sx);
                            }
                        }
                    }
                    for (long o = 0; o < W; ++o) acc[o] /= divisor_at<T>(cz, cy, cx, ov, oz, oy, o);
                }
        }
    }
}

template <class T>
static void avg_pool_bwd(const PoolGeo& g, const T* gy, const double* cz, const double* cy,
                         const double* cx, double ov, T* gx, int nt) {
    const long Pin = g.Pin(), Pout = g.Pout(), W = g.out[2];
    const bool global = whole_plane_window(g);
#pragma omp parallel num_threads(nt)
    {
        DenormalGuard fp;
        T* gr = tscratch<T>(kAvgPoolRow, W);
#pragma omp for schedule(static)
        for (long pl = 0; pl < g.planes; ++pl) {
            T* xp = gx + pl * Pin;
            if (global) {  // every cell gets the one output's share
                fill<T>(xp, Pin, gy[pl] / divisor_at<T>(cz, cy, cx, ov, 0, 0, 0));
                continue;
            }
            fill<T>(xp, Pin, T(0));
            for (long oz = 0; oz < g.out[0]; ++oz)
                for (long oy = 0; oy < g.out[1]; ++oy) {
                    const T* yr = gy + pl * Pout + (oz * g.out[1] + oy) * W;
                    for (long o = 0; o < W; ++o)
                        gr[o] = yr[o] / divisor_at<T>(cz, cy, cx, ov, oz, oy, o);
                    for (long kz = 0; kz < g.k[0]; ++kz) {
                        const long iz = oz * g.s[0] + kz * g.d[0] - g.lo[0];
                        if (iz < 0 || iz >= g.in[0]) continue;
                        for (long ky = 0; ky < g.k[1]; ++ky) {
                            const long iy = oy * g.s[1] + ky * g.d[1] - g.lo[1];
                            if (iy < 0 || iy >= g.in[1]) continue;
                            T* xr = xp + (iz * g.in[1] + iy) * g.in[2];
                            if (W == 1 && g.d[2] == 1) {  // global pooling, as forward
                                const long a = 0;  // the only window starts at -lo <= 0
                                const long e = g.k[2] - g.lo[2] < g.in[2] ? g.k[2] - g.lo[2] : g.in[2];
                                for (long i = a; i < e; ++i) xr[i] += gr[0];
                                continue;
                            }
                            for (long kx = 0; kx < g.k[2]; ++kx) {
                                const long off = kx * g.d[2] - g.lo[2];
                                long a, e;
                                valid_range(W, g.s[2], off, g.in[2], a, e);
                                const long sx = g.s[2];
                                if (sx == 1)
                                    strided_add<T, 1, true>(gr, xr + off, a, e, 1);
                                else if (sx == 2)
                                    strided_add<T, 2, true>(gr, xr + off, a, e, 2);
                                else
                                    strided_add<T, 0, true>(gr, xr + off, a, e, sx);
                            }
                        }
                    }
                }
        }
    }
}

}  // namespace CNNFAST_KNS
}  // namespace cnnfast
