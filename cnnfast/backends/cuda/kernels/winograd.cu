// winograd.cu -- the transforms of the Winograd F(2x2, 3x3) convolution path of the
// CUDA backends (2-d, 3x3 kernel, stride 1, dilation 1; float and double).
//
// With the standard matrices (Lavin & Gray, "Fast Algorithms for Convolutional Neural
// Networks", 2015)
//     B^T = [1 0 -1 0; 0 1 1 0; 0 -1 1 0; 0 1 0 -1]
//     G   = [1 0 0; 1/2 1/2 1/2; 1/2 -1/2 1/2; 0 0 1]
//     A^T = [1 1 1 0; 0 1 -1 -1]
// a 2x2 output tile of channel co is  A^T [ sum_c (G g[co,c] G^T) . (B^T d[c] B) ] A,
// d the 4x4 input patch of the tile, "." the elementwise product. The sum over c is, for
// each of the 16 elements e, a matrix product U[e] (CO x C) * V[e] (C x tiles): the
// host (cnnfast/backends/cuda/winograd_launch.py) runs conv.cu's GEMM for it, as a
// 1x1 convolution with 16 * G groups. The transforms here move data between the
// tensors and those 16 slices:
//
//   V[e][ch][tile]   = (B^T d B)[e]      wino_input   (ch over all C channels)
//   U[e][co][c]      = (G g G^T)[e]      wino_weight  (c within co's group)
//   y tile           = A^T M[.][co][tile] A (+ bias, activation)   wino_output
//
// and for the weight gradient (the transpose of the forward's linear map:
// dL/dg = G^T [ sum_tiles (A gy A^T) . (B^T d B) ] G):
//
//   Gt[e][co][tile]  = (A gy A^T)[e]     wino_grad_output (gy's 2x2 tile, zeros past the edge)
//   W[e][co][c]      = sum_tiles Gt[e][co][.] V[e][c][.]   (conv.cu's weight-gradient GEMM)
//   gw[co][c]        = G^T W[.][co][c] G                   wino_weight_grad
//
// Tiles are numbered (n * TH + th) * TW + tw; a tile covers outputs 2th..2th+1,
// 2tw..2tw+1 and reads inputs from 2th - pad0 and 2tw - pad1 (zeros outside the input;
// the padding may be negative: the input gradient's is 2 - pad). Every thread does one
// (channel, tile) pair; consecutive threads take consecutive tiles, so the stores of
// the 16 slices are coalesced. The transforms only add, subtract and halve: they are
// exact up to one rounding per step, well within the accuracy contract (tests/
// test_cuda_winograd.py).
#include "common.cuh"
#include "activation.cuh"

#define WINO_CORR 0  // the weight read as y = corr(x, w): w[co][c][ky][kx]
#define WINO_ADJ 1   // the adjoint: w[c][co][2-ky][2-kx] (input gradient, convT forward)

// Image, tile row and tile column of tile number ``tile``.
__device__ __forceinline__ void tile_coords(int tile, int th_count, int tw_count, int& n,
                                            int& th, int& tw) {
    tw = tile % tw_count;
    const int t01 = tile / tw_count;
    th = t01 % th_count;
    n = t01 / th_count;
}

// One 4-vector of B^T times d: (d0 - d2, d1 + d2, d2 - d1, d1 - d3).
template <class A>
__device__ __forceinline__ void bt4(A d0, A d1, A d2, A d3, A* o) {
    o[0] = d0 - d2;
    o[1] = d1 + d2;
    o[2] = d2 - d1;
    o[3] = d1 - d3;
}

