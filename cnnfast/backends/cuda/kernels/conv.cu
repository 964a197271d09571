// conv.cu -- convolution kernels of cnnfast (forward, transposed, both gradients).
//
// Three problem modes share one tiled implicit-GEMM kernel (no im2col buffer: the
// operand tiles are gathered straight from the tensors into shared memory):
//
//   MODE_CORR  y[n, g*M+m, p]  = sum_{c,t} w[g*M+m, c, t] * x[n, g*Cg+c, p*s + t*d - pad]
//              (convolution forward; input gradient of a transposed convolution)
//   MODE_ADJ   y[n, g*M+m, q]  = sum_{c,t} w[g*Cg+c, m, t] * x[n, g*Cg+c, (q + pad - t*d)/s]
//              over the taps where the division is exact and in range: the adjoint of
//              MODE_CORR written as a gather (transposed convolution forward; input
//              gradient of a convolution) -- no atomics, deterministic.
//   MODE_WGRAD gw[g*M+m, c, t] = sum_{n,p} gy[n, g*M+m, p] * x[n, g*Cg+c, p*s + t*d - pad]
//              (weight gradient of both; split over K in a fixed number of slices whose
//              partial sums are added in slice order by sum_splits: deterministic).
//
// GEMM view per group g: C[M x NC] = A[M x K] * B[K x NC]; the roles:
//   CORR/ADJ:  M = CO/G, K = (CI/G)*taps, NC = N*out_positions, A = weight, B = data
//   WGRAD:     M = CO/G, K = N*out_positions, NC = (CI/G)*taps,  A = grad_y, B = data
//
// Index arithmetic is hoisted out of the inner loops. Everything that depends only on
// the reduction index k lives in a row table built once per geometry on the host
// (cnnfast/backends/cuda/conv_launch.py, which reads the ROW_*/PH_* layouts, the modes,
// GEMM_THREADS and DW_TAPS from this file, the ACT_* codes from activation.cuh); what
// depends only on the output column is decoded once per thread. A B element is then
//     data[col_base + row.x_off + flat(row.v + col.v)]      (CORR, WGRAD)
//     data[col_base + row.x_off + flat((col.v - row.v)/s)]  (ADJ, where exact)
// with a bounds test per dim, in 32-bit arithmetic (the host refuses tensors of 2**31
// elements or more).
//
// Forward-type problems with too few output tiles to fill the GPU split their
// reduction into ksplits slices written to a workspace and added in slice order by
// sum_splits (deterministic), like the weight gradient's split-K.
//
// Strided ADJ is split into stride phases ("sub-pixel" decomposition): outputs q with
// the same (q + pad) mod s per dim read the same subset of taps, so each phase has its
// own row table holding only the taps that can contribute (about 1/s^r of them) and
// its own range of columns; blockIdx.z runs over (group, phase). For output
// q = u*s + q0 and tap t, the input (q + pad - t*d)/s = u + (q0 + pad - t*d)/s, and
// the quotient is exact: the row table stores it, so the kernel never divides.
//
// Tiles: BM x BN outputs per block of GEMM_THREADS threads laid out THR_M x THR_N; a thread
// keeps TM x TN accumulators (rows (i/4)*4*THR_M + 4*ty + i%4, likewise columns: each
// group of 4 is contiguous in shared memory, read as one vector). BK = 8 reduction
// steps per tile; shared tiles are double-buffered (the next tile's global loads are
// issued before the current tile's arithmetic: one barrier per step).
#include "common.cuh"
#include "activation.cuh"

#define MODE_CORR 0
#define MODE_ADJ 1
#define MODE_WGRAD 2

#define GEMM_THREADS 256

// Row table: ROW_STRIDE ints per reduction index k (and, for ADJ, per phase).
//   ROW_XOFF  offset of the data element's plane/channel part (-1: a padding row)
//   ROW_V0..2 per-dim coordinate part: tap*dilation (CORR), out*stride-pad (WGRAD),
//             (q0 + pad - tap*dilation)/stride (ADJ, exact within the phase)
//   ROW_AOFF  offset of the A element's k part
#define ROW_XOFF 0
#define ROW_V0 1
#define ROW_AOFF 4
#define ROW_STRIDE 8
static_assert(ROW_XOFF == 0 && ROW_V0 == 1 && ROW_STRIDE % 4 == 0,
              "conv_gemm reads a row's offset and coordinates as one aligned int4");

