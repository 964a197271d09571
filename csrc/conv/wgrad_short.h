// The "wgrad-short" path: the weight gradient of a convolution with few input
// channels per group (a short reduction: C/G * KH * KW taps, e.g. a first layer or a
// stem), where the im2col GEMM spends most of its time packing.
//
//   gw[o, c, ky, kx] = sum over n, oy, ox of gy[n, o, oy, ox] * x[n, c, oy*s + ky*d - p,
//                                                                  ox*s + kx*d - p]
//
// Vectorised over the output channels o: the gy rows of a chunk are transposed into
// [row][ox][o] blocks, the input rows of the chunk copied into a zero-padded plane,
// and for each (o-block of NV vectors, c, ky, group of KB <= 4 taps kx) the NV*KB
// accumulators stay in registers over all rows and outputs of the chunk (per output:
// NV vector loads of gy, KB broadcasts of x, NV*KB FMAs).
//
// Determinism: the work is cut into chunks of R output rows of one image and the
// chunks into NP contiguous runs (R and NP functions of the shape only, never of the
// thread count). Each run is summed by one thread, in order, into its own partial
// buffer; the partials are then added in run order. Identical bits for any thread
// count.
//
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

// acc[k][v] (taps kx0 + k, o-block vector v) over nr rows and Wo outputs per row.
// g: the o-block's column of the transposed gy ([row][ox][Op]); xr: the plane row of
// row 0 at the column of tap kx0 (row r at xr + r * rs); out: the partial at tap kx0
// (tap k at out + k * Op).
template <class T, int NV, int KB>
static inline void ws_block(const T* g, long Op, long Wo, long nr, const T* xr, long rs, long s,
                            long dx, T* out, bool add) {
    typedef typename DV<T>::v V;
    constexpr int L = DV<T>::L;
    V acc[KB][NV];
    for (int k = 0; k < KB; ++k)
        for (int v = 0; v < NV; ++v) acc[k][v] = add ? dload<T>(out + k * Op + v * L) : V{} * T(0);
    for (long r = 0; r < nr; ++r) {
        const T* gr = g + r * Wo * Op;
        const T* xq = xr + r * rs;
        for (long ox = 0; ox < Wo; ++ox) {
            V gv[NV];
            for (int v = 0; v < NV; ++v) gv[v] = dload<T>(gr + ox * Op + v * L);
            const T* xo = xq + ox * s;
            for (int k = 0; k < KB; ++k) {
                const T b = xo[k * dx];  // vector * scalar: one broadcast
                for (int v = 0; v < NV; ++v) acc[k][v] += gv[v] * b;
            }
        }
    }
    for (int k = 0; k < KB; ++k)
        for (int v = 0; v < NV; ++v) dstore<T>(out + k * Op + v * L, acc[k][v]);
}

template <class T, int NV>
static inline void ws_taps(int kb, const T* g, long Op, long Wo, long nr, const T* xr, long rs,
                           long s, long dx, T* out, bool add) {
    switch (kb) {
        case 1: return ws_block<T, NV, 1>(g, Op, Wo, nr, xr, rs, s, dx, out, add);
        case 2: return ws_block<T, NV, 2>(g, Op, Wo, nr, xr, rs, s, dx, out, add);
        case 3: return ws_block<T, NV, 3>(g, Op, Wo, nr, xr, rs, s, dx, out, add);
        default: return ws_block<T, NV, 4>(g, Op, Wo, nr, xr, rs, s, dx, out, add);
    }
}

// The chunking, a function of the shape only (see above).
struct WsPlan {
    long Op, R, cpi, NC, NP, Wpad, rows;
};
template <class T>
static inline WsPlan ws_plan(const ConvGeo& g) {
    constexpr long OB = 2 * DV<T>::L;
    WsPlan p;
    p.Op = round_up(g.og, OB);
    const long Ho = g.out[1], Wo = g.out[2];
    // about 32K gy values per chunk (in L2), counted on og so that the cut is the
    // same in both builds
    p.R = imin(Ho, imax(1, 32768 / imax(1, Wo * round_up(g.og, 16))));
    p.cpi = ceil_div(Ho, p.R);
    p.R = ceil_div(Ho, p.cpi);
    p.NC = g.N * p.cpi;
    p.NP = imin(p.NC, 16);
    p.Wpad = (Wo - 1) * g.s[2] + (g.k[2] - 1) * g.d[2] + 1;
    p.rows = (p.R - 1) * g.s[1] + (g.k[1] - 1) * g.d[1] + 1;
    return p;
}