template <class T>
__global__ void __launch_bounds__(BLOCK_THREADS)
wino_input(const T* __restrict__ x, T* __restrict__ v, int n_img, int channels, int h,
           int w, int pad0, int pad1, int th_count, int tw_count) {
    typedef typename AccOf<T>::type Acc;
    const int tiles = n_img * th_count * tw_count;
    const i64 total = (i64)channels * tiles;
    const i64 slice = total;  // V[e] holds channels * tiles values
    for (i64 idx = (i64)blockIdx.x * blockDim.x + threadIdx.x; idx < total;
         idx += (i64)gridDim.x * blockDim.x) {
        const int ch = (int)(idx / tiles);
        int n, th, tw;
        tile_coords((int)(idx % tiles), th_count, tw_count, n, th, tw);
        const T* xc = x + ((i64)n * channels + ch) * h * w;
        const int r0 = 2 * th - pad0, c0 = 2 * tw - pad1;
        Acc d[4][4];
        for (int i = 0; i < 4; ++i)
            for (int j = 0; j < 4; ++j) {
                int r = r0 + i, c = c0 + j;
                d[i][j] = ((unsigned)r < (unsigned)h && (unsigned)c < (unsigned)w)
                              ? Acc(xc[r * w + c]) : Acc(0);
            }
        Acc t[4][4];  // B^T d, column by column
        for (int j = 0; j < 4; ++j) {
            Acc o[4];
            bt4(d[0][j], d[1][j], d[2][j], d[3][j], o);
            for (int i = 0; i < 4; ++i) t[i][j] = o[i];
        }
        for (int i = 0; i < 4; ++i) {  // (B^T d) B, row by row
            Acc o[4];
            bt4(t[i][0], t[i][1], t[i][2], t[i][3], o);
            for (int j = 0; j < 4; ++j) v[(i * 4 + j) * slice + idx] = T(o[j]);
        }
    }
}

// G times a 3-vector: (g0, (g0 + g1 + g2)/2, (g0 - g1 + g2)/2, g2).
template <class A>
__device__ __forceinline__ void g3(A g0, A g1, A g2, A* o) {
    o[0] = g0;
    o[1] = A(0.5) * (g0 + g1 + g2);
    o[2] = A(0.5) * (g0 - g1 + g2);
    o[3] = g2;
}

// U[e][co][c] from the weight; co over all CO output channels, c over the cg input
// channels of co's group (groups of m output channels).
template <class T, int WMODE>
__global__ void __launch_bounds__(BLOCK_THREADS)
wino_weight(const T* __restrict__ wt, T* __restrict__ u, int co_count, int m, int cg) {
    typedef typename AccOf<T>::type Acc;
    const int total = co_count * cg;
    for (int idx = blockIdx.x * blockDim.x + threadIdx.x; idx < total;
         idx += gridDim.x * blockDim.x) {
        const int co = idx / cg, c = idx % cg;
        Acc g[3][3];
        if (WMODE == WINO_CORR) {
            const T* src = wt + (i64)idx * 9;
            for (int t = 0; t < 9; ++t) g[t / 3][t % 3] = Acc(src[t]);
        } else {  // w[grp * cg + c][m][.], taps reversed
            const int grp = co / m, mm = co % m;
            const T* src = wt + ((i64)(grp * cg + c) * m + mm) * 9;
            for (int t = 0; t < 9; ++t) g[t / 3][t % 3] = Acc(src[8 - t]);
        }
        Acc t[4][3];  // G g, column by column
        for (int j = 0; j < 3; ++j) {
            Acc o[4];
            g3(g[0][j], g[1][j], g[2][j], o);
            for (int i = 0; i < 4; ++i) t[i][j] = o[i];
        }
        for (int i = 0; i < 4; ++i) {  // (G g) G^T, row by row
            Acc o[4];
            g3(t[i][0], t[i][1], t[i][2], o);
            for (int j = 0; j < 4; ++j) u[(i * 4 + j) * (i64)total + idx] = T(o[j]);
        }
    }
}

// y's 2x2 tile from the 16 products: A^T M A, then the bias and the activation.
template <class T>
__global__ void __launch_bounds__(BLOCK_THREADS)
wino_output(const T* __restrict__ mprod, const T* __restrict__ bias, T* __restrict__ y,
            int n_img, int co_count, int oh, int ow, int th_count, int tw_count,
            int has_bias, double slope, int act) {
    typedef typename AccOf<T>::type Acc;
    const int tiles = n_img * th_count * tw_count;
    const i64 total = (i64)co_count * tiles;
    for (i64 idx = (i64)blockIdx.x * blockDim.x + threadIdx.x; idx < total;
         idx += (i64)gridDim.x * blockDim.x) {
        const int co = (int)(idx / tiles);
        int n, th, tw;
        tile_coords((int)(idx % tiles), th_count, tw_count, n, th, tw);
        Acc mv[4][4];
        for (int e = 0; e < 16; ++e) mv[e / 4][e % 4] = Acc(mprod[e * total + idx]);
        Acc r[2][4];  // A^T M: rows m0 + m1 + m2 and m1 - m2 - m3
        for (int j = 0; j < 4; ++j) {
            r[0][j] = mv[0][j] + mv[1][j] + mv[2][j];
            r[1][j] = mv[1][j] - mv[2][j] - mv[3][j];
        }
        const Acc b = has_bias ? Acc(bias[co]) : Acc(0);
        T* yc = y + ((i64)n * co_count + co) * oh * ow;
        for (int i = 0; i < 2; ++i) {
            const int oy = 2 * th + i;
            if (oy >= oh) break;
            const Acc out[2] = {r[i][0] + r[i][1] + r[i][2], r[i][1] - r[i][2] - r[i][3]};
            for (int j = 0; j < 2; ++j) {
                const int ox = 2 * tw + j;
                if (ox < ow) yc[oy * ow + ox] = T(activate(out[j] + b, act, slope));
            }
        }
    }
}