// Phase table (ADJ; one phase otherwise): PH_STRIDE ints per phase.
//   PH_U0..2  columns of the phase per dim; PH_Q0..2 first output coordinate;
//   PH_ROWS   valid rows in its row table; PH_NCOLS N * prod(U)
#define PH_U0 0
#define PH_Q0 3
#define PH_ROWS 6
#define PH_NCOLS 7
#define PH_STRIDE 8

// Input coordinate along one dim read by output o with tap t (CORR), or -1.
__device__ __forceinline__ int corr_coord(int o, int t, int s, int p, int d, int n) {
    int i = o * s - p + t * d;
    return (i >= 0 && i < n) ? i : -1;
}
// The input coordinate that output q gathers with tap t in the adjoint, or -1.
__device__ __forceinline__ int adj_coord(int q, int t, int s, int p, int d, int n) {
    int num = q + p - t * d;
    if (num < 0 || num % s) return -1;
    int i = num / s;
    return i < n ? i : -1;
}

// MIN_BLOCKS > 1 asks the compiler for registers few enough that MIN_BLOCKS blocks fit
// on one SM (__launch_bounds__'s second argument): more resident warps to hide the
// gather latency, at the price of spills if the tile needs more.
template <class T, int MODE, int BM, int BN, int THR_M, int GEMM_BK, int MIN_BLOCKS>
__global__ void __launch_bounds__(GEMM_THREADS, MIN_BLOCKS)
conv_gemm(const T* __restrict__ a, const T* __restrict__ x, const T* __restrict__ bias,
          T* __restrict__ out, const int* __restrict__ geo, const int* __restrict__ rows,
          const int* __restrict__ phases, double slope, int act) {
    typedef typename AccOf<T>::type Acc;
    constexpr int THR_N = GEMM_THREADS / THR_M;
    constexpr int TM = BM / THR_M, TN = BN / THR_N;
    static_assert(TM % 4 == 0 && TN % 4 == 0, "register tile must be groups of 4");
    // A tiles of fewer than GEMM_THREADS elements (BM < 32) are loaded by the first
    // BM * BK threads only.
    constexpr int A_LOADS = BM * GEMM_BK >= GEMM_THREADS ? BM * GEMM_BK / GEMM_THREADS : 1;
    constexpr bool A_ALL = BM * GEMM_BK >= GEMM_THREADS;
    constexpr int B_LOADS = BN * GEMM_BK / GEMM_THREADS;
    static_assert(B_LOADS >= 1, "B tile smaller than one load per thread");
    // Padded A rows keep the transposing stores conflict-free; 16-byte alignment lets
    // groups of 4 be read as vectors.
    __shared__ __align__(16) T As[2][GEMM_BK][BM + 4];
    __shared__ __align__(16) T Bs[2][GEMM_BK][BN];

    ConvGeo g;
    g.load(geo);
    const int M = g.CO / g.G, cg = g.CI / g.G;
    const int nphase = MODE == MODE_ADJ ? g.splits : 1;  // ADJ reuses the field for phases
    const int nsplit = MODE == MODE_WGRAD ? g.splits : g.ksplits;
    const int zz = blockIdx.z;
    const int grp = zz / (nphase * nsplit);
    const int phase = (zz / nsplit) % nphase;
    const int split = zz % nsplit;
    const int* ph = phases + phase * PH_STRIDE;
    const int* rtab = rows + (MODE == MODE_ADJ ? phase * g.kchunk * ROW_STRIDE : 0);

    int K, NC;
    if (MODE == MODE_WGRAD) {
        K = g.N * g.OP;
        NC = cg * g.KT;
    } else {
        K = ph[PH_ROWS];
        NC = ph[PH_NCOLS];
    }
    int kbeg = 0, kend = K;
    if (MODE == MODE_WGRAD) {
        kbeg = split * g.kchunk;
        kend = imin(kbeg + g.kchunk, K);
    } else if (nsplit > 1) {  // slice `split` of this phase's rows, whole tiles each
        int kc = (K + nsplit - 1) / nsplit;
        kc = (kc + GEMM_BK - 1) / GEMM_BK * GEMM_BK;
        kbeg = imin(split * kc, K);
        kend = imin(kbeg + kc, K);
    }
    const int m0 = blockIdx.y * BM;
    const int n0 = blockIdx.x * BN;
    if (n0 >= NC) return;  // phases differ in width; the grid covers the widest

    const int tid = threadIdx.x;
    const int tx = tid % THR_N, ty = tid / THR_N;

    // --- the B column this thread loads (fixed over the whole reduction) ---
    const int b_col = tid % BN, b_k = tid / BN;  // rows b_k + (THREADS/BN)*r
    const int bc = n0 + b_col;
    const bool b_valid = bc < NC;
    int cbase = 0, cv0 = 0, cv1 = 0, cv2 = 0;
    if (b_valid) {
        if (MODE == MODE_WGRAD) {  // column = (c, tap)
            int c = bc / g.KT, t = bc % g.KT;
            int t2 = t % g.K[2], t01 = t / g.K[2];
            cbase = (grp * cg + c) * g.IP;
            cv0 = (t01 / g.K[1]) * g.D[0];
            cv1 = (t01 % g.K[1]) * g.D[1];
            cv2 = t2 * g.D[2];
        } else {  // column = (n, phase-local output position)
            int pu = ph[PH_U0] * ph[PH_U0 + 1] * ph[PH_U0 + 2];
            int n = bc / pu, u = bc % pu;
            int u2 = u % ph[PH_U0 + 2], u01 = u / ph[PH_U0 + 2];
            int u1 = u01 % ph[PH_U0 + 1], u0 = u01 / ph[PH_U0 + 1];
            cbase = (n * g.CI + grp * cg) * g.IP;
            if (MODE == MODE_CORR) {
                cv0 = u0 * g.S[0] - g.P[0];
                cv1 = u1 * g.S[1] - g.P[1];
                cv2 = u2 * g.S[2] - g.P[2];
            } else {
                // Output q = u*s + q0 gathers input (q + pad - tap)/s = u + row value:
                // the phase's row table holds the exact quotient (q0 + pad - tap)/s.
                cv0 = u0;
                cv1 = u1;
                cv2 = u2;
            }
        }
    }
    // --- the A rows this thread loads: k = a_k (fixed within a tile), rows a_m + r*.. ---
    const int a_k = tid % GEMM_BK, a_m = tid / GEMM_BK;
    const bool a_loader = A_ALL || tid < BM * GEMM_BK;
    int a_base[A_LOADS];
    bool a_ok[A_LOADS];
    for (int r = 0; r < A_LOADS; ++r) {
        int m = m0 + a_m + r * (GEMM_THREADS / GEMM_BK);
        a_ok[r] = a_loader && m < M;
        if (MODE == MODE_CORR) a_base[r] = (grp * M + m) * (cg * g.KT);
        else if (MODE == MODE_ADJ) a_base[r] = (grp * cg * M + m) * g.KT;
        else a_base[r] = (grp * M + m) * g.OP;
    }

    T ra[A_LOADS], rb[B_LOADS];
    auto load_tile = [&](int k0) {
        {
            int k = k0 + a_k;
            bool kok = k < kend;
            int aoff = 0;
            if (kok) {
                aoff = rtab[k * ROW_STRIDE + ROW_AOFF];
                kok = rtab[k * ROW_STRIDE + ROW_XOFF] >= 0;
            }
            for (int r = 0; r < A_LOADS; ++r)
                ra[r] = (kok && a_ok[r]) ? a[a_base[r] + aoff] : T(0);
        }
        for (int r = 0; r < B_LOADS; ++r) {
            int k = k0 + b_k + r * (GEMM_THREADS / BN);
            T v = T(0);
            if (b_valid && k < kend) {
                // One 16-byte load: (x offset, per-dim row values); the input
                // coordinate is column value + row value in every mode.
                const int4 row = reinterpret_cast<const int4*>(rtab)[k * (ROW_STRIDE / 4)];
                int i0 = cv0 + row.y, i1 = cv1 + row.z, i2 = cv2 + row.w;
                bool ok = row.x >= 0 && (unsigned)i0 < (unsigned)g.I[0] &&
                          (unsigned)i1 < (unsigned)g.I[1] && (unsigned)i2 < (unsigned)g.I[2];
                if (ok) v = x[cbase + row.x + (i0 * g.I[1] + i1) * g.I[2] + i2];
            }
            rb[r] = v;
        }
    };
    auto store_tile = [&](int buf) {
        if (a_loader)
            for (int r = 0; r < A_LOADS; ++r)
                As[buf][a_k][a_m + r * (GEMM_THREADS / GEMM_BK)] = ra[r];
        for (int r = 0; r < B_LOADS; ++r) Bs[buf][b_k + r * (GEMM_THREADS / BN)][b_col] = rb[r];
    };

    Acc acc[TM][TN];
    for (int i = 0; i < TM; ++i)
        for (int j = 0; j < TN; ++j) acc[i][j] = Acc(0);

    int buf = 0;
    if (kbeg < kend) {
        load_tile(kbeg);
        store_tile(0);
    }
    __syncthreads();
    for (int k0 = kbeg; k0 < kend; k0 += GEMM_BK) {
        const bool more = k0 + GEMM_BK < kend;
        if (more) load_tile(k0 + GEMM_BK);  // in flight during the arithmetic below
        for (int kk = 0; kk < GEMM_BK; ++kk) {
            Acc av[TM], bv[TN];
            for (int i = 0; i < TM; ++i)
                av[i] = Acc(As[buf][kk][(i / 4) * 4 * THR_M + 4 * ty + i % 4]);
            for (int j = 0; j < TN; ++j)
                bv[j] = Acc(Bs[buf][kk][(j / 4) * 4 * THR_N + 4 * tx + j % 4]);
            for (int i = 0; i < TM; ++i)
                for (int j = 0; j < TN; ++j) acc[i][j] += av[i] * bv[j];
        }
        if (more) store_tile(buf ^ 1);
        __syncthreads();
        buf ^= 1;
    }

    if (MODE != MODE_WGRAD) {
        // The bias (added by the first reduction slice only), then the activation
        // (unless split: sum_splits applies it to the sum of the slices), over the
        // register tile in passes of their own: the stores' index arithmetic below and
        // the activation's are not live at once (ptxas -v on sm_90: no spills in the
        // float and double tiles, where a switch per store spilled in several).
        for (int i = 0; i < TM; ++i) {
            int m = m0 + (i / 4) * 4 * THR_M + 4 * ty + i % 4;
            if (g.has_bias && split == 0 && m < M) {
                Acc bias_v = Acc(bias[grp * M + m]);
                for (int j = 0; j < TN; ++j) acc[i][j] += bias_v;
            }
        }
        if (nsplit == 1 && act != ACT_NONE)
            for (int i = 0; i < TM; ++i)
                for (int j = 0; j < TN; ++j) acc[i][j] = activate(acc[i][j], act, slope);
    }
    for (int i = 0; i < TM; ++i) {
        int m = m0 + (i / 4) * 4 * THR_M + 4 * ty + i % 4;
        if (m >= M) continue;
        for (int j = 0; j < TN; ++j) {
            int col = n0 + (j / 4) * 4 * THR_N + 4 * tx + j % 4;
            if (col >= NC) continue;
            if (MODE == MODE_WGRAD) {
                // (g*M + m) rows of NC columns; slice `split` of the split-K workspace.
                out[(split * g.G + grp) * M * NC + m * NC + col] = T(acc[i][j]);
            } else {
                int pu = ph[PH_U0] * ph[PH_U0 + 1] * ph[PH_U0 + 2];
                int n = col / pu, u = col % pu;
                int p;
                if (nphase == 1) {
                    p = u;
                } else {
                    int u2 = u % ph[PH_U0 + 2], u01 = u / ph[PH_U0 + 2];
                    int u1 = u01 % ph[PH_U0 + 1], u0 = u01 / ph[PH_U0 + 1];
                    int q0 = u0 * g.S[0] + ph[PH_Q0], q1 = u1 * g.S[1] + ph[PH_Q0 + 1];
                    int q2 = u2 * g.S[2] + ph[PH_Q0 + 2];
                    p = (q0 * g.O[1] + q1) * g.O[2] + q2;
                }
                // Slice `split` of a (ksplits, N, CO, *O) workspace when split.
                out[(i64)split * g.N * g.CO * g.OP + (n * g.CO + grp * M + m) * g.OP + p] =
                    T(acc[i][j]);
            }
        }
    }
}

