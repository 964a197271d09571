// cuda_emu.h -- run unchanged CUDA C++ kernel source on the CPU (cnnfast's emulator).
//
// Included (g++ -include cuda_emu.h) in front of a .cu file. The CUDA keywords are
// defined away, threadIdx/blockIdx/blockDim/gridDim become per-fiber state, and every
// CUDA thread of a block runs as a fiber (64 KiB stack, reused across blocks; a small
// assembly context switch on x86-64, ucontext elsewhere) that yields at
// __syncthreads() and at warp collectives. Blocks run one after another on the
// calling OS thread.
//
// __shared__ is defined as `static`: a block-scope __shared__ array is then one
// object shared by every fiber of the block -- exactly CUDA's semantics, because the
// blocks run sequentially. The price: a launch is not reentrant, so the runtime
// serialises launches with a mutex (two OS threads never run kernels at once).
//
// Not supported (compile error or launch error): dynamic shared memory
// (extern __shared__), __constant__ memory written from the host, inline PTX,
// tensor-core intrinsics, grid-wide synchronisation, textures.
#pragma once
#define __CUDA_EMU__ 1

#include <cfloat>
#include <climits>
#include <cmath>
#include <cstddef>
#include <cstdint>
#include <cstring>
#include <math.h>
#include <string>
#include <type_traits>
#include <utility>

#define __global__
#define __device__
#define __host__
#define __forceinline__ inline __attribute__((always_inline))
#define __noinline__ __attribute__((noinline))
#define __shared__ static
#define __launch_bounds__(...)
#define __align__(n) __attribute__((aligned(n)))

struct uint3 {
    unsigned int x, y, z;
};
struct alignas(16) int4 {
    int x, y, z, w;
};
struct dim3 {
    unsigned int x, y, z;
    dim3(unsigned int x_ = 1, unsigned int y_ = 1, unsigned int z_ = 1) : x(x_), y(y_), z(z_) {}
};

namespace cuda_emu {

enum WarpOp { W_SHFL_IDX, W_SHFL_UP, W_SHFL_DOWN, W_SHFL_XOR, W_BALLOT, W_ANY, W_ALL, W_SYNCWARP };

// The per-CUDA-thread state the kernel source sees through threadIdx.
struct ThreadState {
    uint3 tid;
};
extern ThreadState* g_cur;  // the fiber running now
extern uint3 g_block_idx;
extern dim3 g_block_dim;
extern dim3 g_grid_dim;

void syncthreads(const char* file, int line);
unsigned long long warp_collective(int op, unsigned mask, unsigned long long bits, int arg,
                                   int width, const char* file, int line);
[[noreturn]] void kernel_trap(const char* what, const char* file, int line);
// The running fiber's state; a relaxed atomic load so that ThreadSanitizer does not
// see the scheduler's pointer updates as a race with the kernel's reads.
inline ThreadState* current() { return __atomic_load_n(&g_cur, __ATOMIC_RELAXED); }

template <class T>
inline unsigned long long to_bits(T v) {
    static_assert(sizeof(T) <= 8, "warp shuffle of a type wider than 8 bytes");
    unsigned long long b = 0;
    std::memcpy(&b, &v, sizeof(T));
    return b;
}
template <class T>
inline T from_bits(unsigned long long b) {
    T v;
    std::memcpy(&v, &b, sizeof(T));
    return v;
}

}  // namespace cuda_emu

#define threadIdx (::cuda_emu::current()->tid)
#define blockIdx (::cuda_emu::g_block_idx)
#define blockDim (::cuda_emu::g_block_dim)
#define gridDim (::cuda_emu::g_grid_dim)
#define warpSize 32
#define __syncthreads() ::cuda_emu::syncthreads(__FILE__, __LINE__)
#define __syncwarp(...) ::cuda_emu::warp_collective(::cuda_emu::W_SYNCWARP, ::cuda_emu::syncwarp_mask(__VA_ARGS__), 0, 0, 32, __FILE__, __LINE__)
#define __trap() ::cuda_emu::kernel_trap("__trap()", __FILE__, __LINE__)

