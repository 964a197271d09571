// The direct kernels of one-input-channel-per-group convolutions (depthwise, 1-channel
// first layers): the design notes, and the choice between direct-2d and direct-rows.
// A part of the per-ISA kernels, in namespace cnnfast::CNNFAST_KNS: included by
// kernels_impl.h (compiled once per ISA, see there), not on its own.
#pragma once

#include "kernels.h"
#include "conv/direct2d.h"
#include "conv/direct_rows.h"

namespace cnnfast {
namespace CNNFAST_KNS {

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
// Other shapes (3-d, other kernel sizes) use the generic row kernels (direct_*_rows,
// conv/direct_rows.h). The d2_* kernels are in conv/direct2d.h, their buffer and
// geometry in conv/direct2d_buffer.h.

// The geometry predicates (d2_ok, use_direct, s1_ok) and the choice of path are in
// kernels.h (choose_path): one place, shared with the binding that reports the path.

// return fn<T, KH, KW>(args...) for the fast-path kernel size of g (d2_ok(g)).
// The generic row kernels (direct_*_rows) handle every other one-channel-per-group case.
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

}  // namespace CNNFAST_KNS
}  // namespace cnnfast
