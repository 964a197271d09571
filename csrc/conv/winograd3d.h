// Winograd F(4x4, 3x3) for 3-d convolutions (the "winograd" path of a 3-d convolution
// with a KD x 3 x 3 kernel, stride 1 and dilation 1 along every dim, one group, any
// padding): forward (wino3_fwd), input gradient (wino3_bwd_data) and weight gradient
// (wino3_bwd_weight, see there). Included at the end of conv/winograd.h, whose
// transforms, row buffers, output transform and weight-gradient pieces it uses;
// eligibility and the automatic choice: wino_ok / use_wino in kernels.h.
//
// Algorithm: y[:, :, d] = sum over kd of conv2d(x[:, :, d + kd - lo_d], w[:, :, kd]), so
// Winograd on (H, W) and a direct sum over the depth taps: each input depth slice is
// transformed once (V = B^T d B, per channel and 6x6 window), the weight once per depth
// tap (U_kd = G g G^T), and the 36 products of an output slice reduce over the (kd, c)
// pairs: M_xi (K x tiles) = [U_xi,0 .. U_xi,KD-1] (K x KD*C) . [V_xi of the slices
// d - lo_d .. d - lo_d + KD - 1] (KD*C x tiles), one product with a reduction of KD * C
// (slices outside the input are left out of the reduction). Then Y = A^T M A + bias (+
// the fused activation) as in 2-d. Accuracy: that of the 2-d path with KD times the
// channels (|err| <= ~2e-6 S in float32, ~4e-15 S in float64, S the call's largest sum
// of |terms|; tests/test_winograd3d.py).
//
// Schedule (no whole-batch buffer): the weights are transformed once per call into U
// (36 * K * KD * C, packed as the products' A operands with the reduction kd-major:
// row kd * C + c), shared. Work items: (image, block of tiles of one (H, W) plane,
// range of output depths), by dynamic scheduling. An item keeps the transformed slices
// of its window in a per-thread V of Lb slots, laid out so that consecutive slices are
// consecutive rows of the products' packed B panels: the KD slices an output slice
// needs are one contiguous operand (panel stride Lb * C * NR). It walks its output
// depths in order, transforms each new input slice into the next slot, and when the
// slots run out moves the window's last slices to the front (a copy of KD - 1 slices
// every Lb - KD + 1 output slices; each slice is still transformed once per item, the
// KD - 1 slices before a depth range's first output once more per range). The block
// size keeps the KD live slices and M (36 * rows * tiles) within ~512 KiB.
//
// Input gradient: the correlation of gy (O channels) with w[o, c] rotated by 180 degrees
// in all three dims, padded by KD - 1 - lo_d in depth and 2 - lo in (H, W), as in 2-d.
//
// Determinism: an output's value is fixed by the shape (its slices' transforms do not
// depend on the block, the reduction's length and KC blocks on the output depth only);
// the depth ranges (which depend on the thread count) only decide who computes it. The
// weight gradient's chunk groups and their summation order are fixed by the shape.
#pragma once

