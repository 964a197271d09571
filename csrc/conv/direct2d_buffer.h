// The direct 2-d kernels' (d2_*) geometry, the zero-padded input-row buffer and the
// row pointers of a block of output rows.
// A part of the per-ISA kernels, in namespace cnnfast::CNNFAST_KNS: included by
// kernels_impl.h (compiled once per ISA, see there), not on its own.
#pragma once

#include "common/index.h"
#include "common/scratch.h"
#include "common/simd.h"

namespace cnnfast {
namespace CNNFAST_KNS {

// One plane of a 2-d correlation:
//   y[oy][ox] (+)= sum_{ky,kx} w[ky][kx] * v[oy*sy + ky*dy - loy][ox*sx + kx*dx - lox]
// where v is the input plane x (xh x xw) upsampled by (uy, ux): v[a][b] = x[a/uy][b/ux]
// when uy | a and ux | b, else 0 (also 0 outside v, which is H x W).

struct D2 {
    long xh, xw, uy, ux, H, W, Ho, Wo, sy, sx, dy, dx, loy, lox, kh, kw;
    // derived by d2_geo
    long Wp;       // padded columns read: the buffer row is sx phase rows of Wq
    long Wq, pitch;
    bool inplace;  // x rows used as they are (no buffer)
    long R, brows; // output rows per block, buffer rows per block
    long zlen;     // length of the zero row
};

static inline D2 d2_geo(long xh, long xw, long uy, long ux, long Ho, long Wo, long sy, long sx,
                        long dy, long dx, long loy, long lox, long kh, long kw, long tsize) {
    D2 q;
    q.xh = xh, q.xw = xw, q.uy = uy, q.ux = ux;
    q.H = (xh - 1) * uy + 1, q.W = (xw - 1) * ux + 1;
    q.Ho = Ho, q.Wo = Wo, q.sy = sy, q.sx = sx, q.dy = dy, q.dx = dx, q.loy = loy, q.lox = lox;
    q.kh = kh, q.kw = kw;
    q.Wp = (Wo - 1) * sx + (kw - 1) * dx + 1;
    q.inplace = sx == 1 && ux == 1 && uy == 1 && lox == 0 && q.Wp <= q.W;
    // buffer rows start on a cache line: fewer vector loads straddle two lines
    q.Wq = q.inplace ? q.W : round_up(ceil_div(q.Wp, sx), 64 / tsize);
    q.pitch = q.inplace ? q.W : sx * q.Wq;
    const long ey = (kh - 1) * dy;
    if (q.inplace) {
        q.R = Ho;
        q.brows = 0;
    } else {
        // blocks of ~4 KiB of buffer: measured faster than whole planes, whose
        // copy is a long burst of loads before any arithmetic
        const long cap = 4096 / (tsize * q.pitch);
        long R = cap > ey + 1 ? (cap - ey - 1) / sy + 1 : 1;
        R = imin(Ho, imax(1, R));
        R = ceil_div(Ho, ceil_div(Ho, R));
        q.R = R;
        q.brows = (R - 1) * sy + ey + 1;
    }
    q.zlen = imax(q.Wq, Wo) + 64;
    return q;
}

// Rows [iy0, iy0 + n) of v into the buffer (rows outside v or between upsampled rows
// are left alone: they read the zero row). Only the positions holding v values are
// written: the rest of the buffer (padding, upsampling zeros) is the same for every
// row and block of a call, zeroed once by d2_buffers.
template <class T>
static void d2_fill(const D2& q, const T* x, long iy0, long n, T* buf) {
    typedef typename DV<T>::v V;
    constexpr int L = DV<T>::L;
    const long Wfull = q.sx * q.Wq;
    // padded column j holds v column j - lox; [ja, jb): the ones inside v
    const long ja = imin(Wfull, imax(0, q.lox)), jb = imax(ja, imin(Wfull, q.W + q.lox));
    for (long r = 0; r < n; ++r) {
        const long iy = iy0 + r;
        if (iy < 0 || iy >= q.H || (q.uy != 1 && iy % q.uy)) continue;
        const T* s = x + (q.uy == 1 ? iy : iy / q.uy) * q.xw;
        T* d = buf + r * q.pitch;
        if (q.ux == 1 && q.sx == 1) {
            const T* sj = s - q.lox;  // sj[j] = v column j - lox, for j in [ja, jb)
            long j = ja;
            for (; j + L <= jb; j += L) dstore<T>(d + j, dload<T>(sj + j));
            for (; j < jb; ++j) d[j] = sj[j];
        } else if (q.ux == 1) {
            // phase ph, index i: padded column i*sx + ph
            for (long ph = 0; ph < q.sx; ++ph) {
                T* dp = d + ph * q.Wq;
                const long ia = imin(q.Wq, imax(0, ceil_div(ja - ph, q.sx)));
                const long ib = imax(ia, imin(q.Wq, ceil_div(jb - ph, q.sx)));
                const T* sp = s + (ph - q.lox);  // sp[i*sx] = v column i*sx + ph - lox
                if (q.sx == 2) {
                    long i = ia;
                    // deinterleave 2 vectors (their last element is not needed: stop
                    // one short, so that it is never read past the row)
                    for (; i + L < ib; i += L) {
                        V a = dload<T>(sp + 2 * i), b = dload<T>(sp + 2 * i + L), e;
                        for (int k = 0; k < L / 2; ++k) {
                            e[k] = a[2 * k];
                            e[k + L / 2] = b[2 * k];
                        }
                        dstore<T>(dp + i, e);
                    }
                    for (; i < ib; ++i) dp[i] = sp[2 * i];
                } else {
                    for (long i = ia; i < ib; ++i) dp[i] = sp[i * q.sx];
                }
            }
        } else {
            // upsampled columns (sx == 1 here): the real columns only
            const long ka = ceil_div(ja - q.lox, q.ux), kb = ceil_div(jb - q.lox, q.ux);
            for (long k = ka; k < kb; ++k) d[k * q.ux + q.lox] = s[k];
        }
    }
}

// The per-thread buffer (zeroed: see d2_fill) and zero row of a call.
template <class T>
static inline void d2_buffers(const D2& q, T*& buf, T*& zrow) {
    buf = nullptr;
    if (!q.inplace) {
        buf = tscratch<T>(kD2Rows, q.brows * q.pitch);
        fill<T>(buf, q.brows * q.pitch, T(0));
    }
    zrow = tscratch<T>(kD2ZeroRow, q.zlen);
    fill<T>(zrow, q.zlen, T(0));
}

// The next plane a thread reads, prefetched while it computes this one (the copy into
// the buffer is a burst of loads that would otherwise wait for memory).
struct D2Next {
    const void* p[2] = {nullptr, nullptr};
    long bytes[2] = {0, 0};
};
// Prefetch the part of `nx` that belongs to output rows [oy0, oy1) of Ho.
static inline void d2_prefetch(const D2Next& nx, long oy0, long oy1, long Ho) {
    for (int k = 0; k < 2; ++k) {
        if (!nx.p[k]) continue;
        const long lines = (nx.bytes[k] + 63) / 64, per = ceil_div(lines, Ho);
        const char* c = static_cast<const char*>(nx.p[k]);
        for (long l = oy0 * per; l < imin(lines, oy1 * per); ++l)
            __builtin_prefetch(c + l * 64, 0, 3);
    }
}

// Where tap row ky of output row oy reads (the zero row when outside v).
template <class T>
static inline const T* d2_row(const D2& q, const T* x, const T* buf, long oy, long ky,
                              long iy0) {
    const long iy = oy * q.sy + ky * q.dy - q.loy;
    if (iy < 0 || iy >= q.H) return nullptr;
    if (q.uy != 1 && iy % q.uy) return nullptr;  // (no division in the common case)
    if (q.inplace) return x + iy * q.xw;         // uy == 1 here
    return buf + (iy - iy0) * q.pitch;
}

// Offset of tap kx within its (phase-split) row: column phase (kx*dx mod sx) selects
// the phase row, the quotient the position in it.
template <int KW>
static inline void d2_tap_offsets(const D2& q, long* toff) {
    for (int kx = 0; kx < KW; ++kx) {
        const long j = kx * q.dx;
        toff[kx] = (j % q.sx) * q.Wq + j / q.sx;
    }
}

// The (RB-1)*sy + KH input rows feeding output rows [oy, oy + RB) (dy == 1), the
// zero row standing for rows outside the input.
template <class T, int KH, int RB>
static inline void d2_block_rows(const D2& q, const T* x, const T* buf, long oy, long iy0,
                                 const T* zrow, const T** rp) {
    for (long i = 0; i < (RB - 1) * q.sy + KH; ++i) {
        const T* row = d2_row<T>(q, x, buf, oy, i, iy0);
        rp[i] = row ? row : zrow;
    }
}

// Where each of the KH x KW taps of output row oy starts reading.
template <class T, int KH, int KW>
static inline void d2_tap_rows(const D2& q, const T* x, const T* buf, long oy, long iy0,
                               const T* zrow, const long* toff, const T** p) {
    for (int ky = 0; ky < KH; ++ky) {
        const T* row = d2_row<T>(q, x, buf, oy, ky, iy0);
        for (int kx = 0; kx < KW; ++kx) p[ky * KW + kx] = row ? row + toff[kx] : zrow;
    }
}

}  // namespace CNNFAST_KNS
}  // namespace cnnfast
