// Winograd F(4x4, 3x3) (the "winograd" path): 2-d convolutions with a 3x3 kernel,
// stride 1, dilation 1, one group, any padding; forward (wino_fwd), input gradient
// (wino_bwd_data) and weight gradient (wino_bwd_weight). 3-d convolutions with a KD x 3
// x 3 kernel: conv/winograd3d.h, included at the end, on
// the transforms, row buffers and output transform below. Eligibility and the
// automatic choice: wino_ok / use_wino in kernels.h.
// A part of the per-ISA kernels, in namespace cnnfast::CNNFAST_KNS: included by
// kernels_impl.h (compiled once per ISA, see there), not on its own. Besides the
// portable vector code (DV), it has AVX2 variants of its transposes, row loads, output
// stores and weight transform (CNNFAST_IMPL_AVX2).
//
// Algorithm (Lavin & Gray, "Fast Algorithms for Convolutional Neural Networks";
// interpolation points 0, 1, -1, 1/2, -2 and infinity): the 4x4 output tile Y of output
// channel k is, from the 6x6 input windows d_c it reads (stride 4, overlapping by 2),
//     Y = A^T [ sum_c (G g_kc G^T) (.) (B^T d_c B) ] A        ((.): elementwise)
// that is, for each of the 36 positions xi of a transformed tile, one product
// M_xi (K x tiles) = U_xi (K x C) . V_xi (C x tiles), with
//     A^T (4x6) = [[1,1,1,1,1,0],[0,1,-1,1/2,-2,0],[0,1,1,1/4,4,0],[0,1,-1,1/8,-8,1]]
//     G   (6x3) = [[1,0,0],[1/3,1/3,1/3],[-1/3,1/3,-1/3],[-16/15,-8/15,-4/15],
//                  [1/15,-2/15,4/15],[0,0,1]]
//     B^T (6x6) = [[1,-3/2,-2,3/2,1,0],[0,-1,1/2,5/2,1,0],[0,1,-5/2,1/2,1,0],
//                  [0,-2,-1,2,1,0],[0,1/2,-1,-1/2,1,0],[0,1,-3/2,-2,3/2,1]]
// (points 1/2 and -2 rather than +-2 or +-1/2: the smallest transform error of the
// 4x4 choices; F(6x6, 3x3) only just meets the float32 contract). 36 products of C
// terms replace 16 * 9 per (tile, k, c): 4x fewer multiply-adds, a little less where
// the output is not a multiple of 4 (edge tiles are computed whole and clipped).
//
// Accuracy: the transforms mix the values of a whole tile, so an output's error is not
// bounded by its own sum of |terms| but by the largest one of the call, S. Measured:
// |err| <= ~2e-6 S in float32 (contract: 1e-5 S + 1e-4 |exact|), ~4e-15 S in float64
// (contract: 1e-12 S), on random and adversarial data (tests/test_winograd.py). An
// infinity or NaN in a tile's input spreads to the whole tile's outputs.
//
// Forward schedule (wino_run; no whole-batch buffer): the tiles (n, ty, tx) of the
// batch, in that order, are cut into blocks. Per block: the input transform writes
// V = B^T d B of every tile and channel straight into the packed B panels of the 36
// products (V: 36 * C * tiles of the block); then per chunk of output channels (whole
// MR panels, at most 48 rows): 36 gemm_packed products into M (36 * rows * tiles),
// then the output transform A^T M A + bias (+ the fused activation), clipped at the
// image edges, into y.
// The input transform vectorises over tiles: per channel, the rows the block's tiles
// read are copied zero-padded into a small buffer (wino_rows: padding and image edges
// handled there, once per block), each tile's 6 rows are loaded 8 wide and transposed
// into vectors over tiles (wino_row). The output transform transposes back and stores
// rows of 4 outputs. Two schedules:
//  * a block per thread (enough blocks: >= 3 per thread): V and M per thread, sized
//    for half its L2 (~512 KiB); the weights transformed once per call into U
//    (36 * K * C, the products' packed A operands, like the packed weights of the
//    other GEMM paths); no barrier after that;
//  * all threads on one block at a time (few tiles: small images, deep layers): V
//    shared (up to ~8 MiB), the block's input transform split by channels, the
//    products and output transform by chunks of output channels (>= 3 per thread).
//    With a single block (the usual case) a chunk transforms its own weights (no U of
//    the whole layer written and read back).
// The 36 products' operands are a multiple of 4 KiB apart more often than not: every
// such distance gets one cache line more, so that the transforms' 36 stores or loads
// do not fall into one L1 set.
//
// Input gradient: the correlation of gy with the kernel rotated by 180 degrees and
// channel-transposed, padded by 2 - pad (negative: the output starts inside gy); the
// weight transform reads the forward weight that way (WinoW), nothing is copied.
//
// Weight gradient (wino_bwd_weight): dL/dU_xi = sum over tiles of (A gy A^T)_xi (x)
// V_xi, then gw = G^T dL/dU G; see there.
//
// Determinism: every output element is made by one work item in an order fixed by the
// shape (gemm_packed's reduction blocks depend on C only, the weight gradient's tile
// chunks on nothing); blocks, schedules and chunks only decide who computes what, so
// the bits do not depend on the thread count.
#pragma once

#include "kernels.h"
#include "common/denormal.h"
#include "common/index.h"
#include "common/scratch.h"
#include "common/simd.h"
#include "common/activation.h"
#include "gemm/gemm_packed.h"
#include "gemm/pack.h"

