// The kernels (kernels_impl.h and its parts) for the baseline ISA (SSE2 on x86-64,
// NEON on AArch64): the path used without AVX2+FMA or with CNNFAST_SIMD=portable.
#include <cstdint>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#if defined(__x86_64__) || defined(__i386__)
#include <xmmintrin.h>
#endif

#include "kernels.h"

#define CNNFAST_KNS portable
#include "kernels_impl.h"

namespace cnnfast {

const KernelTable<float>& portable_table_f32() {
    static const KernelTable<float> t = portable::make_table<float>();
    return t;
}

const KernelTable<double>& portable_table_f64() {
    static const KernelTable<double> t = portable::make_table<double>();
    return t;
}

}  // namespace cnnfast