template <class T>
static void wgrad_short(const ConvGeo& g, const T* x, const T* gy, T* gw, int nt) {
    constexpr int L = DV<T>::L, NV = 2;
    const WsPlan pl = ws_plan<T>(g);
    const long Op = pl.Op, Ho = g.out[1], Wo = g.out[2], H = g.in[1], W = g.in[2];
    const long KH = g.k[1], KW = g.k[2], sy = g.s[1], sx = g.s[2], dy = g.d[1], dx = g.d[2];
    const long py = g.lo[1], px = g.lo[2], cg = g.cg, og = g.og, Kw = g.Kw;
    const long pstride = Kw * Op;  // one partial
    const long items = g.G * pl.NP;
    T* P = tscratch<T>(kWsPartials, items * pstride);  // shared (the calling thread's)
#pragma omp parallel num_threads(nt)
    {
        DenormalGuard fp;
        T* GT = tscratch<T>(kWsGyT, pl.R * Wo * Op);
        T* XP = tscratch<T>(kWsRows, cg * pl.rows * pl.Wpad);
#pragma omp for schedule(dynamic, 1)
        for (long it = 0; it < items; ++it) {
            const long gi = it / pl.NP, j = it % pl.NP;
            const long ch0 = j * pl.NC / pl.NP, ch1 = (j + 1) * pl.NC / pl.NP;
            T* part = P + it * pstride;
            for (long ch = ch0; ch < ch1; ++ch) {
                const long n = ch / pl.cpi, oy0 = (ch % pl.cpi) * pl.R;
                const long nr = imin(Ho, oy0 + pl.R) - oy0;
                // gy rows of the chunk, transposed to [r][ox][o] = [q][o] (o >= og zero).
                // The chunk's rows are contiguous in each gy plane: blocks of 16
                // positions q, the 16 stores of a block stay in a few cache lines and
                // each plane is read as one stream (prefetched ahead).
                {
                    const long Q = nr * Wo;
                    const T* s0 = gy + (n * g.O + gi * og) * (Ho * Wo) + oy0 * Wo;
                    for (long q0 = 0; q0 < Q; q0 += 16) {
                        const long nb = imin(16, Q - q0);
                        T* d = GT + q0 * Op;
                        for (long o = 0; o < og; ++o) {
                            const T* src = s0 + o * (Ho * Wo) + q0;
                            __builtin_prefetch(src + 64);
                            T* dd = d + o;
                            for (long j = 0; j < nb; ++j) dd[j * Op] = src[j];
                        }
                        if (og < Op)
                            for (long j = 0; j < nb; ++j)
                                for (long o = og; o < Op; ++o) d[j * Op + o] = T(0);
                    }
                }
                // the input rows of the chunk, zero-padded: plane row i is input row
                // oy0 * sy - py + i, column q is input column q - px
                const long nrows = (nr - 1) * sy + (KH - 1) * dy + 1;
                const long ca = imax(0, -px), cb = imin(W, pl.Wpad - px);
                for (long c = 0; c < cg; ++c) {
                    const T* xc = x + (n * g.C + gi * cg + c) * (H * W);
                    for (long i = 0; i < nrows; ++i) {
                        T* d = XP + (c * pl.rows + i) * pl.Wpad;
                        const long iy = oy0 * sy - py + i;
                        if (iy < 0 || iy >= H || ca >= cb) {
                            fill<T>(d, pl.Wpad, T(0));
                            continue;
                        }
                        const long q0 = ca + px, q1 = cb + px;
                        fill<T>(d, q0, T(0));
                        for (long q = q0; q < q1; ++q) d[q] = xc[iy * W + q - px];
                        fill<T>(d + q1, pl.Wpad - q1, T(0));
                    }
                }
                const bool add = ch > ch0;
                for (long ob = 0; ob < Op; ob += NV * L)
                    for (long c = 0; c < cg; ++c)
                        for (long ky = 0; ky < KH; ++ky)
                            for (long kx0 = 0; kx0 < KW; kx0 += 4) {
                                const int kb = (int)imin(4, KW - kx0);
                                const T* xr = XP + (c * pl.rows + ky * dy) * pl.Wpad + kx0 * dx;
                                T* out = part + ((c * KH + ky) * KW + kx0) * Op + ob;
                                ws_taps<T, NV>(kb, GT + ob, Op, Wo, nr, xr, sy * pl.Wpad, sx,
                                               dx, out, add);
                            }
            }
        }
    }
    // gw[gi, o, k] = the partials of group gi added in run order (small: serial, which
    // saves a second barrier on a busy machine)
    DenormalGuard fp;
    for (long e = 0; e < g.G * Kw; ++e) {
        const long gi = e / Kw, k = e % Kw;
        const T* p0 = P + gi * pl.NP * pstride + k * Op;
        for (long o = 0; o < og; ++o) {
            T sum = p0[o];
            for (long j = 1; j < pl.NP; ++j) sum += p0[j * pstride + o];
            gw[(gi * og + o) * Kw + k] = sum;
        }
    }
}

}  // namespace CNNFAST_KNS
}  // namespace cnnfast
