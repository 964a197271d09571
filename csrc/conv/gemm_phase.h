// The phase-split im2col GEMM path (gemm-phase) of 1-d and 2-d convolutions of any
// stride: conv_fwd_phase, conv_bwd_data_phase and the panels of conv_bwd_weight's
// gemm-phase tiles (conv/conv.h).
//
// With stride s, tap k reads input column s*ox + k*d - lo = s*(ox + e) + p, with
// p = (k*d - lo) mod s (its phase) and e = floor((k*d - lo) / s). Split into its s*s
// phase planes (x[s*i + py, s*j + px]), the input is read by every tap at a constant
// shift of the output position (e_y, e_x) in one plane: each im2col panel row is a
// plain copy, as in gemm-s1, instead of a strided gather (stride 1 is one phase).
// The input gradient is the phases of gx: gx[s*i + py, s*j + px] gathers only the taps
// of that phase, a stride-1 correlation of gy (offsets e = (py + lo - k*d) / s) -- a
// product per phase written to its interleaved positions, no zero taps and no col2im
// scatter-add.
// Tiles: whole output rows of one image (or a run of columns of one row when a row is
// longer than the column tile); the product columns are the real outputs only.
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

// One product of the path: out (N x G*M x Ho x Wo outputs, addressed as below) = A (per group
// M x K, K = cn * ntap) times the im2col panels of `cn` channels of src (N x G*cn x
// Hs x Ws) read through the taps' phases (a tap: source row sy*(oy + ey) + py, column
// sx*(ox + ex) + px, zero outside).
struct PhJob {
    long M = 0, cn = 0, ntap = 0, K = 0;
    long Hs = 0, Ws = 0, sy = 1, sx = 1;
    long Ho = 0, Wo = 0;
    long nph = 0;        // phase planes per channel (the distinct (py, px) of the taps)
    long eymin = 0, eyspan = 0, exmin = 0, exspan = 0;
    long R = 1, nrt = 1, ncols = 0, nct = 1;  // tile: R rows (or ncols columns of a row)
    long rowsP = 0, Wp = 0;                   // a phase plane of a tile
    // out element (n, channel, oy, ox) at out + n*on + channel*om + oo + oy*orow + ox*ocol
    long on = 0, om = 0, oo = 0, orow = 0, ocol = 1;
    long apanel = 0;           // packed A of one group
    const long* koff = nullptr;  // K: where row k of a panel starts in the tile's planes
    const long* ph = nullptr;    // nph pairs (py, px)
    const long* tap = nullptr;   // ntap quadruples (py, ey, px, ex)
    long items = 0;              // G * N * nrt * nct
};

// Tile sizes of a job whose taps are set (ph_phases, K): whole rows within the column
// tile of the product (col_tile), else runs of columns of one row. A function of the
// shape only, never of the thread count: the sums' order is fixed.
template <class T>
static void ph_tiles(PhJob& j, long G, long N) {
    constexpr int NR = Blk<T>::NR;
    const long tmax = col_tile<T>(j.K);
    if (j.Wo <= tmax) {
        j.ncols = j.Wo;
        j.nct = 1;
        j.R = imin(j.Ho, imax(1, tmax / imax(1, j.Wo)));
        j.nrt = ceil_div(j.Ho, imax(1, j.R));
        j.R = j.nrt ? ceil_div(j.Ho, j.nrt) : 1;
    } else {
        j.R = 1;
        j.nrt = j.Ho;
        j.nct = ceil_div(j.Wo, tmax);
        j.ncols = round_up(ceil_div(j.Wo, j.nct), NR);
        j.nct = ceil_div(j.Wo, j.ncols);
    }
    j.rowsP = j.R + j.eyspan;
    j.Wp = j.ncols + j.exspan;
    j.items = G * N * j.nrt * j.nct;
}

