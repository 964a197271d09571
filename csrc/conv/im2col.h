// im2col / col2im of one tap row over a run of output columns, and the column tile
// of the GEMM paths.
// A part of the per-ISA kernels, in namespace cnnfast::CNNFAST_KNS: included by
// kernels_impl.h (compiled once per ISA, see there), not on its own.
#pragma once

#include "kernels.h"
#include "common/index.h"
#include "gemm/blocking.h"

namespace cnnfast {
namespace CNNFAST_KNS {

// Walks the flattened output columns q in [q0, q1) (q = n*Pout + p) of tap
// (kz, ky, kx) as row segments, calling f(plane_offset_of_n, iz, iy, ox_begin, len,
// dst_offset, xa, xb) where [xa, xb) are the ox with an in-bounds input column.
template <class F>
static inline void walk_columns(const ConvGeo& g, long kz, long ky, long kx, long q0, long q1,
                                F&& f) {
    long n = q0 / g.Pout, p = q0 % g.Pout;
    long ox = p % g.out[2];
    long t = p / g.out[2];
    long oy = t % g.out[1], oz = t / g.out[1];
    const long offx = kx * g.d[2] - g.lo[2];
    long xa, xb;
    valid_range(g.out[2], g.s[2], offx, g.in[2], xa, xb);
    long q = q0, pos = 0;
    while (q < q1) {
        const long len = imin(g.out[2] - ox, q1 - q);
        const long iz = oz * g.s[0] + kz * g.d[0] - g.lo[0];
        const long iy = oy * g.s[1] + ky * g.d[1] - g.lo[1];
        f(n, iz, iy, ox, len, pos, xa, xb, offx);
        pos += len;
        q += len;
        ox += len;
        if (ox == g.out[2]) {
            ox = 0;
            if (++oy == g.out[1]) {
                oy = 0;
                if (++oz == g.out[0]) {
                    oz = 0;
                    ++n;
                }
            }
        }
    }
}

// dst[0 .. q1-q0) = input values tap (kz, ky, kx) reads for columns q0..q1 of channel
// plane xc (xc points at image 0's plane; images are xn apart). Zeros where padded.
template <class T>
static void im2col_row(const T* xc, long xn, const ConvGeo& g, long kz, long ky, long kx,
                       long q0, long q1, T* dst) {
    const long sx = g.s[2];
    walk_columns(g, kz, ky, kx, q0, q1,
                 [&](long n, long iz, long iy, long ox, long len, long pos, long xa, long xb,
                     long offx) {
                     T* d = dst + pos;
                     if (iz < 0 || iz >= g.in[0] || iy < 0 || iy >= g.in[1]) {
                         fill<T>(d, len, T(0));
                         return;
                     }
                     const T* src = xc + n * xn + (iz * g.in[1] + iy) * g.in[2];
                     const long a = imax(ox, xa), b = imin(ox + len, xb);
                     if (a >= b) {
                         fill<T>(d, len, T(0));
                         return;
                     }
                     fill<T>(d, a - ox, T(0));
                     CNN_CHECK("im2col", a * sx + offx, g.in[2]);
                     CNN_CHECK("im2col", (b - 1) * sx + offx, g.in[2]);
                     T* dd = d - ox;
                     if (sx == 1) {
                         const T* s = src + offx;
                         for (long o = a; o < b; ++o) dd[o] = s[o];
                     } else {
                         for (long o = a; o < b; ++o) dd[o] = src[o * sx + offx];
                     }
                     fill<T>(dd + b, ox + len - b, T(0));
                 });
}

// The adjoint of im2col_row: gx plane += the column values of one tap.
template <class T>
static void col2im_row(T* xc, long xn, const ConvGeo& g, long kz, long ky, long kx, long q0,
                       long q1, const T* src) {
    const long sx = g.s[2];
    walk_columns(g, kz, ky, kx, q0, q1,
                 [&](long n, long iz, long iy, long ox, long len, long pos, long xa, long xb,
                     long offx) {
                     if (iz < 0 || iz >= g.in[0] || iy < 0 || iy >= g.in[1]) return;
                     T* dst = xc + n * xn + (iz * g.in[1] + iy) * g.in[2];
                     const long a = imax(ox, xa), b = imin(ox + len, xb);
                     if (a >= b) return;
                     CNN_CHECK("col2im", a * sx + offx, g.in[2]);
                     CNN_CHECK("col2im", (b - 1) * sx + offx, g.in[2]);
                     const T* s = src + pos - ox;
                     if (sx == 1) {
                         T* d = dst + offx;
                         for (long o = a; o < b; ++o) d[o] += s[o];
                     } else {
                         for (long o = a; o < b; ++o) dst[o * sx + offx] += s[o];
                     }
                 });
}

static inline void tap_of(const ConvGeo& g, long t, long& kz, long& ky, long& kx) {
    kx = t % g.k[2];
    t /= g.k[2];
    ky = t % g.k[1];
    kz = t / g.k[1];
}

// Columns per tile for a product with K reduction rows: keeps the K x tile panel of
// B within ~512 KiB (half the L2 of a core), a multiple of NR, at most 768.
template <class T>
static long col_tile(long K) {
    constexpr int NR = Blk<T>::NR;
    long t = (512L * 1024) / (K * (long)sizeof(T));
    t = t / NR * NR;
    return imax(NR * 4, imin(t, 768));
}

}  // namespace CNNFAST_KNS
}  // namespace cnnfast
