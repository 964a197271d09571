// common.cuh -- shared definitions of cnnfast's CUDA kernels.
//
// Every kernel sees 1, 2 and 3 spatial dims alike: the host lifts a rank-r problem to
// 3 dims by prepending dims of size 1 (kernel 1, stride 1, pad 0, dilation 1), which
// leaves flat offsets unchanged. Geometry travels as a small int32 array whose layout
// is the enums below: the host packs it by field name from these enums.
//
// Constants the host needs too (block sizes, table layouts, run lengths, modes) are
// integer #defines and enumerators of these files: cnnfast/backends/cuda/common.py
// reads them from the source (kernel_constants), so each is written once, here or in
// the .cu file that uses it.
//
// The same source is compiled by NVRTC (through CuPy) and by g++ with
// emu/cuda_emu.h (the CPU emulator): stay within what the emulator supports (no
// inline PTX, no dynamic shared memory, no grid-wide sync, no tensor-core intrinsics).
#pragma once

// Threads per block of every kernel but the GEMM (GEMM_THREADS, conv.cu): the host's
// 1-d launches use at most this many, and the reductions written for a full block
// (conv_wgrad_direct, channel_sum) exactly this many.
#define BLOCK_THREADS 256

enum ConvGeoField {
    CG_N, CG_G, CG_CI, CG_CO,
    CG_I0, CG_I1, CG_I2,      // spatial extent of the tensor read as data (x)
    CG_O0, CG_O1, CG_O2,      // spatial extent of the tensor written (y) or of grad_y
    CG_K0, CG_K1, CG_K2,
    CG_S0, CG_S1, CG_S2,
    CG_P0, CG_P1, CG_P2,      // leading padding (the trailing one follows from shapes)
    CG_D0, CG_D1, CG_D2,
    CG_HAS_BIAS,
    CG_SPLITS, CG_KCHUNK,     // split-K of the weight gradient (fixed-order reduction);
                              // ADJ: stride phases and padded rows per phase (conv.cu)
    CG_KSPLITS,               // CORR/ADJ: reduction slices, summed in order afterwards
    CG_COUNT
};

enum PoolGeoField {
    PG_NC,
    PG_I0, PG_I1, PG_I2,
    PG_O0, PG_O1, PG_O2,
    PG_K0, PG_K1, PG_K2,
    PG_S0, PG_S1, PG_S2,
    PG_P0, PG_P1, PG_P2,      // leading padding
    PG_Q0, PG_Q1, PG_Q2,      // trailing padding (avg-pool divisor with count_include_pad)
    PG_D0, PG_D1, PG_D2,
    PG_INCLUDE_PAD,
    PG_DIVISOR,               // divisor_override, 0 when none
    PG_SEGMENTS,              // max-pool backward: input segments per plane
    PG_MODE,                  // max-pool backward: 0 auto, 1 gather, 2 segments (pool.cu)
    // Division by invariant integers (pool.cu FastDiv): multiplier and shift for the
    // per-dim extents I and O, the strides, and the plane sizes IP and OP.
    PG_MI0, PG_MI1, PG_MI2, PG_HI0, PG_HI1, PG_HI2,
    PG_MO0, PG_MO1, PG_MO2, PG_HO0, PG_HO1, PG_HO2,
    PG_MS0, PG_MS1, PG_MS2, PG_HS0, PG_HS1, PG_HS2,
    PG_MIP, PG_HIP, PG_MOP, PG_HOP,
    PG_MCH, PG_HCH,           // max-pool backward: runs of cells per row (pool.cu MPB_RUN)
    PG_COUNT
};

