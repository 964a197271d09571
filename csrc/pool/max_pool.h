// Max pooling and its gradient (scatter to the recorded indices).
// A part of the per-ISA kernels, in namespace cnnfast::CNNFAST_KNS: included by
// kernels_impl.h (compiled once per ISA, see there), not on its own.
#pragma once

#include "kernels.h"
#include "common/denormal.h"
#include "common/index.h"
#include "common/scratch.h"

namespace cnnfast {
namespace CNNFAST_KNS {

// Each plane is independent; windows are swept tap by tap over a whole output row,
// so every output sees its taps in scan order (z, y, x) as the API requires.

// Max over one output row: taps in scan order, branchless updates (vectorised along
// the row). With indices the rule is: take the first in-bounds cell, then any larger
// value, then the first NaN (a NaN already held never loses); the winner is kept as
// a tap number (32-bit, like the value, so both vectorise) and turned into a flat
// offset at the end. Without indices: start at -inf, take larger values and NaNs.
template <class T, bool IDX, int SX>
static inline void max_taps(const T* xs, long a, long e, long sx_rt, std::int32_t t, T* best,
                            std::int32_t* tap) {
    const long sx = SX ? SX : sx_rt;
    if (IDX) {
        for (long o = a; o < e; ++o) {
            const T v = xs[o * sx];
            const T bv = best[o];
            const std::int32_t bt = tap[o];
            const bool take = (bt < 0) | (v > bv) | ((v != v) & (bv == bv));
            best[o] = take ? v : bv;
            tap[o] = take ? t : bt;
        }
    } else {
        for (long o = a; o < e; ++o) {
            const T v = xs[o * sx], bv = best[o];
            best[o] = ((v > bv) | (v != v)) ? v : bv;
        }
    }
}

// Outputs c0 .. c1-1 of one output row (best, tap and bidx point at the row's start).
template <class T, bool IDX>
static inline void max_row(const PoolGeo& g, const T* xp, long oz, long oy, T* best,
                           std::int32_t* tap, const long* toff, std::int64_t* bidx,
                           long c0, long c1) {
    const long W = g.out[2], sx = g.s[2];
    for (long o = c0; o < c1; ++o) best[o] = -__builtin_huge_val();
    if (IDX)
        for (long o = c0; o < c1; ++o) tap[o] = -1;
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
                valid_range(W, sx, off, g.in[2], a, e);
                a = imax(a, c0);
                e = imin(e, c1);
                if (a < e) {
                    CNN_CHECK("max_pool", a * sx + off, g.in[2]);
                    CNN_CHECK("max_pool", (e - 1) * sx + off, g.in[2]);
                }
                const std::int32_t t = (std::int32_t)((kz * g.k[1] + ky) * g.k[2] + kx);
                // strides 1 and 2 as constants: contiguous or deinterleaving loads
                // (a runtime stride would make the vectoriser use slow gathers)
                if (sx == 1)
                    max_taps<T, IDX, 1>(xr + off, a, e, 1, t, best, tap);
                else if (sx == 2)
                    max_taps<T, IDX, 2>(xr + off, a, e, 2, t, best, tap);
                else
                    max_taps<T, IDX, 0>(xr + off, a, e, sx, t, best, tap);
            }
        }
    }
    if (IDX) {
        // flat offset = base(oz, oy) + o*sx + toff[tap] (linear in the tap's offsets)
        const long base = ((oz * g.s[0] - g.lo[0]) * g.in[1] + (oy * g.s[1] - g.lo[1])) * g.in[2]
                          - g.lo[2];
        for (long o = c0; o < c1; ++o) {
            CNN_CHECK("max_pool tap", tap[o], g.k[0] * g.k[1] * g.k[2]);
            bidx[o] = (std::int64_t)(base + o * sx + toff[tap[o]]);
        }
    }
}