// Direct kernel for grouped/depthwise convolutions where a group has few output
// channels (a GEMM tile would idle): one thread per output element gathers its window;
// consecutive threads write consecutive positions (coalesced). Grid: x over positions,
// y over (n, channel) planes (looping when there are more than 65535). KH x KW > 0
// fixes the last two kernel dims at compile time (2-d 3x3 is the common case): the tap
// loops unroll and their loads are all in flight at once instead of one by one.
template <class T, int MODE, int KH, int KW>
__global__ void __launch_bounds__(BLOCK_THREADS)
conv_direct(const T* __restrict__ w, const T* __restrict__ x, const T* __restrict__ bias,
            T* __restrict__ y, const int* __restrict__ geo, double slope, int act) {
    typedef typename AccOf<T>::type Acc;
    ConvGeo g;
    g.load(geo);
    const int K1 = KH > 0 ? KH : g.K[1], K2 = KW > 0 ? KW : g.K[2];
    const int M = g.CO / g.G, cg = g.CI / g.G;
    const int p = blockIdx.x * blockDim.x + threadIdx.x;
    if (p >= g.OP) return;
    int o0, o1, o2;
    {
        int o01 = p / g.O[2];
        o2 = p % g.O[2];
        o1 = o01 % g.O[1];
        o0 = o01 / g.O[1];
    }
    for (int plane = blockIdx.y; plane < g.N * g.CO; plane += gridDim.y) {
        const int co = plane % g.CO, n = plane / g.CO;
        const int grp = co / M, m = co % M;
        Acc acc = g.has_bias ? Acc(bias[co]) : Acc(0);
        for (int c = 0; c < cg; ++c) {
            const T* xc = x + (n * g.CI + grp * cg + c) * g.IP;
            const T* wc = (MODE == MODE_CORR) ? w + (co * cg + c) * g.KT
                                              : w + ((grp * cg + c) * M + m) * g.KT;
            for (int t0 = 0; t0 < g.K[0]; ++t0) {
                int i0 = (MODE == MODE_CORR) ? corr_coord(o0, t0, g.S[0], g.P[0], g.D[0], g.I[0])
                                             : adj_coord(o0, t0, g.S[0], g.P[0], g.D[0], g.I[0]);
                if (i0 < 0) continue;
#pragma unroll
                for (int t1 = 0; t1 < K1; ++t1) {
                    int i1 = (MODE == MODE_CORR) ? corr_coord(o1, t1, g.S[1], g.P[1], g.D[1], g.I[1])
                                                 : adj_coord(o1, t1, g.S[1], g.P[1], g.D[1], g.I[1]);
                    const T* wr = wc + (t0 * K1 + t1) * K2;
#pragma unroll
                    for (int t2 = 0; t2 < K2; ++t2) {
                        int i2 = (MODE == MODE_CORR) ? corr_coord(o2, t2, g.S[2], g.P[2], g.D[2], g.I[2])
                                                     : adj_coord(o2, t2, g.S[2], g.P[2], g.D[2], g.I[2]);
                        if (i1 >= 0 && i2 >= 0)
                            acc += Acc(wr[t2]) * Acc(xc[(i0 * g.I[1] + i1) * g.I[2] + i2]);
                    }
                }
            }
        }
        y[plane * g.OP + p] = T(activate(acc, act, slope));
    }
}