// float16 storage without cuda_fp16.h (NVRTC has no system headers, and the emulator
// must run the same code): IEEE binary16 bits with round-to-nearest-even conversions
// done in integer arithmetic. Arithmetic happens in float (AccOf below); the
// conversion operator lets comparisons (max pooling, NaN tests) work in float.
__device__ __forceinline__ unsigned short float_to_half_bits(float f) {
    unsigned int x = __float_as_uint(f);
    unsigned int sign = (x >> 16) & 0x8000u;
    unsigned int mant = x & 0x7fffffu;
    int exp = (int)((x >> 23) & 0xffu);
    if (exp == 0xff)  // inf, or NaN kept quiet with its top payload bits
        return (unsigned short)(sign | 0x7c00u | (mant ? 0x200u | (mant >> 13) : 0u));
    int e = exp - 127 + 15;
    if (e >= 0x1f) return (unsigned short)(sign | 0x7c00u);  // overflow -> inf
    if (e <= 0) {                                            // subnormal half, or zero
        if (e < -10) return (unsigned short)sign;
        mant |= 0x800000u;
        int shift = 14 - e;
        unsigned int h = mant >> shift;
        unsigned int rem = mant & ((1u << shift) - 1u), half = 1u << (shift - 1);
        if (rem > half || (rem == half && (h & 1u))) h++;
        return (unsigned short)(sign | h);
    }
    unsigned int h = ((unsigned int)e << 10) | (mant >> 13);
    unsigned int rem = mant & 0x1fffu;
    if (rem > 0x1000u || (rem == 0x1000u && (h & 1u))) h++;  // a carry rounds up to inf
    return (unsigned short)(sign | h);
}

__device__ __forceinline__ float half_bits_to_float(unsigned short h) {
    unsigned int sign = ((unsigned int)h & 0x8000u) << 16;
    unsigned int exp = ((unsigned int)h >> 10) & 0x1fu, mant = (unsigned int)h & 0x3ffu;
    if (exp == 0x1f) return __uint_as_float(sign | 0x7f800000u | (mant << 13));
    if (exp == 0) {  // zero or subnormal: mant * 2^-24, exact in float
        float v = (float)mant * 5.9604644775390625e-08f;
        return sign ? -v : v;
    }
    return __uint_as_float(sign | ((exp + 112u) << 23) | (mant << 13));
}

struct half_t {
    unsigned short bits;
    half_t() = default;
    __device__ __forceinline__ half_t(float f) : bits(float_to_half_bits(f)) {}
    __device__ __forceinline__ operator float() const { return half_bits_to_float(bits); }
};

#ifdef __CUDA_EMU__
// The emulator checks arguments against the signature: half_t arrays are float16.
CUDA_EMU_TYPE_CODE(half_t, "f2")
#endif

// Accumulation type: float16 storage accumulates in float; float and double in themselves.
template <class T> struct AccOf { typedef T type; };
template <> struct AccOf<half_t> { typedef float type; };

typedef long long i64;

__device__ __forceinline__ int imin(int a, int b) { return a < b ? a : b; }
__device__ __forceinline__ int imax(int a, int b) { return a > b ? a : b; }

// Geometry of a convolution, read once per thread from the int32 array.
struct ConvGeo {
    int N, G, CI, CO;
    int I[3], O[3], K[3], S[3], P[3], D[3];
    int has_bias, splits, kchunk, ksplits;
    int KT;   // kernel taps
    int IP;   // input plane size
    int OP;   // output plane size

    __device__ __forceinline__ void load(const int* g) {
        N = g[CG_N]; G = g[CG_G]; CI = g[CG_CI]; CO = g[CG_CO];
        for (int d = 0; d < 3; ++d) {
            I[d] = g[CG_I0 + d]; O[d] = g[CG_O0 + d]; K[d] = g[CG_K0 + d];
            S[d] = g[CG_S0 + d]; P[d] = g[CG_P0 + d]; D[d] = g[CG_D0 + d];
        }
        has_bias = g[CG_HAS_BIAS]; splits = g[CG_SPLITS]; kchunk = g[CG_KCHUNK];
        ksplits = g[CG_KSPLITS];
        KT = K[0] * K[1] * K[2];
        IP = I[0] * I[1] * I[2];
        OP = O[0] * O[1] * O[2];
    }
};