// The common small windows (KxK, K = 2 or 3, stride 1 or 2 along the row, no dilation;
// 2-d, or 3-d with a depth window of 1) on a row whose windows lie inside the input:
// every tap of an output in one pass, the taps of a window unrolled, so a row costs
// one vectorised loop instead of an initialisation, a pass per tap over the row's
// running maxima and an index pass (rows of a small plane -- 13 outputs in the seed
// CNN's pooling -- spent most of their time in those loops' setup and scalar tails:
// 3x faster there). The same rules and tap order as max_taps, so the results are the
// general path's, bit for bit.
template <class T, bool IDX, int K, int SX>
static inline void max_row_fixed(const T* xr, long W_in, long W, long base, T* yr,
                                 std::int64_t* ir, std::int32_t* tapr) {
    for (long o = 0; o < W; ++o) {
        const T* p = xr + o * SX;
        T best = p[0];
        bool held_nan = best != best;  // max_taps' (bv == bv) kept apart: GCC 12 does
        std::int32_t tap = 0;          // not vectorise the loop with it inline
        for (int ky = 0; ky < K; ++ky)
            for (int kx = 0; kx < K; ++kx) {
                if (ky == 0 && kx == 0) continue;
                const T v = p[ky * W_in + kx];
                if (IDX) {
                    const bool nan = v != v;
                    const bool take = (!held_nan) & ((v > best) | nan);
                    held_nan = held_nan | nan;
                    best = take ? v : best;
                    tap = take ? ky * K + kx : tap;
                } else {
                    best = ((v > best) | (v != v)) ? v : best;
                }
            }
        yr[o] = best;
        if (IDX) tapr[o] = tap;
    }
    if (IDX)  // apart: 32-bit taps vectorise with the values, 64-bit offsets do not
        for (long o = 0; o < W; ++o)
            ir[o] = (std::int64_t)(base + o * SX + (tapr[o] / K) * W_in + tapr[o] % K);
}

// Whether the rows of ``g`` can take max_row_fixed (its K and stride) where their
// windows lie inside the input.
static inline bool fixed_window(const PoolGeo& g, int K, int SX) {
    return g.k[0] == 1 && g.k[1] == K && g.k[2] == K && g.s[2] == SX && g.d[1] == 1 &&
           g.d[2] == 1;
}

// A plane by fixed windows: the outputs a .. e-1 of a row whose windows lie inside
// the input take max_row_fixed, the rest (padding, a ceil_mode overhang) max_row.
template <class T, bool IDX, int K, int SX>
static void max_plane_fixed(const PoolGeo& g, const T* xp, T* yp, std::int64_t* ip,
                            const long* toff, std::int32_t* tap) {
    const long W = g.out[2], W_in = g.in[2], lo = g.lo[2];
    long a, e;  // outputs o with 0 <= o*SX - lo and o*SX - lo + K - 1 < W_in
    valid_range(W, SX, -lo, W_in - (K - 1), a, e);
    for (long oz = 0; oz < g.out[0]; ++oz) {
        const long iz = oz * g.s[0] - g.lo[0];  // k[0] == 1: the one depth tap
        for (long oy = 0; oy < g.out[1]; ++oy) {
            const long orow = (oz * g.out[1] + oy) * W;
            T* yr = yp + orow;
            std::int64_t* ir = IDX ? ip + orow : nullptr;
            const long iy = oy * g.s[1] - g.lo[1];
            if (iz < 0 || iz >= g.in[0] || iy < 0 || iy + K > g.in[1] || a >= e) {
                max_row<T, IDX>(g, xp, oz, oy, yr, tap, toff, ir, 0, W);
                continue;
            }
            max_row<T, IDX>(g, xp, oz, oy, yr, tap, toff, ir, 0, a);
            const long base = (iz * g.in[1] + iy) * W_in + a * SX - lo;  // output a's window
            CNN_CHECK("max_pool window", base, g.in[0] * g.in[1] * W_in);
            CNN_CHECK("max_pool window", base + (K - 1) * W_in + (e - a - 1) * SX + K - 1,
                      g.in[0] * g.in[1] * W_in);
            max_row_fixed<T, IDX, K, SX>(xp + base, W_in, e - a, base, yr + a,
                                         IDX ? ir + a : nullptr, tap + a);
            max_row<T, IDX>(g, xp, oz, oy, yr, tap, toff, ir, e, W);
        }
    }
}