namespace cnnfast {
namespace CNNFAST_KNS {

// ----------------------------------------------------------------------------- transforms

// 1-d transforms of 6 (B^T), 6 -> 4 (A^T) and 3 -> 6 (G) vectors (any lane type).
template <class V, class T>
static inline void wino_bt(const V* d, V* o) {
    const V t = d[3] - d[1], e = d[4] - d[2];
    o[0] = (d[0] - d[2]) + e + T(1.5) * t;
    o[1] = (d[4] - d[1]) + T(0.5) * d[2] + T(2.5) * d[3];
    o[2] = (d[4] + d[1]) - T(2.5) * d[2] + T(0.5) * d[3];
    o[3] = e + T(2) * t;
    o[4] = e - T(0.5) * t;
    o[5] = (d[5] + d[1]) - T(2) * d[3] + T(1.5) * e;
}

template <class V, class T>
static inline void wino_at(const V* m, V* o) {
    const V a = m[1] + m[2], b = m[1] - m[2];
    o[0] = m[0] + a + (m[3] + m[4]);
    o[1] = b + T(0.5) * m[3] - T(2) * m[4];
    o[2] = a + T(0.25) * m[3] + T(4) * m[4];
    o[3] = (b + m[5]) + T(0.125) * m[3] - T(8) * m[4];
}

template <class V, class T>
static inline void wino_g(V g0, V g1, V g2, V* o) {
    const V s = g0 + g2;
    o[0] = g0;
    o[1] = (s + g1) * T(1.0 / 3);
    o[2] = (g1 - s) * T(1.0 / 3);
    o[3] = T(-16.0 / 15) * g0 + T(-8.0 / 15) * g1 + T(-4.0 / 15) * g2;
    o[4] = T(1.0 / 15) * g0 + T(-2.0 / 15) * g1 + T(4.0 / 15) * g2;
    o[5] = g2;
}

// The adjoints of the output and weight transforms (weight gradient): A (6x4) and
// G^T (3x6).
template <class V, class T>
static inline void wino_a6(const V* g, V* o) {
    const V a = g[0] + g[2], b = g[1] + g[3];
    o[0] = g[0];
    o[1] = a + b;
    o[2] = a - b;
    o[3] = g[0] + T(0.5) * g[1] + T(0.25) * g[2] + T(0.125) * g[3];
    o[4] = g[0] - T(2) * g[1] + T(4) * g[2] - T(8) * g[3];
    o[5] = g[3];
}

template <class V, class T>
static inline void wino_gt(const V* u, V* o) {
    const V s = u[1] + u[2], d = u[1] - u[2];
    o[0] = u[0] + d * T(1.0 / 3) + T(-16.0 / 15) * u[3] + T(1.0 / 15) * u[4];
    o[1] = s * T(1.0 / 3) + T(-8.0 / 15) * u[3] + T(-2.0 / 15) * u[4];
    o[2] = (d * T(1.0 / 3) + u[5]) + T(-4.0 / 15) * u[3] + T(4.0 / 15) * u[4];
}

// ----------------------------------------------------------------------------- geometry

struct WinoGeo {
    long N, C, K, H, W, Ho, Wo, loy, lox;
    long tX, tpi, tiles;  // tiles per row, per image, in the batch
    bool shared;          // one block at a time, shared by the threads (else one per thread)
    bool fused;           // each chunk transforms its own weights (else U of the layer)
    long Tb, nblk;        // tiles per block, blocks
    long Tp;              // Tb rounded up to the micro-kernel's column width
    long mch, mrows;      // chunks of output channels (whole MR panels), their most rows
    long vs, ms, us;      // distance of the products' B operands in V, results in M, A in U
    long rows_buf;        // values of the per-thread row buffer (WinoRows)
    long ycs;             // channel stride of y: Ho * Wo (3-d: Do * Ho * Wo, winograd3d.h)
    int act;              // the epilogue (ConvGeo::act, slope) of the output transform
    double slope;
};

template <class T>
static WinoGeo wino_geo(const ConvGeo& g, int nt) {
    constexpr int MR = Blk<T>::MR, NR = Blk<T>::NR;
    const long ts = sizeof(T), line = 64 / ts;
    WinoGeo q;
    q.N = g.N, q.C = g.C, q.K = g.O;
    q.H = g.in[1], q.W = g.in[2], q.Ho = g.out[1], q.Wo = g.out[2];
    q.loy = g.lo[1], q.lox = g.lo[2];
    q.act = g.act, q.slope = g.slope;
    q.ycs = q.Ho * q.Wo;
    q.tX = ceil_div(q.Wo, 4);
    q.tpi = ceil_div(q.Ho, 4) * q.tX;
    q.tiles = q.N * q.tpi;
    const long np = ceil_div(q.K, MR);  // MR panels of output channels
    // One block per thread at a time (no barrier; V and M in the thread's L2) when
    // there are enough blocks to share out; else all threads on one block at a time.
    q.mch = ceil_div(np * MR, 48);
    long tb = (512L << 10) / (36 * ts * (q.C + ceil_div(np, q.mch) * MR));
    tb = imax(2 * NR, imin(256, tb / NR * NR));
    q.nblk = ceil_div(q.tiles, tb);
    q.shared = q.nblk < 3L * nt;
    if (q.shared) {
        // V of a block within ~8 MiB (shared, read by every chunk of output channels:
        // it stays in L2/L3); chunks of up to 48 output channels, ~3 per thread.
        tb = (8L << 20) / (36 * ts * q.C);
        tb = imax(2 * NR, imin(1024, tb / NR * NR));
        q.nblk = ceil_div(q.tiles, tb);
        q.mch = imin(np, round_up(imax(ceil_div(np * MR, 48), 3L * nt), nt));
    }
    q.fused = q.shared && q.nblk == 1;
    q.mrows = ceil_div(np, q.mch) * MR;
    q.Tb = round_up(ceil_div(q.tiles, q.nblk), NR);
    q.Tp = q.Tb;
    // The 36 products' operands lie far apart (often a multiple of 4 KiB): one cache
    // line more keeps the transforms' 36 loads or stores out of a single L1 set.
    q.vs = q.C * q.Tp + line;
    q.ms = q.mrows * q.Tp + line;
    q.us = (q.fused ? q.mrows : np * MR) * q.C + line;
    // WinoRows: rows (<= 6 * (4 * Tp + 8 per tile row)), zeros, lane offsets and
    // strides (2 ints per tile), copy segments (3 longs per input row)
    const long nrow = imin(q.Tp, q.N * ceil_div(q.Ho, 4)) + 1;
    q.rows_buf = 6 * (4 * q.Tp + 8 * nrow) + 64 + (2 * q.Tp * 4 + 6 * nrow * 24) / ts + 64;
    return q;
}

// Output channels of chunk i: whole MR panels, [k0, k1).
template <class T>
static inline void wino_chunk_rows(const WinoGeo& q, long i, long& k0, long& k1) {
    constexpr int MR = Blk<T>::MR;
    const long np = ceil_div(q.K, MR);
    k0 = (i * np / q.mch) * MR;
    k1 = imin(q.K, ((i + 1) * np / q.mch) * MR);
}

// ----------------------------------------------------------------------------- tile rows

// The planes a tile transform reads: the input (6 x 6 windows at 4 * (ty, tx) - lo) or
// gy (4 x 4 windows at 4 * (ty, tx)), `chans` channels per image, channel c's plane at
// c * cs (3-d: a depth slice of each channel, winograd3d.h).
struct WinoSrc {
    long H, W, loy, lox, chans, R, cs;
};
static inline WinoSrc wino_src_x(const WinoGeo& q) {
    return {q.H, q.W, q.loy, q.lox, q.C, 6, q.H * q.W};
}
static inline WinoSrc wino_src_gy(const WinoGeo& q) {
    return {q.Ho, q.Wo, 0, 0, q.K, 4, q.Ho * q.Wo};
}

// The rows of a block's tiles for one channel, zero-padded, in a per-thread buffer:
// tile row (n, ty) of the block holds the R rows its tiles read, each 4 * (its tiles)
// + 4 columns wide (+ 4: an 8-wide load of the last tile's columns stays inside).
// Lane l of the tiles reads row r at pb + off[l] + r * ws[l]; the lanes past the
// block's end read zeros. Everything but the plane's values is zeroed once per block:
// per channel only the segments inside the plane are copied.
template <class T>
struct WinoRows {
    T* pb;
    int *off, *ws;
    long* seg;  // (dst, src offset in the channel plane of image 0, length) triples
    long nseg;
};

template <class T>
static WinoRows<T> wino_rows(const WinoGeo& q, const WinoSrc& sc, long t0, long nb, T* buf) {
    constexpr int L = DV<T>::L;
    WinoRows<T> wr;
    const long nbl = round_up(nb, L);
    const long r0 = t0 / q.tX, r1 = (t0 + nb - 1) / q.tX;  // tile rows n * tY + ty
    long size = 0;
    for (long rho = r0; rho <= r1; ++rho) {
        const long a = rho == r0 ? t0 % q.tX : 0;
        const long b = rho == r1 ? (t0 + nb - 1) % q.tX : q.tX - 1;
        size += sc.R * (4 * (b - a) + 8);
    }
    wr.pb = buf;
    const long zero = size;  // 6 x 8 zeros for the lanes past the end
    size += 48;
    fill<T>(buf, size, T(0));
    size = round_up(size, 64 / (long)sizeof(T));
    wr.off = reinterpret_cast<int*>(buf + size);
    wr.ws = wr.off + nbl;
    wr.seg = reinterpret_cast<long*>(wr.ws + round_up(nbl, 2));
    long pos = 0, ns = 0;
    const long tY = q.tpi / q.tX;
    for (long rho = r0; rho <= r1; ++rho) {
        const long a = rho == r0 ? t0 % q.tX : 0;
        const long b = rho == r1 ? (t0 + nb - 1) % q.tX : q.tX - 1;
        const long wq = 4 * (b - a) + 8;
        for (long tx = a; tx <= b; ++tx) {
            const long j = rho * q.tX + tx - t0;
            wr.off[j] = (int)(pos + 4 * (tx - a));
            wr.ws[j] = (int)wq;
        }
        const long n = rho / tY, iy0 = (rho % tY) * 4 - sc.loy;
        // buffer column i holds plane column 4 * a - lox + i
        const long xa = 4 * a - sc.lox;
        const long i0 = imax(0, -xa), i1 = imin(wq, sc.W - xa);
        for (long r = 0; r < sc.R; ++r) {
            const long iy = iy0 + r;
            if (iy < 0 || iy >= sc.H || i0 >= i1) continue;
            wr.seg[3 * ns] = pos + r * wq + i0;
            wr.seg[3 * ns + 1] = n * sc.chans * sc.cs + iy * sc.W + xa + i0;
            wr.seg[3 * ns + 2] = i1 - i0;
            ++ns;
        }
        pos += sc.R * wq;
    }
    for (long j = nb; j < nbl; ++j) {
        wr.off[j] = (int)zero;
        wr.ws[j] = 8;
    }
    wr.nseg = ns;
    return wr;
}

template <class T>
static inline void wino_copy_rows(const WinoRows<T>& wr, const T* xc) {
    constexpr int L = DV<T>::L;
    for (long s = 0; s < wr.nseg; ++s) {
        T* d = wr.pb + wr.seg[3 * s];
        const T* src = xc + wr.seg[3 * s + 1];
        const long n = wr.seg[3 * s + 2];
        long i = 0;
        for (; i + L <= n; i += L) dstore<T>(d + i, dload<T>(src + i));
        for (; i < n; ++i) d[i] = src[i];
    }
}

#if defined(CNNFAST_IMPL_AVX2)
// In-register transposes: r[k] lane l <- r[l] lane k.
static inline void wino_tr(__m256* r) {
    const __m256 t0 = _mm256_unpacklo_ps(r[0], r[1]), t1 = _mm256_unpackhi_ps(r[0], r[1]),
                 t2 = _mm256_unpacklo_ps(r[2], r[3]), t3 = _mm256_unpackhi_ps(r[2], r[3]),
                 t4 = _mm256_unpacklo_ps(r[4], r[5]), t5 = _mm256_unpackhi_ps(r[4], r[5]),
                 t6 = _mm256_unpacklo_ps(r[6], r[7]), t7 = _mm256_unpackhi_ps(r[6], r[7]);
    const __m256 u0 = _mm256_shuffle_ps(t0, t2, _MM_SHUFFLE(1, 0, 1, 0)),
                 u1 = _mm256_shuffle_ps(t0, t2, _MM_SHUFFLE(3, 2, 3, 2)),
                 u2 = _mm256_shuffle_ps(t1, t3, _MM_SHUFFLE(1, 0, 1, 0)),
                 u3 = _mm256_shuffle_ps(t1, t3, _MM_SHUFFLE(3, 2, 3, 2)),
                 u4 = _mm256_shuffle_ps(t4, t6, _MM_SHUFFLE(1, 0, 1, 0)),
                 u5 = _mm256_shuffle_ps(t4, t6, _MM_SHUFFLE(3, 2, 3, 2)),
                 u6 = _mm256_shuffle_ps(t5, t7, _MM_SHUFFLE(1, 0, 1, 0)),
                 u7 = _mm256_shuffle_ps(t5, t7, _MM_SHUFFLE(3, 2, 3, 2));
    r[0] = _mm256_permute2f128_ps(u0, u4, 0x20);
    r[1] = _mm256_permute2f128_ps(u1, u5, 0x20);
    r[2] = _mm256_permute2f128_ps(u2, u6, 0x20);
    r[3] = _mm256_permute2f128_ps(u3, u7, 0x20);
    r[4] = _mm256_permute2f128_ps(u0, u4, 0x31);
    r[5] = _mm256_permute2f128_ps(u1, u5, 0x31);
    r[6] = _mm256_permute2f128_ps(u2, u6, 0x31);
    r[7] = _mm256_permute2f128_ps(u3, u7, 0x31);
}
static inline void wino_tr(__m256d* r) {
    const __m256d t0 = _mm256_unpacklo_pd(r[0], r[1]), t1 = _mm256_unpackhi_pd(r[0], r[1]),
                  t2 = _mm256_unpacklo_pd(r[2], r[3]), t3 = _mm256_unpackhi_pd(r[2], r[3]);
    r[0] = _mm256_permute2f128_pd(t0, t2, 0x20);
    r[1] = _mm256_permute2f128_pd(t1, t3, 0x20);
    r[2] = _mm256_permute2f128_pd(t0, t2, 0x31);
    r[3] = _mm256_permute2f128_pd(t1, t3, 0x31);
}
#endif

// d[s] lane l = row r of lane l's tile, column s (s < NS), from the row buffer.
template <class T, int NS>
static inline void wino_row(const T* const* p, const int* ws, long r, typename DV<T>::v* d) {
    constexpr int L = DV<T>::L;
#if defined(CNNFAST_IMPL_AVX2)
    if constexpr (sizeof(T) == 4) {
        __m256 R[8];
        for (int l = 0; l < 8; ++l) R[l] = _mm256_loadu_ps((const float*)p[l] + r * ws[l]);
        wino_tr(R);
        for (int s = 0; s < NS; ++s) d[s] = (typename DV<T>::v)R[s];
        return;
    } else {
        __m256d A[4], B[4];
        for (int l = 0; l < 4; ++l) {
            const double* pl = (const double*)p[l] + r * ws[l];
            A[l] = _mm256_loadu_pd(pl);
            if (NS > 4) B[l] = _mm256_loadu_pd(pl + 4);
        }
        wino_tr(A);
        for (int s = 0; s < 4; ++s) d[s] = (typename DV<T>::v)A[s];
        if (NS > 4) {
            wino_tr(B);
            for (int s = 4; s < NS; ++s) d[s] = (typename DV<T>::v)B[s - 4];
        }
        return;
    }
#endif
    T t[NS][L];
    for (int l = 0; l < L; ++l)
        for (int s = 0; s < NS; ++s) t[s][l] = p[l][r * ws[l] + s];
    for (int s = 0; s < NS; ++s) d[s] = dload<T>(t[s]);
}

// ----------------------------------------------------------------------------- input

// Where the transforms of channels [c0, c1) of a block's tiles go: channel c, tile j,
// position xi at base + xi * xs + (j / P) * ps + j % P + (c - c0) * cs (the packed B
// panels of the forward products: P = NR, ps = C * NR, cs = NR; plain rows: P = Tp,
// ps = 0, cs = Tp).
template <class T>
struct WinoDst {
    T* base;
    long xs, P, ps, cs;
};

// GY false: V = B^T d B of each 6x6 input window; GY true: A gy A^T of each 4x4 window
// of gy (the weight gradient's adjoint of the output transform); channels [c0, c1) of
// the source planes `src` (channel c at src + c * H * W), tiles [0, nb) of the block
// whose rows `wr` describes.
template <class T, bool GY>
static void wino_in(const WinoSrc& sc, const T* src, long nb, long c0, long c1,
                    const WinoRows<T>& wr, const WinoDst<T>& dst) {
    typedef typename DV<T>::v V;
    constexpr int L = DV<T>::L, R = GY ? 4 : 6;
    const long nbl = round_up(nb, L);
    for (long c = c0; c < c1; ++c) {
        wino_copy_rows<T>(wr, src + c * sc.cs);
        for (long j = 0; j < nbl; j += L) {
            const T* p[L];
            for (int l = 0; l < L; ++l) p[l] = wr.pb + wr.off[j + l];
            V u[36];  // u[r*6 + k]: row r of the window transformed along x
            for (int r = 0; r < R; ++r) {
                V d[R];
                wino_row<T, R>(p, wr.ws + j, r, d);
                if (GY)
                    wino_a6<V, T>(d, u + r * 6);
                else
                    wino_bt<V, T>(d, u + r * 6);
            }
            T* vc = dst.base + (j / dst.P) * dst.ps + j % dst.P + (c - c0) * dst.cs;
            for (int k = 0; k < 6; ++k) {
                V d[6], o[6];
                for (int r = 0; r < R; ++r) d[r] = u[r * 6 + k];
                if (GY)
                    wino_a6<V, T>(d, o);
                else
                    wino_bt<V, T>(d, o);
                for (int i = 0; i < 6; ++i) dstore<T>(vc + (i * 6 + k) * dst.xs, o[i]);
            }
        }
    }
}

// ----------------------------------------------------------------------------- weights

// U = G g G^T of the 3x3 kernels g whose taps are g[t] (t = ky * 3 + kx, any lane
// type): u[xi], xi = a * 6 + k (a: along y, k: along x).
template <class V, class T>
static inline void wino_u(const V* g, V* u) {
    V h[18];  // h[a*3 + b] = (G g)[a][b]
    for (int b = 0; b < 3; ++b) {
        V o[6];
        wino_g<V, T>(g[b], g[3 + b], g[6 + b], o);
        for (int a = 0; a < 6; ++a) h[a * 3 + b] = o[a];
    }
    for (int a = 0; a < 6; ++a) wino_g<V, T>(h[a * 3], h[a * 3 + 1], h[a * 3 + 2], u + a * 6);
}

// The kernels of the correlation: kernel (k, c) at w + k * sk + c * sc, its 9 taps in
// order (ky * 3 + kx), or reversed (flip: the input gradient's kernel rotated by 180
// degrees, read straight from the forward weight, channels swapped by the strides).
template <class T>
struct WinoW {
    const T* w;
    long sk, sc;
    bool flip;
};

// U for output channels [k0, k0 + rows) (k0 a multiple of MR) and C input channels:
// product xi's A operand at Up + xi * us, packed as pack_a does (panels of MR rows,
// zero rows past the end). tmp: 36 * (MR * C + 64) values (portable and float64 path).
template <class T>
static void wino_wt(const WinoW<T>& wd, long C, long k0, long rows, T* Up, long us, T* tmp) {
    typedef typename DV<T>::v V;
    constexpr int L = DV<T>::L, MR = Blk<T>::MR;
#if defined(CNNFAST_IMPL_AVX2)
    if constexpr (sizeof(T) == 4 && MR == 6) {
        // Lanes: the MR output channels of a panel, straight into the packed layout
        // (no transpose of U): per input channel, the panel's 6 kernels are 6 rows of
        // an 8x8 transpose (taps 0..7) and 6 scalars (tap 8). An 8-lane store writes 2
        // values past the channel's 6: the next channel's store overwrites them (the
        // last channel's store is masked).
        const float zero[16] = {};
        const __m256i six = _mm256_setr_epi32(-1, -1, -1, -1, -1, -1, 0, 0);
        for (long p0 = 0; p0 < rows; p0 += MR) {
            const long mr = imin(MR, rows - p0);
            const float* wk[6];
            long st[6];
            for (int kk = 0; kk < 6; ++kk) {
                wk[kk] = kk < mr ? (const float*)wd.w + (k0 + p0 + kk) * wd.sk : zero;
                st[kk] = kk < mr ? wd.sc : 0;
            }
            float* up = (float*)Up + p0 * C;
            for (long c = 0; c < C; ++c) {
                __m256 R[8];
                for (int kk = 0; kk < 6; ++kk) R[kk] = _mm256_loadu_ps(wk[kk] + c * st[kk]);
                R[6] = R[7] = _mm256_setzero_ps();
                wino_tr(R);
                const __m256 t8 = _mm256_setr_ps(wk[0][c * st[0] + 8], wk[1][c * st[1] + 8],
                                                 wk[2][c * st[2] + 8], wk[3][c * st[3] + 8],
                                                 wk[4][c * st[4] + 8], wk[5][c * st[5] + 8],
                                                 0.f, 0.f);
                V g[9], u[36];
                for (int t = 0; t < 8; ++t) g[wd.flip ? 8 - t : t] = (V)R[t];
                g[wd.flip ? 0 : 8] = (V)t8;
                wino_u<V, float>(g, u);
                float* d = up + c * MR;
                if (c + 1 < C) {
                    for (int xi = 0; xi < 36; ++xi) _mm256_storeu_ps(d + xi * us, (__m256)u[xi]);
                } else {
                    for (int xi = 0; xi < 36; ++xi)
                        _mm256_maskstore_ps(d + xi * us, six, (__m256)u[xi]);
                }
            }
        }
        return;
    }
#endif
    const long ts = MR * C + 64 / (long)sizeof(T);  // tmp rows of product xi
    for (long p0 = 0; p0 < rows; p0 += MR) {
        const long mr = imin(MR, rows - p0);
        for (long kk = 0; kk < mr; ++kk) {
            const T* wk = wd.w + (k0 + p0 + kk) * wd.sk;
            T* tk = tmp + kk * C;
            long c = 0;
            for (; c + L <= C; c += L) {
                V g[9], u[36];
                for (int t = 0; t < 9; ++t) {
                    T a[L];
                    for (int l = 0; l < L; ++l) a[l] = wk[(c + l) * wd.sc + (wd.flip ? 8 - t : t)];
                    g[t] = dload<T>(a);
                }
                wino_u<V, T>(g, u);
                for (int xi = 0; xi < 36; ++xi) dstore<T>(tk + xi * ts + c, u[xi]);
            }
            for (; c < C; ++c) {
                T g[9], u[36];
                for (int t = 0; t < 9; ++t) g[t] = wk[c * wd.sc + (wd.flip ? 8 - t : t)];
                wino_u<T, T>(g, u);
                for (int xi = 0; xi < 36; ++xi) tk[xi * ts + c] = u[xi];
            }
        }
        for (int xi = 0; xi < 36; ++xi)
            pack_a<T>(mr, C, tmp + xi * ts, C, 1, Up + xi * us + p0 * C);
    }
}

// ----------------------------------------------------------------------------- output

// Output channels [k0, k0 + rows) of the tiles j .. j+L-1 of block (t0, nb) from the
// products' results (product xi at Mb + xi * ms, row k - k0 at (k - k0) * Tp):
// A^T M A + bias, clipped to the output.
// A: the fused activation (ActKind), a template argument so that the code without one
// is that of the bare convolution.
template <class T, int A>
static void wino_out(const WinoGeo& q, const T* Mb, long k0, long rows, long t0, long nb,
                     long j, const T* b, T* y) {
    typedef typename DV<T>::v V;
    constexpr int L = DV<T>::L;
    long yoff[L];
    int ni[L], nj[L];
    bool full[L];
    for (int l = 0; l < L; ++l) {
        ni[l] = nj[l] = 0;
        yoff[l] = 0;
        full[l] = false;
        if (j + l >= nb) continue;
        const long t = t0 + j + l, n = t / q.tpi, r = t % q.tpi;
        const long oy = (r / q.tX) * 4, ox = (r % q.tX) * 4;
        ni[l] = (int)imin(4, q.Ho - oy);
        nj[l] = (int)imin(4, q.Wo - ox);
        full[l] = ni[l] == 4 && nj[l] == 4;
        yoff[l] = n * q.K * q.ycs + oy * q.Wo + ox;
    }
    const long py = q.ycs, Wo = q.Wo;
    for (long kk = 0; kk < rows; ++kk) {
        const long k = k0 + kk;
        const T* mk = Mb + kk * q.Tp + j;
        V z[24];  // z[i*6 + s] = (A^T M)[i][s]
        for (int s = 0; s < 6; ++s) {
            V m[6], o[4];
            for (int r = 0; r < 6; ++r) m[r] = dload<T>(mk + (r * 6 + s) * q.ms);
            wino_at<V, T>(m, o);
            for (int i = 0; i < 4; ++i) z[i * 6 + s] = o[i];
        }
        const V bv = dsplat<T>(b ? b[k] : T(0));
        V o[16];  // o[i*4 + jj]: output row i, column jj of each lane's tile
        for (int i = 0; i < 4; ++i) {
            wino_at<V, T>(z + i * 6, o + i * 4);
            for (int jj = 0; jj < 4; ++jj) o[i * 4 + jj] += bv;
        }
        if constexpr (A != kActNone) {  // the fused activation, in registers
            const T slope = (T)q.slope;
            for (int e = 0; e < 16; ++e) o[e] = act_vec<T>(o[e], A, slope);
        }
        T* yk = y + k * py;
#if defined(CNNFAST_IMPL_AVX2)
        if constexpr (sizeof(T) == 4) {
            __m256 R[2][8];
            for (int h = 0; h < 2; ++h) {
                for (int e = 0; e < 8; ++e) R[h][e] = (__m256)o[h * 8 + e];
                wino_tr(R[h]);  // R[h][l]: rows 2h, 2h + 1 of lane l's tile
            }
            for (int l = 0; l < 8; ++l) {
                float* d = yk + yoff[l];
                if (full[l]) {
                    _mm_storeu_ps(d, _mm256_castps256_ps128(R[0][l]));
                    _mm_storeu_ps(d + Wo, _mm256_extractf128_ps(R[0][l], 1));
                    _mm_storeu_ps(d + 2 * Wo, _mm256_castps256_ps128(R[1][l]));
                    _mm_storeu_ps(d + 3 * Wo, _mm256_extractf128_ps(R[1][l], 1));
                } else if (ni[l]) {
                    alignas(32) float t[16];
                    _mm256_store_ps(t, R[0][l]);
                    _mm256_store_ps(t + 8, R[1][l]);
                    for (int i = 0; i < ni[l]; ++i)
                        for (int jj = 0; jj < nj[l]; ++jj) d[i * Wo + jj] = t[i * 4 + jj];
                }
            }
            continue;
        } else {
            __m256d R[4][4];
            for (int i = 0; i < 4; ++i) {
                for (int e = 0; e < 4; ++e) R[i][e] = (__m256d)o[i * 4 + e];
                wino_tr(R[i]);  // R[i][l]: row i of lane l's tile
            }
            for (int l = 0; l < 4; ++l) {
                double* d = yk + yoff[l];
                if (full[l]) {
                    for (int i = 0; i < 4; ++i) _mm256_storeu_pd(d + i * Wo, R[i][l]);
                } else if (ni[l]) {
                    for (int i = 0; i < ni[l]; ++i) {
                        alignas(32) double t[4];
                        _mm256_store_pd(t, R[i][l]);
                        for (int jj = 0; jj < nj[l]; ++jj) d[i * Wo + jj] = t[jj];
                    }
                }
            }
            continue;
        }
#endif
        alignas(64) T yb[16 * L];
        for (int e = 0; e < 16; ++e) dstore<T>(yb + e * L, o[e]);
        for (int l = 0; l < L; ++l) {
            T* d = yk + yoff[l];
            if (full[l]) {
                for (int i = 0; i < 4; ++i)
                    for (int jj = 0; jj < 4; ++jj) d[i * Wo + jj] = yb[(i * 4 + jj) * L + l];
                continue;
            }
            for (int i = 0; i < ni[l]; ++i)
                for (int jj = 0; jj < nj[l]; ++jj) d[i * Wo + jj] = yb[(i * 4 + jj) * L + l];
        }
    }
}

// ----------------------------------------------------------------------------- drivers

// The output transform of output channels [k0, k0 + rows) of the block's tiles, from
// the products' results at Mb, into y.
template <class T>
static void wino_outs(const WinoGeo& q, const T* Mb, long k0, long rows, long t0, long nb,
                      const T* b, T* y) {
    constexpr int L = DV<T>::L;
    for (long j = 0; j < nb; j += L) {
        switch (q.act) {
            case kActRelu: wino_out<T, kActRelu>(q, Mb, k0, rows, t0, nb, j, b, y); break;
            case kActLeakyRelu:
                wino_out<T, kActLeakyRelu>(q, Mb, k0, rows, t0, nb, j, b, y);
                break;
            case kActSigmoid: wino_out<T, kActSigmoid>(q, Mb, k0, rows, t0, nb, j, b, y); break;
            case kActTanh: wino_out<T, kActTanh>(q, Mb, k0, rows, t0, nb, j, b, y); break;
            default: wino_out<T, kActNone>(q, Mb, k0, rows, t0, nb, j, b, y); break;
        }
    }
}

// 36 products for output channels [k0, k0 + rows) and the block's tiles, then the
// output transform into y.
template <class T>
static void wino_chunk(const WinoGeo& q, const T* Ap, const T* Vb, T* Mb, long k0, long rows,
                       long t0, long nb, const T* b, T* y) {
    constexpr int L = DV<T>::L;
    const long nbl = round_up(nb, L);
    for (int xi = 0; xi < 36; ++xi)
        gemm_packed<T>(rows, nbl, q.C, Ap + xi * q.us, Vb + xi * q.vs, Mb + xi * q.ms, q.Tp,
                       false);
    wino_outs<T>(q, Mb, k0, rows, t0, nb, b, y);
}

// Scratch (kernels.h): per thread kWinoM, kWinoV, kWinoRows; of the calling thread,
// shared: kWinoSharedV, kWinoU.
template <class T>
static void wino_run(const ConvGeo& g, const T* x, const WinoW<T>& w, const T* b, T* y, int nt) {
    constexpr int MR = Blk<T>::MR, NR = Blk<T>::NR;
    const WinoGeo q = wino_geo<T>(g, nt);
    const WinoSrc sx = wino_src_x(q);
    const long C = q.C, K = q.K, np = ceil_div(K, MR);
    T* U = q.fused ? nullptr : tscratch<T>(kWinoU, 36 * q.us);
    T* Vs = q.shared ? tscratch<T>(kWinoSharedV, 36 * q.vs) : nullptr;
    // input channels per item of a shared block's input transform
    const long cch = imax(1, ceil_div(C, 4L * nt));
#pragma omp parallel num_threads(nt)
    {
        DenormalGuard fp;
        T* Mb = tscratch<T>(kWinoM, 36 * q.ms);
        T* Vt = q.shared ? (q.fused ? tscratch<T>(kWinoV, 36 * q.us) : nullptr)
                         : tscratch<T>(kWinoV, 36 * q.vs);
        T* buf = tscratch<T>(kWinoRows, imax(q.rows_buf, 36 * (MR * C + 64)));
        if (U) {
#pragma omp for schedule(dynamic, 1)
            for (long p = 0; p < np; ++p)
                wino_wt<T>(w, C, p * MR, imin(MR, K - p * MR), U + p * MR * C, q.us, buf);
        }
        if (q.shared) {
            for (long blk = 0; blk < q.nblk; ++blk) {
                const long t0 = blk * q.Tb, nb = imin(q.Tb, q.tiles - t0);
                if (nb <= 0) break;
                const WinoRows<T> wr = wino_rows<T>(q, sx, t0, nb, buf);
#pragma omp for schedule(dynamic, 1)
                for (long c0 = 0; c0 < C; c0 += cch)
                    wino_in<T, false>(sx, x, nb, c0, imin(C, c0 + cch), wr,
                                      {Vs + c0 * NR, q.vs, NR, C * NR, NR});
#pragma omp for schedule(dynamic, 1)
                for (long it = 0; it < q.mch; ++it) {
                    long k0, k1;
                    wino_chunk_rows<T>(q, it, k0, k1);
                    if (k0 >= k1) continue;
                    if (q.fused) {
                        wino_wt<T>(w, C, k0, k1 - k0, Vt, q.us, buf);
                        wino_chunk<T>(q, Vt, Vs, Mb, k0, k1 - k0, t0, nb, b, y);
                    } else {
                        wino_chunk<T>(q, U + k0 * C, Vs, Mb, k0, k1 - k0, t0, nb, b, y);
                    }
                }
            }
        } else {
#pragma omp for schedule(dynamic, 1)
            for (long blk = 0; blk < q.nblk; ++blk) {
                const long t0 = blk * q.Tb, nb = imin(q.Tb, q.tiles - t0);
                if (nb <= 0) continue;
                const WinoRows<T> wr = wino_rows<T>(q, sx, t0, nb, buf);
                wino_in<T, false>(sx, x, nb, 0, C, wr, {Vt, q.vs, NR, C * NR, NR});
                for (long it = 0; it < q.mch; ++it) {
                    long k0, k1;
                    wino_chunk_rows<T>(q, it, k0, k1);
                    if (k0 < k1) wino_chunk<T>(q, U + k0 * C, Vt, Mb, k0, k1 - k0, t0, nb, b, y);
                }
            }
        }
    }
}

// The 3-d drivers (conv/winograd3d.h, included at the end of this file).
template <class T>
static void wino3_fwd(const ConvGeo& g, const T* x, const T* w, const T* b, T* y, int nt);
template <class T>
static void wino3_bwd_data(const ConvGeo& g, const T* gy, const T* w, const T* b, T* gx,
                           int nt);
template <class T>
static void wino3_bwd_weight(const ConvGeo& g, const T* x, const T* gy, T* gw, int nt);

template <class T>
static void wino_fwd(const ConvGeo& g, const T* x, const T* w, const T* b, T* y, int nt) {
    if (!z_collapsed(g)) return wino3_fwd<T>(g, x, w, b, y, nt);
    wino_run<T>(g, x, {w, g.C * 9, 9, false}, b, y, nt);
}

// The input gradient: the correlation of gy (O channels) with w[o, c] rotated by 180
// degrees (kernel (c, o)), padded by 2 - pad.
template <class T>
static void wino_bwd_data(const ConvGeo& g, const T* gy, const T* w, const T* b, T* gx,
                          int nt) {
    if (!z_collapsed(g)) return wino3_bwd_data<T>(g, gy, w, b, gx, nt);
    ConvGeo h = g;
    h.C = g.O;
    h.O = g.C;
    for (int i = 0; i < 3; ++i) {
        h.in[i] = g.out[i];
        h.out[i] = g.in[i];
        h.lo[i] = (g.k[i] - 1) - g.lo[i];
    }
    h.finish();
    wino_run<T>(h, gy, {w, 9, g.C * 9, true}, b, gx, nt);
}

// ----------------------------------------------------------------------------- weight grad

// dL/dU_xi = sum over tiles of (A gy A^T)_xi (x) (B^T d B)_xi, a product (K x tiles) .
// (tiles x C) per position xi, then gw = G^T (dL/dU) G per (k, c). The tiles are cut in
// fixed chunks of kWinoChunk; a work item owns a range of output channels x a range of
// input channels and runs through every chunk in order: it transforms the chunk's gy
// windows and input windows of its channels (a range of channels transforms the
// other's data again: the price of a fixed summation order), packs them (pack_a /
// pack_b transpose them to tile-major), accumulates its 36 products in a per-thread
// dL/dU and, after the last chunk, writes its part of gw. The order of every sum is
// fixed by the shape, so the bits do not depend on the thread count.
constexpr long kWinoChunk = 64;

// gw[k, c] (k in [k0, k1), c in [c0, c1); its 9 taps at gw + k * gks + c * gcs) =
// G^T dU G, with dU[xi] at du + xi * dus, row k - k0 at (k - k0) * ld.
template <class T>
static void wino_gw(const T* du, long dus, long ld, long gks, long gcs, long k0, long k1,
                    long c0, long c1, T* gw) {
    typedef typename DV<T>::v V;
    constexpr int L = DV<T>::L;
    for (long k = k0; k < k1; ++k) {
        const T* dk = du + (k - k0) * ld - c0;
        T* gk = gw + k * gks;
        long c = c0;
        for (; c + L <= c1; c += L) {
            V u[36], h[18], o[3];
            for (int xi = 0; xi < 36; ++xi) u[xi] = dload<T>(dk + xi * dus + c);
            for (int a = 0; a < 6; ++a) wino_gt<V, T>(u + a * 6, h + a * 3);
            T r[9][L];
            for (int t = 0; t < 3; ++t) {
                V col[6];
                for (int a = 0; a < 6; ++a) col[a] = h[a * 3 + t];
                wino_gt<V, T>(col, o);
                for (int ky = 0; ky < 3; ++ky) dstore<T>(r[ky * 3 + t], o[ky]);
            }
            for (int l = 0; l < L; ++l)
                for (int t = 0; t < 9; ++t) gk[(c + l) * gcs + t] = r[t][l];
        }
        for (; c < c1; ++c) {
            T u[36], h[18], o[3];
            for (int xi = 0; xi < 36; ++xi) u[xi] = dk[xi * dus + c];
            for (int a = 0; a < 6; ++a) wino_gt<T, T>(u + a * 6, h + a * 3);
            for (int t = 0; t < 3; ++t) {
                T col[6];
                for (int a = 0; a < 6; ++a) col[a] = h[a * 3 + t];
                wino_gt<T, T>(col, o);
                for (int ky = 0; ky < 3; ++ky) gk[c * gcs + ky * 3 + t] = o[ky];
            }
        }
    }
}

// Scratch (kernels.h): per thread kWinoGradX, kWinoGradGy, kWinoGradRows, kWinoGradPack,
// kWinoGradDU.
template <class T>
static void wino_bwd_weight(const ConvGeo& g, const T* x, const T* gy, T* gw, int nt) {
    if (!z_collapsed(g)) return wino3_bwd_weight<T>(g, x, gy, gw, nt);
    constexpr int MR = Blk<T>::MR, NR = Blk<T>::NR;
    const WinoGeo q = wino_geo<T>(g, nt);
    const WinoSrc sx = wino_src_x(q), sg = wino_src_gy(q);
    const long C = q.C, K = q.K, Tc = kWinoChunk;
    const long nch = ceil_div(q.tiles, Tc);
    const long line = 64 / (long)sizeof(T);
    // Ranges of at most 128 channels each way, then split the larger until every
    // thread has one.
    long nc = ceil_div(C, 128), nk = ceil_div(K, 128);
    while (nc * nk < nt) {
        const long cc = ceil_div(C, nc), mk = ceil_div(K, nk);
        if (cc >= mk && cc > NR)
            ++nc;
        else if (mk > MR)
            ++nk;
        else
            break;
    }
    const long cc = round_up(ceil_div(C, nc), NR), mk = round_up(ceil_div(K, nk), MR);
    nc = ceil_div(C, cc);
    nk = ceil_div(K, mk);
    // position strides of the transforms and of dL/dU
    const long vxs = cc * Tc + line, gxs = mk * Tc + line, dus = mk * cc + line;
    // row buffer bound as in wino_geo, for Tc tiles
    const long nrow = imin(Tc, q.N * ceil_div(q.Ho, 4)) + 1;
    const long rb =
        6 * (4 * Tc + 8 * nrow) + 64 + (2 * Tc * 4 + 6 * nrow * 24) / (long)sizeof(T) + 64;
#pragma omp parallel num_threads(nt)
    {
        DenormalGuard fp;
        T* Vx = tscratch<T>(kWinoGradX, 36 * vxs);
        T* Vg = tscratch<T>(kWinoGradGy, 36 * gxs);
        T* rbuf = tscratch<T>(kWinoGradRows, 2 * rb);
        T* pk = tscratch<T>(kWinoGradPack, Tc * (cc + mk));
        T* dU = tscratch<T>(kWinoGradDU, 36 * dus);
        T* Bp = pk;
        T* Ap = pk + Tc * cc;
#pragma omp for schedule(dynamic, 1)
        for (long it = 0; it < nc * nk; ++it) {
            const long k0 = (it / nc) * mk, k1 = imin(K, k0 + mk);
            const long c0 = (it % nc) * cc, c1 = imin(C, c0 + cc);
            for (long ch = 0; ch < nch; ++ch) {
                const long t0 = ch * Tc, nb = imin(Tc, q.tiles - t0);
                const WinoRows<T> rx = wino_rows<T>(q, sx, t0, nb, rbuf);
                wino_in<T, false>(sx, x, nb, c0, c1, rx, {Vx, vxs, Tc, 0, Tc});
                const WinoRows<T> rg = wino_rows<T>(q, sg, t0, nb, rbuf + rb);
                wino_in<T, true>(sg, gy, nb, k0, k1, rg, {Vg, gxs, Tc, 0, Tc});
                for (int xi = 0; xi < 36; ++xi) {
                    pack_b<T>(nb, c1 - c0, Vx + xi * vxs, 1, Tc, Bp);
                    pack_a<T>(k1 - k0, nb, Vg + xi * gxs, Tc, 1, Ap);
                    gemm_packed<T>(k1 - k0, c1 - c0, nb, Ap, Bp, dU + xi * dus, cc, ch > 0);
                }
            }
            wino_gw<T>(dU, dus, cc, C * 9, 9, k0, k1, c0, c1, gw);
        }
    }
}

}  // namespace CNNFAST_KNS
}  // namespace cnnfast

#include "conv/winograd3d.h"