// Weight gradient for groups with few output channels (depthwise and the like), where
// a GEMM tile would be mostly empty. One block per (output channel, input channel of
// its group, chunk of up to DW_TAPS taps, slice of the (n, position) range): each
// thread sums its strided share of the slice for every tap of the chunk, the block
// adds the partial sums in a fixed tree order, and the slices (gridDim.z of them, to
// give the GPU enough blocks) are added in slice order by sum_splits: deterministic,
// no atomics. Output: ws[slice][co][c][tap].
#define DW_TAPS 16
template <class T>
__global__ void __launch_bounds__(BLOCK_THREADS)
conv_wgrad_direct(const T* __restrict__ gy, const T* __restrict__ x, T* __restrict__ ws,
                  const int* __restrict__ geo) {
    typedef typename AccOf<T>::type Acc;
    __shared__ Acc part[DW_TAPS][BLOCK_THREADS / 32];
    ConvGeo g;
    g.load(geo);
    const int M = g.CO / g.G, cg = g.CI / g.G;
    const int co = blockIdx.x / cg, c = blockIdx.x % cg;
    const int grp = co / M;
    const int t_beg = blockIdx.y * DW_TAPS;
    const int ntap = imin(DW_TAPS, g.KT - t_beg);
    int tv0[DW_TAPS], tv1[DW_TAPS], tv2[DW_TAPS];
    for (int j = 0; j < DW_TAPS; ++j) {
        int t = t_beg + (j < ntap ? j : 0);
        int t2 = t % g.K[2], t01 = t / g.K[2];
        tv0[j] = (t01 / g.K[1]) * g.D[0];
        tv1[j] = (t01 % g.K[1]) * g.D[1];
        tv2[j] = t2 * g.D[2];
    }
    Acc acc[DW_TAPS];
    for (int j = 0; j < DW_TAPS; ++j) acc[j] = Acc(0);
    const int total = g.N * g.OP;
    const int chunk = (total + gridDim.z - 1) / gridDim.z;
    const int e_beg = blockIdx.z * chunk, e_end = imin(e_beg + chunk, total);
    for (int e = e_beg + threadIdx.x; e < e_end; e += BLOCK_THREADS) {
        int n = e / g.OP, p = e % g.OP;
        int o01 = p / g.O[2];
        int b2 = (p % g.O[2]) * g.S[2] - g.P[2];
        int b1 = (o01 % g.O[1]) * g.S[1] - g.P[1];
        int b0 = (o01 / g.O[1]) * g.S[0] - g.P[0];
        Acc gv = Acc(gy[(n * g.CO + co) * g.OP + p]);
        const T* xc = x + (n * g.CI + grp * cg + c) * g.IP;
        for (int j = 0; j < DW_TAPS; ++j) {
            if (j >= ntap) break;
            int i0 = b0 + tv0[j], i1 = b1 + tv1[j], i2 = b2 + tv2[j];
            if ((unsigned)i0 < (unsigned)g.I[0] && (unsigned)i1 < (unsigned)g.I[1] &&
                (unsigned)i2 < (unsigned)g.I[2])
                acc[j] += gv * Acc(xc[(i0 * g.I[1] + i1) * g.I[2] + i2]);
        }
    }
    // Fixed-order reduction: warp shuffles, then the warps' sums in warp order.
    const int lane = threadIdx.x % 32, warp = threadIdx.x / 32;
    for (int j = 0; j < DW_TAPS; ++j) {
        Acc v = acc[j];
        for (int off = 16; off > 0; off /= 2) v += __shfl_down_sync(0xffffffffu, v, off);
        if (lane == 0) part[j][warp] = v;
    }
    __syncthreads();
    if (threadIdx.x < ntap) {
        Acc s = Acc(0);
        for (int w8 = 0; w8 < BLOCK_THREADS / 32; ++w8) s += part[threadIdx.x][w8];
        ws[(i64)blockIdx.z * g.CO * cg * g.KT + (co * cg + c) * g.KT + t_beg + threadIdx.x] =
            T(s);
    }
}

