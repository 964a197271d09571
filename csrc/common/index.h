// Index arithmetic (min/max, floor and ceiling division, the in-bounds range of a
// strided row), the debug bounds check CNN_CHECK and fill.
// A part of the per-ISA kernels, in namespace cnnfast::CNNFAST_KNS: included by
// kernels_impl.h (compiled once per ISA, see there), not on its own.
#pragma once

namespace cnnfast {
namespace CNNFAST_KNS {

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

template <class T>
static inline void fill(T* p, long n, T v) {
    for (long i = 0; i < n; ++i) p[i] = v;
}

}  // namespace CNNFAST_KNS
}  // namespace cnnfast
