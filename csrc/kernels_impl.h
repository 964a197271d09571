// The cpp backend's kernels, written once and compiled once per ISA (see kernels.h):
// isa/kernels_portable.cpp includes this with CNNFAST_KNS=portable,
// isa/kernels_avx2.cpp with CNNFAST_KNS=avx2 and CNNFAST_IMPL_AVX2 after
// `#pragma GCC target("avx2,fma")`, isa/kernels_avx512.cpp with CNNFAST_KNS=avx512 and
// CNNFAST_IMPL_AVX2 + CNNFAST_IMPL_AVX512 after an AVX-512 target pragma, so the loops
// are auto-vectorised for each ISA and the GEMM has an intrinsics micro-kernel. This file is the one entry point: it
// includes the parts in dependency order and assembles the function table.
//
//   common/  index helpers and CNN_CHECK, DenormalGuard, tscratch (slots: kernels.h),
//            the DV<T> SIMD vectors of the direct kernels, the fused activation
//            epilogue (activation.h: ConvGeo::act, applied where y is written)
//   gemm/    blocking, pack_a / pack_b, gemm_packed; isa.h picks the ISA's parts
//            (ukernel_generic.h / ukernel_avx2.h / ukernel_avx512.h, pack_generic.h /
//            pack_avx2.h)
//   conv/    im2col / col2im, the direct kernels (direct2d*.h: d2_*, direct_rows.h,
//            direct.h choosing between them), the stride-1 GEMM path (gemm_s1.h),
//            Winograd F(4x4, 3x3) (winograd.h; 3-d: winograd3d.h, which it
//            includes), the three conv kernels with the
//            im2col GEMM path (conv.h), bias_grad, act_grad (the activation's
//            derivative and the bias gradient in one pass)
//   pool/    max and average pooling
//
// Each part opens namespace cnnfast::CNNFAST_KNS itself and includes the parts it
// uses; the ISA macros are read only by common/simd.h (the vector width),
// gemm/blocking.h (the tile shape), gemm/isa.h and conv/winograd.h (its AVX2
// transposes and weight transform).
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

#include "kernels.h"

#include "common/denormal.h"
#include "common/index.h"
#include "common/scratch.h"
#include "common/simd.h"
#include "common/activation.h"
#include "gemm/gemm_packed.h"
#include "gemm/pack.h"
#include "conv/im2col.h"
#include "conv/direct.h"
#include "conv/gemm_s1.h"
#include "conv/gemm_phase.h"
#include "conv/winograd.h"
#include "conv/wgrad_short.h"
#include "conv/conv.h"
#include "conv/bias_grad.h"
#include "conv/act_grad.h"
#include "pool/max_pool.h"
#include "pool/avg_pool.h"

namespace cnnfast {
namespace CNNFAST_KNS {

template <class T>
static KernelTable<T> make_table() {
    KernelTable<T> t;
    t.conv_fwd = &conv_fwd<T>;
    t.conv_bwd_data = &conv_bwd_data<T>;
    t.conv_bwd_weight = &conv_bwd_weight<T>;
    t.bias_grad = &bias_grad<T>;
    t.act_grad = &act_grad<T>;
    t.max_pool = &max_pool<T>;
    t.max_pool_bwd = &max_pool_bwd<T>;
    t.avg_pool = &avg_pool<T>;
    t.avg_pool_bwd = &avg_pool_bwd<T>;
    return t;
}

}  // namespace CNNFAST_KNS
}  // namespace cnnfast
