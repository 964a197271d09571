// activation.cuh -- the fused activation of the convolution kernels (conv.cu,
// winograd.cu): its codes, the forward function and its derivative.
#pragma once

// Fused activation (cnnfast/activation.py is the reference): its slope and code are
// the last two arguments of the kernels that make the final store of y (conv_gemm,
// conv_direct and winograd.cu's wino_output, or sum_splits after a split reduction),
// applied after the bias in the accumulator type; act_grad applies the derivative in
// the backward. Runtime, not template, arguments: one instantiation serves every
// activation (the branch is uniform over the launch), so the modules and their compile
// time stay as they were. The host reads the codes from this file (conv_launch.py).
#define ACT_NONE 0
#define ACT_RELU 1
#define ACT_LEAKY_RELU 2
#define ACT_SIGMOID 3
#define ACT_TANH 4

// expf/tanhf for float, exp/tanh for double (no <cmath> overloads under NVRTC).
__device__ __forceinline__ float act_exp(float v) { return expf(v); }
__device__ __forceinline__ double act_exp(double v) { return exp(v); }
__device__ __forceinline__ float act_tanh(float v) { return tanhf(v); }
__device__ __forceinline__ double act_tanh(double v) { return tanh(v); }

template <class Acc>
__device__ __forceinline__ Acc activate(Acc v, int act, double slope) {
    switch (act) {
    case ACT_RELU:  // max(v, 0) with NaN kept (v != v), +0 for -0 as numpy's maximum
        return (v > Acc(0) || v != v) ? v : Acc(0);
    case ACT_LEAKY_RELU:
        return v < Acc(0) ? v * Acc(slope) : v;
    case ACT_SIGMOID: {  // exp of -|v| only: no overflow on either side; NaN stays NaN
        // 1/(1+e) or e/(1+e) as the reference, one division (each is a long sequence).
        Acc e = act_exp(v < Acc(0) ? v : -v);
        return (v >= Acc(0) ? Acc(1) : e) / (Acc(1) + e);
    }
    case ACT_TANH:
        return act_tanh(v);
    default:
        return v;
    }
}

// grad_y times the activation's derivative read from the activated output y; the
// piecewise ones take the left side at 0 and NaN (y > 0 is false), the reference's
// operation order otherwise.
template <class Acc>
__device__ __forceinline__ Acc activation_grad(Acc gy, Acc y, int act, double slope) {
    switch (act) {
    case ACT_RELU:
        return y > Acc(0) ? gy : Acc(0);
    case ACT_LEAKY_RELU:
        return y > Acc(0) ? gy : gy * Acc(slope);
    case ACT_SIGMOID:
        return gy * (y * (Acc(1) - y));
    case ACT_TANH:  // not 1 - y*y, which loses every digit as |y| -> 1
        return gy * ((Acc(1) - y) * (Acc(1) + y));
    default:
        return gy;
    }
}
