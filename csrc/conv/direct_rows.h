// The generic direct row kernels (path direct-rows): any one-channel-per-group
// convolution, 1-d to 3-d.
// A part of the per-ISA kernels, in namespace cnnfast::CNNFAST_KNS: included by
// kernels_impl.h (compiled once per ISA, see there), not on its own.
#pragma once

#include "kernels.h"
#include "common/activation.h"
#include "common/denormal.h"
#include "common/index.h"
#include "common/scratch.h"

namespace cnnfast {
namespace CNNFAST_KNS {

template <class T>
static void direct_fwd_rows(const ConvGeo& g, const T* x, const T* w, const T* b, T* y, int nt) {
    const long items = g.N * g.O;
#pragma omp parallel num_threads(nt)
    {
        DenormalGuard fp;
#pragma omp for schedule(static)
        for (long it = 0; it < items; ++it) {
            const long n = it / g.O, oc = it % g.O;
            const long c = oc / g.og;  // the group's only input channel
            const T* xp = x + (n * g.C + c) * g.Pin;
            const T* wv = w + oc * g.T;
            T* yp = y + it * g.Pout;
            const T bias = b ? b[oc] : T(0);
            for (long oz = 0; oz < g.out[0]; ++oz)
                for (long oy = 0; oy < g.out[1]; ++oy) {
                    T* yr = yp + (oz * g.out[1] + oy) * g.out[2];
                    fill<T>(yr, g.out[2], bias);
                    for (long kz = 0; kz < g.k[0]; ++kz) {
                        const long iz = oz * g.s[0] + kz * g.d[0] - g.lo[0];
                        if (iz < 0 || iz >= g.in[0]) continue;
                        for (long ky = 0; ky < g.k[1]; ++ky) {
                            const long iy = oy * g.s[1] + ky * g.d[1] - g.lo[1];
                            if (iy < 0 || iy >= g.in[1]) continue;
                            const T* xr = xp + (iz * g.in[1] + iy) * g.in[2];
                            const T* wr = wv + (kz * g.k[1] + ky) * g.k[2];
                            for (long kx = 0; kx < g.k[2]; ++kx) {
                                const long off = kx * g.d[2] - g.lo[2];
                                long a, e;
                                valid_range(g.out[2], g.s[2], off, g.in[2], a, e);
                                const T wt = wr[kx];
                                if (g.s[2] == 1) {
                                    const T* xs = xr + off;
                                    for (long o = a; o < e; ++o) yr[o] += wt * xs[o];
                                } else {
                                    const long sx = g.s[2];
                                    for (long o = a; o < e; ++o) yr[o] += wt * xr[o * sx + off];
                                }
                            }
                        }
                    }
                    act_row<T>(yr, g.out[2], g.act, (T)g.slope);  // the row is final
                }
        }
    }
}

template <class T>
static void direct_bwd_data_rows(const ConvGeo& g, const T* gy, const T* w, const T* b, T* gx,
                            int nt) {
    const long items = g.N * g.C;
#pragma omp parallel num_threads(nt)
    {
        DenormalGuard fp;
#pragma omp for schedule(static)
        for (long it = 0; it < items; ++it) {
            const long n = it / g.C, c = it % g.C;  // c is also the group (cg == 1)
            T* xp = gx + it * g.Pin;
            fill<T>(xp, g.Pin, b ? b[c] : T(0));
            for (long oc = c * g.og; oc < (c + 1) * g.og; ++oc) {
                const T* yp = gy + (n * g.O + oc) * g.Pout;
                const T* wv = w + oc * g.T;
                for (long oz = 0; oz < g.out[0]; ++oz)
                    for (long oy = 0; oy < g.out[1]; ++oy) {
                        const T* yr = yp + (oz * g.out[1] + oy) * g.out[2];
                        for (long kz = 0; kz < g.k[0]; ++kz) {
                            const long iz = oz * g.s[0] + kz * g.d[0] - g.lo[0];
                            if (iz < 0 || iz >= g.in[0]) continue;
                            for (long ky = 0; ky < g.k[1]; ++ky) {
                                const long iy = oy * g.s[1] + ky * g.d[1] - g.lo[1];
                                if (iy < 0 || iy >= g.in[1]) continue;
                                T* xr = xp + (iz * g.in[1] + iy) * g.in[2];
                                const T* wr = wv + (kz * g.k[1] + ky) * g.k[2];
                                for (long kx = 0; kx < g.k[2]; ++kx) {
                                    const long off = kx * g.d[2] - g.lo[2];
                                    long a, e;
                                    valid_range(g.out[2], g.s[2], off, g.in[2], a, e);
                                    const T wt = wr[kx];
                                    if (g.s[2] == 1) {
                                        T* xs = xr + off;
                                        for (long o = a; o < e; ++o) xs[o] += wt * yr[o];
                                    } else {
                                        const long sx = g.s[2];
                                        for (long o = a; o < e; ++o) xr[o * sx + off] += wt * yr[o];
                                    }
                                }
                            }
                        }
                    }
            }
            act_row<T>(xp, g.Pin, g.act, (T)g.slope);  // the plane is final
        }
    }
}

template <class T>
static void direct_bwd_weight_rows(const ConvGeo& g, const T* x, const T* gy, T* gw, int nt) {
    // One work item per output channel: every tap keeps 8 partial sums over all of
    // (n, rows, x) -- a fixed order set by the code -- reduced once at the end.
#pragma omp parallel num_threads(nt)
    {
        DenormalGuard fp;
        T* acc = tscratch<T>(kRowsTapSums, g.T * 8);
#pragma omp for schedule(dynamic, 1)
        for (long oc = 0; oc < g.O; ++oc) {
            const long c = oc / g.og;
            fill<T>(acc, g.T * 8, T(0));
            for (long n = 0; n < g.N; ++n) {
                const T* xp = x + (n * g.C + c) * g.Pin;
                const T* yp = gy + (n * g.O + oc) * g.Pout;
                for (long oz = 0; oz < g.out[0]; ++oz)
                    for (long oy = 0; oy < g.out[1]; ++oy) {
                        const T* yr = yp + (oz * g.out[1] + oy) * g.out[2];
                        for (long kz = 0; kz < g.k[0]; ++kz) {
                            const long iz = oz * g.s[0] + kz * g.d[0] - g.lo[0];
                            if (iz < 0 || iz >= g.in[0]) continue;
                            for (long ky = 0; ky < g.k[1]; ++ky) {
                                const long iy = oy * g.s[1] + ky * g.d[1] - g.lo[1];
                                if (iy < 0 || iy >= g.in[1]) continue;
                                const T* xr = xp + (iz * g.in[1] + iy) * g.in[2];
                                for (long kx = 0; kx < g.k[2]; ++kx) {
                                    const long off = kx * g.d[2] - g.lo[2];
                                    long a, e;
                                    valid_range(g.out[2], g.s[2], off, g.in[2], a, e);
                                    T* ar = acc + ((kz * g.k[1] + ky) * g.k[2] + kx) * 8;
                                    long o = a;
                                    if (g.s[2] == 1) {
                                        const T* xs = xr + off;
                                        for (; o + 8 <= e; o += 8)
                                            for (int j = 0; j < 8; ++j) ar[j] += yr[o + j] * xs[o + j];
                                    }
                                    const long sx = g.s[2];
                                    for (long j = 0; o < e; ++o, ++j) ar[j & 7] += yr[o] * xr[o * sx + off];
                                }
                            }
                        }
                    }
            }
            for (long t = 0; t < g.T; ++t) {
                const T* ar = acc + t * 8;
                gw[oc * g.T + t] = ((ar[0] + ar[4]) + (ar[1] + ar[5])) + ((ar[2] + ar[6]) + (ar[3] + ar[7]));
            }
        }
    }
}

}  // namespace CNNFAST_KNS
}  // namespace cnnfast
