// The fused activation epilogue (ConvGeo::act, an ActKind of kernels.h): applied by
// every conv kernel that writes a layer's output (y of conv_fwd, gx of conv_bwd_data as
// the forward pass of a transposed convolution) to the final values, after the bias,
// while they are in registers or in L1; and its derivative read from the output (the
// backward pass, conv/act_grad.h).
//
// The formulas are those of cnnfast/activation.py (the reference), in the same order,
// so that relu and leaky_relu give the same bits as the reference applied afterwards:
//  * relu: v > 0 ? v : 0, NaN kept (np.maximum(v, 0): -0.0 gives +0.0, NaN stays NaN);
//  * leaky_relu: v < 0 ? v * slope : v (NaN and -0.0 kept, as the reference's where=);
//  * sigmoid: e = exp(-|v|), v >= 0 ? 1 / (1 + e) : e / (1 + e) -- no overflow on
//    either side, saturates to exactly 0 and 1, NaN stays NaN;
//  * tanh: saturates to +-1, NaN stays NaN.
// float32 sigmoid and tanh are vectorised here (vf_*: Cephes' expf and tanhf, within 2-3
// ulps, as numpy's own SIMD float32 exp and tanh); float64 calls libm's exp and tanh
// (__builtin_*: no std:: templates in the per-ISA code, see kernels_impl.h) as numpy's
// float64 does. tests/test_cpp_activation.py holds both to a few ulps of numpy.
// A part of the per-ISA kernels, in namespace cnnfast::CNNFAST_KNS: included by
// kernels_impl.h (compiled once per ISA, see there), not on its own.
#pragma once

#include "kernels.h"
#include "common/simd.h"