// The taps' extents and phases: eymin/eyspan/exmin/exspan and the phase list ph (2 *
// ntap longs of room); ph_offsets then fills koff (cn * ntap longs) once the tiles are
// known.
static inline void ph_phases(PhJob& j, long* ph) {
    long eymax = 0, exmax = 0;
    j.nph = 0;
    for (long t = 0; t < j.ntap; ++t) {
        const long* q = j.tap + 4 * t;
        if (t == 0 || q[1] < j.eymin) j.eymin = q[1];
        if (t == 0 || q[1] > eymax) eymax = q[1];
        if (t == 0 || q[3] < j.exmin) j.exmin = q[3];
        if (t == 0 || q[3] > exmax) exmax = q[3];
        bool seen = false;
        for (long i = 0; i < j.nph; ++i) seen |= ph[2 * i] == q[0] && ph[2 * i + 1] == q[2];
        if (!seen) {
            ph[2 * j.nph] = q[0];
            ph[2 * j.nph + 1] = q[2];
            ++j.nph;
        }
    }
    j.eyspan = eymax - j.eymin;
    j.exspan = exmax - j.exmin;
    j.ph = ph;
}
static inline void ph_offsets(const PhJob& j, long* koff) {
    for (long k = 0; k < j.K; ++k) {
        const long c = k / j.ntap, t = k % j.ntap;
        const long* q = j.tap + 4 * t;
        long pi = 0;
        while (j.ph[2 * pi] != q[0] || j.ph[2 * pi + 1] != q[2]) ++pi;
        koff[k] = ((c * j.nph + pi) * j.rowsP + (q[1] - j.eymin)) * j.Wp + (q[3] - j.exmin);
    }
}

// The phase planes of the tile (output rows oy0 .. oy0 + nr, columns ox0 .. ox0 + nc)
// of the cn channels at src (planes of Hs x Ws, cstride apart) into Xp.
template <class T>
static void ph_planes(const PhJob& j, const T* src, long cn, long cstride, long oy0, long nr,
                      long ox0, long nc, T* Xp) {
    const long rows = nr + j.eyspan, cols = nc + j.exspan;
    for (long c = 0; c < cn; ++c) {
        const T* sc = src + c * cstride;
        for (long pi = 0; pi < j.nph; ++pi) {
            const long py = j.ph[2 * pi], px = j.ph[2 * pi + 1];
            const long offx = j.sx * (ox0 + j.exmin) + px;
            long a, b;
            valid_range(cols, j.sx, offx, j.Ws, a, b);
            for (long r = 0; r < rows; ++r) {
                T* d = Xp + ((c * j.nph + pi) * j.rowsP + r) * j.Wp;
                const long iy = j.sy * (oy0 + j.eymin + r) + py;
                if (iy < 0 || iy >= j.Hs || a >= b) {
                    fill<T>(d, cols, T(0));
                    continue;
                }
                const T* s = sc + iy * j.Ws + offx;
                fill<T>(d, a, T(0));
                if (j.sx == 1)
                    std::memcpy(d + a, s + a, (std::size_t)(b - a) * sizeof(T));
                else if (j.sx == 2)  // a constant stride: vectorised (loads and a shuffle)
                    for (long i = a; i < b; ++i) d[i] = s[2 * i];
                else
                    for (long i = a; i < b; ++i) d[i] = s[i * j.sx];
                fill<T>(d + b, cols - b, T(0));
            }
        }
    }
}

// The packed B panels (K x NR each) of the tile's nq = nr * nc outputs from its planes:
// a panel within one output row is K copies of NR values, else gathered.
template <class T>
static void ph_panels(const PhJob& j, const T* Xp, long nq, long nc, T* Bp) {
    constexpr int NR = Blk<T>::NR;
    const long nqp = round_up(nq, NR);
    for (long j0 = 0; j0 < nqp; j0 += NR) {
        T* d = Bp + (j0 / NR) * j.K * NR;
        const long oyl = j0 / nc, oxl = j0 % nc;
        if (oxl + NR <= nc) {
            const T* s = Xp + oyl * j.Wp + oxl;
            for (long k = 0; k < j.K; ++k)
                std::memcpy(d + k * NR, s + j.koff[k], NR * sizeof(T));
            continue;
        }
        long pos[NR];
        for (int i = 0; i < NR; ++i) {
            const long q = j0 + i;
            pos[i] = q < nq ? (q / nc) * j.Wp + q % nc : -1;
        }
        for (long k = 0; k < j.K; ++k) {
            const T* s = Xp + j.koff[k];
            for (int i = 0; i < NR; ++i) d[k * NR + i] = pos[i] >= 0 ? s[pos[i]] : T(0);
        }
    }
}

