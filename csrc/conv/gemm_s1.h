// The stride-1 im2col GEMM path (gemm-s1): conv_fwd_s1 and conv_bwd_data_s1.
// A part of the per-ISA kernels, in namespace cnnfast::CNNFAST_KNS: included by
// kernels_impl.h (compiled once per ISA, see there), not on its own.
#pragma once

#include "kernels.h"
#include "common/activation.h"
#include "common/denormal.h"
#include "common/index.h"
#include "common/scratch.h"
#include "conv/im2col.h"
#include "gemm/gemm_packed.h"
#include "gemm/pack.h"

namespace cnnfast {
namespace CNNFAST_KNS {

// Convolutions with stride 1 along y and x (rank 1 and 2): the input rows a tile
// needs are copied once into a zero-padded buffer of row pitch Wp = Wo + (kw-1)*dx.
// In that buffer every tap is a constant shift of the flattened output position
// (q' = oy*Wp + ox), so the im2col panels are plain 64-byte copies; the Wp - Wo
// columns per row that are not outputs are computed and dropped.

// Taken when s1_ok(g) (kernels.h).

template <class T>
static void conv_fwd_s1(const ConvGeo& g, const T* x, const T* w, const T* b, T* y, int nt) {
    constexpr int MR = Blk<T>::MR, NR = Blk<T>::NR;
    const long M = g.og, K = g.Kw;
    const long Ho = g.out[1], Wo = g.out[2], H = g.in[1], W = g.in[2];
    const long dy = g.d[1], dx = g.d[2];
    const long ey = (g.k[1] - 1) * dy, ex = (g.k[2] - 1) * dx;
    const long Wp = Wo + ex;
    const long tmax = col_tile<T>(K);
    long R = imin(Ho, imax(1, tmax / Wp));
    const long nblk = ceil_div(Ho, R);
    R = ceil_div(Ho, nblk);
    const long rowsP = R + ey, plane = rowsP * Wp;
    const long xsz = g.cg * plane + ex + NR;
    const long pt = round_up(R * Wp, NR);
    const long apanel = round_up(M, MR) * K;
    T* Ap = tscratch<T>(kFwdPackedW, g.G * apanel);
    for (long gi = 0; gi < g.G; ++gi) pack_a<T>(M, K, w + gi * M * K, K, 1, Ap + gi * apanel);
    const long items = g.G * g.N * nblk;
    // A kernel one column wide: the product's rows are y's (Wp == Wo), so it writes y
    // directly, bias and activation then in place (1x1 on ResNet's 256->64 layer: the
    // forward 3.5% faster, the input gradient 18%, single-threaded).
    const bool into_y = ex == 0;
    // A 1x1 kernel without padding: a tile of channel c is nq contiguous values of x,
    // so the panels are packed from x itself, 8 channels at a time (8 rows of a panel:
    // 512 contiguous bytes), without the padded-rows copy Xp: that 1x1 forward 10%
    // faster (1 thread), 0.90 of torch's time instead of 1.02 (2 threads). Panel by
    // panel over all K channels instead was 8% slower: a page per channel row.
    const bool from_x = ex == 0 && ey == 0 && g.lo[1] == 0 && g.lo[2] == 0 && Wo == W &&
                        Ho == H;
#pragma omp parallel num_threads(nt)
    {
        DenormalGuard fp;
        T* Bp = tscratch<T>(kFwdPackB, K * pt);
        T* Cb = into_y ? nullptr : tscratch<T>(kFwdTileC, M * pt);
        T* Xp = tscratch<T>(kS1PaddedRows, xsz);
        fill<T>(Xp + g.cg * plane, ex + NR, T(0));
        // where row k of the im2col panel starts in Xp
        long* koff = tscratch<long>(kS1TapOffsets, K);
        for (long k = 0; k < K; ++k) {
            const long c = k / g.T, t = k % g.T;
            koff[k] = c * plane + (t / g.k[2]) * dy * Wp + (t % g.k[2]) * dx;
        }
#pragma omp for schedule(dynamic, 1)
        for (long it = 0; it < items; ++it) {
            const long gi = it / (g.N * nblk), r = it % (g.N * nblk);
            const long n = r / nblk, blk = r % nblk;
            const long r0 = blk * R, r1 = imin(Ho, r0 + R), nr = r1 - r0;
            const long nq = nr * Wp, nqp = round_up(nq, NR);
            if (from_x) {
                const T* xt = x + (n * g.C + gi * g.cg) * g.Pin + r0 * W;
                for (long k0 = 0; k0 < K; k0 += 8) {
                    const long k1 = imin(K, k0 + 8);
                    for (long j0 = 0; j0 < nqp; j0 += NR) {
                        T* d = Bp + (j0 / NR) * K * NR;
                        const long wd = imin(NR, nq - j0);
                        for (long k = k0; k < k1; ++k) {  // zeros past the tile's end
                            std::memcpy(d + k * NR, xt + k * g.Pin + j0,
                                        (std::size_t)wd * sizeof(T));
                            if (wd < NR) fill<T>(d + k * NR + wd, NR - wd, T(0));
                        }
                    }
                }
            }
            // zero-padded input rows r0 - lo_y .. of every channel of the group
            const long ca = imax(0, -g.lo[2]), cb = imin(W, Wp - g.lo[2]);
            for (long c = 0; !from_x && c < g.cg; ++c) {
                const T* xc = x + (n * g.C + gi * g.cg + c) * g.Pin;
                for (long rr = 0; rr < nr + ey; ++rr) {
                    T* d = Xp + c * plane + rr * Wp;
                    const long iy = r0 + rr - g.lo[1];
                    if (iy < 0 || iy >= H || ca >= cb) {
                        fill<T>(d, Wp, T(0));
                        continue;
                    }
                    const T* s = xc + iy * W;
                    const long c0 = ca + g.lo[2], c1 = cb + g.lo[2];  // padded columns
                    fill<T>(d, c0, T(0));
                    std::memcpy(d + c0, s + ca, (std::size_t)(cb - ca) * sizeof(T));
                    fill<T>(d + c1, Wp - c1, T(0));
                }
            }
            // Panel by panel, each written sequentially (panels are K*NR apart, often
            // a multiple of 4 KiB: writing them row by row would thrash one L1 set).
            for (long j0 = 0; !from_x && j0 < nqp; j0 += NR) {
                T* d = Bp + (j0 / NR) * K * NR;
                const T* src = Xp + j0;
                for (long k = 0; k < K; ++k)
                    std::memcpy(d + k * NR, src + koff[k], NR * sizeof(T));
            }
            T* y0 = y + (n * g.O + gi * M) * g.Pout + r0 * Wo;
            if (into_y)
                gemm_packed<T>(M, nq, K, Ap + gi * apanel, Bp, y0, g.Pout, false);
            else
                gemm_packed<T>(M, nq, K, Ap + gi * apanel, Bp, Cb, pt, false);
            for (long o = 0; o < M; ++o) {
                const T bo = b ? b[gi * M + o] : T(0);
                T* yo = y0 + o * g.Pout;
                // the rows out of the tile (in place when written there), + bias and
                // the fused activation
                if (!into_y)
                    bias_act_rows<T>(yo, Wo, Cb + o * pt, Wp, nr, Wo, bo, g.act, (T)g.slope);
                else if (b || g.act != kActNone)
                    bias_act_row<T>(yo, yo, nq, b ? &bo : nullptr, g.act, (T)g.slope);
            }
        }
    }
}

// The input gradient of a stride-1 convolution is a stride-1 convolution of gy with
// the kernel flipped and transposed per group, padded by (k-1)*d - lo (see
// numpy_backend's docstring); a gather, so no scatter and no col2im.
template <class T>
static void conv_bwd_data_s1(const ConvGeo& g, const T* gy, const T* w, const T* b, T* gx,
                             int nt) {
    ConvGeo h;
    h.N = g.N;
    h.C = g.O;
    h.O = g.C;
    h.G = g.G;
    for (int i = 0; i < 3; ++i) {
        h.in[i] = g.out[i];
        h.out[i] = g.in[i];
        h.k[i] = g.k[i];
        h.s[i] = 1;
        h.d[i] = g.d[i];
        h.lo[i] = (g.k[i] - 1) * g.d[i] - g.lo[i];
    }
    h.act = g.act;  // gx is the output of a transposed convolution
    h.slope = g.slope;
    h.finish();
    // wt[gi*cg + c, o, t] = w[gi*og + o, c, T-1-t]
    T* wt = tscratch<T>(kS1FlippedW, g.O * g.Kw);
    for (long gi = 0; gi < g.G; ++gi)
        for (long c = 0; c < g.cg; ++c)
            for (long o = 0; o < g.og; ++o) {
                const T* s = w + (gi * g.og + o) * g.Kw + c * g.T;
                T* d = wt + ((gi * g.cg + c) * g.og + o) * g.T;
                for (long t = 0; t < g.T; ++t) d[t] = s[g.T - 1 - t];
            }
    conv_fwd_s1<T>(h, gy, wt, b, gx, nt);
}

}  // namespace CNNFAST_KNS
}  // namespace cnnfast