// Adds the slices of a split reduction in slice order (deterministic): split-K of
// the GEMMs and of the direct weight gradient, act_grad's per-slice channel sums. A
// split forward applies its activation here, at the final store.
template <class T>
__global__ void __launch_bounds__(BLOCK_THREADS)
sum_splits(const T* __restrict__ ws, T* __restrict__ out, int splits, long long count,
           double slope, int act) {
    typedef typename AccOf<T>::type Acc;
    for (long long e = (long long)blockIdx.x * blockDim.x + threadIdx.x; e < count;
         e += (long long)gridDim.x * blockDim.x) {
        Acc s = Acc(0);
        for (int k = 0; k < splits; ++k) s += Acc(ws[(i64)k * count + e]);
        out[e] = T(activate(s, act, slope));
    }
}

// Bias gradient: one block per channel sums grad_y over (n, position) in a fixed
// order -- strided per-thread sums, a shared-memory tree, then a warp shuffle.
static_assert(BLOCK_THREADS >= 64 && (BLOCK_THREADS & (BLOCK_THREADS - 1)) == 0,
              "channel_sum's tree halves a block of a power of two >= 64 threads");
// The sum of every thread's s in a fixed order (a shared-memory tree over part[], then
// a warp shuffle), stored to *dst by thread 0. Every thread of the block calls it.
template <class T, class Acc>
__device__ inline void block_sum_store(Acc s, Acc* part, T* dst) {
    const int tid = threadIdx.x;
    part[tid] = s;
    __syncthreads();
    for (int stride = BLOCK_THREADS / 2; stride >= 32; stride /= 2) {
        if (tid < stride) part[tid] += part[tid + stride];
        __syncthreads();
    }
    if (tid < 32) {
        Acc v = part[tid];
        for (int off = 16; off > 0; off /= 2) v += __shfl_down_sync(0xffffffffu, v, off);
        if (tid == 0) *dst = T(v);
    }
}