namespace cnnfast {
namespace CNNFAST_KNS {

static inline float act_exp(float v) { return __builtin_expf(v); }
static inline double act_exp(double v) { return __builtin_exp(v); }
static inline float act_tanh(float v) { return __builtin_tanhf(v); }
static inline double act_tanh(double v) { return __builtin_tanh(v); }

template <class T>
static inline T act_sigmoid(T v) {
    if (v != v) return v;  // NaN: the very value, as the reference leaves it
    const T e = act_exp(v < T(0) ? v : -v);  // exp(-|v|)
    return v >= T(0) ? T(1) / (T(1) + e) : e / (T(1) + e);
}

// float32 sigmoid and tanh a vector at a time (libm's tanhf is ~20 ns a value, 10x
// numpy's own SIMD tanh): exp of x <= 0 by Cephes' expf -- x = n ln2 + r, |r| <= ln2/2,
// a degree-7 polynomial (within 1 ulp of exp(r)), times 2^n built in two halves so that
// results down to the denormals are made without overflowing the exponent field.
typedef DV<float>::v VF;
typedef DV<float>::m VI;

static inline VF vf_exp_neg(VF x) {  // exp(x) for x <= 0; NaN stays NaN
    const VF lo = dsplat<float>(-110.0f);  // exp(-110) rounds to 0
    const VF xc = x >= lo ? x : lo;        // NaN (and -inf) compare false: -110
    const VF magic = dsplat<float>(12582912.0f);  // 1.5 * 2^23: adding it rounds to an integer
    const VF t = xc * dsplat<float>(1.44269504088896341f) + magic;
    const VF n = t - magic;
    VI ni, tb, mb;
    __builtin_memcpy(&tb, &t, sizeof t);
    __builtin_memcpy(&mb, &magic, sizeof magic);
    ni = tb - mb;  // n as an integer, without a float -> int conversion
    const VF r = (xc - n * dsplat<float>(0.693359375f)) + n * dsplat<float>(2.12194440e-4f);
    VF p = dsplat<float>(1.9875691500e-4f);
    p = p * r + dsplat<float>(1.3981999507e-3f);
    p = p * r + dsplat<float>(8.3334519073e-3f);
    p = p * r + dsplat<float>(4.1665795894e-2f);
    p = p * r + dsplat<float>(1.6666665459e-1f);
    p = p * r + dsplat<float>(5.0000001201e-1f);
    p = p * (r * r) + r + dsplat<float>(1.0f);
    const VI n1 = ni >> 1, n2 = ni - n1;  // each >= -76: 2^n1, 2^n2 are normal
    const VI e1 = (n1 + 127) << 23, e2 = (n2 + 127) << 23;
    VF s1, s2;
    __builtin_memcpy(&s1, &e1, sizeof s1);
    __builtin_memcpy(&s2, &e2, sizeof s2);
    const VF e = p * s1 * s2;
    return x != x ? x : e;
}

static inline VF vf_sigmoid(VF v) {
    const VF zero = dsplat<float>(0.0f), one = dsplat<float>(1.0f);
    const VF e = vf_exp_neg(v < zero ? v : -v);
    const VF s = v >= zero ? one / (one + e) : e / (one + e);
    return v != v ? v : s;  // NaN: the very value, as the reference leaves it
}

// tanh |v| = (1 - e) / (1 + e), e = exp(-2|v|), for |v| >= 0.625 (no cancellation:
// e <= 0.29); below, Cephes' tanhf polynomial v + v^3 P(v^2). The sign is v's.
static inline VF vf_tanh(VF v) {
    const VF zero = dsplat<float>(0.0f), one = dsplat<float>(1.0f);
    const VF a = v < zero ? -v : v;
    const VF e = vf_exp_neg(dsplat<float>(-2.0f) * a);
    VF big = (one - e) / (one + e);
    big = v < zero ? -big : big;
    const VF z = v * v;
    VF p = dsplat<float>(-5.70498872745e-3f);
    p = p * z + dsplat<float>(2.06390887954e-2f);
    p = p * z + dsplat<float>(-5.37397155531e-2f);
    p = p * z + dsplat<float>(1.33314422036e-1f);
    p = p * z + dsplat<float>(-3.33332819422e-1f);
    const VF small = p * z * v + v;
    const VF t = a < dsplat<float>(0.625f) ? small : big;
    return v != v ? v : t;  // NaN: the very value
}

// sigmoid or tanh of one vector: float32 vectorised above, float64 through libm (as
// numpy's float64 does).
template <class T>
static inline typename DV<T>::v act_vec_smooth(typename DV<T>::v v, int act) {
    if constexpr (sizeof(T) == 4) {
        return act == kActSigmoid ? vf_sigmoid(v) : vf_tanh(v);
    } else {
        T t[DV<T>::L];
        __builtin_memcpy(t, &v, sizeof v);
        for (int l = 0; l < DV<T>::L; ++l)
            t[l] = act == kActSigmoid ? act_sigmoid<T>(t[l]) : act_tanh(t[l]);
        __builtin_memcpy(&v, t, sizeof v);
        return v;
    }
}

// p[j] = sigmoid or tanh of p[j], j < n, a vector at a time (the tail through a
// zero-padded vector).
template <class T>
static void act_row_smooth(T* p, long n, int act) {
    constexpr int L = DV<T>::L;
    long j = 0;
    for (; j + L <= n; j += L) dstore<T>(p + j, act_vec_smooth<T>(dload<T>(p + j), act));
    if (j < n) {
        T t[L];
        for (int l = 0; l < L; ++l) t[l] = j + l < n ? p[j + l] : T(0);
        dstore<T>(t, act_vec_smooth<T>(dload<T>(t), act));
        for (int l = 0; j + l < n; ++l) p[j + l] = t[l];
    }
}

// relu and leaky_relu of one value and of one vector (compare and blend, no branch).
template <class T>
static inline T act_piece(T v, int act, T slope) {
    if (act == kActRelu) return (v > T(0)) | (v != v) ? v : T(0);
    return v < T(0) ? v * slope : v;
}
template <class T>
static inline typename DV<T>::v act_piece_vec(typename DV<T>::v v, int act, T slope) {
    const typename DV<T>::v zero = dsplat<T>(T(0));
    if (act == kActRelu) return ((v > zero) | (v != v)) ? v : zero;
    return v < zero ? v * dsplat<T>(slope) : v;
}

// The epilogue of one vector of outputs (Winograd's output transform, the row copies).
template <class T>
static inline typename DV<T>::v act_vec(typename DV<T>::v v, int act, T slope) {
    switch (act) {
        case kActRelu:
        case kActLeakyRelu:
            return act_piece_vec<T>(v, act, slope);
        case kActSigmoid:
        case kActTanh:
            return act_vec_smooth<T>(v, act);
        default:
            return v;
    }
}

// dst[j] = act(src[j] + bias) (B: with the bias) for j < n; dst may be src. relu and
// leaky_relu are applied in the loop that copies the row out, a vector at a time.
template <class T, bool B>
static inline void epi_loop(T* dst, const T* src, long n, T bias, int act, T slope) {
    typedef typename DV<T>::v V;
    constexpr int L = DV<T>::L;
    switch (act) {
        case kActRelu:
        case kActLeakyRelu: {
            const V bv = dsplat<T>(bias);
            long j = 0;
            for (; j + L <= n; j += L) {
                const V v = B ? dload<T>(src + j) + bv : dload<T>(src + j);
                dstore<T>(dst + j, act_piece_vec<T>(v, act, slope));
            }
            for (; j < n; ++j) dst[j] = act_piece<T>(B ? src[j] + bias : src[j], act, slope);
            return;
        }
        default:
            if (B || dst != src)
                for (long j = 0; j < n; ++j) dst[j] = B ? src[j] + bias : src[j];
            if (act == kActSigmoid || act == kActTanh) act_row_smooth<T>(dst, n, act);
            return;
    }
}

// The copy-out of a tile's rows with the epilogue: dst row r (pitch dp) = act(src row r
// (pitch sp) + bias), n values each, for r < rows; dst and src do not overlap.
// Rows of at least a vector run in vectors only (act_vec with A a constant: no switch in
// the loop), the last vector of a row overlapping the one before it (recomputed from
// src): the short rows of small images (13 or 26 values) pay no scalar tail.
template <class T, int A>
static void act_rows_vec(T* dst, long dp, const T* src, long sp, long rows, long n, T bias,
                         T slope) {
    typedef typename DV<T>::v V;
    constexpr int L = DV<T>::L;
    const V bv = dsplat<T>(bias);
    for (long r = 0; r < rows; ++r) {
        const T* s = src + r * sp;
        T* d = dst + r * dp;
        for (long j = 0; j + L <= n; j += L)
            dstore<T>(d + j, act_vec<T>(dload<T>(s + j) + bv, A, slope));
        if (n % L) dstore<T>(d + n - L, act_vec<T>(dload<T>(s + n - L) + bv, A, slope));
    }
}

template <class T>
static void bias_act_rows(T* dst, long dp, const T* src, long sp, long rows, long n, T bias,
                          int act, T slope) {
    if (n >= DV<T>::L) {
        switch (act) {
            case kActRelu:
                return act_rows_vec<T, kActRelu>(dst, dp, src, sp, rows, n, bias, slope);
            case kActLeakyRelu:
                return act_rows_vec<T, kActLeakyRelu>(dst, dp, src, sp, rows, n, bias, slope);
            case kActSigmoid:
                return act_rows_vec<T, kActSigmoid>(dst, dp, src, sp, rows, n, bias, slope);
            case kActTanh:
                return act_rows_vec<T, kActTanh>(dst, dp, src, sp, rows, n, bias, slope);
            default:
                break;
        }
    }
    for (long r = 0; r < rows; ++r) {
        T* d = dst + r * dp;
        const T* s = src + r * sp;
        for (long j = 0; j < n; ++j) d[j] = s[j] + bias;
        if (act != kActNone) epi_loop<T, false>(d, d, n, T(0), act, slope);
    }
}

// The epilogue of one row of outputs: dst[j] = act(src[j] (+ *bias when bias is not
// null)).
template <class T>
static inline void bias_act_row(T* dst, const T* src, long n, const T* bias, int act,
                                T slope) {
    if (bias)
        epi_loop<T, true>(dst, src, n, *bias, act, slope);
    else
        epi_loop<T, false>(dst, src, n, T(0), act, slope);
}

// p[j] = act(p[j]) for j < n, in place (the kernels that accumulate into y apply it
// once a row or plane is final).
template <class T>
static inline void act_row(T* p, long n, int act, T slope) {
    if (act != kActNone) epi_loop<T, false>(p, p, n, T(0), act, slope);
}

}  // namespace CNNFAST_KNS
}  // namespace cnnfast
