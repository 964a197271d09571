// The cpp backend's kernels, written once and compiled twice (see kernels.h):
// kernels_portable.cpp includes this with CNNFAST_KNS=portable, kernels_avx2.cpp with
// CNNFAST_KNS=avx2 after `#pragma GCC target("avx2,fma")`, so the loops below are
// auto-vectorised for each ISA and the GEMM micro-kernel has an intrinsics variant.
//
// Only raw pointers and our own inline helpers are used here (no std:: templates):
// an out-of-line copy of a shared template instantiated under the AVX2 target could
// otherwise be picked by the linker for the portable path.
//
// Determinism: every output element is produced by exactly one work item, and its
// reduction order depends only on the shapes (tile sizes are functions of the shape,
// never of the thread count), so results are bit-identical for any thread count.
//
// Algorithms (per group g, K = C/G * prod(kernel) rows of the im2col matrix):
//  * forward:        Y[o, q]   = sum_k W[o, k] * cols[k, q]      (q: flattened (n, p))
//  * backward data:  dcols[k,p]= sum_o W[o, k] * GY[o, p], scattered back (col2im)
//  * backward weight:GW[o, k] += sum_q GY[o, q] * cols[k, q]     (q tiles in order)
// cols is built per tile of columns in a per-thread buffer (never for the whole
// batch); the products use a packed, register-blocked micro-kernel (MR x NR tiles).
// Convolutions with one input channel per group (depthwise, the first layer of a
// CNN) use direct row kernels instead.

#ifndef CNNFAST_KNS
#error "define CNNFAST_KNS before including kernels_impl.h"
#endif