// A times a 2-vector: (a, a + b, a - b, -b).
template <class A>
__device__ __forceinline__ void a2(A a, A b, A* o) {
    o[0] = a;
    o[1] = a + b;
    o[2] = a - b;
    o[3] = -b;
}

// Gt[e][co][tile] = (A gy A^T)[e] of gy's 2x2 tile (zeros past gy's edge).
template <class T>
__global__ void __launch_bounds__(BLOCK_THREADS)
wino_grad_output(const T* __restrict__ gy, T* __restrict__ gt, int n_img, int co_count,
                 int oh, int ow, int th_count, int tw_count) {
    typedef typename AccOf<T>::type Acc;
    const int tiles = n_img * th_count * tw_count;
    const i64 total = (i64)co_count * tiles;
    for (i64 idx = (i64)blockIdx.x * blockDim.x + threadIdx.x; idx < total;
         idx += (i64)gridDim.x * blockDim.x) {
        const int co = (int)(idx / tiles);
        int n, th, tw;
        tile_coords((int)(idx % tiles), th_count, tw_count, n, th, tw);
        const T* gc = gy + ((i64)n * co_count + co) * oh * ow;
        Acc g[2][2];
        for (int i = 0; i < 2; ++i)
            for (int j = 0; j < 2; ++j) {
                int r = 2 * th + i, c = 2 * tw + j;
                g[i][j] = (r < oh && c < ow) ? Acc(gc[r * ow + c]) : Acc(0);
            }
        Acc t[4][2];  // A g, column by column
        for (int j = 0; j < 2; ++j) {
            Acc o[4];
            a2(g[0][j], g[1][j], o);
            for (int i = 0; i < 4; ++i) t[i][j] = o[i];
        }
        for (int i = 0; i < 4; ++i) {  // (A g) A^T, row by row
            Acc o[4];
            a2(t[i][0], t[i][1], o);
            for (int j = 0; j < 4; ++j) gt[(i * 4 + j) * total + idx] = T(o[j]);
        }
    }
}

// G^T times a 4-vector: (w0 + (w1 + w2)/2, (w1 - w2)/2, (w1 + w2)/2 + w3).
template <class A>
__device__ __forceinline__ void gt4(A w0, A w1, A w2, A w3, A* o) {
    o[0] = w0 + A(0.5) * (w1 + w2);
    o[1] = A(0.5) * (w1 - w2);
    o[2] = A(0.5) * (w1 + w2) + w3;
}

// gw[co][c][.] = G^T W[.][co][c] G, W[e] laid out (co, c) as the GEMM wrote it.
template <class T>
__global__ void __launch_bounds__(BLOCK_THREADS)
wino_weight_grad(const T* __restrict__ wsum, T* __restrict__ gw, int co_count, int cg) {
    typedef typename AccOf<T>::type Acc;
    const int total = co_count * cg;
    for (int idx = blockIdx.x * blockDim.x + threadIdx.x; idx < total;
         idx += gridDim.x * blockDim.x) {
        Acc wv[4][4];
        for (int e = 0; e < 16; ++e) wv[e / 4][e % 4] = Acc(wsum[(i64)e * total + idx]);
        Acc t[3][4];  // G^T W, column by column
        for (int j = 0; j < 4; ++j) {
            Acc o[3];
            gt4(wv[0][j], wv[1][j], wv[2][j], wv[3][j], o);
            for (int i = 0; i < 3; ++i) t[i][j] = o[i];
        }
        T* dst = gw + (i64)idx * 9;
        for (int i = 0; i < 3; ++i) {  // (G^T W) G, row by row
            Acc o[3];
            gt4(t[i][0], t[i][1], t[i][2], t[i][3], o);
            for (int j = 0; j < 3; ++j) dst[i * 3 + j] = T(o[j]);
        }
    }
}