// Item `it` of job j: its tile's planes, panels, product and the copy-out with bias and
// the fused activation.
template <class T>
static void ph_item(const ConvGeo& g, const PhJob& j, long it, const T* src, const T* Ap,
                    const T* b, T* out, T* Xp, T* Bp, T* Cb, long pt) {
    const long per_g = j.items / g.G;
    const long gi = it / per_g, r = it % per_g;
    const long n = r / (j.nrt * j.nct), tr = r % (j.nrt * j.nct);
    const long oy0 = (tr / j.nct) * j.R, nr = imin(j.Ho, oy0 + j.R) - oy0;
    const long ox0 = (tr % j.nct) * j.ncols, nc = imin(j.Wo, ox0 + j.ncols) - ox0;
    const long nq = nr * nc;
    const T* sg = src + (n * g.G + gi) * j.cn * j.Hs * j.Ws;
    ph_planes<T>(j, sg, j.cn, j.Hs * j.Ws, oy0, nr, ox0, nc, Xp);
    ph_panels<T>(j, Xp, nq, nc, Bp);
    T* og = out + n * j.on + gi * j.M * j.om + j.oo + oy0 * j.orow + ox0 * j.ocol;
    const T* bg = b ? b + gi * j.M : nullptr;
    // Whole rows of a dense output and a long enough reduction: the product straight into
    // out (as conv_fwd), the epilogue on the rows just written.
    if (j.ocol == 1 && j.orow == nc && j.K >= 32) {
        gemm_packed<T>(j.M, nq, j.K, Ap + gi * j.apanel, Bp, og, j.om, false);
        if (b || g.act)
            for (long o = 0; o < j.M; ++o)
                bias_act_row<T>(og + o * j.om, og + o * j.om, nq, bg ? bg + o : nullptr, g.act,
                                (T)g.slope);
        return;
    }
    if (j.K == 0)  // no input channels: the outputs are the bias alone
        fill<T>(Cb, j.M * pt, T(0));
    else
        gemm_packed<T>(j.M, nq, j.K, Ap + gi * j.apanel, Bp, Cb, pt, false);
    for (long o = 0; o < j.M; ++o) {
        T* co = Cb + o * pt;
        T* oo = og + o * j.om;
        const T bo = bg ? bg[o] : T(0);
        if (j.ocol == 1) {
            bias_act_rows<T>(oo, j.orow, co, nc, nr, nc, bo, g.act, (T)g.slope);
            continue;
        }
        bias_act_row<T>(co, co, nq, bg ? bg + o : nullptr, g.act, (T)g.slope);
        for (long rr = 0; rr < nr; ++rr)
            for (long i = 0; i < nc; ++i) oo[rr * j.orow + i * j.ocol] = co[rr * nc + i];
    }
}

// Runs the forward's job over its items in one parallel region.
template <class T>
static void ph_run(const ConvGeo& g, const PhJob& j, const T* src, const T* Ap, const T* b,
                   T* out, int nt) {
    const long pt = round_up(j.R * j.ncols, Blk<T>::NR);
#pragma omp parallel num_threads(nt)
    {
        DenormalGuard fp;
        T* Xp = tscratch<T>(kPhPlanes, j.cn * j.nph * j.rowsP * j.Wp);
        T* Bp = tscratch<T>(kPhPackB, j.K * pt);
        T* Cb = tscratch<T>(kPhTileC, j.M * pt);
#pragma omp for schedule(dynamic, 1)
        for (long it = 0; it < j.items; ++it) ph_item<T>(g, j, it, src, Ap, b, out, Xp, Bp, Cb, pt);
    }
}