template <class T, bool IDX>
static bool max_plane_fast(const PoolGeo& g, const T* xp, T* yp, std::int64_t* ip,
                           const long* toff, std::int32_t* tap) {
    if (fixed_window(g, 2, 2)) max_plane_fixed<T, IDX, 2, 2>(g, xp, yp, ip, toff, tap);
    else if (fixed_window(g, 2, 1)) max_plane_fixed<T, IDX, 2, 1>(g, xp, yp, ip, toff, tap);
    else if (fixed_window(g, 3, 2)) max_plane_fixed<T, IDX, 3, 2>(g, xp, yp, ip, toff, tap);
    else if (fixed_window(g, 3, 1)) max_plane_fixed<T, IDX, 3, 1>(g, xp, yp, ip, toff, tap);
    else return false;
    return true;
}

template <class T>
static void max_pool(const PoolGeo& g, const T* x, T* y, std::int64_t* idx, int nt) {
    const long Pin = g.Pin(), Pout = g.Pout(), W = g.out[2];
#pragma omp parallel num_threads(nt)
    {
        DenormalGuard fp;
        std::int32_t* tap = tscratch<std::int32_t>(kMaxPoolTaps, W);
        // offset of each tap from its window's origin, in the flattened plane
        long* toff = tscratch<long>(kMaxPoolTapOffsets,
                                    g.k[0] * g.k[1] * g.k[2]);
        for (long kz = 0, t = 0; kz < g.k[0]; ++kz)
            for (long ky = 0; ky < g.k[1]; ++ky)
                for (long kx = 0; kx < g.k[2]; ++kx, ++t)
                    toff[t] = (kz * g.d[0] * g.in[1] + ky * g.d[1]) * g.in[2] + kx * g.d[2];
#pragma omp for schedule(static)
        for (long pl = 0; pl < g.planes; ++pl) {
            const T* xp = x + pl * Pin;
            if (idx ? max_plane_fast<T, true>(g, xp, y + pl * Pout, idx + pl * Pout, toff, tap)
                    : max_plane_fast<T, false>(g, xp, y + pl * Pout, nullptr, toff, tap))
                continue;
            for (long oz = 0; oz < g.out[0]; ++oz)
                for (long oy = 0; oy < g.out[1]; ++oy) {
                    const long orow = pl * Pout + (oz * g.out[1] + oy) * W;
                    if (idx)
                        max_row<T, true>(g, xp, oz, oy, y + orow, tap, toff, idx + orow, 0, W);
                    else
                        max_row<T, false>(g, xp, oz, oy, y + orow, nullptr, nullptr, nullptr,
                                          0, W);
                }
        }
    }
}

template <class T>
static long max_pool_bwd(long planes, long Pin, long Pout, const T* gy, const std::int64_t* idx,
                         T* gx, int nt) {
    long bad = 0;
#pragma omp parallel num_threads(nt) reduction(+ : bad)
    {
        DenormalGuard fp;
#pragma omp for schedule(static)
        for (long pl = 0; pl < planes; ++pl) {
            T* xp = gx + pl * Pin;
            fill<T>(xp, Pin, T(0));
            const T* yp = gy + pl * Pout;
            const std::int64_t* ip = idx + pl * Pout;
            for (long o = 0; o < Pout; ++o) {
                const std::int64_t i = ip[o];
                if (i < 0 || i >= Pin) {
                    ++bad;
                    continue;
                }
                xp[i] += yp[o];
            }
        }
    }
    return bad;
}

}  // namespace CNNFAST_KNS
}  // namespace cnnfast
