// Shared declarations of the cpp backend's kernels.
//
// The kernels themselves live in kernels_impl.h, compiled twice: once for the
// baseline ISA (kernels_portable.cpp) and once with AVX2+FMA enabled
// (kernels_avx2.cpp, x86-64 only). kernels.cpp picks a table at run time, owns the
// per-thread workspace and the Python bindings.
#pragma once

#include <cstddef>
#include <cstdint>

namespace cnnfast {

// A convolution in the "forward" orientation, always as 3 spatial dims (rank 1 and
// 2 are padded with leading extent-1 dims): x (N, C, *in) -> y (N, O, *out) with the
// weight (O, C/G, *k). Transposed convolutions reuse it with the roles swapped
// (cnnfast/backends/cpp_backend.py).
struct ConvGeo {
    long N = 0, C = 0, O = 0, G = 1;
    long in[3] = {1, 1, 1}, out[3] = {1, 1, 1}, k[3] = {1, 1, 1};
    long s[3] = {1, 1, 1}, d[3] = {1, 1, 1}, lo[3] = {0, 0, 0};
    // derived by finish()
    long cg = 0, og = 0, T = 0, Kw = 0, Pin = 0, Pout = 0;
    void finish() {
        cg = C / G;
        og = O / G;
        T = k[0] * k[1] * k[2];
        Kw = cg * T;
        Pin = in[0] * in[1] * in[2];
        Pout = out[0] * out[1] * out[2];
    }
};

// Pooling over `planes` = N*C independent planes, 3 spatial dims as above.
struct PoolGeo {
    long planes = 0;
    long in[3] = {1, 1, 1}, out[3] = {1, 1, 1}, k[3] = {1, 1, 1};
    long s[3] = {1, 1, 1}, d[3] = {1, 1, 1}, lo[3] = {0, 0, 0};
    long Pin() const { return in[0] * in[1] * in[2]; }
    long Pout() const { return out[0] * out[1] * out[2]; }
};

// The denormal policy (cnnfast.set_flush_denormal): true flushes denormals to zero
// (FTZ + DAZ) in every kernel thread, false (the default) keeps IEEE arithmetic.
// An out-of-line function, not an atomic, so kernels_impl.h stays free of std::
// templates (see there).
bool flush_denormal();

constexpr int kScratchSlots = 6;

// Per-thread scratch buffer number `slot` (0..kScratchSlots-1) of at least `bytes`, 64-byte aligned.
// Grows on demand and is kept for later calls (bounded by the largest tile seen).
void* scratch(int slot, std::size_t bytes);

// Function table of one instruction-set variant for element type T.
template <class T>
struct KernelTable {
    // y = conv(x, w) (+ b per output channel when b != nullptr)
    void (*conv_fwd)(const ConvGeo&, const T* x, const T* w, const T* b, T* y, int nt);
    // gx = adjoint of conv wrt x applied to gy (+ b per x channel when b != nullptr)
    void (*conv_bwd_data)(const ConvGeo&, const T* gy, const T* w, const T* b, T* gx, int nt);
    // gw = gradient of conv wrt w
    void (*conv_bwd_weight)(const ConvGeo&, const T* x, const T* gy, T* gw, int nt);
    // gb[o] = sum over n, p of gy[n, o, p]
    void (*bias_grad)(long N, long O, long P, const T* gy, T* gb, int nt);
    void (*max_pool)(const PoolGeo&, const T* x, T* y, std::int64_t* idx, int nt);
    // returns the number of out-of-range indices (nothing is written for those)
    long (*max_pool_bwd)(long planes, long Pin, long Pout, const T* gy, const std::int64_t* idx,
                         T* gx, int nt);
    // divisor per output = div_override if > 0 else cz[oz] * cy[oy] * cx[ox]
    void (*avg_pool)(const PoolGeo&, const T* x, const double* cz, const double* cy,
                     const double* cx, double div_override, T* y, int nt);
    void (*avg_pool_bwd)(const PoolGeo&, const T* gy, const double* cz, const double* cy,
                         const double* cx, double div_override, T* gx, int nt);
};

const KernelTable<float>& portable_table_f32();
const KernelTable<double>& portable_table_f64();
#if defined(__x86_64__)
const KernelTable<float>& avx2_table_f32();
const KernelTable<double>& avx2_table_f64();
#endif

}  // namespace cnnfast