// The input gradient's tile (image n, group gi, rows i0 .. i0 + R and columns j0 .. j0 +
// ncols of the phase grid) of every phase job: the products into Cb (one M x pt block
// per job), then gx's rows written whole, the phases interleaved (strided stores to a
// row in L1, not across all of gx per phase).
template <class T>
static void ph_bwd_item(const ConvGeo& g, const PhJob* jobs, long nj, const long* ao, long it,
                        const T* gy, const T* Ap, const T* b, T* gx, T* Xp, T* Bp, T* Cb,
                        long pt) {
    const PhJob& j0b = jobs[0];
    const long per_g = j0b.items / g.G;
    const long gi = it / per_g, r = it % per_g;
    const long n = r / (j0b.nrt * j0b.nct), tr = r % (j0b.nrt * j0b.nct);
    const long i0 = (tr / j0b.nct) * j0b.R, c0 = (tr % j0b.nct) * j0b.ncols;
    const long M = g.cg, sy = g.s[1], sx = g.s[2], W = g.in[2];
    for (long p = 0; p < nj; ++p) {
        const PhJob& j = jobs[p];
        const long nr = imin(j.Ho, i0 + j0b.R) - i0, nc = imin(j.Wo, c0 + j0b.ncols) - c0;
        if (nr <= 0 || nc <= 0) continue;
        T* cb = Cb + p * M * pt;
        if (j.K == 0) {
            fill<T>(cb, M * pt, T(0));
        } else {
            ph_planes<T>(j, gy + (n * g.G + gi) * j.cn * j.Hs * j.Ws, j.cn, j.Hs * j.Ws, i0,
                         nr, c0, nc, Xp);
            ph_panels<T>(j, Xp, nr * nc, nc, Bp);
            gemm_packed<T>(M, nr * nc, j.K, Ap + ao[p] + gi * j.apanel, Bp, cb, pt, false);
        }
        for (long c = 0; c < M; ++c)
            bias_act_row<T>(cb + c * pt, cb + c * pt, nr * nc, b ? b + gi * M + c : nullptr,
                            g.act, (T)g.slope);
    }
    for (long c = 0; c < M; ++c) {
        T* gc = gx + (n * g.C + gi * M + c) * g.Pin;
        for (long i = i0; i < i0 + j0b.R; ++i)
            for (long p = 0; p < nj; ++p) {
                const PhJob& j = jobs[p];
                const long nr = imin(j.Ho, i0 + j0b.R) - i0;
                const long nc = imin(j.Wo, c0 + j0b.ncols) - c0;
                if (i - i0 >= nr || nc <= 0) continue;
                // j.oo = py * W + px: this phase's row sy*i + py, columns sx*(c0 + jj) + px
                T* d = gc + j.oo + i * sy * W + c0 * sx;
                const T* s = Cb + (p * M + c) * pt + (i - i0) * nc;
                for (long jj = 0; jj < nc; ++jj) d[jj * sx] = s[jj];
            }
    }
}

// The weight gradient's tiles (conv_bwd_weight, gemm-phase): the job of the forward's
// taps over a chunk of cc channels, tiles of R whole output rows (Wo <= Blk::KC); the
// caller fills im2col rows from ph_planes with ph_rows.
static inline void ph_wgrad_job(const ConvGeo& g, long cc, long R, long* tab, PhJob& j) {
    j.M = g.og;
    j.cn = cc;
    j.ntap = g.k[1] * g.k[2];
    j.K = cc * j.ntap;
    j.Hs = g.in[1];
    j.Ws = g.in[2];
    j.sy = g.s[1];
    j.sx = g.s[2];
    j.Ho = g.out[1];
    j.Wo = g.out[2];
    for (long t = 0; t < j.ntap; ++t) {
        const long oy = (t / g.k[2]) * g.d[1] - g.lo[1], ox = (t % g.k[2]) * g.d[2] - g.lo[2];
        long* q = tab + 4 * t;
        q[1] = floor_div(oy, j.sy);
        q[0] = oy - q[1] * j.sy;
        q[3] = floor_div(ox, j.sx);
        q[2] = ox - q[3] * j.sx;
    }
    j.tap = tab;
    ph_phases(j, tab + 4 * j.ntap);
    j.R = R;
    j.ncols = j.Wo;
    j.rowsP = R + j.eyspan;
    j.Wp = j.Wo + j.exspan;
    ph_offsets(j, tab + 6 * j.ntap);
    j.koff = tab + 6 * j.ntap;
}
// D row k (pitch pt) = the im2col row k (k < rows) of the nr output rows in Xp.
template <class T>
static void ph_rows(const PhJob& j, const T* Xp, long rows, long nr, T* D, long pt) {
    for (long k = 0; k < rows; ++k) {
        const T* s = Xp + j.koff[k];
        T* d = D + k * pt;
        for (long r = 0; r < nr; ++r)
            std::memcpy(d + r * j.Wo, s + r * j.Wp, (std::size_t)j.Wo * sizeof(T));
    }
}

