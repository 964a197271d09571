// The ISA-specific parts of the GEMM, chosen here, once, by the build's ISA macros
// (CNNFAST_IMPL_AVX2, set by isa/kernels_avx2.cpp, and with it CNNFAST_IMPL_AVX512,
// set by isa/kernels_avx512.cpp): the micro-kernel `ukernel` and
// the packing shortcuts of pack_a / pack_b (kPackAFast, pack_a_panel_fast, kPackBFast,
// pack_b_panel_fast). Everything else in gemm/ is written once for every ISA.
#pragma once

#if defined(CNNFAST_IMPL_AVX512)
#include "gemm/ukernel_avx512.h"
#include "gemm/pack_avx2.h"  // AVX-512 has AVX2: its transposes serve the wider panels too
#elif defined(CNNFAST_IMPL_AVX2)
#include "gemm/ukernel_avx2.h"
#include "gemm/pack_avx2.h"
#else
#include "gemm/ukernel_generic.h"
#include "gemm/pack_generic.h"
#endif