namespace cuda_emu {
inline unsigned syncwarp_mask(unsigned m = 0xffffffffu) { return m; }
}

// Warp collectives: the macros record the call site, so a deadlock report names it.
template <class T>
inline T cuda_emu_shfl(int op, unsigned mask, T v, int arg, int width, const char* file,
                       int line) {
    return ::cuda_emu::from_bits<T>(
        ::cuda_emu::warp_collective(op, mask, ::cuda_emu::to_bits(v), arg, width, file, line));
}
#define __shfl_sync(mask, v, src, ...) cuda_emu_shfl(::cuda_emu::W_SHFL_IDX, mask, v, src, cuda_emu_width(__VA_ARGS__), __FILE__, __LINE__)
#define __shfl_up_sync(mask, v, d, ...) cuda_emu_shfl(::cuda_emu::W_SHFL_UP, mask, v, d, cuda_emu_width(__VA_ARGS__), __FILE__, __LINE__)
#define __shfl_down_sync(mask, v, d, ...) cuda_emu_shfl(::cuda_emu::W_SHFL_DOWN, mask, v, d, cuda_emu_width(__VA_ARGS__), __FILE__, __LINE__)
#define __shfl_xor_sync(mask, v, m, ...) cuda_emu_shfl(::cuda_emu::W_SHFL_XOR, mask, v, m, cuda_emu_width(__VA_ARGS__), __FILE__, __LINE__)
#define __ballot_sync(mask, p) ((unsigned)::cuda_emu::warp_collective(::cuda_emu::W_BALLOT, mask, (p) ? 1 : 0, 0, 32, __FILE__, __LINE__))
#define __any_sync(mask, p) ((int)::cuda_emu::warp_collective(::cuda_emu::W_ANY, mask, (p) ? 1 : 0, 0, 32, __FILE__, __LINE__))
#define __all_sync(mask, p) ((int)::cuda_emu::warp_collective(::cuda_emu::W_ALL, mask, (p) ? 1 : 0, 0, 32, __FILE__, __LINE__))
inline int cuda_emu_width(int w = 32) { return w; }

// Read-only loads and fences.
template <class T>
inline T __ldg(const T* p) { return *p; }
inline void __threadfence() { __atomic_thread_fence(__ATOMIC_SEQ_CST); }
inline void __threadfence_block() { __atomic_thread_fence(__ATOMIC_SEQ_CST); }

// Atomics are real (a kernel may be compiled with -fsanitize=thread).
template <class T>
inline T cuda_emu_atomic_add_float(T* addr, T v) {
    T old;
    __atomic_load(addr, &old, __ATOMIC_RELAXED);
    T desired = old + v;
    while (!__atomic_compare_exchange(addr, &old, &desired, false, __ATOMIC_SEQ_CST,
                                      __ATOMIC_RELAXED)) {
        desired = old + v;
    }
    return old;
}
inline float atomicAdd(float* a, float v) { return cuda_emu_atomic_add_float(a, v); }
inline double atomicAdd(double* a, double v) { return cuda_emu_atomic_add_float(a, v); }
inline int atomicAdd(int* a, int v) { return __atomic_fetch_add(a, v, __ATOMIC_SEQ_CST); }
inline unsigned atomicAdd(unsigned* a, unsigned v) { return __atomic_fetch_add(a, v, __ATOMIC_SEQ_CST); }
inline unsigned long long atomicAdd(unsigned long long* a, unsigned long long v) {
    return __atomic_fetch_add(a, v, __ATOMIC_SEQ_CST);
}
inline int atomicMax(int* a, int v) {
    int old = __atomic_load_n(a, __ATOMIC_RELAXED);
    while (old < v && !__atomic_compare_exchange_n(a, &old, v, false, __ATOMIC_SEQ_CST, __ATOMIC_RELAXED)) {
    }
    return old;
}
inline int atomicCAS(int* a, int cmp, int v) {
    __atomic_compare_exchange_n(a, &cmp, v, false, __ATOMIC_SEQ_CST, __ATOMIC_SEQ_CST);
    return cmp;
}
inline int atomicExch(int* a, int v) { return __atomic_exchange_n(a, v, __ATOMIC_SEQ_CST); }

