// depthwise.cu -- the shared-memory tiled kernel of 2-d depthwise convolutions (each
// output channel reads one input channel: groups == input channels, any channel
// multiplier) with a KxK kernel (K = 3 or 5), stride 1 or 2, dilation 1: the
// "depthwise-tiled" path of the CUDA backends (cnnfast/backends/cuda/conv_launch.py).
//
// conv.cu's conv_direct gives each thread one output and has it read its K*K inputs
// from global memory, with a bounds test and index arithmetic per tap: neighbouring
// outputs read mostly the same inputs, so the loads hit the cache, but the kernel is
// bound by those instructions. Here a block of DW_TILE_W x DW_TILE_H outputs of one
// (image, channel) plane first copies the input patch they read, zeros for the
// padding, into shared memory (one bounds test per input, coalesced rows), then each
// thread computes DW_TILE_H / DW_ROWS outputs of one column from shared memory with
// the K*K weights in registers: no bounds tests and constant offsets in the tap loops.
//
// FLIP reads the taps reversed with padding K - 1 - pad: the adjoint of a stride-1
// depthwise correlation (input gradient, transposed-convolution forward) is the
// stride-1 correlation with the reversed kernel. The weight's (K*K)-tap block of
// output channel co is w + co*K*K in both layouts (conv weight (CO, 1, K, K),
// transposed weight (CI, M, K, K) with CI == groups). The bias and the fused
// activation are applied at the store, in the accumulator type, as everywhere.
#include "common.cuh"
#include "activation.cuh"

#define DW_TILE_W 32
#define DW_TILE_H 16
#define DW_ROWS 8  // thread rows per block: BLOCK_THREADS / DW_TILE_W
static_assert(DW_TILE_W * DW_ROWS == BLOCK_THREADS && DW_TILE_H % DW_ROWS == 0,
              "a block of BLOCK_THREADS threads covers DW_TILE_W columns");

template <class T, int K, int S, int FLIP>
__global__ void __launch_bounds__(BLOCK_THREADS)
conv_depthwise_tiled(const T* __restrict__ w, const T* __restrict__ x,
                     const T* __restrict__ bias, T* __restrict__ y,
                     const int* __restrict__ geo, double slope, int act) {
    typedef typename AccOf<T>::type Acc;
    static_assert(!FLIP || S == 1, "the flipped (adjoint) form is for stride 1");
    constexpr int IH = (DW_TILE_H - 1) * S + K, IW = (DW_TILE_W - 1) * S + K;
    __shared__ T patch[IH][IW];
    ConvGeo g;
    g.load(geo);
    const int M = g.CO / g.G;  // output channels per input channel
    const int H = g.I[1], W = g.I[2], OH = g.O[1], OW = g.O[2];
    const int pad0 = FLIP ? K - 1 - g.P[1] : g.P[1];
    const int pad1 = FLIP ? K - 1 - g.P[2] : g.P[2];
    const int tiles_w = (OW + DW_TILE_W - 1) / DW_TILE_W;
    const int oy0 = (blockIdx.x / tiles_w) * DW_TILE_H, ox0 = (blockIdx.x % tiles_w) * DW_TILE_W;
    const int iy0 = oy0 * S - pad0, ix0 = ox0 * S - pad1;
    const int tx = threadIdx.x % DW_TILE_W, ty = threadIdx.x / DW_TILE_W;
    for (int plane = blockIdx.y; plane < g.N * g.CO; plane += gridDim.y) {
        const int co = plane % g.CO, n = plane / g.CO;
        const T* xc = x + ((i64)n * g.CI + co / M) * H * W;
        __syncthreads();  // the previous plane's patch is no longer read
        for (int e = threadIdx.x; e < IH * IW; e += BLOCK_THREADS) {
            const int r = e / IW, c = e % IW;
            const int iy = iy0 + r, ix = ix0 + c;
            patch[r][c] = ((unsigned)iy < (unsigned)H && (unsigned)ix < (unsigned)W)
                              ? xc[iy * W + ix] : T(0);
        }
        Acc wr[K * K];
        const T* wc = w + (i64)co * K * K;
#pragma unroll  // wr stays in registers (a dynamic index would put it in local memory)
        for (int t = 0; t < K * K; ++t) wr[t] = Acc(wc[FLIP ? K * K - 1 - t : t]);
        const Acc b = g.has_bias ? Acc(bias[co]) : Acc(0);
        __syncthreads();
        const int ox = ox0 + tx;
        T* yc = y + (i64)plane * OH * OW;
        for (int r = ty; r < DW_TILE_H; r += DW_ROWS) {
            const int oy = oy0 + r;
            if (oy >= OH || ox >= OW) continue;
            Acc acc = b;
#pragma unroll
            for (int ky = 0; ky < K; ++ky)
#pragma unroll
                for (int kx = 0; kx < K; ++kx)
                    acc += wr[ky * K + kx] * Acc(patch[r * S + ky][tx * S + kx]);
            yc[oy * OW + ox] = T(activate(acc, act, slope));
        }
    }
}
