// The register-blocked direct 2-d kernels (path direct-2d): d2_fwd, d2_bwd_data,
// d2_bwd_weight and their row and plane loops.
// A part of the per-ISA kernels, in namespace cnnfast::CNNFAST_KNS: included by
// kernels_impl.h (compiled once per ISA, see there), not on its own.
#pragma once

#include "kernels.h"
#include "common/activation.h"
#include "common/denormal.h"
#include "common/index.h"
#include "common/simd.h"
#include "conv/direct2d_buffer.h"

namespace cnnfast {
namespace CNNFAST_KNS {

// RB output rows at once for unit dilation and x stride (tap kx reads column o + kx
// of its row) and a y stride SY: input row i of the block (i < (RB-1)*SY + KH) feeds
// output row j through tap row ky = i - j*SY, so each input vector is loaded once for
// up to KH outputs, and the RB sums are independent chains. rp[i]: input row i.
template <class T, int KH, int KW, int SY, int RB, bool ACC>
static inline void d2_fwd_rows(const T* const* rp, const typename DV<T>::v* wv,
                               typename DV<T>::v bv, T* y, long Wo) {
    typedef typename DV<T>::v V;
    constexpr int L = DV<T>::L, NRW = (RB - 1) * SY + KH;
    const T* r[NRW];
    for (int i = 0; i < NRW; ++i) r[i] = rp[i];
    auto at = [&](long o, V* acc) {
#pragma GCC unroll 8
        for (int j = 0; j < RB; ++j) acc[j] = ACC ? dload<T>(y + j * Wo + o) : bv;
#pragma GCC unroll 16
        for (int i = 0; i < NRW; ++i)
#pragma GCC unroll 8
            for (int kx = 0; kx < KW; ++kx) {
                const V xv = dload<T>(r[i] + o + kx);
#pragma GCC unroll 8
                for (int j = 0; j < RB; ++j) {
                    const int ky = i - j * SY;
                    if (ky >= 0 && ky < KH) acc[j] += wv[ky * KW + kx] * xv;
                }
            }
    };
    V tail[RB];
    at(Wo - L, tail);  // first: with ACC it must read y before the others store
    long o = 0;
    for (; o + L <= Wo; o += L) {
        V a[RB];
        at(o, a);
#pragma GCC unroll 8
        for (int j = 0; j < RB; ++j) dstore<T>(y + j * Wo + o, a[j]);
    }
    if (o < Wo)
#pragma GCC unroll 8
        for (int j = 0; j < RB; ++j) dstore<T>(y + j * Wo + Wo - L, tail[j]);
}

// y = bias + correlation (ACC: y += correlation) of one plane; w holds KH*KW taps.
// refill false: buf already holds this plane (one block only).
template <class T, int KH, int KW, bool ACC>
static void d2_fwd_plane(const D2& q, const T* x, const T* w, T bias, T* y, T* buf,
                         const T* zrow, bool refill, const D2Next& nx) {
    typedef typename DV<T>::v V;
    constexpr int L = DV<T>::L, NT = KH * KW;
    V wv[NT];
    for (int t = 0; t < NT; ++t) wv[t] = dsplat<T>(w[t]);
    const V bv = dsplat<T>(bias);
    long toff[KW];
    d2_tap_offsets<KW>(q, toff);
    const long ey = (KH - 1) * q.dy, Wo = q.Wo;
    // rows in blocks of RB (d2_fwd_rows) for unit x stride and dilations, y stride <= 2
    constexpr int RB = KH == 1 ? 1 : KH <= 3 ? 4 : 2;
    const bool blocked = RB > 1 && Wo >= L && q.sx == 1 && q.dx == 1 && q.dy == 1 &&
                         (q.sy == 1 || q.sy == 2);
    for (long r0 = 0; r0 < q.Ho; r0 += q.R) {
        const long r1 = imin(q.Ho, r0 + q.R);
        const long iy0 = r0 * q.sy - q.loy;
        if (!q.inplace && refill) d2_fill<T>(q, x, iy0, (r1 - 1 - r0) * q.sy + ey + 1, buf);
        for (long oy = r0; oy < r1; ++oy) {
            if constexpr (RB > 1) {
                if (blocked && oy + RB <= r1) {
                    d2_prefetch(nx, oy, oy + RB, q.Ho);
                    const T* rp[(RB - 1) * 2 + KH];
                    d2_block_rows<T, KH, RB>(q, x, buf, oy, iy0, zrow, rp);
                    if (q.sy == 1)
                        d2_fwd_rows<T, KH, KW, 1, RB, ACC>(rp, wv, bv, y + oy * Wo, Wo);
                    else
                        d2_fwd_rows<T, KH, KW, 2, RB, ACC>(rp, wv, bv, y + oy * Wo, Wo);
                    oy += RB - 1;
                    continue;
                }
            }
            d2_prefetch(nx, oy, oy + 1, q.Ho);
            const T* p[NT];
            d2_tap_rows<T, KH, KW>(q, x, buf, oy, iy0, zrow, toff, p);
            T* yr = y + oy * Wo;
            if (Wo >= L) {
                // one chain of KW products per tap row, added at the end: the
                // dependent chain is KW + KH long instead of KH * KW
                auto at = [&](long o) {
                    V r[KH];
#pragma GCC unroll 8
                    for (int ky = 0; ky < KH; ++ky) {
                        V s = ky == 0 ? (ACC ? dload<T>(yr + o) : bv)
                                      : wv[ky * KW] * dload<T>(p[ky * KW] + o);
#pragma GCC unroll 8
                        for (int kx = ky == 0 ? 0 : 1; kx < KW; ++kx)
                            s += wv[ky * KW + kx] * dload<T>(p[ky * KW + kx] + o);
                        r[ky] = s;
                    }
#pragma GCC unroll 8
                    for (int ky = 1; ky < KH; ++ky) r[0] += r[ky];
                    return r[0];
                };
                // the last vector first: with ACC it must read y before the others store
                const V tail = at(Wo - L);
                long o = 0;
                for (; o + L <= Wo; o += L) dstore<T>(yr + o, at(o));
                if (o < Wo) dstore<T>(yr + Wo - L, tail);
            } else {
                for (long o = 0; o < Wo; ++o) {
                    T r[KH];
                    for (int ky = 0; ky < KH; ++ky) {
                        T s = ky == 0 ? (ACC ? yr[o] : bias) : w[ky * KW] * p[ky * KW][o];
                        for (int kx = ky == 0 ? 0 : 1; kx < KW; ++kx)
                            s += w[ky * KW + kx] * p[ky * KW + kx][o];
                        r[ky] = s;
                    }
                    for (int ky = 1; ky < KH; ++ky) r[0] += r[ky];
                    yr[o] = r[0];
                }
            }
        }
    }
}

// The weight gradient's counterpart of d2_fwd_rows: RB gy rows at once, each input
// vector loaded once for every (output row, tap row) pair it meets.
template <class T, int KH, int KW, int SY, int RB>
static inline void d2_gw_rows(const T* const* rp, const T* gy, long Wo, typename DV<T>::v* a,
                              typename DV<T>::m mk) {
    typedef typename DV<T>::v V;
    typedef typename DV<T>::m M;
    constexpr int L = DV<T>::L, NRW = (RB - 1) * SY + KH;
    const T* r[NRW];
    for (int i = 0; i < NRW; ++i) r[i] = rp[i];
    long o = 0;
    for (; o + L <= Wo; o += L) {
        V g[RB];
#pragma GCC unroll 8
        for (int j = 0; j < RB; ++j) g[j] = dload<T>(gy + j * Wo + o);
#pragma GCC unroll 16
        for (int i = 0; i < NRW; ++i)
#pragma GCC unroll 8
            for (int kx = 0; kx < KW; ++kx) {
                const V xv = dload<T>(r[i] + o + kx);
#pragma GCC unroll 8
                for (int j = 0; j < RB; ++j) {
                    const int ky = i - j * SY;
                    if (ky >= 0 && ky < KH) a[ky * KW + kx] += g[j] * xv;
                }
            }
    }
    if (o < Wo) {  // the overlapping last vector, its old lanes masked
        o = Wo - L;
        V g[RB];
#pragma GCC unroll 8
        for (int j = 0; j < RB; ++j) g[j] = dload<T>(gy + j * Wo + o);
        for (int i = 0; i < NRW; ++i)
            for (int kx = 0; kx < KW; ++kx) {
                const V xv = dload<T>(r[i] + o + kx);
                for (int j = 0; j < RB; ++j) {
                    const int ky = i - j * SY;
                    if (ky >= 0 && ky < KH) a[ky * KW + kx] += (V)((M)(g[j] * xv) & mk);
                }
            }
    }
}

// Weight gradient of one plane: acc[t] (vector partial sums) and sacc[t] (scalar,
// rows shorter than a vector) += sum over the outputs of gy * the input tap t reads.
template <class T, int KH, int KW>
static void d2_gw_plane(const D2& q, const T* x, const T* gy, typename DV<T>::v* acc, T* sacc,
                        T* buf, const T* zrow, const D2Next& nx) {
    typedef typename DV<T>::v V;
    typedef typename DV<T>::m M;
    constexpr int L = DV<T>::L, NT = KH * KW;
    V a[NT];
    for (int t = 0; t < NT; ++t) a[t] = acc[t];
    long toff[KW];
    d2_tap_offsets<KW>(q, toff);
    const long ey = (KH - 1) * q.dy, Wo = q.Wo;
    // the overlapping last vector: only its lanes >= L - Wo % L are new
    M mk;
    for (int j = 0; j < L; ++j) mk[j] = j >= L - Wo % L ? -1 : 0;
    // 2 rows: each accumulator then takes 2 products per step (a longer chain stalls)
    constexpr int RB = KH == 1 ? 1 : 2;
    const bool blocked = RB > 1 && Wo >= L && q.sx == 1 && q.dx == 1 && q.dy == 1 &&
                         (q.sy == 1 || q.sy == 2);
    for (long r0 = 0; r0 < q.Ho; r0 += q.R) {
        const long r1 = imin(q.Ho, r0 + q.R);
        const long iy0 = r0 * q.sy - q.loy;
        if (!q.inplace) d2_fill<T>(q, x, iy0, (r1 - 1 - r0) * q.sy + ey + 1, buf);
        for (long oy = r0; oy < r1; ++oy) {
            if constexpr (RB > 1) {
                if (blocked && oy + RB <= r1) {
                    d2_prefetch(nx, oy, oy + RB, q.Ho);
                    const T* rp[(RB - 1) * 2 + KH];
                    d2_block_rows<T, KH, RB>(q, x, buf, oy, iy0, zrow, rp);
                    if (q.sy == 1)
                        d2_gw_rows<T, KH, KW, 1, RB>(rp, gy + oy * Wo, Wo, a, mk);
                    else
                        d2_gw_rows<T, KH, KW, 2, RB>(rp, gy + oy * Wo, Wo, a, mk);
                    oy += RB - 1;
                    continue;
                }
            }
            d2_prefetch(nx, oy, oy + 1, q.Ho);
            const T* p[NT];
            d2_tap_rows<T, KH, KW>(q, x, buf, oy, iy0, zrow, toff, p);
            const T* gr = gy + oy * Wo;
            if (Wo >= L) {
                long o = 0;
                for (; o + L <= Wo; o += L) {
                    const V gv = dload<T>(gr + o);
#pragma GCC unroll 64
                    for (int t = 0; t < NT; ++t) a[t] += gv * dload<T>(p[t] + o);
                }
                if (o < Wo) {
                    o = Wo - L;
                    const V gv = dload<T>(gr + o);
#pragma GCC unroll 64
                    for (int t = 0; t < NT; ++t) a[t] += (V)((M)(gv * dload<T>(p[t] + o)) & mk);
                }
            } else {
                for (long o = 0; o < Wo; ++o)
                    for (int t = 0; t < NT; ++t) sacc[t] += gr[o] * p[t][o];
            }
        }
    }
    for (int t = 0; t < NT; ++t) acc[t] = a[t];
}

template <class T, int KH, int KW>
static void d2_fwd(const ConvGeo& g, const T* x, const T* w, const T* b, T* y, int nt) {
    const D2 q = d2_geo(g.in[1], g.in[2], 1, 1, g.out[1], g.out[2], g.s[1], g.s[2], g.d[1],
                        g.d[2], g.lo[1], g.lo[2], KH, KW, sizeof(T));
    const long items = g.N * g.O;
    [[maybe_unused]] const long chunk = g.og * imax(1, g.N * g.G / (16L * nt));
#pragma omp parallel num_threads(nt)
    {
        DenormalGuard fp;
        T *buf, *zrow;
        d2_buffers<T>(q, buf, zrow);
        long held = -1;  // the (n, c) plane in buf when it holds a whole plane
        // chunks of whole groups, about 16 per thread: a thread slowed down by another
        // process on its core hands work over (the output does not depend on who
        // computes an item)
#pragma omp for schedule(dynamic, chunk)
        for (long it = 0; it < items; ++it) {
            const long n = it / g.O, oc = it % g.O;
            const long plane = n * g.C + oc / g.og;  // the group's only input channel
            const bool refill = plane != held || q.R < q.Ho;
            held = plane;
            D2Next nx;  // the next item's plane (most often the same thread's)
            if (!q.inplace && oc % g.og == g.og - 1 && it + 1 < items) {
                nx.p[0] = x + (plane + 1) * g.Pin;
                nx.bytes[0] = g.Pin * (long)sizeof(T);
            }
            d2_fwd_plane<T, KH, KW, false>(q, x + plane * g.Pin, w + oc * g.T, b ? b[oc] : T(0),
                                           y + it * g.Pout, buf, zrow, refill, nx);
            // the epilogue on the plane just written (in L1 for the usual sizes)
            act_row<T>(y + it * g.Pout, g.Pout, g.act, (T)g.slope);
        }
    }
}

template <class T, int KH, int KW>
static void d2_bwd_data(const ConvGeo& g, const T* gy, const T* w, const T* b, T* gx, int nt) {
    // gx = corr(gy upsampled by s, flipped w), padded by (k-1)*d - lo
    const D2 q = d2_geo(g.out[1], g.out[2], g.s[1], g.s[2], g.in[1], g.in[2], 1, 1, g.d[1],
                        g.d[2], (KH - 1) * g.d[1] - g.lo[1], (KW - 1) * g.d[2] - g.lo[2], KH,
                        KW, sizeof(T));
    constexpr int NT = KH * KW;
    const long items = g.N * g.C;
    [[maybe_unused]] const long chunk = imax(1, items / (16L * nt));  // as in d2_fwd
#pragma omp parallel num_threads(nt)
    {
        DenormalGuard fp;
        T *buf, *zrow;
        d2_buffers<T>(q, buf, zrow);
        T wf[NT];
#pragma omp for schedule(dynamic, chunk)
        for (long it = 0; it < items; ++it) {
            const long n = it / g.C, c = it % g.C;  // c is also the group (cg == 1)
            T* xp = gx + it * g.Pin;
            for (long j = 0; j < g.og; ++j) {
                const long oc = c * g.og + j;
                for (int t = 0; t < NT; ++t) wf[t] = w[oc * NT + NT - 1 - t];
                const T* yp = gy + (n * g.O + oc) * g.Pout;
                D2Next nx;  // the next gy plane
                if (!q.inplace && n * g.O + oc + 1 < g.N * g.O) {
                    nx.p[0] = yp + g.Pout;
                    nx.bytes[0] = g.Pout * (long)sizeof(T);
                }
                if (j == 0)
                    d2_fwd_plane<T, KH, KW, false>(q, yp, wf, b ? b[c] : T(0), xp, buf, zrow, true,
                                                   nx);
                else
                    d2_fwd_plane<T, KH, KW, true>(q, yp, wf, T(0), xp, buf, zrow, true, nx);
            }
            act_row<T>(xp, g.Pin, g.act, (T)g.slope);  // the plane is final
        }
    }
}

template <class T, int KH, int KW>
static void d2_bwd_weight(const ConvGeo& g, const T* x, const T* gy, T* gw, int nt) {
    typedef typename DV<T>::v V;
    constexpr int NT = KH * KW;
    const D2 q = d2_geo(g.in[1], g.in[2], 1, 1, g.out[1], g.out[2], g.s[1], g.s[2], g.d[1],
                        g.d[2], g.lo[1], g.lo[2], KH, KW, sizeof(T));
    // One work item per output channel, summing over n in order: the same bits for
    // any thread count.
#pragma omp parallel num_threads(nt)
    {
        DenormalGuard fp;
        T *buf, *zrow;
        d2_buffers<T>(q, buf, zrow);
        V acc[NT];
        T sacc[NT];
#pragma omp for schedule(dynamic, 1)
        for (long oc = 0; oc < g.O; ++oc) {
            const long c = oc / g.og;
            for (int t = 0; t < NT; ++t) {
                acc[t] = dsplat<T>(T(0));
                sacc[t] = T(0);
            }
            for (long n = 0; n < g.N; ++n) {
                D2Next nx;  // the next x and gy planes (1.6 MB away for 128 channels)
                if (n + 1 < g.N) {
                    if (!q.inplace) {
                        nx.p[0] = x + ((n + 1) * g.C + c) * g.Pin;
                        nx.bytes[0] = g.Pin * (long)sizeof(T);
                    }
                    nx.p[1] = gy + ((n + 1) * g.O + oc) * g.Pout;
                    nx.bytes[1] = g.Pout * (long)sizeof(T);
                }
                d2_gw_plane<T, KH, KW>(q, x + (n * g.C + c) * g.Pin, gy + (n * g.O + oc) * g.Pout,
                                       acc, sacc, buf, zrow, nx);
            }
            for (int t = 0; t < NT; ++t) gw[oc * NT + t] = dhsum<T>(acc[t]) + sacc[t];
        }
    }
}

}  // namespace CNNFAST_KNS
}  // namespace cnnfast