namespace cnnfast {
namespace CNNFAST_KNS {

// ----------------------------------------------------------------------------- helpers

static inline long imin(long a, long b) { return a < b ? a : b; }
static inline long imax(long a, long b) { return a > b ? a : b; }
static inline long floor_div(long a, long b) {
    long q = a / b;
    if ((a % b != 0) && ((a < 0) != (b < 0))) --q;
    return q;
}
static inline long ceil_div(long a, long b) { return -floor_div(-a, b); }
static inline long round_up(long a, long b) { return (a + b - 1) / b * b; }

// Output positions o in [0, n) with 0 <= o*s + off < size: [a, b).
static inline void valid_range(long n, long s, long off, long size, long& a, long& b) {
    a = imax(0, ceil_div(-off, s));
    b = imin(n, floor_div(size - 1 - off, s) + 1);
    if (b < a) b = a;
}

#ifdef CNNFAST_DEBUG
[[noreturn]] static void bounds_fail(const char* what, long i, long n) {
    std::fprintf(stderr, "cnnfast: %s index %ld out of range [0, %ld)\n", what, i, n);
    std::abort();
}
#define CNN_CHECK(what, i, n)                                              \
    do {                                                                   \
        if ((long)(i) < 0 || (long)(i) >= (long)(n)) bounds_fail(what, (long)(i), (long)(n)); \
    } while (0)
#else
#define CNN_CHECK(what, i, n) ((void)0)
#endif

// The denormal policy (cnnfast.set_flush_denormal, read through flush_denormal()) on
// the calling thread while the guard lives; the thread's floating-point state is
// restored on exit. MXCSR (FPCR) is per thread, so every parallel region makes one
// guard in each of its threads. Flushing (FTZ + DAZ: denormal results and inputs are
// zero) avoids the 10-100x slowdown of denormal arithmetic on x86 in backward passes;
// keeping them (the default) gives IEEE results, as the numpy reference and torch.
// The bits are cleared as well as set: the policy holds whatever state the thread
// had (OpenMP workers inherit their creator's at creation).
struct DenormalGuard {
#if defined(__x86_64__) || defined(__i386__)
    unsigned int saved;
    DenormalGuard() : saved(_mm_getcsr()) {
        const unsigned int ftz_daz = 0x8040u;
        _mm_setcsr(flush_denormal() ? saved | ftz_daz : saved & ~ftz_daz);
    }
    ~DenormalGuard() { _mm_setcsr(saved); }
#elif defined(__aarch64__)
    unsigned long saved;
    DenormalGuard() {
        __asm__ __volatile__("mrs %0, fpcr" : "=r"(saved));
        const unsigned long fz = 1ul << 24;
        unsigned long v = flush_denormal() ? saved | fz : saved & ~fz;
        __asm__ __volatile__("msr fpcr, %0" : : "r"(v));
    }
    ~DenormalGuard() { __asm__ __volatile__("msr fpcr, %0" : : "r"(saved)); }
#endif
};

template <class T>
static inline T* tscratch(int slot, long count) {
    return static_cast<T*>(scratch(slot, (std::size_t)(count > 0 ? count : 1) * sizeof(T)));
}

template <class T>
static inline void fill(T* p, long n, T v) {
    for (long i = 0; i < n; ++i) p[i] = v;
}

// ----------------------------------------------------------------------------- GEMM

template <class T>
struct Blk;
template <>
struct Blk<float> {
    static constexpr int MR = 6, NR = 16;
    static constexpr long KC = kGemmKC;
};
template <>
struct Blk<double> {
    static constexpr int MR = 6, NR = 8;
    static constexpr long KC = kGemmKC;
};

// Store an MR x NR accumulator tile (row-major, NR per row) into C.
template <class T>
static inline void store_tile(const T* ab, T* c, long ldc, int mr, int nr, bool acc) {
    constexpr int NR = Blk<T>::NR;
    for (int i = 0; i < mr; ++i) {
        T* ci = c + i * ldc;
        const T* ai = ab + i * NR;
        if (acc)
            for (int j = 0; j < nr; ++j) ci[j] += ai[j];
        else
            for (int j = 0; j < nr; ++j) ci[j] = ai[j];
    }
}

// C[mr x nr] (+)= A-panel (kc x MR) * B-panel (kc x NR). The tile product is formed
// in registers first and then added, so the order of the sum never depends on acc.
template <class T>
static inline void ukernel_generic(long kc, const T* __restrict a, const T* __restrict b,
                                   T* __restrict c, long ldc, int mr, int nr, bool acc) {
    constexpr int MR = Blk<T>::MR, NR = Blk<T>::NR;
    T ab[MR * NR];
    for (int i = 0; i < MR * NR; ++i) ab[i] = T(0);
    for (long k = 0; k < kc; ++k) {
        const T* ak = a + k * MR;
        const T* bk = b + k * NR;
        for (int i = 0; i < MR; ++i) {
            const T ai = ak[i];
            for (int j = 0; j < NR; ++j) ab[i * NR + j] += ai * bk[j];
        }
    }
    store_tile<T>(ab, c, ldc, mr, nr, acc);
}

#if defined(CNNFAST_IMPL_AVX2)
static inline void ukernel(long kc, const float* __restrict a, const float* __restrict b,
                           float* __restrict c, long ldc, int mr, int nr, bool acc) {
    __m256 c00 = _mm256_setzero_ps(), c01 = c00, c10 = c00, c11 = c00, c20 = c00, c21 = c00,
           c30 = c00, c31 = c00, c40 = c00, c41 = c00, c50 = c00, c51 = c00;
#pragma GCC unroll 4
    for (long k = 0; k < kc; ++k) {
        const __m256 b0 = _mm256_load_ps(b), b1 = _mm256_load_ps(b + 8);
        __m256 ai;
        ai = _mm256_broadcast_ss(a + 0); c00 = _mm256_fmadd_ps(ai, b0, c00); c01 = _mm256_fmadd_ps(ai, b1, c01);
        ai = _mm256_broadcast_ss(a + 1); c10 = _mm256_fmadd_ps(ai, b0, c10); c11 = _mm256_fmadd_ps(ai, b1, c11);
        ai = _mm256_broadcast_ss(a + 2); c20 = _mm256_fmadd_ps(ai, b0, c20); c21 = _mm256_fmadd_ps(ai, b1, c21);
        ai = _mm256_broadcast_ss(a + 3); c30 = _mm256_fmadd_ps(ai, b0, c30); c31 = _mm256_fmadd_ps(ai, b1, c31);
        ai = _mm256_broadcast_ss(a + 4); c40 = _mm256_fmadd_ps(ai, b0, c40); c41 = _mm256_fmadd_ps(ai, b1, c41);
        ai = _mm256_broadcast_ss(a + 5); c50 = _mm256_fmadd_ps(ai, b0, c50); c51 = _mm256_fmadd_ps(ai, b1, c51);
        a += 6;
        b += 16;
    }
    if (mr == 6 && nr == 16) {
#define CNN_ST(row, lo, hi)                                                              \
    do {                                                                                 \
        float* cr = c + (row) * ldc;                                                     \
        if (acc) {                                                                       \
            lo = _mm256_add_ps(_mm256_loadu_ps(cr), lo);                                 \
            hi = _mm256_add_ps(_mm256_loadu_ps(cr + 8), hi);                             \
        }                                                                                \
        _mm256_storeu_ps(cr, lo);                                                        \
        _mm256_storeu_ps(cr + 8, hi);                                                    \
    } while (0)
        CNN_ST(0, c00, c01); CNN_ST(1, c10, c11); CNN_ST(2, c20, c21);
        CNN_ST(3, c30, c31); CNN_ST(4, c40, c41); CNN_ST(5, c50, c51);
#undef CNN_ST
        return;
    }
    alignas(32) float ab[6 * 16];
    _mm256_store_ps(ab + 0, c00); _mm256_store_ps(ab + 8, c01);
    _mm256_store_ps(ab + 16, c10); _mm256_store_ps(ab + 24, c11);
    _mm256_store_ps(ab + 32, c20); _mm256_store_ps(ab + 40, c21);
    _mm256_store_ps(ab + 48, c30); _mm256_store_ps(ab + 56, c31);
    _mm256_store_ps(ab + 64, c40); _mm256_store_ps(ab + 72, c41);
    _mm256_store_ps(ab + 80, c50); _mm256_store_ps(ab + 88, c51);
    store_tile<float>(ab, c, ldc, mr, nr, acc);
}

static inline void ukernel(long kc, const double* __restrict a, const double* __restrict b,
                           double* __restrict c, long ldc, int mr, int nr, bool acc) {
    __m256d c00 = _mm256_setzero_pd(), c01 = c00, c10 = c00, c11 = c00, c20 = c00, c21 = c00,
            c30 = c00, c31 = c00, c40 = c00, c41 = c00, c50 = c00, c51 = c00;
#pragma GCC unroll 4
    for (long k = 0; k < kc; ++k) {
        const __m256d b0 = _mm256_load_pd(b), b1 = _mm256_load_pd(b + 4);
        __m256d ai;
        ai = _mm256_broadcast_sd(a + 0); c00 = _mm256_fmadd_pd(ai, b0, c00); c01 = _mm256_fmadd_pd(ai, b1, c01);
        ai = _mm256_broadcast_sd(a + 1); c10 = _mm256_fmadd_pd(ai, b0, c10); c11 = _mm256_fmadd_pd(ai, b1, c11);
        ai = _mm256_broadcast_sd(a + 2); c20 = _mm256_fmadd_pd(ai, b0, c20); c21 = _mm256_fmadd_pd(ai, b1, c21);
        ai = _mm256_broadcast_sd(a + 3); c30 = _mm256_fmadd_pd(ai, b0, c30); c31 = _mm256_fmadd_pd(ai, b1, c31);
        ai = _mm256_broadcast_sd(a + 4); c40 = _mm256_fmadd_pd(ai, b0, c40); c41 = _mm256_fmadd_pd(ai, b1, c41);
        ai = _mm256_broadcast_sd(a + 5); c50 = _mm256_fmadd_pd(ai, b0, c50); c51 = _mm256_fmadd_pd(ai, b1, c51);
        a += 6;
        b += 8;
    }
    alignas(32) double ab[6 * 8];
    _mm256_store_pd(ab + 0, c00); _mm256_store_pd(ab + 4, c01);
    _mm256_store_pd(ab + 8, c10); _mm256_store_pd(ab + 12, c11);
    _mm256_store_pd(ab + 16, c20); _mm256_store_pd(ab + 20, c21);
    _mm256_store_pd(ab + 24, c30); _mm256_store_pd(ab + 28, c31);
    _mm256_store_pd(ab + 32, c40); _mm256_store_pd(ab + 36, c41);
    _mm256_store_pd(ab + 40, c50); _mm256_store_pd(ab + 44, c51);
    store_tile<double>(ab, c, ldc, mr, nr, acc);
}
#else
template <class T>
static inline void ukernel(long kc, const T* a, const T* b, T* c, long ldc, int mr, int nr,
                           bool acc) {
    ukernel_generic<T>(kc, a, b, c, ldc, mr, nr, acc);
}
#endif

#if defined(CNNFAST_IMPL_AVX2)
// d[kk*ds + j] = s[j*cs + kk] for an 8 x 8 block (the classic unpack/shuffle/permute
// transpose).
// With rows = 6 the last two source rows read as zeros (for the MR = 6 A panels;
// each store then writes 2 lanes past its row, which the next store overwrites).
template <int ROWS = 8>
static inline void transpose8(const float* s, long cs, float* d, long ds) {
    const __m256 z = _mm256_setzero_ps();
    const __m256 r0 = _mm256_loadu_ps(s), r1 = _mm256_loadu_ps(s + cs),
                 r2 = _mm256_loadu_ps(s + 2 * cs), r3 = _mm256_loadu_ps(s + 3 * cs),
                 r4 = _mm256_loadu_ps(s + 4 * cs), r5 = _mm256_loadu_ps(s + 5 * cs),
                 r6 = ROWS == 8 ? _mm256_loadu_ps(s + 6 * cs) : z,
                 r7 = ROWS == 8 ? _mm256_loadu_ps(s + 7 * cs) : z;
    const __m256 t0 = _mm256_unpacklo_ps(r0, r1), t1 = _mm256_unpackhi_ps(r0, r1),
                 t2 = _mm256_unpacklo_ps(r2, r3), t3 = _mm256_unpackhi_ps(r2, r3),
                 t4 = _mm256_unpacklo_ps(r4, r5), t5 = _mm256_unpackhi_ps(r4, r5),
                 t6 = _mm256_unpacklo_ps(r6, r7), t7 = _mm256_unpackhi_ps(r6, r7);
    const __m256 u0 = _mm256_shuffle_ps(t0, t2, _MM_SHUFFLE(1, 0, 1, 0)),
                 u1 = _mm256_shuffle_ps(t0, t2, _MM_SHUFFLE(3, 2, 3, 2)),
                 u2 = _mm256_shuffle_ps(t1, t3, _MM_SHUFFLE(1, 0, 1, 0)),
                 u3 = _mm256_shuffle_ps(t1, t3, _MM_SHUFFLE(3, 2, 3, 2)),
                 u4 = _mm256_shuffle_ps(t4, t6, _MM_SHUFFLE(1, 0, 1, 0)),
                 u5 = _mm256_shuffle_ps(t4, t6, _MM_SHUFFLE(3, 2, 3, 2)),
                 u6 = _mm256_shuffle_ps(t5, t7, _MM_SHUFFLE(1, 0, 1, 0)),
                 u7 = _mm256_shuffle_ps(t5, t7, _MM_SHUFFLE(3, 2, 3, 2));
    _mm256_storeu_ps(d, _mm256_permute2f128_ps(u0, u4, 0x20));
    _mm256_storeu_ps(d + ds, _mm256_permute2f128_ps(u1, u5, 0x20));
    _mm256_storeu_ps(d + 2 * ds, _mm256_permute2f128_ps(u2, u6, 0x20));
    _mm256_storeu_ps(d + 3 * ds, _mm256_permute2f128_ps(u3, u7, 0x20));
    _mm256_storeu_ps(d + 4 * ds, _mm256_permute2f128_ps(u0, u4, 0x31));
    _mm256_storeu_ps(d + 5 * ds, _mm256_permute2f128_ps(u1, u5, 0x31));
    _mm256_storeu_ps(d + 6 * ds, _mm256_permute2f128_ps(u2, u6, 0x31));
    _mm256_storeu_ps(d + 7 * ds, _mm256_permute2f128_ps(u3, u7, 0x31));
}
#endif

// Pack A (M x K, element (m, k) at src[m*rs + k*cs]) into ceil(M/MR) panels of K x MR,
// zero-padded rows.
template <class T>
static void pack_a(long M, long K, const T* src, long rs, long cs, T* dst) {
    constexpr int MR = Blk<T>::MR;
    for (long i0 = 0; i0 < M; i0 += MR) {
        const int mr = (int)imin(MR, M - i0);
        T* d = dst + (i0 / MR) * K * MR;
#if defined(CNNFAST_IMPL_AVX2)
        if constexpr (sizeof(T) == 4 && MR == 6) {
            if (cs == 1 && mr == MR) {  // a transpose of 6 rows, 8 columns at a time
                const float* s = reinterpret_cast<const float*>(src) + i0 * rs;
                float* df = reinterpret_cast<float*>(d);
                long k = 0;
                for (; k + 8 < K; k += 8) transpose8<6>(s + k, rs, df + k * MR, MR);
                for (; k < K; ++k)
                    for (int i = 0; i < MR; ++i) df[k * MR + i] = s[i * rs + k];
                continue;
            }
        }
#endif
        if (cs == 1) {
            for (int i = 0; i < MR; ++i) {
                if (i < mr) {
                    const T* s = src + (i0 + i) * rs;
                    for (long k = 0; k < K; ++k) d[k * MR + i] = s[k];
                } else {
                    for (long k = 0; k < K; ++k) d[k * MR + i] = T(0);
                }
            }
        } else {
            for (long k = 0; k < K; ++k)
                for (int i = 0; i < MR; ++i)
                    d[k * MR + i] = i < mr ? src[(i0 + i) * rs + k * cs] : T(0);
        }
    }
}

// Pack B (K x N, element (k, n) at src[k*rs + n*cs]) into ceil(N/NR) panels of K x NR,
// zero-padded columns.
template <class T>
static void pack_b(long K, long N, const T* src, long rs, long cs, T* dst) {
    constexpr int NR = Blk<T>::NR;
    for (long j0 = 0; j0 < N; j0 += NR) {
        const int nr = (int)imin(NR, N - j0);
        T* d = dst + (j0 / NR) * K * NR;
#if defined(CNNFAST_IMPL_AVX2)
        if constexpr (sizeof(T) == 4 && NR == 16) {
            if (rs == 1 && cs != 1 && nr == NR) {  // a transpose: 8 x 8 blocks
                const float* s = reinterpret_cast<const float*>(src) + j0 * cs;
                float* df = reinterpret_cast<float*>(d);
                long k = 0;
                for (; k + 8 <= K; k += 8) {
                    transpose8(s + k, cs, df + k * NR, NR);
                    transpose8(s + 8 * cs + k, cs, df + k * NR + 8, NR);
                }
                for (; k < K; ++k)
                    for (int j = 0; j < NR; ++j) df[k * NR + j] = s[j * cs + k];
                continue;
            }
        }
#endif
        if (cs == 1) {
            for (long k = 0; k < K; ++k) {
                const T* s = src + k * rs + j0;
                T* dk = d + k * NR;
                for (int j = 0; j < nr; ++j) dk[j] = s[j];
                for (int j = nr; j < NR; ++j) dk[j] = T(0);
            }
        } else {
            // row by row: contiguous writes, nr interleaved reads
            for (long k = 0; k < K; ++k) {
                T* dk = d + k * NR;
                const T* s = src + k * rs + j0 * cs;
                for (int j = 0; j < nr; ++j) dk[j] = s[j * cs];
                for (int j = nr; j < NR; ++j) dk[j] = T(0);
            }
        }
    }
}

// C (M x N, row stride ldc) (+)= A * B from packed panels holding the full K.
// K is cut in fixed KC blocks: the reduction order is a function of K only.
template <class T>
static void gemm_packed(long M, long N, long K, const T* Ap, const T* Bp, T* C, long ldc,
                        bool acc) {
    constexpr int MR = Blk<T>::MR, NR = Blk<T>::NR;
    constexpr long KC = Blk<T>::KC;
    // K cut in equal blocks of at most KC (a multiple of 4): no short last block.
    const long kblk = round_up(ceil_div(K, ceil_div(K, KC)), 4);
    for (long pc = 0; pc < K; pc += kblk) {
        const long kc = imin(kblk, K - pc);
        const bool a2 = acc || pc > 0;
        for (long j0 = 0; j0 < N; j0 += NR) {
            const T* bp = Bp + (j0 / NR) * K * NR + pc * NR;
            const int nr = (int)imin(NR, N - j0);
            for (long i0 = 0; i0 < M; i0 += MR) {
                const T* ap = Ap + (i0 / MR) * K * MR + pc * MR;
                ukernel(kc, ap, bp, C + i0 * ldc + j0, ldc, (int)imin(MR, M - i0), nr, a2);
            }
        }
    }
}

// ----------------------------------------------------------------------------- im2col

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

// ----------------------------------------------------------------------------- direct
// One input channel per group: each output plane is a sum of shifted input planes
// (depthwise convolution, 1-channel first layers).
//
// 1-d and 2-d convolutions with the common kernel sizes (d2_size_ok) take a fast
// path, the d2_* kernels: each output row is made in one pass, a vector of outputs at
// a time, with the tap weights held in registers (forward, input gradient) or one
// vector accumulator per tap (weight gradient). With unit x stride and dilations,
// several output rows are made per pass (d2_fwd_rows, d2_gw_rows): an input vector
// is loaded once for all the output rows it feeds. The input rows a block of output
// rows reads are first copied into a small zero-padded buffer (~4 KiB, in L1), where
// an x stride sx becomes sx phase rows (phase r holds padded columns r, r + sx, ...):
// every tap then reads a contiguous run at a fixed offset, and the loops have no
// bounds tests. Input rows outside the plane read a row of zeros (as the zero
// padding of the reference does). A row of Wo outputs is ceil(Wo / L) vectors of L
// lanes, the last one overlapping the one before it (recomputed in the forward,
// masked in the weight gradient). Stride 1 without column padding reads the input
// rows in place. Work items are whole planes (forward, input gradient) or whole
// output channels (weight gradient: the sum over n, rows and vectors has a fixed
// order), so the bits never depend on the thread count.
// The input gradient is the forward correlation of gy -- upsampled by the stride
// (zeros between its rows and columns) -- with the flipped kernel, so it needs no
// scatter; this wastes 1 - 1/(sy*sx) of the products for a strided convolution, but
// they are vector products in cache.
// Other shapes (3-d, other kernel sizes) use the generic row kernels (direct_*_rows).

// The geometry predicates (d2_ok, use_direct, s1_ok) and the choice of path are in
// kernels.h (choose_path): one place, shared with the binding that reports the path.

// Vectors of CNN_DVB bytes (GCC vector extensions): 256-bit in the AVX2 build, 128-bit
// (SSE2 / NEON) in the portable one.
#if defined(CNNFAST_IMPL_AVX2)
#define CNN_DVB 32
#else
#define CNN_DVB 16
#endif
template <class T>
struct DV;
template <>
struct DV<float> {
    typedef float v __attribute__((vector_size(CNN_DVB)));
    typedef int m __attribute__((vector_size(CNN_DVB)));
    static constexpr int L = CNN_DVB / 4;
};
template <>
struct DV<double> {
    typedef double v __attribute__((vector_size(CNN_DVB)));
    typedef long long m __attribute__((vector_size(CNN_DVB)));
    static constexpr int L = CNN_DVB / 8;
};
#undef CNN_DVB

template <class T>
static inline typename DV<T>::v dload(const T* p) {
    typename DV<T>::v r;
    __builtin_memcpy(&r, p, sizeof r);
    return r;
}
template <class T>
static inline void dstore(T* p, typename DV<T>::v v) {
    __builtin_memcpy(p, &v, sizeof v);
}
template <class T>
static inline typename DV<T>::v dsplat(T s) {
    typename DV<T>::v r;
    for (int j = 0; j < DV<T>::L; ++j) r[j] = s;
    return r;
}
// Sum of the lanes in a fixed pairwise order.
template <class T>
static inline T dhsum(typename DV<T>::v v) {
    constexpr int L = DV<T>::L;
    T t[L];
    __builtin_memcpy(t, &v, sizeof v);
    for (int h = L / 2; h >= 1; h /= 2)
        for (int j = 0; j < h; ++j) t[j] += t[j + h];
    return t[0];
}

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
        buf = tscratch<T>(0, q.brows * q.pitch);
        fill<T>(buf, q.brows * q.pitch, T(0));
    }
    zrow = tscratch<T>(1, q.zlen);
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
    const long chunk = g.og * imax(1, g.N * g.G / (16L * nt));
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
    const long chunk = imax(1, items / (16L * nt));  // as in d2_fwd
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

// return fn<T, KH, KW>(args...) for the fast-path kernel size of g (d2_ok(g)).
// The generic row kernels below handle every other one-channel-per-group case.
#define CNN_D2_DISPATCH(fn, g, ...)                                          \
    do {                                                                     \
        const long kh_ = (g).k[1], kw_ = (g).k[2];                           \
        if (kh_ == 3 && kw_ == 3) return fn<T, 3, 3>(__VA_ARGS__);           \
        if (kh_ == 1 && kw_ == 3) return fn<T, 1, 3>(__VA_ARGS__);           \
        if (kh_ == 1 && kw_ == 5) return fn<T, 1, 5>(__VA_ARGS__);           \
        if (kh_ == 5 && kw_ == 5) return fn<T, 5, 5>(__VA_ARGS__);           \
        if (kh_ == 7 && kw_ == 7) return fn<T, 7, 7>(__VA_ARGS__);           \
    } while (0)

template <class T>
static void direct_fwd_rows(const ConvGeo& g, const T* x, const T* w, const T* b, T* y, int nt) {
    const long items = g.N * g.O;
#pragma omp parallel num_threads(nt)
    {
        DenormalGuard fp;
#pragma omp for schedule(static)
        for (long it = 0; it < items; ++it) {
            const long n = it / g.O, oc = it % g.O;
            const long c = oc / g.og;  // the group's only input channel
            const T* xp = x + (n * g.C + c) * g.Pin;
            const T* wv = w + oc * g.T;
            T* yp = y + it * g.Pout;
            const T bias = b ? b[oc] : T(0);
            for (long oz = 0; oz < g.out[0]; ++oz)
                for (long oy = 0; oy < g.out[1]; ++oy) {
                    T* yr = yp + (oz * g.out[1] + oy) * g.out[2];
                    fill<T>(yr, g.out[2], bias);
                    for (long kz = 0; kz < g.k[0]; ++kz) {
                        const long iz = oz * g.s[0] + kz * g.d[0] - g.lo[0];
                        if (iz < 0 || iz >= g.in[0]) continue;
                        for (long ky = 0; ky < g.k[1]; ++ky) {
                            const long iy = oy * g.s[1] + ky * g.d[1] - g.lo[1];
                            if (iy < 0 || iy >= g.in[1]) continue;
                            const T* xr = xp + (iz * g.in[1] + iy) * g.in[2];
                            const T* wr = wv + (kz * g.k[1] + ky) * g.k[2];
                            for (long kx = 0; kx < g.k[2]; ++kx) {
                                const long off = kx * g.d[2] - g.lo[2];
                                long a, e;
                                valid_range(g.out[2], g.s[2], off, g.in[2], a, e);
                                const T wt = wr[kx];
                                if (g.s[2] == 1) {
                                    const T* xs = xr + off;
                                    for (long o = a; o < e; ++o) yr[o] += wt * xs[o];
                                } else {
                                    const long sx = g.s[2];
                                    for (long o = a; o < e; ++o) yr[o] += wt * xr[o * sx + off];
                                }
                            }
                        }
                    }
                }
        }
    }
}

template <class T>
static void direct_bwd_data_rows(const ConvGeo& g, const T* gy, const T* w, const T* b, T* gx,
                            int nt) {
    const long items = g.N * g.C;
#pragma omp parallel num_threads(nt)
    {
        DenormalGuard fp;
#pragma omp for schedule(static)
        for (long it = 0; it < items; ++it) {
            const long n = it / g.C, c = it % g.C;  // c is also the group (cg == 1)
            T* xp = gx + it * g.Pin;
            fill<T>(xp, g.Pin, b ? b[c] : T(0));
            for (long oc = c * g.og; oc < (c + 1) * g.og; ++oc) {
                const T* yp = gy + (n * g.O + oc) * g.Pout;
                const T* wv = w + oc * g.T;
                for (long oz = 0; oz < g.out[0]; ++oz)
                    for (long oy = 0; oy < g.out[1]; ++oy) {
                        const T* yr = yp + (oz * g.out[1] + oy) * g.out[2];
                        for (long kz = 0; kz < g.k[0]; ++kz) {
                            const long iz = oz * g.s[0] + kz * g.d[0] - g.lo[0];
                            if (iz < 0 || iz >= g.in[0]) continue;
                            for (long ky = 0; ky < g.k[1]; ++ky) {
                                const long iy = oy * g.s[1] + ky * g.d[1] - g.lo[1];
                                if (iy < 0 || iy >= g.in[1]) continue;
                                T* xr = xp + (iz * g.in[1] + iy) * g.in[2];
                                const T* wr = wv + (kz * g.k[1] + ky) * g.k[2];
                                for (long kx = 0; kx < g.k[2]; ++kx) {
                                    const long off = kx * g.d[2] - g.lo[2];
                                    long a, e;
                                    valid_range(g.out[2], g.s[2], off, g.in[2], a, e);
                                    const T wt = wr[kx];
                                    if (g.s[2] == 1) {
                                        T* xs = xr + off;
                                        for (long o = a; o < e; ++o) xs[o] += wt * yr[o];
                                    } else {
                                        const long sx = g.s[2];
                                        for (long o = a; o < e; ++o) xr[o * sx + off] += wt * yr[o];
                                    }
                                }
                            }
                        }
                    }
            }
        }
    }
}

template <class T>
static void direct_bwd_weight_rows(const ConvGeo& g, const T* x, const T* gy, T* gw, int nt) {
    // One work item per output channel: every tap keeps 8 partial sums over all of
    // (n, rows, x) -- a fixed order set by the code -- reduced once at the end.
#pragma omp parallel num_threads(nt)
    {
        DenormalGuard fp;
        T* acc = tscratch<T>(0, g.T * 8);
#pragma omp for schedule(dynamic, 1)
        for (long oc = 0; oc < g.O; ++oc) {
            const long c = oc / g.og;
            fill<T>(acc, g.T * 8, T(0));
            for (long n = 0; n < g.N; ++n) {
                const T* xp = x + (n * g.C + c) * g.Pin;
                const T* yp = gy + (n * g.O + oc) * g.Pout;
                for (long oz = 0; oz < g.out[0]; ++oz)
                    for (long oy = 0; oy < g.out[1]; ++oy) {
                        const T* yr = yp + (oz * g.out[1] + oy) * g.out[2];
                        for (long kz = 0; kz < g.k[0]; ++kz) {
                            const long iz = oz * g.s[0] + kz * g.d[0] - g.lo[0];
                            if (iz < 0 || iz >= g.in[0]) continue;
                            for (long ky = 0; ky < g.k[1]; ++ky) {
                                const long iy = oy * g.s[1] + ky * g.d[1] - g.lo[1];
                                if (iy < 0 || iy >= g.in[1]) continue;
                                const T* xr = xp + (iz * g.in[1] + iy) * g.in[2];
                                for (long kx = 0; kx < g.k[2]; ++kx) {
                                    const long off = kx * g.d[2] - g.lo[2];
                                    long a, e;
                                    valid_range(g.out[2], g.s[2], off, g.in[2], a, e);
                                    T* ar = acc + ((kz * g.k[1] + ky) * g.k[2] + kx) * 8;
                                    long o = a;
                                    if (g.s[2] == 1) {
                                        const T* xs = xr + off;
                                        for (; o + 8 <= e; o += 8)
                                            for (int j = 0; j < 8; ++j) ar[j] += yr[o + j] * xs[o + j];
                                    }
                                    const long sx = g.s[2];
                                    for (long j = 0; o < e; ++o, ++j) ar[j & 7] += yr[o] * xr[o * sx + off];
                                }
                            }
                        }
                    }
            }
            for (long t = 0; t < g.T; ++t) {
                const T* ar = acc + t * 8;
                gw[oc * g.T + t] = ((ar[0] + ar[4]) + (ar[1] + ar[5])) + ((ar[2] + ar[6]) + (ar[3] + ar[7]));
            }
        }
    }
}

template <class T>
static void direct_fwd(const ConvGeo& g, const T* x, const T* w, const T* b, T* y, int nt,
                       int path) {
    if (path == kDirect2d) CNN_D2_DISPATCH(d2_fwd, g, g, x, w, b, y, nt);
    direct_fwd_rows<T>(g, x, w, b, y, nt);
}

template <class T>
static void direct_bwd_data(const ConvGeo& g, const T* gy, const T* w, const T* b, T* gx,
                            int nt, int path) {
    if (path == kDirect2d) CNN_D2_DISPATCH(d2_bwd_data, g, g, gy, w, b, gx, nt);
    direct_bwd_data_rows<T>(g, gy, w, b, gx, nt);
}

template <class T>
static void direct_bwd_weight(const ConvGeo& g, const T* x, const T* gy, T* gw, int nt,
                              int path) {
    if (path == kDirect2d) CNN_D2_DISPATCH(d2_bwd_weight, g, g, x, gy, gw, nt);
    direct_bwd_weight_rows<T>(g, x, gy, gw, nt);
}
#undef CNN_D2_DISPATCH

// ----------------------------------------------------------------------------- stride 1
// Convolutions with stride 1 along y and x (rank 1 and 2): the input rows a tile
// needs are copied once into a zero-padded buffer of row pitch Wp = Wo + (kw-1)*dx.
// In that buffer every tap is a constant shift of the flattened output position
// (q' = oy*Wp + ox), so the im2col panels are plain 64-byte copies; the Wp - Wo
// columns per row that are not outputs are computed and dropped.

// Taken when s1_ok(g) (kernels.h).

template <class T>
static void conv_fwd_s1(const ConvGeo& g, const T* x, const T* w, const T* b, T* y, int nt) {
    constexpr int MR = Blk<T>::MR, NR = Blk<T>::NR;
    const long M = g.og, K = g.Kw;
    const long Ho = g.out[1], Wo = g.out[2], H = g.in[1], W = g.in[2];
    const long dy = g.d[1], dx = g.d[2];
    const long ey = (g.k[1] - 1) * dy, ex = (g.k[2] - 1) * dx;
    const long Wp = Wo + ex;
    const long tmax = col_tile<T>(K);
    long R = imin(Ho, imax(1, tmax / Wp));
    const long nblk = ceil_div(Ho, R);
    R = ceil_div(Ho, nblk);
    const long rowsP = R + ey, plane = rowsP * Wp;
    const long xsz = g.cg * plane + ex + NR;
    const long pt = round_up(R * Wp, NR);
    const long apanel = round_up(M, MR) * K;
    T* Ap = tscratch<T>(3, g.G * apanel);
    for (long gi = 0; gi < g.G; ++gi) pack_a<T>(M, K, w + gi * M * K, K, 1, Ap + gi * apanel);
    const long items = g.G * g.N * nblk;
#pragma omp parallel num_threads(nt)
    {
        DenormalGuard fp;
        T* Bp = tscratch<T>(0, K * pt);
        T* Cb = tscratch<T>(1, M * pt);
        T* Xp = tscratch<T>(2, xsz);
        fill<T>(Xp + g.cg * plane, ex + NR, T(0));
        long* koff = tscratch<long>(5, K);  // where row k of the im2col panel starts in Xp
        for (long k = 0; k < K; ++k) {
            const long c = k / g.T, t = k % g.T;
            koff[k] = c * plane + (t / g.k[2]) * dy * Wp + (t % g.k[2]) * dx;
        }
#pragma omp for schedule(dynamic, 1)
        for (long it = 0; it < items; ++it) {
            const long gi = it / (g.N * nblk), r = it % (g.N * nblk);
            const long n = r / nblk, blk = r % nblk;
            const long r0 = blk * R, r1 = imin(Ho, r0 + R), nr = r1 - r0;
            const long nq = nr * Wp, nqp = round_up(nq, NR);
            // zero-padded input rows r0 - lo_y .. of every channel of the group
            const long ca = imax(0, -g.lo[2]), cb = imin(W, Wp - g.lo[2]);
            for (long c = 0; c < g.cg; ++c) {
                const T* xc = x + (n * g.C + gi * g.cg + c) * g.Pin;
                for (long rr = 0; rr < nr + ey; ++rr) {
                    T* d = Xp + c * plane + rr * Wp;
                    const long iy = r0 + rr - g.lo[1];
                    if (iy < 0 || iy >= H || ca >= cb) {
                        fill<T>(d, Wp, T(0));
                        continue;
                    }
                    const T* s = xc + iy * W;
                    const long c0 = ca + g.lo[2], c1 = cb + g.lo[2];  // padded columns
                    fill<T>(d, c0, T(0));
                    std::memcpy(d + c0, s + ca, (std::size_t)(cb - ca) * sizeof(T));
                    fill<T>(d + c1, Wp - c1, T(0));
                }
            }
            // Panel by panel, each written sequentially (panels are K*NR apart, often
            // a multiple of 4 KiB: writing them row by row would thrash one L1 set).
            for (long j0 = 0; j0 < nqp; j0 += NR) {
                T* d = Bp + (j0 / NR) * K * NR;
                const T* src = Xp + j0;
                for (long k = 0; k < K; ++k)
                    std::memcpy(d + k * NR, src + koff[k], NR * sizeof(T));
            }
            gemm_packed<T>(M, nq, K, Ap + gi * apanel, Bp, Cb, pt, false);
            for (long o = 0; o < M; ++o) {
                const T bo = b ? b[gi * M + o] : T(0);
                T* yo = y + (n * g.O + gi * M + o) * g.Pout + r0 * Wo;
                const T* co = Cb + o * pt;
                for (long rr = 0; rr < nr; ++rr) {
                    T* yr = yo + rr * Wo;
                    const T* cr = co + rr * Wp;
                    for (long j = 0; j < Wo; ++j) yr[j] = cr[j] + bo;
                }
            }
        }
    }
}

// The input gradient of a stride-1 convolution is a stride-1 convolution of gy with
// the kernel flipped and transposed per group, padded by (k-1)*d - lo (see
// numpy_backend's docstring); a gather, so no scatter and no col2im.
template <class T>
static void conv_bwd_data_s1(const ConvGeo& g, const T* gy, const T* w, const T* b, T* gx,
                             int nt) {
    ConvGeo h;
    h.N = g.N;
    h.C = g.O;
    h.O = g.C;
    h.G = g.G;
    for (int i = 0; i < 3; ++i) {
        h.in[i] = g.out[i];
        h.out[i] = g.in[i];
        h.k[i] = g.k[i];
        h.s[i] = 1;
        h.d[i] = g.d[i];
        h.lo[i] = (g.k[i] - 1) * g.d[i] - g.lo[i];
    }
    h.finish();
    // wt[gi*cg + c, o, t] = w[gi*og + o, c, T-1-t]
    T* wt = tscratch<T>(4, g.O * g.Kw);
    for (long gi = 0; gi < g.G; ++gi)
        for (long c = 0; c < g.cg; ++c)
            for (long o = 0; o < g.og; ++o) {
                const T* s = w + (gi * g.og + o) * g.Kw + c * g.T;
                T* d = wt + ((gi * g.cg + c) * g.og + o) * g.T;
                for (long t = 0; t < g.T; ++t) d[t] = s[g.T - 1 - t];
            }
    conv_fwd_s1<T>(h, gy, wt, b, gx, nt);
}

// ----------------------------------------------------------------------------- conv

// The conv kernels run `path`, a ConvPath that can run g (resolved by the binding with
// choose_path / path_unfit, kernels.h).
template <class T>
static void conv_fwd(const ConvGeo& g, const T* x, const T* w, const T* b, T* y, int nt,
                     int path) {
    if (path == kDirect2d || path == kDirectRows) return direct_fwd<T>(g, x, w, b, y, nt, path);
    if (path == kGemmS1) return conv_fwd_s1<T>(g, x, w, b, y, nt);
    constexpr int MR = Blk<T>::MR, NR = Blk<T>::NR;
    const long M = g.og, K = g.Kw, Q = g.N * g.Pout;
    const long apanel = round_up(M, MR) * K;
    // The packed weight of every group, shared read-only by the threads.
    T* Ap = tscratch<T>(3, g.G * apanel);
    for (long gi = 0; gi < g.G; ++gi) pack_a<T>(M, K, w + gi * M * K, K, 1, Ap + gi * apanel);
    // Column tiles: per image when the image is large, else across images.
    const long tmax = col_tile<T>(K);
    long pt, tiles_per_group, tpi = 0;
    if (g.Pout >= tmax / 2) {
        tpi = ceil_div(g.Pout, tmax);
        pt = round_up(ceil_div(g.Pout, tpi), NR);
        tiles_per_group = g.N * tpi;
    } else {
        pt = tmax;
        tiles_per_group = ceil_div(Q, pt);
    }
    const long items = g.G * tiles_per_group;
#pragma omp parallel num_threads(nt)
    {
        DenormalGuard fp;
        T* Bp = tscratch<T>(0, K * pt);
        T* Cb = tscratch<T>(1, M * pt);
        T* row = tscratch<T>(2, pt);
#pragma omp for schedule(dynamic, 1)
        for (long it = 0; it < items; ++it) {
            const long gi = it / tiles_per_group, ti = it % tiles_per_group;
            long q0, q1;
            if (tpi) {
                const long n = ti / tpi, j = ti % tpi;
                q0 = n * g.Pout + j * pt;
                q1 = imin(n * g.Pout + g.Pout, q0 + pt);
            } else {
                q0 = ti * pt;
                q1 = imin(Q, q0 + pt);
            }
            const long nq = q1 - q0, nqp = round_up(nq, NR);
            for (long j = nq; j < nqp; ++j) row[j] = T(0);
            const T* xg = x + gi * g.cg * g.Pin;
            for (long k = 0; k < K; ++k) {
                const long c = k / g.T;
                long kz, ky, kx;
                tap_of(g, k % g.T, kz, ky, kx);
                im2col_row<T>(xg + c * g.Pin, g.C * g.Pin, g, kz, ky, kx, q0, q1, row);
                for (long j0 = 0; j0 < nqp; j0 += NR)
                    std::memcpy(Bp + (j0 / NR) * K * NR + k * NR, row + j0, NR * sizeof(T));
            }
            const long n0 = q0 / g.Pout, n1 = (q1 - 1) / g.Pout;
            // One image and a long enough reduction: write y in place. With a short
            // reduction the stores dominate; a tile in cache copied out row by row
            // streams better.
            if (n0 == n1 && K >= 32) {
                T* yt = y + (n0 * g.O + gi * M) * g.Pout + (q0 - n0 * g.Pout);
                gemm_packed<T>(M, nq, K, Ap + gi * apanel, Bp, yt, g.Pout, false);
                if (b)
                    for (long o = 0; o < M; ++o) {
                        const T bo = b[gi * M + o];
                        T* yr = yt + o * g.Pout;
                        for (long j = 0; j < nq; ++j) yr[j] += bo;
                    }
            } else {
                gemm_packed<T>(M, nq, K, Ap + gi * apanel, Bp, Cb, pt, false);
                for (long o = 0; o < M; ++o) {
                    const T bo = b ? b[gi * M + o] : T(0);
                    const T* cr = Cb + o * pt;
                    long q = q0;
                    while (q < q1) {
                        const long n = q / g.Pout, p = q % g.Pout;
                        const long len = imin(g.Pout - p, q1 - q);
                        T* yr = y + (n * g.O + gi * M + o) * g.Pout + p;
                        const T* cs = cr + (q - q0);
                        for (long j = 0; j < len; ++j) yr[j] = cs[j] + bo;
                        q += len;
                    }
                }
            }
        }
    }
}

template <class T>
static void conv_bwd_data(const ConvGeo& g, const T* gy, const T* w, const T* b, T* gx, int nt,
                          int path) {
    if (path == kDirect2d || path == kDirectRows)
        return direct_bwd_data<T>(g, gy, w, b, gx, nt, path);
    if (path == kGemmS1) return conv_bwd_data_s1<T>(g, gy, w, b, gx, nt);
    constexpr int MR = Blk<T>::MR, NR = Blk<T>::NR;
    const long O = g.og;
    // Rows of dcols per item: whole channels, about 192 rows.
    const long cc = imax(1, imin(g.cg, 192 / g.T));
    const long nch = ceil_div(g.cg, cc);
    const long tpi = ceil_div(g.Pout, col_tile<T>(O));
    const long pt = round_up(ceil_div(g.Pout, tpi), NR);
    const long items = g.N * g.G * nch;
#pragma omp parallel num_threads(nt)
    {
        DenormalGuard fp;
        T* Ap = tscratch<T>(0, round_up(cc * g.T, MR) * O);
        T* Bp = tscratch<T>(1, pt * O);
        T* D = tscratch<T>(2, cc * g.T * pt);
#pragma omp for schedule(dynamic, 1)
        for (long it = 0; it < items; ++it) {
            const long n = it / (g.G * nch), r = it % (g.G * nch);
            const long gi = r / nch, ch = r % nch;
            const long c0 = ch * cc, c1 = imin(g.cg, c0 + cc);
            const long rows = (c1 - c0) * g.T;
            // A(k, o) = w[(gi*og + o), c0*T + k]
            pack_a<T>(rows, O, w + gi * O * g.Kw + c0 * g.T, 1, g.Kw, Ap);
            T* gxc = gx + (gi * g.cg + c0) * g.Pin;  // image 0's plane of channel c0
            for (long c = c0; c < c1; ++c)
                fill<T>(gx + (n * g.C + gi * g.cg + c) * g.Pin, g.Pin,
                        b ? b[gi * g.cg + c] : T(0));
            for (long j = 0; j < tpi; ++j) {
                const long p0 = j * pt, p1 = imin(g.Pout, p0 + pt), np_ = p1 - p0;
                pack_b<T>(O, np_, gy + (n * g.O + gi * O) * g.Pout + p0, g.Pout, 1, Bp);
                gemm_packed<T>(rows, np_, O, Ap, Bp, D, pt, false);
                for (long rr = 0; rr < rows; ++rr) {
                    const long c = rr / g.T;
                    long kz, ky, kx;
                    tap_of(g, rr % g.T, kz, ky, kx);
                    col2im_row<T>(gxc + c * g.Pin, g.C * g.Pin, g, kz, ky, kx,
                                  n * g.Pout + p0, n * g.Pout + p1, D + rr * pt);
                }
            }
        }
    }
}

template <class T>
static void conv_bwd_weight(const ConvGeo& g, const T* x, const T* gy, T* gw, int nt, int path) {
    if (path == kDirect2d || path == kDirectRows)
        return direct_bwd_weight<T>(g, x, gy, gw, nt, path);
    constexpr int MR = Blk<T>::MR;
    const long M = g.og, Q = g.N * g.Pout;
    // Reduction tiles (a function of the shape only, so the sum order is fixed):
    // within one image when images are large (gy is then packed in place), else
    // runs of 256 columns across images.
    // Stride 1 (rank <= 2): tiles of whole output rows, im2col rows copied out of a
    // zero-padded copy of the input rows (as in conv_fwd_s1).
    const long pt = Blk<T>::KC;
    const bool s1 = path == kGemmS1;  // needs g.out[2] <= pt (path_unfit)
    const long Ho = g.out[1], Wo = g.out[2];
    const long dy = g.d[1], dx = g.d[2], ey = (g.k[1] - 1) * dy, Wp = Wo + (g.k[2] - 1) * dx;
    long R = 1, nblk = 1;
    if (s1) {
        R = imin(Ho, imax(1, pt / Wo));
        nblk = ceil_div(Ho, R);
        R = ceil_div(Ho, nblk);
    }
    const long plane = (R + ey) * Wp;
    const long tpi = s1 ? nblk : g.Pout >= pt / 2 ? ceil_div(g.Pout, pt) : 0;
    const long ptile = tpi ? ceil_div(g.Pout, tpi) : pt;
    const long ntiles = tpi ? g.N * tpi : ceil_div(Q, pt);
    // Column chunks of whole channels, about 256 columns each, and enough equal
    // chunks to keep every thread busy; too few channels: cut the rows too. Any split
    // gives the same bits: it changes who computes an element, never how.
    long nch = imax(ceil_div(g.cg * g.T, 256), ceil_div(2L * nt, g.G));
    if (nt > 1 && (g.G * nch) % nt) nch = round_up(g.G * nch, nt) / g.G + ((round_up(g.G * nch, nt) % g.G) != 0);
    nch = imin(g.cg, nch);
    const long cc = ceil_div(g.cg, nch);
    nch = ceil_div(g.cg, cc);
    long mch = 1;
    if (g.G * nch < nt) mch = imin(ceil_div(M, MR), ceil_div(nt, g.G * nch));
    const long mrows = round_up(ceil_div(M, mch), MR);
    mch = ceil_div(M, mrows);
    const long items = g.G * nch * mch;
#pragma omp parallel num_threads(nt)
    {
        DenormalGuard fp;
        T* D = tscratch<T>(0, cc * g.T * pt);
        T* Gb = tscratch<T>(1, mrows * pt);
        T* Ap = tscratch<T>(2, mrows * pt);
        T* Bp = tscratch<T>(3 /* per thread */, round_up(cc * g.T, Blk<T>::NR) * pt);
        T* Xp = s1 ? tscratch<T>(4, cc * plane) : nullptr;
#pragma omp for schedule(dynamic, 1)
        for (long it = 0; it < items; ++it) {
            const long gi = it / (nch * mch), r = it % (nch * mch);
            const long ch = r / mch, mi = r % mch;
            const long c0 = ch * cc, c1 = imin(g.cg, c0 + cc), cols = (c1 - c0) * g.T;
            const long m0 = mi * mrows, m1 = imin(M, m0 + mrows), rows = m1 - m0;
            T* Cd = gw + (gi * M + m0) * g.Kw + c0 * g.T;
            const T* xg = x + (gi * g.cg + c0) * g.Pin;
            for (long ti = 0; ti < ntiles; ++ti) {
                long q0, q1;
                if (s1) {
                    const long n = ti / nblk, r0 = (ti % nblk) * R, nr = imin(Ho, r0 + R) - r0;
                    q0 = n * g.Pout + r0 * Wo;
                    q1 = q0 + nr * Wo;
                    // zero-padded input rows of the chunk's channels, then the im2col
                    // rows (only real output positions: the sum order is that of q)
                    const long W = g.in[2], ca = imax(0, -g.lo[2]), cb = imin(W, Wp - g.lo[2]);
                    for (long c = 0; c < c1 - c0; ++c) {
                        const T* xc = xg + n * g.C * g.Pin + c * g.Pin;
                        for (long rr = 0; rr < nr + ey; ++rr) {
                            T* d = Xp + c * plane + rr * Wp;
                            const long iy = r0 + rr - g.lo[1];
                            if (iy < 0 || iy >= g.in[1] || ca >= cb) {
                                fill<T>(d, Wp, T(0));
                                continue;
                            }
                            const long p0 = ca + g.lo[2], p1 = cb + g.lo[2];
                            fill<T>(d, p0, T(0));
                            std::memcpy(d + p0, xc + iy * W + ca, (std::size_t)(cb - ca) * sizeof(T));
                            fill<T>(d + p1, Wp - p1, T(0));
                        }
                    }
                    for (long k = 0; k < cols; ++k) {
                        const long t = k % g.T;
                        const T* src = Xp + (k / g.T) * plane + (t / g.k[2]) * dy * Wp + (t % g.k[2]) * dx;
                        T* d = D + k * pt;
                        for (long rr = 0; rr < nr; ++rr)
                            for (long j = 0; j < Wo; ++j) d[rr * Wo + j] = src[rr * Wp + j];
                    }
                } else if (tpi) {
                    const long n = ti / tpi;
                    q0 = n * g.Pout + (ti % tpi) * ptile;
                    q1 = imin(n * g.Pout + g.Pout, q0 + ptile);
                } else {
                    q0 = ti * pt;
                    q1 = imin(Q, q0 + pt);
                }
                const long nq = q1 - q0;
                for (long k = 0; k < (s1 ? 0 : cols); ++k) {
                    long kz, ky, kx;
                    tap_of(g, k % g.T, kz, ky, kx);
                    im2col_row<T>(xg + (k / g.T) * g.Pin, g.C * g.Pin, g, kz, ky, kx, q0, q1,
                                  D + k * pt);
                }
                if (tpi) {  // one image: pack gy rows m0..m1 in place
                    const long n = q0 / g.Pout;
                    pack_a<T>(rows, nq, gy + (n * g.O + gi * M + m0) * g.Pout + (q0 - n * g.Pout),
                              g.Pout, 1, Ap);
                } else {
                // gy rows m0..m1 of the group for columns q0..q1 (may cross images)
                for (long o = 0; o < rows; ++o) {
                    long q = q0;
                    while (q < q1) {
                        const long n = q / g.Pout, p = q % g.Pout;
                        const long len = imin(g.Pout - p, q1 - q);
                        const T* s = gy + (n * g.O + gi * M + m0 + o) * g.Pout + p;
                        T* d = Gb + o * pt + (q - q0);
                        for (long j = 0; j < len; ++j) d[j] = s[j];
                        q += len;
                    }
                }
                pack_a<T>(rows, nq, Gb, pt, 1, Ap);
                }
                pack_b<T>(nq, cols, D, 1, pt, Bp);
                gemm_packed<T>(rows, cols, nq, Ap, Bp, Cd, g.Kw, ti > 0);
            }
        }
    }
}

template <class T>
static void bias_grad(long N, long O, long P, const T* gy, T* gb, int nt) {
#pragma omp parallel num_threads(nt)
    {
        DenormalGuard fp;
#pragma omp for schedule(static)
        for (long o = 0; o < O; ++o) {
            T acc[8] = {T(0), T(0), T(0), T(0), T(0), T(0), T(0), T(0)};
            for (long n = 0; n < N; ++n) {
                const T* s = gy + (n * O + o) * P;
                T part[8] = {T(0), T(0), T(0), T(0), T(0), T(0), T(0), T(0)};
                long i = 0;
                for (; i + 8 <= P; i += 8)
                    for (int j = 0; j < 8; ++j) part[j] += s[i + j];
                for (; i < P; ++i) part[i & 7] += s[i];
                for (int j = 0; j < 8; ++j) acc[j] += part[j];
            }
            gb[o] = ((acc[0] + acc[4]) + (acc[1] + acc[5])) + ((acc[2] + acc[6]) + (acc[3] + acc[7]));
        }
    }
}

// ----------------------------------------------------------------------------- pooling
// Each plane is independent; windows are swept tap by tap over a whole output row,
// so every output sees its taps in scan order (z, y, x) as the API requires.

// Max over one output row: taps in scan order, branchless updates (vectorised along
// the row). With indices the rule is: take the first in-bounds cell, then any larger
// value, then the first NaN (a NaN already held never loses); the winner is kept as
// a tap number (32-bit, like the value, so both vectorise) and turned into a flat
// offset at the end. Without indices: start at -inf, take larger values and NaNs.
template <class T, bool IDX, int SX>
static inline void max_taps(const T* xs, long a, long e, long sx_rt, std::int32_t t, T* best,
                            std::int32_t* tap) {
    const long sx = SX ? SX : sx_rt;
    if (IDX) {
        for (long o = a; o < e; ++o) {
            const T v = xs[o * sx];
            const T bv = best[o];
            const std::int32_t bt = tap[o];
            const bool take = (bt < 0) | (v > bv) | ((v != v) & (bv == bv));
            best[o] = take ? v : bv;
            tap[o] = take ? t : bt;
        }
    } else {
        for (long o = a; o < e; ++o) {
            const T v = xs[o * sx], bv = best[o];
            best[o] = ((v > bv) | (v != v)) ? v : bv;
        }
    }
}

template <class T, bool IDX>
static inline void max_row(const PoolGeo& g, const T* xp, long oz, long oy, T* best,
                           std::int32_t* tap, const long* toff, std::int64_t* bidx) {
    const long W = g.out[2], sx = g.s[2];
    for (long o = 0; o < W; ++o) best[o] = -__builtin_huge_val();
    if (IDX)
        for (long o = 0; o < W; ++o) tap[o] = -1;
    for (long kz = 0; kz < g.k[0]; ++kz) {
        const long iz = oz * g.s[0] + kz * g.d[0] - g.lo[0];
        if (iz < 0 || iz >= g.in[0]) continue;
        for (long ky = 0; ky < g.k[1]; ++ky) {
            const long iy = oy * g.s[1] + ky * g.d[1] - g.lo[1];
            if (iy < 0 || iy >= g.in[1]) continue;
            const T* xr = xp + (iz * g.in[1] + iy) * g.in[2];
            for (long kx = 0; kx < g.k[2]; ++kx) {
                const long off = kx * g.d[2] - g.lo[2];
                long a, e;
                valid_range(W, sx, off, g.in[2], a, e);
                if (a < e) {
                    CNN_CHECK("max_pool", a * sx + off, g.in[2]);
                    CNN_CHECK("max_pool", (e - 1) * sx + off, g.in[2]);
                }
                const std::int32_t t = (std::int32_t)((kz * g.k[1] + ky) * g.k[2] + kx);
                // strides 1 and 2 as constants: contiguous or deinterleaving loads
                // (a runtime stride would make the vectoriser use slow gathers)
                if (sx == 1)
                    max_taps<T, IDX, 1>(xr + off, a, e, 1, t, best, tap);
                else if (sx == 2)
                    max_taps<T, IDX, 2>(xr + off, a, e, 2, t, best, tap);
                else
                    max_taps<T, IDX, 0>(xr + off, a, e, sx, t, best, tap);
            }
        }
    }
    if (IDX) {
        // flat offset = base(oz, oy) + o*sx + toff[tap] (linear in the tap's offsets)
        const long base = ((oz * g.s[0] - g.lo[0]) * g.in[1] + (oy * g.s[1] - g.lo[1])) * g.in[2]
                          - g.lo[2];
        for (long o = 0; o < W; ++o) {
            CNN_CHECK("max_pool tap", tap[o], g.k[0] * g.k[1] * g.k[2]);
            bidx[o] = (std::int64_t)(base + o * sx + toff[tap[o]]);
        }
    }
}

template <class T>
static void max_pool(const PoolGeo& g, const T* x, T* y, std::int64_t* idx, int nt) {
    const long Pin = g.Pin(), Pout = g.Pout(), W = g.out[2];
#pragma omp parallel num_threads(nt)
    {
        DenormalGuard fp;
        std::int32_t* tap = tscratch<std::int32_t>(0, W);
        // offset of each tap from its window's origin, in the flattened plane
        long* toff = tscratch<long>(1, g.k[0] * g.k[1] * g.k[2]);
        for (long kz = 0, t = 0; kz < g.k[0]; ++kz)
            for (long ky = 0; ky < g.k[1]; ++ky)
                for (long kx = 0; kx < g.k[2]; ++kx, ++t)
                    toff[t] = (kz * g.d[0] * g.in[1] + ky * g.d[1]) * g.in[2] + kx * g.d[2];
#pragma omp for schedule(static)
        for (long pl = 0; pl < g.planes; ++pl) {
            const T* xp = x + pl * Pin;
            for (long oz = 0; oz < g.out[0]; ++oz)
                for (long oy = 0; oy < g.out[1]; ++oy) {
                    const long orow = pl * Pout + (oz * g.out[1] + oy) * W;
                    if (idx)
                        max_row<T, true>(g, xp, oz, oy, y + orow, tap, toff, idx + orow);
                    else
                        max_row<T, false>(g, xp, oz, oy, y + orow, nullptr, nullptr, nullptr);
                }
        }
    }
}

template <class T>
static long max_pool_bwd(long planes, long Pin, long Pout, const T* gy, const std::int64_t* idx,
                         T* gx, int nt) {
    long bad = 0;
#pragma omp parallel num_threads(nt) reduction(+ : bad)
    {
        DenormalGuard fp;
#pragma omp for schedule(static)
        for (long pl = 0; pl < planes; ++pl) {
            T* xp = gx + pl * Pin;
            fill<T>(xp, Pin, T(0));
            const T* yp = gy + pl * Pout;
            const std::int64_t* ip = idx + pl * Pout;
            for (long o = 0; o < Pout; ++o) {
                const std::int64_t i = ip[o];
                if (i < 0 || i >= Pin) {
                    ++bad;
                    continue;
                }
                xp[i] += yp[o];
            }
        }
    }
    return bad;
}

// Row o in [a, e): acc[o] += xs[o*sx] (gather) or, SCATTER, xs[o*sx] += acc[o].
// Strides 1 and 2 are constants so that the vectoriser deinterleaves instead of
// using gathers.
template <class T, int SX, bool SCATTER>
static inline void strided_add(T* acc, T* xs_, long a, long e, long sx_rt) {
    const long sx = SX ? SX : sx_rt;
    if (SCATTER) {
        for (long o = a; o < e; ++o) xs_[o * sx] += acc[o];
    } else {
        for (long o = a; o < e; ++o) acc[o] += xs_[o * sx];
    }
}
template <class T, int SX, bool SCATTER>
static inline void strided_add(T* acc, const T* xs, long a, long e, long sx_rt) {
    strided_add<T, SX, SCATTER>(acc, const_cast<T*>(xs), a, e, sx_rt);
}

template <class T>
static inline T divisor_at(const double* cz, const double* cy, const double* cx, double ov,
                           long oz, long oy, long ox) {
    if (ov > 0) return T(ov);
    return T(cz[oz]) * T(cy[oy]) * T(cx[ox]);
}

// Global pooling: one output whose window is the whole plane, unpadded and undilated.
static inline bool whole_plane_window(const PoolGeo& g) {
    if (g.Pout() != 1) return false;
    for (int d = 0; d < 3; ++d)
        if (g.lo[d] != 0 || g.k[d] != g.in[d] || g.d[d] != 1) return false;
    return true;
}

// Sum of a contiguous run in eight interleaved partial sums (vectorised; a single
// running sum is a chain of dependent adds), combined in a fixed order.
template <class T>
static inline T sum_run(const T* p, long n) {
    T part[8] = {T(0), T(0), T(0), T(0), T(0), T(0), T(0), T(0)};
    long i = 0;
    for (; i + 8 <= n; i += 8)
        for (int j = 0; j < 8; ++j) part[j] += p[i + j];
    for (int j = 0; i < n; ++i, ++j) part[j] += p[i];
    return ((part[0] + part[1]) + (part[2] + part[3])) +
           ((part[4] + part[5]) + (part[6] + part[7]));
}

template <class T>
static void avg_pool(const PoolGeo& g, const T* x, const double* cz, const double* cy,
                     const double* cx, double ov, T* y, int nt) {
    const long Pin = g.Pin(), Pout = g.Pout(), W = g.out[2];
    const bool global = whole_plane_window(g);
#pragma omp parallel num_threads(nt)
    {
        DenormalGuard fp;
#pragma omp for schedule(static)
        for (long pl = 0; pl < g.planes; ++pl) {
            const T* xp = x + pl * Pin;
            if (global) {
                y[pl] = sum_run<T>(xp, Pin) / divisor_at<T>(cz, cy, cx, ov, 0, 0, 0);
                continue;
            }
            for (long oz = 0; oz < g.out[0]; ++oz)
                for (long oy = 0; oy < g.out[1]; ++oy) {
                    T* acc = y + pl * Pout + (oz * g.out[1] + oy) * W;
                    fill<T>(acc, W, T(0));
                    for (long kz = 0; kz < g.k[0]; ++kz) {
                        const long iz = oz * g.s[0] + kz * g.d[0] - g.lo[0];
                        if (iz < 0 || iz >= g.in[0]) continue;
                        for (long ky = 0; ky < g.k[1]; ++ky) {
                            const long iy = oy * g.s[1] + ky * g.d[1] - g.lo[1];
                            if (iy < 0 || iy >= g.in[1]) continue;
                            const T* xr = xp + (iz * g.in[1] + iy) * g.in[2];
                            if (W == 1 && g.d[2] == 1) {
                                // One output per row (global pooling): the row's taps are
                                // contiguous; a per-tap loop would cost more than the adds.
                                const long a = 0;  // the only window starts at -lo <= 0
                                const long e = g.k[2] - g.lo[2] < g.in[2] ? g.k[2] - g.lo[2] : g.in[2];
                                T sum = T(0);
                                for (long i = a; i < e; ++i) sum += xr[i];
                                acc[0] += sum;
                                continue;
                            }
                            for (long kx = 0; kx < g.k[2]; ++kx) {
                                const long off = kx * g.d[2] - g.lo[2];
                                long a, e;
                                valid_range(W, g.s[2], off, g.in[2], a, e);
                                const long sx = g.s[2];
                                if (sx == 1)
                                    strided_add<T, 1, false>(acc, xr + off, a, e, 1);
                                else if (sx == 2)
                                    strided_add<T, 2, false>(acc, xr + off, a, e, 2);
                                else
                                    strided_add<T, 0, false>(acc, xr + off, a, e, sx);
                            }
                        }
                    }
                    for (long o = 0; o < W; ++o) acc[o] /= divisor_at<T>(cz, cy, cx, ov, oz, oy, o);
                }
        }
    }
}

template <class T>
static void avg_pool_bwd(const PoolGeo& g, const T* gy, const double* cz, const double* cy,
                         const double* cx, double ov, T* gx, int nt) {
    const long Pin = g.Pin(), Pout = g.Pout(), W = g.out[2];
    const bool global = whole_plane_window(g);
#pragma omp parallel num_threads(nt)
    {
        DenormalGuard fp;
        T* gr = tscratch<T>(0, W);
#pragma omp for schedule(static)
        for (long pl = 0; pl < g.planes; ++pl) {
            T* xp = gx + pl * Pin;
            if (global) {  // every cell gets the one output's share
                fill<T>(xp, Pin, gy[pl] / divisor_at<T>(cz, cy, cx, ov, 0, 0, 0));
                continue;
            }
            fill<T>(xp, Pin, T(0));
            for (long oz = 0; oz < g.out[0]; ++oz)
                for (long oy = 0; oy < g.out[1]; ++oy) {
                    const T* yr = gy + pl * Pout + (oz * g.out[1] + oy) * W;
                    for (long o = 0; o < W; ++o)
                        gr[o] = yr[o] / divisor_at<T>(cz, cy, cx, ov, oz, oy, o);
                    for (long kz = 0; kz < g.k[0]; ++kz) {
                        const long iz = oz * g.s[0] + kz * g.d[0] - g.lo[0];
                        if (iz < 0 || iz >= g.in[0]) continue;
                        for (long ky = 0; ky < g.k[1]; ++ky) {
                            const long iy = oy * g.s[1] + ky * g.d[1] - g.lo[1];
                            if (iy < 0 || iy >= g.in[1]) continue;
                            T* xr = xp + (iz * g.in[1] + iy) * g.in[2];
                            if (W == 1 && g.d[2] == 1) {  // global pooling, as forward
                                const long a = 0;  // the only window starts at -lo <= 0
                                const long e = g.k[2] - g.lo[2] < g.in[2] ? g.k[2] - g.lo[2] : g.in[2];
                                for (long i = a; i < e; ++i) xr[i] += gr[0];
                                continue;
                            }
                            for (long kx = 0; kx < g.k[2]; ++kx) {
                                const long off = kx * g.d[2] - g.lo[2];
                                long a, e;
                                valid_range(W, g.s[2], off, g.in[2], a, e);
                                const long sx = g.s[2];
                                if (sx == 1)
                                    strided_add<T, 1, true>(gr, xr + off, a, e, 1);
                                else if (sx == 2)
                                    strided_add<T, 2, true>(gr, xr + off, a, e, 2);
                                else
                                    strided_add<T, 0, true>(gr, xr + off, a, e, sx);
                            }
                        }
                    }
                }
        }
    }
}

template <class T>
static KernelTable<T> make_table() {
    KernelTable<T> t;
    t.conv_fwd = &conv_fwd<T>;
    t.conv_bwd_data = &conv_bwd_data<T>;
    t.conv_bwd_weight = &conv_bwd_weight<T>;
    t.bias_grad = &bias_grad<T>;
    t.max_pool = &max_pool<T>;
    t.max_pool_bwd = &max_pool_bwd<T>;
    t.avg_pool = &avg_pool<T>;
    t.avg_pool_bwd = &avg_pool_bwd<T>;
    return t;
}

}  // namespace CNNFAST_KNS
}  // namespace cnnfast
