// Shared declarations of the cpp backend's kernels.
//
// The kernels themselves live in kernels_impl.h and the parts it includes (common/,
// gemm/, conv/, pool/), compiled once per ISA: for the baseline ISA
// (isa/kernels_portable.cpp), with AVX2+FMA enabled (isa/kernels_avx2.cpp) and with
// AVX-512 enabled (isa/kernels_avx512.cpp; both x86-64 only). kernels.cpp picks a table at run time, owns the per-thread workspace
// and the Python bindings. This header is ISA-independent: the geometry (ConvGeo,
// PoolGeo), the path choice, the scratch slots and the function table.
#pragma once

#include <cstddef>
#include <cstdint>

namespace cnnfast {

// A convolution in the "forward" orientation, always as 3 spatial dims (rank 1 and
// 2 are padded with leading extent-1 dims): x (N, C, *in) -> y (N, O, *out) with the
// weight (O, C/G, *k). Transposed convolutions reuse it with the roles swapped
// (cnnfast/backends/cpp/backend.py).
// The activation a kernel applies where it writes its output, after the bias
// (cnnfast/activation.py is the reference; common/activation.h the code).
enum ActKind { kActNone = 0, kActRelu = 1, kActLeakyRelu = 2, kActSigmoid = 3, kActTanh = 4 };
constexpr int kNumActs = 5;
constexpr const char* kActNames[kNumActs] = {"none", "relu", "leaky_relu", "sigmoid", "tanh"};

struct ConvGeo {
    long N = 0, C = 0, O = 0, G = 1;
    long in[3] = {1, 1, 1}, out[3] = {1, 1, 1}, k[3] = {1, 1, 1};
    long s[3] = {1, 1, 1}, d[3] = {1, 1, 1}, lo[3] = {0, 0, 0};
    // The epilogue of the kernel that writes y (conv_fwd) or gx (conv_bwd_data, the
    // forward pass of a transposed convolution): an ActKind and leaky_relu's slope. Set
    // per call by the binding (kernels.cpp), not part of the Python ConvGeometry.
    int act = kActNone;
    double slope = 0.0;
    // derived by finish()
    long cg = 0, og = 0, T = 0, Kw = 0, Pin = 0, Pout = 0;
    void finish() {
        cg = C / G;
        og = O / G;
        T = k[0] * k[1] * k[2];
        Kw = cg * T;
        Pin = in[0] * in[1] * in[2];
        Pout = out[0] * out[1] * out[2];
    }
};

// ----------------------------------------------------------------------------- paths
// The algorithms ("paths") of the three convolution kernels, the cpp backend's
// vocabulary for cnnfast.explain and algorithm=: choose_path is the automatic choice,
// path_unfit says why a forced path cannot run a geometry. Both kernel builds
// (portable, AVX2, AVX-512) and the bindings use these, so the choice exists once.
enum ConvOp { kFwd = 0, kBwdData = 1, kBwdWeight = 2 };
enum ConvPath {
    kAuto = -1,
    kDirect2d = 0,
    kDirectRows = 1,
    kGemmS1 = 2,
    kGemm = 3,
    kWinograd = 4,
    kWgradShort = 5,
    kGemmPhase = 6
};
constexpr int kNumPaths = 7;
// d2_* register-blocked direct kernels, direct_*_rows, stride-1 im2col GEMM, im2col GEMM,
// Winograd F(4x4, 3x3) (conv/winograd.h), the short-reduction weight gradient
// (conv/wgrad_short.h), the phase-split im2col GEMM of any stride (conv/gemm_phase.h).
constexpr const char* kPathNames[kNumPaths] = {"direct-2d", "direct-rows", "gemm-s1", "gemm",
                                               "winograd", "wgrad-short", "gemm-phase"};
// Depth of the GEMM reduction tile (Blk<T>::KC); the stride-1 weight gradient tiles
// whole output rows, so it needs rows of at most this many outputs.
constexpr long kGemmKC = 256;

inline bool d2_size_ok(long kh, long kw) {
    return (kh == 1 && (kw == 3 || kw == 5)) || (kh == 3 && kw == 3) || (kh == 5 && kw == 5) ||
           (kh == 7 && kw == 7);
}
// The leading (z) dim is a no-op, so a 2-d kernel may ignore it: extent 1 in, out and
// kernel, and no leading padding (with padding the one tap reads outside the input and
// every output is zero -- e.g. conv3d with input depth 1, padding (1, 0, 0), stride 3).
inline bool z_collapsed(const ConvGeo& g) {
    return g.in[0] == 1 && g.out[0] == 1 && g.k[0] == 1 && g.lo[0] == 0;
}
inline bool d2_ok(const ConvGeo& g) {
    return g.cg == 1 && z_collapsed(g) && d2_size_ok(g.k[1], g.k[2]);
}
// Direct kernels pay when a group has one input channel and few outputs (depthwise);
// one input channel feeding many outputs (a first layer) is better as a product for
// the input gradient (measured: Fashion-MNIST conv1, 1 -> 64 channels, 1.3 ms as a
// product vs 1.7 ms with d2_bwd_data, 1 thread, batch 64).
inline bool use_direct(const ConvGeo& g) { return g.cg == 1 && g.og < 8; }
// Stride 1 along y and x of a 1-d or 2-d convolution (the gemm-s1 kernels).
inline bool s1_ok(const ConvGeo& g) { return g.s[1] == 1 && g.s[2] == 1 && z_collapsed(g); }

// Winograd F(4x4, 3x3) (conv/winograd.h): a 2-d 3x3 correlation, stride 1, dilation 1,
// one group, any padding; float32 and float64 (both meet its accuracy contract,
// tests/test_winograd.py). 3-d (conv/winograd3d.h): a KD x 3 x 3 kernel, stride 1 and
// dilation 1 in depth too (tests/test_winograd3d.py).
inline bool wino_ok(const ConvGeo& g) {
    const bool plane = g.G == 1 && g.k[1] == 3 && g.k[2] == 3 && g.s[1] == 1 &&
                       g.s[2] == 1 && g.d[1] == 1 && g.d[2] == 1;
    return plane && (z_collapsed(g) || (g.s[0] == 1 && g.d[0] == 1));
}
// The automatic choice takes it where it was measured to win clearly (about 2x: its
// error bound is the call's largest sum of |terms|, not each output's own) against
// the previous choice (gemm-s1; AMD EPYC Zen 4, AVX2, 1 thread, CPU time, winograd /
// gemm-s1 for forward / input gradient / weight gradient, float32 and float64 alike):
//  * >= 16 channels in the products' reduction: the input channels (forward, weight
//    gradient) or the output channels (input gradient). Below that the transforms
//    take most of what the products save (28x28, 8 images, C -> 64: C = 1: 1.5 / 1.6
//    / 2.4, C = 3: 1.0 / 1.2 / 1.4, C = 4: 1.0 / 1.0 / 0.9, C = 8: 0.7 / 0.7 / 0.7,
//    C = 16: 0.4 / 0.5 / 0.5; the output channels matter little: 64 -> 1..16: forward
//    0.3-0.4); C = K = 16 .. 512 on 7x7 .. 56x56: 0.3-0.6.
//  * >= 16 tiles of 4x4 outputs of the kernel's product (N * ceil(H/4) * ceil(W/4) of
//    its output: y, or x for the input gradient): the weight transform (36 values per
//    kernel) is paid once per call (512 -> 512 channels on 7x7, 4 tiles per image:
//    1 image 1.2 / 2.0 / 1.3, 2 images 0.7 / 1.0 / 0.8, 4 images 0.4 / 0.5 / 0.6; 64
//    channels on 8x8: 1.2 / 1.1 / 0.9 with 1 image, 0.4 / 0.4 / 0.5 with 4).
// 3-d (winograd3d.h; vs gemm, the previous choice; same machine, 1 thread, CPU time,
// float32, (N, C, K, D, H, W), 3x3x3, padding 1, forward / input gradient): the depth
// taps join the reduction (3 C), so few channels pay too: (4, 1, 16, 8, 28, 28) 0.73 /
// 1.28, (4, 2, 16, ..) 0.50 / 1.00, (4, 4, 16, ..) 0.38 / 0.49, (4, 16, 16, ..) 0.26 /
// 0.29, (4, 64, 64, ..) 0.25 / 0.29, (4, 16, 1, ..) 0.19 / 0.14, (4, 1, 2, ..) 0.42 / 0.51,
// (4, 1, 4, ..) 0.54 / 0.78, (4, 4, 64, ..) 0.59 / 0.71, (2, 16, 16, 16, 56, 56) 0.29 /
// 0.35. A block of tiles is one (H, W) plane's, so with few tiles per plane the products
// are thin: 1 tile (1, 256, 256, 4, 4, 4) 4.8 / 5.3; 4 tiles (1, 32, 32, 1, 8, 8) 0.67 /
// 0.78, (1, 64, 64, 4, 8, 8) 0.73 / 0.74, (2, 128, 128, 2, 7, 7) 1.10 / 1.13, (1, 512, 512,
// 3, 6, 6) 2.5 / 3.0; 9 tiles (2, 64, 64, 8, 12, 12) 0.33 / 0.37, (1, 512, 512, 8, 12, 12)
// 0.73 / 0.74; 16: (1, 16, 16, 2, 16, 16) 0.29 / 0.36, (1, 512, 512, 2, 14, 14) 0.62 /
// 0.76. So in 3-d: >= 8 tiles per plane, no channel minimum, except for the input
// gradient with < 4 input channels and > 4 output channels (where gemm stays). float64
// alike: (2, 16, 16, 8, 28, 28) 0.32 / 0.31, (4, 1, 16, ..) 0.97 / 1.36, (4, 4, 16, ..)
// 0.52 / 0.49, (1, 64, 64, 4, 12, 12) 0.67 / 0.65, (1, 256, 256, 2, 16, 16) 0.48 / 0.68.
// The weight gradient (gemm is fast with few input channels): (4, 1, 16, 8, 28, 28)
// 2.75, (4, 4, 16, ..) 0.96, (4, 8, 16, ..) 0.64, (4, 8, 64, ..) 0.70, (4, 16, 1, ..) 0.27,
// (4, 64, 64, ..) 0.31, (2, 16, 16, 16, 56, 56) 0.35, (1, 64, 64, 4, 12, 12) 0.40, (1,
// 256, 256, 2, 16, 16) 0.65, 4 tiles per plane (1, 128, 128, 2, 8, 8) 0.94, (1, 512, 512,
// 3, 6, 6) 3.65; float64 (4, 8, 16, 8, 28, 28) 0.45: >= 8 input channels.
// The 2-d input gradient also needs >= 4 input channels (its products' rows): with
// fewer, each transform point is a thin product and gemm (the choice then: im2col rows
// of the taps, col2im) wins (vs winograd, same machine, float32, (N, C, K, H) 3x3,
// padding 0 | 1, 1 thread CPU time / 2 threads wall): (64, 1, 64, 28) 0.39 | 0.94 / 0.32
// | 0.69, (64, 2, 64, 28) 0.57 | 0.90 / 0.61 | 0.53, (64, 3, 64, 28) 0.76 | 1.03 / 0.84
// | 0.79, (32, 4, 64, 32) 1.01 | 0.97 / 0.87 | 0.91, (16, 8, 64, 32) 1.28 | 1.47 / 1.19 |
// 1.30; the seed conv1 layer (64, 1, 64, 28, padding 0, cnnfast bench's
// fmnist.conv1.n64): 0.46 (2.16 -> 1.00 ms, torch 3.81 ms).
constexpr long kWinoMinChannels = 16, kWinoMinTiles = 16, kWino3MinPlaneTiles = 8;
constexpr long kWinoMinBwdDataInputs = 4;
inline long wino_plane_tiles(int op, const ConvGeo& g) {
    const long* o = op == kBwdData ? g.in : g.out;
    return ((o[1] + 3) / 4) * ((o[2] + 3) / 4);
}
inline long wino_tiles(int op, const ConvGeo& g) {
    return g.N * (op == kBwdData ? g.in : g.out)[0] * wino_plane_tiles(op, g);
}
inline bool use_wino(int op, const ConvGeo& g) {
    if (!wino_ok(g) || wino_tiles(op, g) < kWinoMinTiles) return false;
    if (!z_collapsed(g))
        return wino_plane_tiles(op, g) >= kWino3MinPlaneTiles &&
               (op == kFwd || (op == kBwdData ? g.C >= 4 || g.O <= 4 : g.C >= 8));
    if (op == kBwdData) return g.O >= kWinoMinChannels && g.C >= kWinoMinBwdDataInputs;
    return g.C >= kWinoMinChannels;
}

// wgrad-short (conv/wgrad_short.h): the weight gradient of a 1-d or 2-d convolution
// with a short reduction per output channel, C/G * KH * KW <= 256 (any stride, padding,
// dilation, groups; float32 and float64).
constexpr long kWsMaxTaps = 256;
inline bool ws_ok(int op, const ConvGeo& g) {
    return op == kBwdWeight && z_collapsed(g) && g.Kw <= kWsMaxTaps;
}
// The automatic choice takes it with 8 or more outputs per group (fewer: the direct
// kernels or gemm keep it) for a stride > 1, or for stride 1 with at most 64 input
// channels x taps per group, where it was measured to beat the previous choice (AMD
// EPYC Zen 3/4, AVX2, float32, 1 thread, min of 10 on a loaded machine, wgrad-short /
// previous, (N, C, O, H=W, k, stride, pad)):
//   stride 1 vs gemm-s1: (64,1,64,28,3,1,0) 0.80 (2.7 vs 3.4 ms), (64,1,32,28,3,1,1)
//     0.55, (64,1,16,28,5,1,2) 0.68, (16,3,64,32,3,1,1) 0.52, (16,3,16,32,3,1,1) 0.42,
//     (8,3,64,128,3,1,1) 0.56, (32,2,8,16,3,1,1) 0.46; longer reductions are mixed:
//     (8,3,64,64,7,1,3) 0.75 but (16,4,64,32,5,1,2) 1.38, so stride 1 stops at 64;
//   stride 2 vs gemm: (16,3,8,32,3,2,1) 0.40, (16,3,96,64,3,2,1) 0.73, (16,3,32,128,3,
//     2,1) 0.45-0.65, (8,3,64,224,7,2,3) 0.70.
constexpr long kWsMaxTapsS1 = 64;
inline bool use_ws(int op, const ConvGeo& g) {
    return ws_ok(op, g) && g.og >= 8 &&
           (g.s[1] > 1 || g.s[2] > 1 || g.Kw <= kWsMaxTapsS1);
}

// gemm-phase (conv/gemm_phase.h): the im2col GEMM of a 1-d or 2-d convolution of any
// stride, reading the input through its stride phases (plain copies, no strided
// gathers; the input gradient a product per phase, no col2im; rows longer than a
// product tile cut into runs of columns). The automatic choice takes it where gemm ran
// before for stride > 1, and for stride 1 where gemm-s1's tile would be one padded row
// longer than 768 (its widest column tile: the tile's panels then outgrow the L2), with
// the input gradient's rule of gemm-s1 (a product of cg rows: 8 or more) and the weight
// gradient's (output rows of at most 256; stride 1 keeps gemm-s1 / gemm). The input
// gradient also needs a kernel of at least twice the stride along each strided dim:
// with fewer taps some phases are thin products (3x3 / 2, 8x64x56x56 -> 128: 1.07 of
// gemm; 1x1 / 2, 256 -> 512 on 28x28: 1.01; 5x5 / 2, 32 -> 32 on 31x29: 0.78; the
// forward and the weight gradient 0.69-1.01 on the same layers, 1 thread CPU time). Measured
// (AMD EPYC family 25 model 17, AVX2 path, float32, medians of 15-21, interleaved in one process on a
// loaded machine, two runs; gemm-phase / the previous path, 1 thread CPU time | 2
// threads wall time; benchmarks/cpp_paths_vs_torch.py):
//   conv_transpose k4s2 (16x128x16x16 -> 64, 4x4, stride 2, pad 1) vs gemm: forward
//     0.87-0.88 | 0.85-1.0, input gradient 0.82-0.83 | 0.78-0.83, weight gradient
//     0.88-0.89 | 0.83-0.90;
//   resnet stem 7x7/2 (4x3x224x224 -> 64) forward vs gemm: 0.70-0.93 | 0.79-0.97; its
//     input gradient (3 channels per group) 2.7x slower: gemm keeps it;
//   conv1d k9 (8x64x4096 -> 64, pad 4) vs gemm-s1: forward 0.79-0.98 | 0.75-0.84,
//     input gradient 0.93-0.96 | 0.75-0.79.
constexpr long kPhaseLongRowS1 = 768;
inline bool use_phase(int op, const ConvGeo& g) {
    if (!z_collapsed(g)) return false;
    if (s1_ok(g)) {
        const long row = (op == kBwdData ? g.in[2] : g.out[2]) + (g.k[2] - 1) * g.d[2];
        if (op == kBwdWeight || row <= kPhaseLongRowS1) return false;
    }
    // the input gradient: 2 or more taps per phase along each strided dim
    if (op == kBwdData)
        return g.cg >= 8 && (g.s[1] == 1 || g.k[1] >= 2 * g.s[1]) &&
               (g.s[2] == 1 || g.k[2] >= 2 * g.s[2]);
    if (op == kBwdWeight) return g.out[2] <= kGemmKC;
    return true;
}

// The automatic path of kernel `op` (a ConvOp) for g; `why` (optional) receives the
// reason, for cnnfast.explain.
inline int choose_path(int op, const ConvGeo& g, const char** why = nullptr) {
    const char* because = "";
    int path = kGemm;
    if (use_wino(op, g)) {
        path = kWinograd;
        if (!z_collapsed(g))
            because = op == kBwdData
                          ? "3-d KDx3x3, stride 1, no dilation, one group; >= 8 tiles of 4x4 "
                            "input positions per plane, >= 4 input or <= 4 output channels"
                      : op == kBwdWeight
                          ? "3-d KDx3x3, stride 1, no dilation, one group; >= 8 tiles of 4x4 "
                            "outputs per plane, >= 8 input channels"
                          : "3-d KDx3x3, stride 1, no dilation, one group; >= 8 tiles of 4x4 "
                            "outputs per plane";
        else
            because = op == kBwdData
                          ? "2-d 3x3, stride 1, no dilation, one group; >= 16 output "
                            "channels, >= 4 input channels and >= 16 tiles of 4x4 input "
                            "positions"
                          : "2-d 3x3, stride 1, no dilation, one group; >= 16 input "
                            "channels and >= 16 tiles of 4x4 outputs";
    } else if (use_ws(op, g)) {
        path = kWgradShort;
        because = g.s[1] > 1 || g.s[2] > 1
                      ? "weight gradient of a strided 1-d/2-d convolution, at most 256 input "
                        "channels x taps and 8 or more outputs per group"
                      : "weight gradient of a 1-d/2-d convolution, at most 64 input channels "
                        "x taps and 8 or more outputs per group";
    } else if (use_direct(g)) {
        path = d2_ok(g) ? kDirect2d : kDirectRows;
        because = path == kDirect2d
                      ? "1 input channel and < 8 outputs per group, a 1-d/2-d kernel of a "
                        "register-blocked size"
                      : "1 input channel and < 8 outputs per group (not a 1-d/2-d kernel of "
                        "a register-blocked size)";
    } else if (use_phase(op, g)) {
        path = kGemmPhase;
        because = !s1_ok(g) ? (op == kFwd ? "stride > 1 in 1-d/2-d"
                               : op == kBwdData
                                   ? "stride > 1 in 1-d/2-d, 8 or more input channels per "
                                     "group, a kernel of at least twice the stride"
                                   : "stride > 1 in 1-d/2-d, output rows of at most 256")
                  : op == kFwd ? "stride 1 in 1-d/2-d, padded rows longer than 768"
                               : "stride 1 in 1-d/2-d, padded rows longer than 768, 8 or more "
                                 "input channels per group";
    } else if (!s1_ok(g)) {
        because = g.cg == 1 ? "8 or more outputs per group, and stride > 1 or 3-d"
                            : "several input channels per group, and stride > 1 or 3-d";
    } else if (op == kFwd) {
        path = kGemmS1;
        because = "stride 1 in 1-d/2-d, not depthwise";
    } else if (op == kBwdData) {
        // The gather form of the input gradient is a product with cg rows: worth it
        // when cg is not tiny.
        path = g.cg >= 8 ? kGemmS1 : kGemm;
        because = path == kGemmS1 ? "stride 1 in 1-d/2-d, 8 or more input channels per group"
                                  : "stride 1 but < 8 input channels per group (the gather "
                                    "form would be a thin product)";
    } else {
        path = g.out[2] <= kGemmKC ? kGemmS1 : kGemm;
        because = path == kGemmS1 ? "stride 1 in 1-d/2-d, output rows of at most 256"
                                  : "stride 1 but output rows longer than 256";
    }
    if (why) *why = because;
    return path;
}

// Why `path` cannot run kernel `op` on g; nullptr when it can.
inline const char* path_unfit(int op, int path, const ConvGeo& g) {
    switch (path) {
        case kDirect2d:
            if (g.cg != 1) return "direct-2d needs one input channel per group";
            if (!z_collapsed(g)) return "direct-2d needs a 1-d or 2-d convolution";
            if (!d2_size_ok(g.k[1], g.k[2]))
                return "direct-2d needs a 1x3, 1x5, 3x3, 5x5 or 7x7 kernel (3 or 5 in 1-d)";
            return nullptr;
        case kDirectRows:
            return g.cg != 1 ? "direct-rows needs one input channel per group" : nullptr;
        case kGemmS1:
            if (!s1_ok(g)) return "gemm-s1 needs stride 1 in a 1-d or 2-d convolution";
            if (op == kBwdWeight && g.out[2] > kGemmKC)
                return "gemm-s1 (weight gradient) needs output rows of at most 256";
            return nullptr;
        case kGemm:
            return nullptr;
        case kGemmPhase:
            if (!z_collapsed(g)) return "gemm-phase needs a 1-d or 2-d convolution";
            if (op == kBwdWeight && g.out[2] > kGemmKC)
                return "gemm-phase (weight gradient) needs output rows of at most 256";
            return nullptr;
        case kWinograd:
            return wino_ok(g) ? nullptr
                              : "winograd needs a 2-d 3x3 or 3-d KDx3x3 kernel, stride 1, "
                                "dilation 1 and one group";
        case kWgradShort:
            if (op != kBwdWeight) return "wgrad-short is a weight-gradient kernel only";
            if (!z_collapsed(g)) return "wgrad-short needs a 1-d or 2-d convolution";
            if (g.Kw > kWsMaxTaps)
                return "wgrad-short needs at most 256 input channels x taps per group "
                       "(C/G * KH * KW)";
            return nullptr;
        default:
            return "unknown path";
    }
}

// Pooling over `planes` = N*C independent planes, 3 spatial dims as above.
struct PoolGeo {
    long planes = 0;
    long in[3] = {1, 1, 1}, out[3] = {1, 1, 1}, k[3] = {1, 1, 1};
    long s[3] = {1, 1, 1}, d[3] = {1, 1, 1}, lo[3] = {0, 0, 0};
    long Pin() const { return in[0] * in[1] * in[2]; }
    long Pout() const { return out[0] * out[1] * out[2]; }
};

// The denormal policy (cnnfast.set_flush_denormal): true flushes denormals to zero
// (FTZ + DAZ) in every kernel thread, false (the default) keeps IEEE arithmetic.
// An out-of-line function, not an atomic, so the kernels stay free of std::
// templates (see there).
bool flush_denormal();

// ----------------------------------------------------------------------------- scratch
// The kernels' per-thread scratch buffers (scratch(), tscratch<T> in common/scratch.h):
// kScratchSlots numbered slots per thread. The names below are the slots' users; the
// users of one slot are never live at once (kernels do not nest, except
// conv_bwd_data_s1, which runs conv_fwd_s1 with kS1FlippedW held), and the sets of
// buffers live together are checked below. A kernel's "shared" buffer is filled by the
// calling thread before its parallel region (thread 0 of that region) and read by all.
enum ScratchSlot : int {
    // slot 0
    kD2Rows = 0,              // d2_*: the zero-padded input rows of a block of output rows
    kRowsTapSums = 0,         // direct_bwd_weight_rows: 8 partial sums per tap
    kFwdPackB = 0,            // conv_fwd (gemm), conv_fwd_s1: the packed im2col panel of a tile
    kBwdDataPackA = 0,        // conv_bwd_data (gemm): the packed weight rows of a channel chunk
    kBwdWeightCols = 0,       // conv_bwd_weight: the im2col rows of a channel chunk
    kMaxPoolTaps = 0,         // max_pool: the winning tap of each output of a row
    kAvgPoolRow = 0,          // avg_pool_bwd: a row of gy / divisor
    kActGradSums = 0,         // act_grad: the bias gradient's partial sums per (n, o) (shared)
    // slot 1
    kD2ZeroRow = 1,           // d2_*: the row of zeros read outside the input
    kFwdTileC = 1,            // conv_fwd (gemm), conv_fwd_s1: the product tile before the copy out
    kBwdDataPackB = 1,        // conv_bwd_data (gemm): the packed gy tile
    kBwdWeightGy = 1,         // conv_bwd_weight: the gy rows of a tile before packing
    kMaxPoolTapOffsets = 1,   // max_pool: the flat offset of each tap in its window
    // slot 2
    kFwdColRow = 2,           // conv_fwd (gemm): one im2col row of a tile before packing
    kS1PaddedRows = 2,        // conv_fwd_s1: the zero-padded input rows of a tile
    kBwdDataCols = 2,         // conv_bwd_data (gemm): the dcols of a tile before col2im
    kBwdWeightPackA = 2,      // conv_bwd_weight: the packed gy tile (A)
    // slot 3
    kFwdPackedW = 3,          // conv_fwd (gemm), conv_fwd_s1: every group's packed weight (shared)
    kBwdWeightPackB = 3,      // conv_bwd_weight: the packed im2col rows (B)
    // slot 4
    kS1FlippedW = 4,          // conv_bwd_data_s1: the flipped, transposed weight (shared)
    kBwdWeightPaddedRows = 4, // conv_bwd_weight (gemm-s1): the zero-padded input rows
    // slot 5
    kS1TapOffsets = 5,        // conv_fwd_s1: where each im2col row starts in the padded rows
    // winograd (conv/winograd.h), forward and input gradient (wino_run; 3-d: wino3_run,
    // conv/winograd3d.h, with V the per-thread window of transformed input slices and U
    // the weights of every depth tap)
    kWinoM = 0,               // the 36 products' results for a chunk of output channels
    kWinoV = 1,               // the transformed input of a block (one block per thread),
                              // or the transformed weights of a chunk (shared block)
    kWinoRows = 2,            // a block's zero-padded input rows; the weight transform's rows
    kWinoSharedV = 3,         // the transformed input of a block all threads work on (shared)
    kWinoU = 4,               // the transformed weights of the layer (shared)
    // winograd, weight gradient (wino_bwd_weight)
    kWinoGradX = 0,           // the transformed input windows of a chunk of tiles
    kWinoGradGy = 1,          // the transformed gy windows of the chunk
    kWinoGradRows = 2,        // the zero-padded input and gy rows of the chunk
    kWinoGradPack = 3,        // both packed operands of one of the 36 products
    kWinoGradDU = 4,          // the work item's dL/dU accumulator
    kWino3GradParts = 4,      // 3-d (winograd3d.h): every chunk group's dL/dU (shared)
    // wgrad-short (conv/wgrad_short.h)
    kWsGyT = 0,               // the transposed gy rows of a chunk ([row][ox][o])
    kWsRows = 1,              // the zero-padded input rows of a chunk
    kWsPartials = 3,          // every run's partial weight gradient (shared)
    // gemm-phase (conv/gemm_phase.h), forward and input gradient
    kPhPackB = 0,             // the packed im2col panels of a tile
    kPhWeightRows = 0,        // the input gradient's gathered weight rows (before the region)
    kPhTileC = 1,             // the product tile before the copy out
    kPhPlanes = 2,            // the input's phase planes of a tile
    kPhPackedW = 3,           // every job's and group's packed weight (shared)
    kPhTables = 4,            // the jobs, their taps, phases and panel offsets (shared)
    // gemm-phase, weight gradient (conv_bwd_weight's slots, and)
    kPhWgradTables = 5,       // the taps, phases and im2col row offsets (shared)
};
constexpr int kScratchSlots = 6;

template <int N>
constexpr bool scratch_slots_distinct(const ScratchSlot (&s)[N]) {
    for (int i = 0; i < N; ++i)
        for (int j = i + 1; j < N; ++j)
            if (s[i] == s[j]) return false;
    return true;
}
// The buffers of one kernel call that are live together.
static_assert(scratch_slots_distinct<2>({kD2Rows, kD2ZeroRow}), "d2_* scratch");
static_assert(scratch_slots_distinct<6>({kS1FlippedW, kFwdPackedW, kFwdPackB, kFwdTileC,
                                         kS1PaddedRows, kS1TapOffsets}),
              "conv_bwd_data_s1 / conv_fwd_s1 scratch");
static_assert(scratch_slots_distinct<4>({kFwdPackedW, kFwdPackB, kFwdTileC, kFwdColRow}),
              "conv_fwd scratch");
static_assert(scratch_slots_distinct<3>({kBwdDataPackA, kBwdDataPackB, kBwdDataCols}),
              "conv_bwd_data scratch");
static_assert(scratch_slots_distinct<5>({kBwdWeightCols, kBwdWeightGy, kBwdWeightPackA,
                                         kBwdWeightPackB, kBwdWeightPaddedRows}),
              "conv_bwd_weight scratch");
static_assert(scratch_slots_distinct<2>({kMaxPoolTaps, kMaxPoolTapOffsets}), "max_pool scratch");
static_assert(scratch_slots_distinct<5>({kWinoM, kWinoV, kWinoRows, kWinoSharedV, kWinoU}),
              "winograd scratch");
static_assert(scratch_slots_distinct<5>({kWinoGradX, kWinoGradGy, kWinoGradRows, kWinoGradPack,
                                         kWinoGradDU}),
              "winograd weight-gradient scratch");
static_assert(scratch_slots_distinct<5>({kWinoGradX, kWinoGradGy, kWinoGradRows, kWinoGradPack,
                                         kWino3GradParts}),
              "winograd 3-d weight-gradient scratch");
static_assert(scratch_slots_distinct<3>({kWsGyT, kWsRows, kWsPartials}), "wgrad-short scratch");
static_assert(scratch_slots_distinct<5>({kPhPackB, kPhTileC, kPhPlanes, kPhPackedW, kPhTables}),
              "gemm-phase scratch");
static_assert(scratch_slots_distinct<6>({kBwdWeightCols, kBwdWeightGy, kBwdWeightPackA,
                                         kBwdWeightPackB, kBwdWeightPaddedRows,
                                         kPhWgradTables}),
              "conv_bwd_weight (gemm-phase) scratch");
static_assert(kS1TapOffsets < kScratchSlots && kS1FlippedW < kScratchSlots, "kScratchSlots");

// Per-thread scratch buffer `slot` of at least `bytes`, 64-byte aligned. Grows on
// demand and is kept for later calls (bounded by the largest tile seen).
void* scratch(ScratchSlot slot, std::size_t bytes);

// Function table of one instruction-set variant for element type T.
template <class T>
struct KernelTable {
    // y = conv(x, w) (+ b per output channel when b != nullptr)
    // (conv kernels: `path` a ConvPath that can run the geometry, never kAuto)
    void (*conv_fwd)(const ConvGeo&, const T* x, const T* w, const T* b, T* y, int nt, int path);
    // gx = adjoint of conv wrt x applied to gy (+ b per x channel when b != nullptr)
    void (*conv_bwd_data)(const ConvGeo&, const T* gy, const T* w, const T* b, T* gx, int nt,
                          int path);
    // gw = gradient of conv wrt w
    void (*conv_bwd_weight)(const ConvGeo&, const T* x, const T* gy, T* gw, int nt, int path);
    // gb[o] = sum over n, p of gy[n, o, p]
    void (*bias_grad)(long N, long O, long P, const T* gy, T* gb, int nt);
    // g = gy * act'(y) (the ActKind act, slope for leaky_relu), and gb as bias_grad(g)
    // when gb != nullptr, in one pass
    void (*act_grad)(long N, long O, long P, const T* gy, const T* y, int act, double slope,
                     T* g, T* gb, int nt);
    void (*max_pool)(const PoolGeo&, const T* x, T* y, std::int64_t* idx, int nt);
    // returns the number of out-of-range indices (nothing is written for those)
    long (*max_pool_bwd)(long planes, long Pin, long Pout, const T* gy, const std::int64_t* idx,
                         T* gx, int nt);
    // divisor per output = div_override if > 0 else cz[oz] * cy[oy] * cx[ox]
    void (*avg_pool)(const PoolGeo&, const T* x, const double* cz, const double* cy,
                     const double* cx, double div_override, T* y, int nt);
    void (*avg_pool_bwd)(const PoolGeo&, const T* gy, const double* cz, const double* cy,
                         const double* cx, double div_override, T* gx, int nt);
};

const KernelTable<float>& portable_table_f32();
const KernelTable<double>& portable_table_f64();
#if defined(__x86_64__)
const KernelTable<float>& avx2_table_f32();
const KernelTable<double>& avx2_table_f64();
const KernelTable<float>& avx512_table_f32();
const KernelTable<double>& avx512_table_f64();
#endif

}  // namespace cnnfast