// The forward: one job, every tap, of the phases of x.
template <class T>
static void conv_fwd_phase(const ConvGeo& g, const T* x, const T* w, const T* b, T* y, int nt) {
    constexpr int MR = Blk<T>::MR;
    PhJob j;
    j.M = g.og;
    j.cn = g.cg;
    j.ntap = g.k[1] * g.k[2];
    j.K = g.Kw;
    j.Hs = g.in[1];
    j.Ws = g.in[2];
    j.sy = g.s[1];
    j.sx = g.s[2];
    j.Ho = g.out[1];
    j.Wo = g.out[2];
    if (g.N == 0 || j.M == 0 || j.Ho == 0 || j.Wo == 0) return;
    // taps (4 longs), phases (2 * ntap), koff (K): one shared table
    long* tab = tscratch<long>(kPhTables, 6 * j.ntap + j.K);
    for (long t = 0; t < j.ntap; ++t) {
        const long oy = (t / g.k[2]) * g.d[1] - g.lo[1], ox = (t % g.k[2]) * g.d[2] - g.lo[2];
        long* q = tab + 4 * t;
        q[1] = floor_div(oy, j.sy);
        q[0] = oy - q[1] * j.sy;
        q[3] = floor_div(ox, j.sx);
        q[2] = ox - q[3] * j.sx;
    }
    j.tap = tab;
    ph_phases(j, tab + 4 * j.ntap);
    ph_tiles<T>(j, g.G, g.N);
    ph_offsets(j, tab + 6 * j.ntap);
    j.koff = tab + 6 * j.ntap;
    j.on = g.O * g.Pout;
    j.om = g.Pout;
    j.orow = g.out[2];
    j.ocol = 1;
    j.apanel = round_up(j.M, MR) * j.K;
    T* Ap = tscratch<T>(kPhPackedW, g.G * j.apanel);
    for (long gi = 0; gi < g.G; ++gi)
        pack_a<T>(j.M, j.K, w + gi * j.M * j.K, j.K, 1, Ap + gi * j.apanel);
    ph_run<T>(g, j, x, Ap, b, y, nt);
}

