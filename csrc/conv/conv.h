// The three conv kernels (conv_fwd, conv_bwd_data, conv_bwd_weight): the path
// dispatch and the im2col GEMM path (gemm; and gemm-s1 for the weight gradient). The
// other paths: direct.h, gemm_s1.h, winograd.h.
// A part of the per-ISA kernels, in namespace cnnfast::CNNFAST_KNS: included by
// kernels_impl.h (compiled once per ISA, see there), not on its own.
#pragma once

#include "kernels.h"
#include "common/activation.h"
#include "common/denormal.h"
#include "common/index.h"
#include "common/scratch.h"
#include "conv/direct.h"
#include "conv/gemm_phase.h"
#include "conv/gemm_s1.h"
#include "conv/im2col.h"
#include "conv/winograd.h"
#include "conv/wgrad_short.h"
#include "gemm/gemm_packed.h"
#include "gemm/pack.h"

namespace cnnfast {
namespace CNNFAST_KNS {

// The conv kernels run `path`, a ConvPath that can run g (resolved by the binding with
// choose_path / path_unfit, kernels.h).
template <class T>
static void conv_fwd(const ConvGeo& g, const T* x, const T* w, const T* b, T* y, int nt,
                     int path) {
    if (path == kDirect2d || path == kDirectRows) return direct_fwd<T>(g, x, w, b, y, nt, path);
    if (path == kGemmS1) return conv_fwd_s1<T>(g, x, w, b, y, nt);
    if (path == kGemmPhase) return conv_fwd_phase<T>(g, x, w, b, y, nt);
    if (path == kWinograd) return wino_fwd<T>(g, x, w, b, y, nt);
    constexpr int MR = Blk<T>::MR, NR = Blk<T>::NR;
    const long M = g.og, K = g.Kw, Q = g.N * g.Pout;
    const long apanel = round_up(M, MR) * K;
    // The packed weight of every group, shared read-only by the threads.
    T* Ap = tscratch<T>(kFwdPackedW, g.G * apanel);
    for (long gi = 0; gi < g.G; ++gi) pack_a<T>(M, K, w + gi * M * K, K, 1, Ap + gi * apanel);
    // Column tiles: per image when the image is large, else across images.
    const long tmax = col_tile<T>(K);
    long pt, tiles_per_group, tpi = 0;
    if (g.Pout >= tmax / 2) {
        tpi = ceil_div(g.Pout, tmax);
        pt = round_up(ceil_div(g.Pout, tpi), NR);
        tiles_per_group = g.N * tpi;
    } else {
        pt = tmax;
        tiles_per_group = ceil_div(Q, pt);
    }
    const long items = g.G * tiles_per_group;
#pragma omp parallel num_threads(nt)
    {
        DenormalGuard fp;
        T* Bp = tscratch<T>(kFwdPackB, K * pt);
        T* Cb = tscratch<T>(kFwdTileC, M * pt);
        T* row = tscratch<T>(kFwdColRow, pt);
#pragma omp for schedule(dynamic, 1)
        for (long it = 0; it < items; ++it) {
            const long gi = it / tiles_per_group, ti = it % tiles_per_group;
            long q0, q1;
            if (tpi) {
                const long n = ti / tpi, j = ti % tpi;
                q0 = n * g.Pout + j * pt;
                q1 = imin(n * g.Pout + g.Pout, q0 + pt);
            } else {
                q0 = ti * pt;
                q1 = imin(Q, q0 + pt);
            }
            const long nq = q1 - q0, nqp = round_up(nq, NR);
            for (long j = nq; j < nqp; ++j) row[j] = T(0);
            const T* xg = x + gi * g.cg * g.Pin;
            for (long k = 0; k < K; ++k) {
                const long c = k / g.T;
                long kz, ky, kx;
                tap_of(g, k % g.T, kz, ky, kx);
                im2col_row<T>(xg + c * g.Pin, g.C * g.Pin, g, kz, ky, kx, q0, q1, row);
                for (long j0 = 0; j0 < nqp; j0 += NR)
                    std::memcpy(Bp + (j0 / NR) * K * NR + k * NR, row + j0, NR * sizeof(T));
            }
            const long n0 = q0 / g.Pout, n1 = (q1 - 1) / g.Pout;
            // One image and a long enough reduction: write y in place. With a short
            // reduction the stores dominate; a tile in cache copied out row by row
            // streams better.
            if (n0 == n1 && K >= 32) {
                T* yt = y + (n0 * g.O + gi * M) * g.Pout + (q0 - n0 * g.Pout);
                gemm_packed<T>(M, nq, K, Ap + gi * apanel, Bp, yt, g.Pout, false);
                if (b || g.act)  // the epilogue, on rows just written (in cache)
                    for (long o = 0; o < M; ++o)
                        bias_act_row<T>(yt + o * g.Pout, yt + o * g.Pout, nq,
                                        b ? b + gi * M + o : nullptr, g.act, (T)g.slope);
            } else {
                gemm_packed<T>(M, nq, K, Ap + gi * apanel, Bp, Cb, pt, false);
                for (long o = 0; o < M; ++o) {
                    const T bo = b ? b[gi * M + o] : T(0);
                    const T* cr = Cb + o * pt;
                    long q = q0;
                    while (q < q1) {
                        const long n = q / g.Pout, p = q % g.Pout;
                        const long len = imin(g.Pout - p, q1 - q);
                        T* yr = y + (n * g.O + gi * M + o) * g.Pout + p;
                        const T* cs = cr + (q - q0);
                        bias_act_rows<T>(yr, 0, cs, 0, 1, len, bo, g.act, (T)g.slope);
                        q += len;
                    }
                }
            }
        }
    }
}

template <class T>
static void conv_bwd_data(const ConvGeo& g, const T* gy, const T* w, const T* b, T* gx, int nt,
                          int path) {
    if (path == kDirect2d || path == kDirectRows)
        return direct_bwd_data<T>(g, gy, w, b, gx, nt, path);
    if (path == kGemmS1) return conv_bwd_data_s1<T>(g, gy, w, b, gx, nt);
    if (path == kGemmPhase) return conv_bwd_data_phase<T>(g, gy, w, b, gx, nt);
    if (path == kWinograd) return wino_bwd_data<T>(g, gy, w, b, gx, nt);
    constexpr int MR = Blk<T>::MR, NR = Blk<T>::NR;
    const long O = g.og;
    // Rows of dcols per item: whole channels, about 192 rows.
    const long cc = imax(1, imin(g.cg, 192 / g.T));
    const long nch = ceil_div(g.cg, cc);
    const long tpi = ceil_div(g.Pout, col_tile<T>(O));
    const long pt = round_up(ceil_div(g.Pout, tpi), NR);
    const long items = g.N * g.G * nch;
#pragma omp parallel num_threads(nt)
    {
        DenormalGuard fp;
        T* Ap = tscratch<T>(kBwdDataPackA, round_up(cc * g.T, MR) * O);
        T* Bp = tscratch<T>(kBwdDataPackB, pt * O);
        T* D = tscratch<T>(kBwdDataCols, cc * g.T * pt);
#pragma omp for schedule(dynamic, 1)
        for (long it = 0; it < items; ++it) {
            const long n = it / (g.G * nch), r = it % (g.G * nch);
            const long gi = r / nch, ch = r % nch;
            const long c0 = ch * cc, c1 = imin(g.cg, c0 + cc);
            const long rows = (c1 - c0) * g.T;
            // A(k, o) = w[(gi*og + o), c0*T + k]
            pack_a<T>(rows, O, w + gi * O * g.Kw + c0 * g.T, 1, g.Kw, Ap);
            T* gxc = gx + (gi * g.cg + c0) * g.Pin;  // image 0's plane of channel c0
            for (long c = c0; c < c1; ++c)
                fill<T>(gx + (n * g.C + gi * g.cg + c) * g.Pin, g.Pin,
                        b ? b[gi * g.cg + c] : T(0));
            for (long j = 0; j < tpi; ++j) {
                const long p0 = j * pt, p1 = imin(g.Pout, p0 + pt), np_ = p1 - p0;
                pack_b<T>(O, np_, gy + (n * g.O + gi * O) * g.Pout + p0, g.Pout, 1, Bp);
                gemm_packed<T>(rows, np_, O, Ap, Bp, D, pt, false);
                for (long rr = 0; rr < rows; ++rr) {
                    const long c = rr / g.T;
                    long kz, ky, kx;
                    tap_of(g, rr % g.T, kz, ky, kx);
                    col2im_row<T>(gxc + c * g.Pin, g.C * g.Pin, g, kz, ky, kx,
                                  n * g.Pout + p0, n * g.Pout + p1, D + rr * pt);
                }
            }
            // The item's planes are final after the last tile: the epilogue.
            if (g.act)
                for (long c = c0; c < c1; ++c)
                    act_row<T>(gx + (n * g.C + gi * g.cg + c) * g.Pin, g.Pin, g.act,
                               (T)g.slope);
        }
    }
}

template <class T>
static void conv_bwd_weight(const ConvGeo& g, const T* x, const T* gy, T* gw, int nt, int path) {
    if (path == kDirect2d || path == kDirectRows)
        return direct_bwd_weight<T>(g, x, gy, gw, nt, path);
    if (path == kWinograd) return wino_bwd_weight<T>(g, x, gy, gw, nt);
    if (path == kWgradShort) return wgrad_short<T>(g, x, gy, gw, nt);
    constexpr int MR = Blk<T>::MR;
    const long M = g.og, Q = g.N * g.Pout;
    // Reduction tiles (a function of the shape only, so the sum order is fixed):
    // within one image when images are large (gy is then packed in place), else
    // runs of 256 columns across images.
    // Stride 1 (rank <= 2): tiles of whole output rows, im2col rows copied out of a
    // zero-padded copy of the input rows (as in conv_fwd_s1).
    const long pt = Blk<T>::KC;
    // gemm-phase: as gemm-s1 with the im2col rows copied out of the input's phase
    // planes (conv/gemm_phase.h), any stride
    const bool ph = path == kGemmPhase;
    const bool s1 = path == kGemmS1 || ph;  // needs g.out[2] <= pt (path_unfit)
    const long Ho = g.out[1], Wo = g.out[2];
    const long dy = g.d[1], dx = g.d[2], ey = (g.k[1] - 1) * dy, Wp = Wo + (g.k[2] - 1) * dx;
    long R = 1, nblk = 1;
    if (s1) {
        R = imin(Ho, imax(1, pt / Wo));
        nblk = ceil_div(Ho, R);
        R = ceil_div(Ho, nblk);
    }
    const long plane = (R + ey) * Wp;
    const long tpi = s1 ? nblk : g.Pout >= pt / 2 ? ceil_div(g.Pout, pt) : 0;
    const long ptile = tpi ? ceil_div(g.Pout, tpi) : pt;
    const long ntiles = tpi ? g.N * tpi : ceil_div(Q, pt);
    // Column chunks of whole channels, about 256 columns each, and enough equal
    // chunks to keep every thread busy; too few channels: cut the rows too. Any split
    // gives the same bits: it changes who computes an element, never how.
    long nch = imax(ceil_div(g.cg * g.T, 256), ceil_div(2L * nt, g.G));
    if (nt > 1 && (g.G * nch) % nt) nch = round_up(g.G * nch, nt) / g.G + ((round_up(g.G * nch, nt) % g.G) != 0);
    nch = imin(g.cg, nch);
    const long cc = ceil_div(g.cg, nch);
    nch = ceil_div(g.cg, cc);
    long mch = 1;
    if (g.G * nch < nt) mch = imin(ceil_div(M, MR), ceil_div(nt, g.G * nch));
    const long mrows = round_up(ceil_div(M, mch), MR);
    mch = ceil_div(M, mrows);
    const long items = g.G * nch * mch;
    PhJob pj;
    if (ph) ph_wgrad_job(g, cc, R, tscratch<long>(kPhWgradTables, 6 * g.T + cc * g.T), pj);
    const long xsz = ph ? cc * pj.nph * pj.rowsP * pj.Wp : cc * plane;
#pragma omp parallel num_threads(nt)
    {
        DenormalGuard fp;
        T* D = tscratch<T>(kBwdWeightCols, cc * g.T * pt);
        T* Gb = tscratch<T>(kBwdWeightGy, mrows * pt);
        T* Ap = tscratch<T>(kBwdWeightPackA, mrows * pt);
        T* Bp = tscratch<T>(kBwdWeightPackB, round_up(cc * g.T, Blk<T>::NR) * pt);
        T* Xp = s1 ? tscratch<T>(kBwdWeightPaddedRows, xsz) : nullptr;
#pragma omp for schedule(dynamic, 1)
        for (long it = 0; it < items; ++it) {
            const long gi = it / (nch * mch), r = it % (nch * mch);
            const long ch = r / mch, mi = r % mch;
            const long c0 = ch * cc, c1 = imin(g.cg, c0 + cc), cols = (c1 - c0) * g.T;
            const long m0 = mi * mrows, m1 = imin(M, m0 + mrows), rows = m1 - m0;
            T* Cd = gw + (gi * M + m0) * g.Kw + c0 * g.T;
            const T* xg = x + (gi * g.cg + c0) * g.Pin;
            for (long ti = 0; ti < ntiles; ++ti) {
                long q0, q1;
                if (s1) {
                    const long n = ti / nblk, r0 = (ti % nblk) * R, nr = imin(Ho, r0 + R) - r0;
                    q0 = n * g.Pout + r0 * Wo;
                    q1 = q0 + nr * Wo;
                    if (ph) {
                        ph_planes<T>(pj, xg + n * g.C * g.Pin, c1 - c0, g.Pin, r0, nr, 0, Wo,
                                     Xp);
                        ph_rows<T>(pj, Xp, cols, nr, D, pt);
                    } else {
                        // zero-padded input rows of the chunk's channels, then the im2col
                        // rows (only real output positions: the sum order is that of q)
                        const long W = g.in[2], ca = imax(0, -g.lo[2]),
                                   cb = imin(W, Wp - g.lo[2]);
                        for (long c = 0; c < c1 - c0; ++c) {
                            const T* xc = xg + n * g.C * g.Pin + c * g.Pin;
                            for (long rr = 0; rr < nr + ey; ++rr) {
                                T* d = Xp + c * plane + rr * Wp;
                                const long iy = r0 + rr - g.lo[1];
                                if (iy < 0 || iy >= g.in[1] || ca >= cb) {
                                    fill<T>(d, Wp, T(0));
                                    continue;
                                }
                                const long p0 = ca + g.lo[2], p1 = cb + g.lo[2];
                                fill<T>(d, p0, T(0));
                                std::memcpy(d + p0, xc + iy * W + ca,
                                            (std::size_t)(cb - ca) * sizeof(T));
                                fill<T>(d + p1, Wp - p1, T(0));
                            }
                        }
                        for (long k = 0; k < cols; ++k) {
                            const long t = k % g.T;
                            const T* src = Xp + (k / g.T) * plane + (t / g.k[2]) * dy * Wp +
                                           (t % g.k[2]) * dx;
                            T* d = D + k * pt;
                            for (long rr = 0; rr < nr; ++rr)
                                for (long j = 0; j < Wo; ++j) d[rr * Wo + j] = src[rr * Wp + j];
                        }
                    }
                } else if (tpi) {
                    const long n = ti / tpi;
                    q0 = n * g.Pout + (ti % tpi) * ptile;
                    q1 = imin(n * g.Pout + g.Pout, q0 + ptile);
                } else {
                    q0 = ti * pt;
                    q1 = imin(Q, q0 + pt);
                }
                const long nq = q1 - q0;
                for (long k = 0; k < (s1 ? 0 : cols); ++k) {
                    long kz, ky, kx;
                    tap_of(g, k % g.T, kz, ky, kx);
                    im2col_row<T>(xg + (k / g.T) * g.Pin, g.C * g.Pin, g, kz, ky, kx, q0, q1,
                                  D + k * pt);
                }
                if (tpi) {  // one image: pack gy rows m0..m1 in place
                    const long n = q0 / g.Pout;
                    pack_a<T>(rows, nq, gy + (n * g.O + gi * M + m0) * g.Pout + (q0 - n * g.Pout),
                              g.Pout, 1, Ap);
                } else {
                // gy rows m0..m1 of the group for columns q0..q1 (may cross images)
                for (long o = 0; o < rows; ++o) {
                    long q = q0;
                    while (q < q1) {
                        const long n = q / g.Pout, p = q % g.Pout;
                        const long len = imin(g.Pout - p, q1 - q);
                        const T* s = gy + (n * g.O + gi * M + m0 + o) * g.Pout + p;
                        T* d = Gb + o * pt + (q - q0);
                        for (long j = 0; j < len; ++j) d[j] = s[j];
                        q += len;
                    }
                }
                pack_a<T>(rows, nq, Gb, pt, 1, Ap);
                }
                pack_b<T>(nq, cols, D, 1, pt, Bp);
                gemm_packed<T>(rows, cols, nq, Ap, Bp, Cd, g.Kw, ti > 0);
            }
        }
    }
}

}  // namespace CNNFAST_KNS
}  // namespace cnnfast