// A few device math helpers CUDA has and the host library lacks.
inline float __fdividef(float a, float b) { return a / b; }
inline float __int_as_float(int v) { return cuda_emu::from_bits<float>((unsigned)v); }
inline int __float_as_int(float v) { return (int)cuda_emu::to_bits(v); }
inline unsigned int __float_as_uint(float v) { return (unsigned int)cuda_emu::to_bits(v); }
inline float __uint_as_float(unsigned int v) { return cuda_emu::from_bits<float>(v); }

// ------------------------------------------------------------------ launch shims
// A generated translation unit instantiates each kernel (from the same name
// expressions the CuPy path gives NVRTC) and exposes it through extern "C" shims
// built on these templates.
namespace cuda_emu {

using Body = void (*)(void* closure);
// Runs grid x block CUDA threads of `body`; returns 0, or -1 with the message in
// last_error().
int launch(const unsigned* grid, const unsigned* block, unsigned shared_mem, Body body,
           void* closure, const char* name);

// A parameter type's code (numpy's type string, which the host turns into the dtype
// an argument must have) and its C name (for the host's error messages).
template <class T> struct TypeCode;
#define CUDA_EMU_CODE(T, s) template <> struct TypeCode<T> { \
    static constexpr const char* code = s; static constexpr const char* name = #T; };
// For a kernel's own types (at global scope), e.g. CUDA_EMU_TYPE_CODE(half_t, "f2").
#define CUDA_EMU_TYPE_CODE(T, s) namespace cuda_emu { CUDA_EMU_CODE(T, s) }
CUDA_EMU_CODE(float, "f4")
CUDA_EMU_CODE(double, "f8")
CUDA_EMU_CODE(int, "i4")
CUDA_EMU_CODE(unsigned int, "u4")
CUDA_EMU_CODE(long long, "i8")
CUDA_EMU_CODE(long, "i8")
CUDA_EMU_CODE(unsigned long long, "u8")
CUDA_EMU_CODE(signed char, "i1")
CUDA_EMU_CODE(unsigned char, "u1")
CUDA_EMU_CODE(bool, "b1")

// A parameter's code: "s:f4:float" (a float scalar), "p:f4:float" (float*),
// "c:f4:float" (const float*).
template <class A> std::string type_code() {
    return std::string(TypeCode<A>::code) + ":" + TypeCode<A>::name;
}
template <class A> struct ParamCode { static std::string get() { return "s:" + type_code<A>(); } };
template <class A> struct ParamCode<A*> { static std::string get() { return "p:" + type_code<A>(); } };
template <class A> struct ParamCode<const A*> { static std::string get() { return "c:" + type_code<A>(); } };

template <class... A>
std::string signature(void (*)(A...)) {
    std::string s;
    ((s += (s.empty() ? "" : ","), s += ParamCode<typename std::decay<A>::type>::get()), ...);
    return s;
}

template <class... A>
struct Call {
    void (*fn)(A...);
    void** args;
    template <std::size_t... I>
    void run(std::index_sequence<I...>) {
        fn(*static_cast<typename std::decay<A>::type*>(args[I])...);
    }
    static void body(void* self) { static_cast<Call*>(self)->run(std::index_sequence_for<A...>{}); }
};

template <class... A>
int launch_kernel(void (*fn)(A...), const unsigned* grid, const unsigned* block,
                  unsigned shared_mem, void** args, const char* name) {
    Call<A...> call{fn, args};
    return launch(grid, block, shared_mem, &Call<A...>::body, &call, name);
}

}  // namespace cuda_emu