namespace cnnfast {
namespace CNNFAST_KNS {

struct Wino3Geo {
    WinoGeo q;      // one (H, W) plane: its tiles, block, chunks, M; q.vs the V position stride
    long D, Do, KD, lod;  // input and output depth, depth taps, leading depth padding
    long C, Lb;     // input channels, V slots (input slices) per thread
    long nblk;      // tile blocks per plane
    long dr, nr;    // output depths per range, ranges per (image, block)
    long us;        // position stride of U
};

template <class T>
static Wino3Geo wino3_geo(const ConvGeo& g, int nt) {
    constexpr int MR = Blk<T>::MR, NR = Blk<T>::NR;
    const long ts = sizeof(T), line = 64 / ts;
    Wino3Geo r;
    WinoGeo& q = r.q;
    q.N = 1, q.C = g.C, q.K = g.O;
    q.H = g.in[1], q.W = g.in[2], q.Ho = g.out[1], q.Wo = g.out[2];
    q.loy = g.lo[1], q.lox = g.lo[2];
    q.act = g.act, q.slope = g.slope;
    q.ycs = g.out[0] * q.Ho * q.Wo;
    q.tX = ceil_div(q.Wo, 4);
    q.tpi = ceil_div(q.Ho, 4) * q.tX;
    q.tiles = q.tpi;
    r.D = g.in[0], r.Do = g.out[0], r.KD = g.k[0], r.lod = g.lo[0], r.C = g.C;
    const long np = ceil_div(q.K, MR);
    q.mch = ceil_div(np * MR, 48);
    q.mrows = ceil_div(np, q.mch) * MR;
    // the KD live slices and M of a block within ~512 KiB (half an L2)
    long tb = (512L << 10) / (36 * ts * (r.KD * q.C + q.mrows));
    tb = imax(NR, imin(256, tb / NR * NR));
    r.nblk = ceil_div(q.tpi, tb);
    // whole panels of the products (the micro-kernel's columns): 196 tiles in blocks of
    // 48 (13 panels in all) ran ~5% faster than in balanced blocks of 40 (15 panels)
    q.Tb = round_up(ceil_div(q.tpi, r.nblk), NR);
    r.nblk = ceil_div(q.tpi, q.Tb);
    q.Tp = round_up(q.Tb, NR);
    q.shared = q.fused = false;
    q.nblk = r.nblk;
    // KD - 1 slices are moved every Lb - KD + 1 output slices
    r.Lb = r.KD == 1 ? 1 : 2 * r.KD;
    q.vs = r.Lb * q.C * q.Tp + line;
    q.ms = q.mrows * q.Tp + line;
    q.us = 0;
    r.us = np * MR * r.KD * q.C + line;
    const long nrow = imin(q.Tp, ceil_div(q.Ho, 4)) + 1;
    q.rows_buf = 6 * (4 * q.Tp + 8 * nrow) + 64 + (2 * q.Tp * 4 + 6 * nrow * 24) / ts + 64;
    // depth ranges: >= 3 items per thread, ranges of >= 4 output slices (each range
    // transforms KD - 1 slices again)
    const long items = g.N * r.nblk;
    r.nr = imax(1, imin(ceil_div(3L * nt, items), r.Do / 4));
    r.dr = ceil_div(r.Do, r.nr);
    r.nr = ceil_div(r.Do, r.dr);
    return r;
}

// C (M x N, row stride ldc) = A * B from packed panels of a K-long reduction, A's panels
// aps apart, B's bps apart (gemm_packed with panel strides: the reduction is a window
// of longer panels). K is cut in fixed KC blocks: the order is a function of K only.
template <class T>
static void wino3_gemm(long M, long N, long K, const T* Ap, long aps, const T* Bp, long bps,
                       T* C, long ldc) {
    constexpr int MR = Blk<T>::MR, NR = Blk<T>::NR;
    constexpr long KC = Blk<T>::KC;
    const long kblk = round_up(ceil_div(K, ceil_div(K, KC)), 4);
    for (long pc = 0; pc < K; pc += kblk) {
        const long kc = imin(kblk, K - pc);
        for (long j0 = 0; j0 < N; j0 += NR) {
            const T* bp = Bp + (j0 / NR) * bps + pc * NR;
            const int nr = (int)imin(NR, N - j0);
            for (long i0 = 0; i0 < M; i0 += MR) {
                const T* ap = Ap + (i0 / MR) * aps + pc * MR;
                ukernel(kc, ap, bp, C + i0 * ldc + j0, ldc, (int)imin(MR, M - i0), nr, pc > 0);
            }
        }
    }
}

// Scratch (kernels.h): per thread kWinoM, kWinoV, kWinoRows; shared: kWinoU.
// w: the kernels of depth tap 0 (kernel (k, c) at w.w + k * w.sk + c * w.sc); tap kd at
// + kd * 9, or + (KD - 1 - kd) * 9 when w.flip (the input gradient).
template <class T>
static void wino3_run(const ConvGeo& g, const T* x, const WinoW<T>& w, const T* b, T* y,
                      int nt) {
    constexpr int MR = Blk<T>::MR, NR = Blk<T>::NR, L = DV<T>::L;
    const Wino3Geo r = wino3_geo<T>(g, nt);
    const WinoGeo& q = r.q;
    const long C = r.C, K = q.K, KD = r.KD, np = ceil_div(K, MR);
    const long HW = q.H * q.W, xn = C * r.D * HW, yn = K * q.ycs, ys = q.Ho * q.Wo;
    const long slot = C * NR, bps = r.Lb * slot, aps = KD * C * MR;
    WinoSrc sx = wino_src_x(q);
    sx.cs = r.D * HW;
    T* U = tscratch<T>(kWinoU, 36 * r.us);
#pragma omp parallel num_threads(nt)
    {
        DenormalGuard fp;
        T* Mb = tscratch<T>(kWinoM, 36 * q.ms);
        T* V = tscratch<T>(kWinoV, 36 * q.vs);
        T* buf = tscratch<T>(kWinoRows, imax(q.rows_buf, 36 * (MR * C + 64)));
#pragma omp for schedule(dynamic, 1)
        for (long it = 0; it < np * KD; ++it) {
            const long p = it / KD, kd = it % KD;
            const WinoW<T> wk = {w.w + (w.flip ? KD - 1 - kd : kd) * 9, w.sk, w.sc, w.flip};
            wino_wt<T>(wk, C, p * MR, imin(MR, K - p * MR), U + p * aps + kd * C * MR, r.us,
                       buf);
        }
#pragma omp for schedule(dynamic, 1)
        for (long item = 0; item < g.N * r.nblk * r.nr; ++item) {
            const long n = item / (r.nblk * r.nr), blk = (item / r.nr) % r.nblk;
            const long od0 = (item % r.nr) * r.dr, od1 = imin(r.Do, od0 + r.dr);
            const long t0 = blk * q.Tb, nb = imin(q.Tb, q.tpi - t0);
            const long npan = ceil_div(round_up(nb, L), NR);
            const WinoRows<T> wr = wino_rows<T>(q, sx, t0, nb, buf);
            long first = 0, cnt = 0;  // the slots hold input slices first .. first + cnt - 1
            for (long od = od0; od < od1; ++od) {
                const long i0 = od - r.lod;  // the slice of depth tap 0
                const long kd0 = imax(0, -i0), kd1 = imin(KD, r.D - i0);
                T* yd = y + n * yn + od * ys;
                if (kd0 >= kd1) {  // every tap in the padding: the bias (+ activation)
                    for (int xi = 0; xi < 36; ++xi) fill<T>(Mb + xi * q.ms, q.mrows * q.Tp, T(0));
                    for (long it = 0; it < q.mch; ++it) {
                        long k0, k1;
                        wino_chunk_rows<T>(q, it, k0, k1);
                        if (k0 < k1) wino_outs<T>(q, Mb, k0, k1 - k0, t0, nb, b, yd);
                    }
                    continue;
                }
                const long a = i0 + kd0, e = i0 + kd1;  // slices [a, e)
                if (cnt == 0 || first + cnt < a) first = a, cnt = 0;
                if (e - first > r.Lb) {  // move the slices from a on to the front
                    const long drop = a - first, keep = cnt - drop;
                    for (int xi = 0; xi < 36; ++xi)
                        for (long pp = 0; pp < npan; ++pp) {
                            T* d = V + xi * q.vs + pp * bps;
                            const T* s = d + drop * slot;
                            for (long i = 0; i < keep * slot; ++i) d[i] = s[i];
                        }
                    first = a, cnt = keep;
                }
                for (; first + cnt < e; ++cnt)
                    wino_in<T, false>(sx, x + n * xn + (first + cnt) * HW, nb, 0, C, wr,
                                      {V + cnt * slot, q.vs, NR, bps, NR});
                const T* Vb = V + (a - first) * slot;
                for (long it = 0; it < q.mch; ++it) {
                    long k0, k1;
                    wino_chunk_rows<T>(q, it, k0, k1);
                    if (k0 >= k1) continue;
                    for (int xi = 0; xi < 36; ++xi)
                        wino3_gemm<T>(k1 - k0, round_up(nb, L), (kd1 - kd0) * C,
                                      U + xi * r.us + k0 * KD * C + kd0 * C * MR, aps,
                                      Vb + xi * q.vs, bps, Mb + xi * q.ms, q.Tp);
                    wino_outs<T>(q, Mb, k0, k1 - k0, t0, nb, b, yd);
                }
            }
        }
    }
}

template <class T>
static void wino3_fwd(const ConvGeo& g, const T* x, const T* w, const T* b, T* y, int nt) {
    const long t = g.k[0] * 9;
    wino3_run<T>(g, x, {w, g.C * t, t, false}, b, y, nt);
}

// The input gradient: the correlation of gy (O channels) with w[o, c] rotated by 180
// degrees (kernel (c, o)), padded by k - 1 - pad in each dim.
template <class T>
static void wino3_bwd_data(const ConvGeo& g, const T* gy, const T* w, const T* b, T* gx,
                           int nt) {
    ConvGeo h = g;
    h.C = g.O;
    h.O = g.C;
    for (int i = 0; i < 3; ++i) {
        h.in[i] = g.out[i];
        h.out[i] = g.in[i];
        h.lo[i] = (g.k[i] - 1) - g.lo[i];
    }
    h.finish();
    const long t = g.k[0] * 9;
    wino3_run<T>(h, gy, {w, t, g.C * t, true}, b, gx, nt);
}

// The weight gradient: dL/dU_kd,xi = sum over (n, od, tiles) of (A gy A^T)_xi of output
// slice od (x) (B^T d B)_xi of input slice od + kd - lo_d, then gw[:, :, kd] = G^T
// dL/dU_kd G. As the 2-d wino_bwd_weight: tile chunks of kWinoChunk (here within one
// plane: (n, od, chunk) in order), work items owning a range of output x input
// channels that transform gy once and the input once per depth tap of each chunk, pack
// both and accumulate the 36 products. The chunks are cut into S groups fixed by the
// shape (more work items than the channel ranges alone give), each accumulating its
// own dL/dU (shared, kWino3GradParts); the groups are summed in order at the end.
template <class T>
static void wino3_bwd_weight(const ConvGeo& g, const T* x, const T* gy, T* gw, int nt) {
    constexpr int MR = Blk<T>::MR, NR = Blk<T>::NR;
    const long ts = sizeof(T), line = 64 / ts;
    const Wino3Geo r = wino3_geo<T>(g, nt);
    const WinoGeo& q = r.q;
    const long C = r.C, K = q.K, KD = r.KD, Tc = kWinoChunk;
    const long HW = q.H * q.W, HWo = q.Ho * q.Wo;
    WinoSrc sx = wino_src_x(q), sg = wino_src_gy(q);
    sx.cs = r.D * HW;
    sg.cs = r.Do * HWo;
    const long ncp = ceil_div(q.tpi, Tc), nch = g.N * r.Do * ncp;
    // dL/dU of a group: (kd, xi) at (kd * 36 + xi) * dps, row k at k * C
    const long dps = K * C + line, ps = 36 * KD * dps;
    // groups: up to 8, of >= 4 chunks, their dL/dU within 4 MiB in all
    const long S = imax(1, imin(imin(8L, nch / 4), (4L << 20) / (ts * ps)));
    long nc = ceil_div(C, 128), nk = ceil_div(K, 128);
    while (S * nc * nk < nt) {
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
    const long vxs = cc * Tc + line, gxs = mk * Tc + line;
    const long nrow = imin(Tc, ceil_div(q.Ho, 4)) + 1;
    const long rb = 6 * (4 * Tc + 8 * nrow) + 64 + (2 * Tc * 4 + 6 * nrow * 24) / ts + 64;
    T* P = tscratch<T>(kWino3GradParts, S * ps);
#pragma omp parallel num_threads(nt)
    {
        DenormalGuard fp;
        T* Vx = tscratch<T>(kWinoGradX, 36 * vxs);
        T* Vg = tscratch<T>(kWinoGradGy, 36 * gxs);
        T* rbuf = tscratch<T>(kWinoGradRows, 2 * rb);
        T* pk = tscratch<T>(kWinoGradPack, Tc * (cc + mk));
        T* Bp = pk;
        T* Ap = pk + Tc * cc;
#pragma omp for schedule(dynamic, 1)
        for (long it = 0; it < S * nc * nk; ++it) {
            const long sgi = it / (nc * nk), rest = it % (nc * nk);
            const long k0 = (rest / nc) * mk, k1 = imin(K, k0 + mk);
            const long c0 = (rest % nc) * cc, c1 = imin(C, c0 + cc);
            T* dU = P + sgi * ps;
            for (long e = 0; e < 36 * KD; ++e)
                for (long k = k0; k < k1; ++k) fill<T>(dU + e * dps + k * C + c0, c1 - c0, T(0));
            for (long ch = sgi * nch / S; ch < (sgi + 1) * nch / S; ++ch) {
                const long n = ch / (r.Do * ncp), od = (ch / ncp) % r.Do, cp = ch % ncp;
                const long t0 = cp * Tc, nb = imin(Tc, q.tpi - t0);
                const long i0 = od - r.lod, kd0 = imax(0, -i0), kd1 = imin(KD, r.D - i0);
                if (kd0 >= kd1) continue;  // gy meets only padding
                const WinoRows<T> rg = wino_rows<T>(q, sg, t0, nb, rbuf + rb);
                wino_in<T, true>(sg, gy + n * K * sg.cs + od * HWo, nb, k0, k1, rg,
                                 {Vg, gxs, Tc, 0, Tc});
                const WinoRows<T> rx = wino_rows<T>(q, sx, t0, nb, rbuf);
                for (long kd = kd0; kd < kd1; ++kd) {
                    wino_in<T, false>(sx, x + n * C * sx.cs + (i0 + kd) * HW, nb, c0, c1, rx,
                                      {Vx, vxs, Tc, 0, Tc});
                    for (int xi = 0; xi < 36; ++xi) {
                        pack_b<T>(nb, c1 - c0, Vx + xi * vxs, 1, Tc, Bp);
                        pack_a<T>(k1 - k0, nb, Vg + xi * gxs, Tc, 1, Ap);
                        gemm_packed<T>(k1 - k0, c1 - c0, nb, Ap, Bp,
                                       dU + (kd * 36 + xi) * dps + k0 * C + c0, C, true);
                    }
                }
            }
        }
        // per output channel: the groups summed in order, then G^T dL/dU G per tap
#pragma omp for schedule(dynamic, 1)
        for (long k = 0; k < K; ++k) {
            for (long sgi = 1; sgi < S; ++sgi)
                for (long e = 0; e < 36 * KD; ++e) {
                    T* d = P + e * dps + k * C;
                    const T* a = P + sgi * ps + e * dps + k * C;
                    for (long c = 0; c < C; ++c) d[c] += a[c];
                }
            for (long kd = 0; kd < KD; ++kd)
                wino_gw<T>(P + kd * 36 * dps + k * C, dps, C, C * KD * 9, KD * 9, k, k + 1, 0, C,
                           gw + kd * 9);
        }
    }
}

}  // namespace CNNFAST_KNS
}  // namespace cnnfast
