// act_grad: the first step of the backward pass of a conv with a fused activation,
// g = gy * act'(y) read from the activated output y (cnnfast/activation.py: relu
// y > 0 ? gy : 0; leaky_relu y > 0 ? gy : gy * slope; sigmoid gy * (y * (1 - y));
// tanh gy * ((1 - y) * (1 + y)), accurate as |y| -> 1 where 1 - y * y is not without an
// FMA; a NaN y takes the "else" side), and in the same pass the bias
// gradient, the sum of g per channel. The gradient kernels then read g.
// The bias sums have bias_grad's order exactly (8 partial sums per (n, o) row, added
// over n in order, then the same pairwise combination): the same bits as bias_grad(g),
// for any thread count.
// A part of the per-ISA kernels, in namespace cnnfast::CNNFAST_KNS: included by
// kernels_impl.h (compiled once per ISA, see there), not on its own.
#pragma once

#include "kernels.h"
#include "common/denormal.h"
#include "common/scratch.h"
#include "common/simd.h"

namespace cnnfast {
namespace CNNFAST_KNS {

// gy * act'(y) for one value and one vector of each (A: the ActKind, a constant, so
// the loops below hold no switch and no branch: compare and blend).
template <class T, int A, class V>
static inline V dact(V gy, V y, V zero, V one, V slope) {
    if constexpr (A == kActRelu) return y > zero ? gy : zero;
    if constexpr (A == kActLeakyRelu) return y > zero ? gy : gy * slope;
    if constexpr (A == kActSigmoid) return gy * (y * (one - y));
    if constexpr (A == kActTanh) return gy * ((one - y) * (one + y));
    return gy;
}

// g[j] = gy[j] * act'(y[j]) for j < n, a vector at a time.
template <class T, int A>
static void act_grad_row_a(const T* gy, const T* y, T* g, long n, T slope) {
    typedef typename DV<T>::v V;
    constexpr int L = DV<T>::L;
    const V z = dsplat<T>(T(0)), o = dsplat<T>(T(1)), s = dsplat<T>(slope);
    long j = 0;
    for (; j + L <= n; j += L)
        dstore<T>(g + j, dact<T, A, V>(dload<T>(gy + j), dload<T>(y + j), z, o, s));
    for (; j < n; ++j) g[j] = dact<T, A, T>(gy[j], y[j], T(0), T(1), slope);
}

template <class T>
static void act_grad_row(const T* gy, const T* y, T* g, long n, int act, T slope) {
    switch (act) {
        case kActRelu: return act_grad_row_a<T, kActRelu>(gy, y, g, n, slope);
        case kActLeakyRelu: return act_grad_row_a<T, kActLeakyRelu>(gy, y, g, n, slope);
        case kActSigmoid: return act_grad_row_a<T, kActSigmoid>(gy, y, g, n, slope);
        case kActTanh: return act_grad_row_a<T, kActTanh>(gy, y, g, n, slope);
        default: return act_grad_row_a<T, kActNone>(gy, y, g, n, slope);
    }
}

template <class T>
static void act_grad(long N, long O, long P, const T* gy, const T* y, int act, double slope_,
                     T* g, T* gb, int nt) {
    const T slope = (T)slope_;
    const long items = N * O;
    // The 8 partial sums of each (n, o) row (shared: written by the row's thread, added
    // up per channel after the barrier).
    T* part = gb ? tscratch<T>(kActGradSums, items * 8) : nullptr;
    // Rows in blocks of kB values (a multiple of 8, so a block's sums keep the row's
    // lane order): g is summed while the block is in L1.
    constexpr long kB = 512;
#pragma omp parallel num_threads(nt)
    {
        DenormalGuard fp;
#pragma omp for schedule(static)
        for (long it = 0; it < items; ++it) {
            const T* s = gy + it * P;
            const T* ys = y + it * P;
            T* d = g + it * P;
            if (!part) {
                act_grad_row<T>(s, ys, d, P, act, slope);
                continue;
            }
            T acc[8] = {T(0), T(0), T(0), T(0), T(0), T(0), T(0), T(0)};
            for (long i0 = 0; i0 < P; i0 += kB) {
                const long n = P - i0 < kB ? P - i0 : kB;
                act_grad_row<T>(s + i0, ys + i0, d + i0, n, act, slope);
                const T* b = d + i0;
                long i = 0;
                for (; i + 8 <= n; i += 8)
                    for (int j = 0; j < 8; ++j) acc[j] += b[i + j];
                for (; i < n; ++i) acc[i & 7] += b[i];
            }
            for (int j = 0; j < 8; ++j) part[it * 8 + j] = acc[j];
        }
        if (part) {
#pragma omp for schedule(static)
            for (long o = 0; o < O; ++o) {
                T acc[8] = {T(0), T(0), T(0), T(0), T(0), T(0), T(0), T(0)};
                for (long n = 0; n < N; ++n)
                    for (int j = 0; j < 8; ++j) acc[j] += part[(n * O + o) * 8 + j];
                gb[o] = ((acc[0] + acc[4]) + (acc[1] + acc[5])) +
                        ((acc[2] + acc[6]) + (acc[3] + acc[7]));
            }
        }
    }
}

}  // namespace CNNFAST_KNS
}  // namespace cnnfast