// The input gradient: a job per phase (py, px) of gx, each a stride-1 correlation of gy
// with that phase's taps (none: the bias alone), on one tiling of the phase grid (that
// of phase (0, 0), the largest); an item runs a tile of every phase (ph_bwd_item).
template <class T>
static void conv_bwd_data_phase(const ConvGeo& g, const T* gy, const T* w, const T* b, T* gx,
                                int nt) {
    constexpr int MR = Blk<T>::MR, NR = Blk<T>::NR;
    const long sy = g.s[1], sx = g.s[2], H = g.in[1], W = g.in[2];
    const long kh = g.k[1], kw = g.k[2];
    if (g.N == 0 || g.cg == 0 || H == 0 || W == 0) return;
    const long fy = imin(sy, H), fx = imin(sx, W), nj = fy * fx;
    // One shared table: the jobs, their A offsets, then per phase its taps (4 longs
    // each), their flat indices, the phase list (2 longs a tap) and koff (og * taps).
    const long jl = ceil_div((long)sizeof(PhJob), (long)sizeof(long));
    const long per = 7 * g.T + g.og * g.T;
    long* buf = tscratch<long>(kPhTables, nj * (jl + 1 + per));
    PhJob* jobs = reinterpret_cast<PhJob*>(buf);
    long* ao = buf + nj * jl;
    long maxk = 0;
    for (long py = 0; py < fy; ++py)
        for (long px = 0; px < fx; ++px) {
            const long p = py * fx + px;
            long* pt = ao + nj + p * per;
            long* flat = pt + 4 * g.T;
            long ntap = 0;
            for (long ky = 0; ky < kh && g.og > 0; ++ky) {
                const long ry = py + g.lo[1] - ky * g.d[1];
                if (floor_div(ry, sy) * sy != ry) continue;
                for (long kx = 0; kx < kw; ++kx) {
                    const long rx = px + g.lo[2] - kx * g.d[2];
                    if (floor_div(rx, sx) * sx != rx) continue;
                    long* q = pt + 4 * ntap;
                    q[0] = 0;
                    q[1] = ry / sy;
                    q[2] = 0;
                    q[3] = rx / sx;
                    flat[ntap++] = ky * kw + kx;
                }
            }
            PhJob& j = jobs[p];
            j = PhJob();
            j.M = g.cg;
            j.cn = g.og;
            j.ntap = ntap;
            j.K = g.og * ntap;
            j.Hs = g.out[1];
            j.Ws = g.out[2];
            j.Ho = ceil_div(H - py, sy);
            j.Wo = ceil_div(W - px, sx);
            j.tap = pt;
            ph_phases(j, pt + 5 * g.T);
            j.oo = py * W + px;
            j.apanel = round_up(j.M, MR) * j.K;
            maxk = imax(maxk, j.K);
        }
    // The common tiling: phase (0, 0)'s, for the longest reduction.
    PhJob t0 = jobs[0];
    t0.K = imax(1, maxk);
    ph_tiles<T>(t0, g.G, g.N);
    long apos = 0, xs = 1;
    for (long p = 0; p < nj; ++p) {
        PhJob& j = jobs[p];
        j.R = t0.R;
        j.nrt = t0.nrt;
        j.ncols = t0.ncols;
        j.nct = t0.nct;
        j.items = t0.items;
        j.rowsP = j.R + j.eyspan;
        j.Wp = j.ncols + j.exspan;
        long* pt = ao + nj + p * per;
        ph_offsets(j, pt + 7 * g.T);
        j.koff = pt + 7 * g.T;
        ao[p] = apos;
        apos += g.G * j.apanel;
        xs = imax(xs, j.cn * j.nph * j.rowsP * j.Wp);
    }
    // A of job p, group gi: A[c, o * ntap + t] = w[gi*og + o, c, flat tap t], packed
    // (through rows, the caller's slot-0 buffer, free until the parallel region).
    T* Ap = tscratch<T>(kPhPackedW, apos);
    T* rows = tscratch<T>(kPhWeightRows, g.cg * maxk);
    for (long p = 0; p < nj; ++p) {
        const PhJob& j = jobs[p];
        if (j.K == 0) continue;
        const long* flat = j.tap + 4 * g.T;
        for (long gi = 0; gi < g.G; ++gi) {
            for (long c = 0; c < g.cg; ++c)
                for (long o = 0; o < g.og; ++o) {
                    const T* s = w + (gi * g.og + o) * g.Kw + c * g.T;
                    T* d = rows + c * j.K + o * j.ntap;
                    for (long t = 0; t < j.ntap; ++t) d[t] = s[flat[t]];
                }
            pack_a<T>(j.M, j.K, rows, j.K, 1, Ap + ao[p] + gi * j.apanel);
        }
    }
    const long pt = round_up(t0.R * t0.ncols, NR), items = t0.items;
#pragma omp parallel num_threads(nt)
    {
        DenormalGuard fp;
        T* Xp = tscratch<T>(kPhPlanes, xs);
        T* Bp = tscratch<T>(kPhPackB, maxk * pt);
        T* Cb = tscratch<T>(kPhTileC, nj * g.cg * pt);
#pragma omp for schedule(dynamic, 1)
        for (long it = 0; it < items; ++it)
            ph_bwd_item<T>(g, jobs, nj, ao, it, gy, Ap, b, gx, Xp, Bp, Cb, pt);
    }
}

}  // namespace CNNFAST_KNS
}  // namespace cnnfast