template <class T>
__global__ void __launch_bounds__(BLOCK_THREADS)
channel_sum(const T* __restrict__ gy, T* __restrict__ out, int n_batch, int channels,
            long long plane) {
    typedef typename AccOf<T>::type Acc;
    __shared__ Acc part[BLOCK_THREADS];
    const int c = blockIdx.x;
    const int tid = threadIdx.x;
    Acc s = Acc(0);
    for (int n = 0; n < n_batch; ++n) {
        const T* row = gy + ((i64)n * channels + c) * plane;
        for (long long p = tid; p < plane; p += BLOCK_THREADS) s += Acc(row[p]);
    }
    block_sum_store(s, part, out + c);
}

// Backward of the fused activation: g = grad_y * act'(y), stored for the gradient
// kernels, and its per-channel sums (the bias gradient) from the same pass. Block
// (c, z) covers slice z of channel c's (n, position) range, in rows; its sum is
// reduced as channel_sum's (strided per-thread sums, the tree, a warp shuffle) into
// sums[z][c], and the slices are added in order by sum_splits: deterministic. With one
// slice the order is channel_sum's own. The sums are always made: the tree is cheap
// next to the pass over memory, and one kernel serves both cases.
template <class T>
__global__ void __launch_bounds__(BLOCK_THREADS)
act_grad(const T* __restrict__ gy, const T* __restrict__ y, T* __restrict__ g,
         T* __restrict__ sums, int n_batch, int channels, long long plane, double slope,
         int act) {
    typedef typename AccOf<T>::type Acc;
    __shared__ Acc part[BLOCK_THREADS];
    const int c = blockIdx.x;
    const int tid = threadIdx.x;
    const i64 total = (i64)n_batch * plane;
    const i64 chunk = (total + gridDim.y - 1) / gridDim.y;
    const i64 e_end = total < (blockIdx.y + 1) * chunk ? total : (blockIdx.y + 1) * chunk;
    Acc s = Acc(0);
    // Row by row (one division per row); every thread runs the same row loop.
    for (i64 e = blockIdx.y * chunk; e < e_end;) {
        const i64 n = e / plane, p0 = e - n * plane;
        const i64 p1 = plane < p0 + (e_end - e) ? plane : p0 + (e_end - e);
        const i64 base = (n * channels + c) * plane;
        for (i64 p = p0 + tid; p < p1; p += BLOCK_THREADS) {
            T v = T(activation_grad(Acc(gy[base + p]), Acc(y[base + p]), act, slope));
            g[base + p] = v;
            s += Acc(v);  // the stored value: grad_bias sums what grad_weight reads
        }
        e += p1 - p0;
    }
    block_sum_store(s, part, sums + (i64)blockIdx.y * channels + c);
}
