// cuda_emu.cpp -- the fiber scheduler behind cuda_emu.h (see the header for the model).
//
// One launch: for each block (x fastest), make one fiber per CUDA thread, then run the
// runnable fibers round-robin. A fiber stops at __syncthreads() (AT_BARRIER), at a warp
// collective (AT_WARP) or when the kernel returns (DONE). When nothing is runnable:
// * warp collectives whose lanes have all arrived are computed and released;
// * else, when every live thread waits at the same __syncthreads(), they are released;
// * else the block can never finish: a launch error names the lines involved
//   (__syncthreads in divergent code, threads that exited while others wait, a warp
//   collective waiting for lanes that will never come).
// Under ThreadSanitizer every fiber is a TSan fiber switched with no implicit
// synchronisation; happens-before is added only where CUDA gives it (barriers, warp
// collectives, block start/end), so races between CUDA threads are reported.
#include "cuda_emu.h"

#include <sys/mman.h>
#include <ucontext.h>
#include <unistd.h>

#include <cstdio>
#include <mutex>
#include <string>
#include <vector>

#if defined(__SANITIZE_THREAD__)
#include <sanitizer/tsan_interface.h>
#define EMU_TSAN 1
#else
#define EMU_TSAN 0
#endif
#if defined(__SANITIZE_ADDRESS__)
#include <sanitizer/common_interface_defs.h>
#define EMU_ASAN 1
#else
#define EMU_ASAN 0
#endif

// The runtime's own bookkeeping is shared by the scheduler and the fibers without
// happens-before on purpose (see above): keep TSan's eyes on the kernels only.
#if EMU_TSAN
#define EMU_NO_TSAN __attribute__((no_sanitize("thread")))
#else
#define EMU_NO_TSAN
#endif

// Context switching: a 20-instruction switch on x86-64 (glibc's swapcontext makes two
// sigprocmask system calls per switch, which dominated the emulator's run time);
// ucontext elsewhere, or with -DCUDA_EMU_UCONTEXT.
#if defined(__x86_64__) && !defined(CUDA_EMU_UCONTEXT)
#define EMU_ASM_SWITCH 1
extern "C" void cuda_emu_switch(void** save_sp, void* new_sp);
// Saves the callee-saved registers, MXCSR and the x87 control word on the current
// stack, stores the stack pointer in *save_sp, and resumes the context at new_sp.
asm(R"(
    .text
    .globl cuda_emu_switch
    .hidden cuda_emu_switch
    .type cuda_emu_switch, @function
cuda_emu_switch:
    pushq %rbp
    pushq %rbx
    pushq %r12
    pushq %r13
    pushq %r14
    pushq %r15
    subq $8, %rsp
    stmxcsr (%rsp)
    fnstcw 4(%rsp)
    movq %rsp, (%rdi)
    movq %rsi, %rsp
    ldmxcsr (%rsp)
    fldcw 4(%rsp)
    addq $8, %rsp
    popq %r15
    popq %r14
    popq %r13
    popq %r12
    popq %rbx
    popq %rbp
    ret
    .size cuda_emu_switch, .-cuda_emu_switch
)");
#else
#define EMU_ASM_SWITCH 0
#endif

namespace cuda_emu {

ThreadState* g_cur = nullptr;
uint3 g_block_idx = {0, 0, 0};
dim3 g_block_dim;
dim3 g_grid_dim;

namespace {

// Sanitizer builds use bigger frames; 64 KiB is plenty for plain kernels.
constexpr size_t kStack = (EMU_ASAN || EMU_TSAN) ? 512 * 1024 : 64 * 1024;
constexpr size_t kGuard = 4096;

enum State { RUNNABLE, AT_BARRIER, AT_WARP, DONE };

struct Fiber {
    ThreadState ts;
#if EMU_ASM_SWITCH
    void* sp = nullptr;  // saved stack pointer while suspended
#else
    ucontext_t ctx;
#endif
    char* mapping = nullptr;  // guard page + stack
    char* stack = nullptr;
    State state = DONE;
    const char* file = nullptr;
    int line = 0;
    int gen = 0;  // barrier/warp generation it waits in (for TSan sync objects)
    int op = 0, arg = 0, width = 32;
    unsigned mask = 0;
    unsigned long long bits = 0, result = 0;
#if EMU_TSAN
    void* tsan = nullptr;
#endif
#if EMU_ASAN
    void* fake_stack = nullptr;
#endif
};

std::mutex g_mutex;
std::vector<Fiber*> g_pool;  // reused across launches and blocks
Fiber* g_fiber = nullptr;    // running fiber
#if EMU_ASM_SWITCH
void* g_sched_sp = nullptr;
#else
ucontext_t g_sched;
#endif
Body g_body = nullptr;
void* g_closure = nullptr;
std::string g_error;  // set by a fiber (trap) or the scheduler
int g_barrier_gen = 0;
int g_warp_gen[32];
#if EMU_TSAN
void* g_sched_tsan = nullptr;
char g_sync_block_start, g_sync_block_done;
char g_sync_barrier[2];
char g_sync_warp[32][2];
#endif
#if EMU_ASAN
void* g_sched_fake = nullptr;
const void* g_sched_bottom = nullptr;
size_t g_sched_size = 0;
#endif

std::string where(const char* file, int line) {
    std::string f = file ? file : "?";
    size_t slash = f.find_last_of('/');
    if (slash != std::string::npos) f = f.substr(slash + 1);
    return f + ":" + std::to_string(line);
}

std::string tid_str(const Fiber* f) {
    return "(" + std::to_string(f->ts.tid.x) + "," + std::to_string(f->ts.tid.y) + "," +
           std::to_string(f->ts.tid.z) + ")";
}

EMU_NO_TSAN void yield_to_scheduler(Fiber* f, bool final) {
#if EMU_ASAN
    __sanitizer_start_switch_fiber(final ? nullptr : &f->fake_stack, g_sched_bottom, g_sched_size);
#else
    (void)final;
#endif
#if EMU_TSAN
    __tsan_switch_to_fiber(g_sched_tsan, __tsan_switch_to_fiber_no_sync);
#endif
#if EMU_ASM_SWITCH
    cuda_emu_switch(&f->sp, g_sched_sp);
#else
    swapcontext(&f->ctx, &g_sched);
#endif
#if EMU_ASAN
    __sanitizer_finish_switch_fiber(f->fake_stack, &g_sched_bottom, &g_sched_size);
#endif
}

EMU_NO_TSAN void fiber_main() {
#if EMU_ASAN
    __sanitizer_finish_switch_fiber(nullptr, &g_sched_bottom, &g_sched_size);
#endif
    Fiber* f = g_fiber;
#if EMU_TSAN
    __tsan_acquire(&g_sync_block_start);
#endif
    g_body(g_closure);
#if EMU_TSAN
    __tsan_release(&g_sync_block_done);
#endif
    f->state = DONE;
    yield_to_scheduler(f, true);
    std::abort();  // a finished fiber is never resumed
}

EMU_NO_TSAN void run_fiber(Fiber* f) {
    g_fiber = f;
    __atomic_store_n(&g_cur, &f->ts, __ATOMIC_RELAXED);
#if EMU_ASAN
    __sanitizer_start_switch_fiber(&g_sched_fake, f->stack, kStack);
#endif
#if EMU_TSAN
    __tsan_switch_to_fiber(f->tsan, __tsan_switch_to_fiber_no_sync);
#endif
#if EMU_ASM_SWITCH
    cuda_emu_switch(&g_sched_sp, f->sp);
#else
    swapcontext(&g_sched, &f->ctx);
#endif
#if EMU_ASAN
    __sanitizer_finish_switch_fiber(g_sched_fake, nullptr, nullptr);
#endif
    g_fiber = nullptr;
}

Fiber* new_fiber() {
    Fiber* f = new Fiber();
    // A PROT_NONE page below the stack turns a stack overflow into a crash at once
    // instead of silent corruption of the neighbouring fiber.
    void* m = mmap(nullptr, kStack + kGuard, PROT_READ | PROT_WRITE,
                   MAP_PRIVATE | MAP_ANONYMOUS, -1, 0);
    if (m == MAP_FAILED) {
        delete f;
        return nullptr;
    }
    mprotect(m, kGuard, PROT_NONE);
    f->mapping = static_cast<char*>(m);
    f->stack = f->mapping + kGuard;
#if EMU_TSAN
    f->tsan = __tsan_create_fiber(0);
#endif
    return f;
}

// A fresh context that starts in fiber_main on the fiber's own stack.
__attribute__((noinline)) void prepare_fiber(Fiber* f, int i, const unsigned* block) {
    f->ts.tid = {(unsigned)i % block[0], ((unsigned)i / block[0]) % block[1],
                 (unsigned)i / (block[0] * block[1])};
    f->state = RUNNABLE;
    f->file = nullptr;
    f->line = 0;
#if EMU_ASM_SWITCH
    // The frame cuda_emu_switch pops: MXCSR/x87 CW, r15..rbp, then `ret` into
    // fiber_main with the stack aligned as after a call (a zero return address).
    uintptr_t top = ((uintptr_t)(f->stack + kStack)) & ~(uintptr_t)15;
    uint64_t* sp = (uint64_t*)top;
    *--sp = 0;                           // fake return address of fiber_main
    *--sp = (uint64_t)(uintptr_t)&fiber_main;
    for (int r = 0; r < 6; ++r) *--sp = 0;  // rbp rbx r12 r13 r14 r15
    *--sp = 0x1F80ull | (0x037Full << 32);  // MXCSR default, x87 control word default
    f->sp = sp;
#else
    getcontext(&f->ctx);  // returns twice: kept out of launch()'s frame (-Wclobbered)
    f->ctx.uc_stack.ss_sp = f->stack;
    f->ctx.uc_stack.ss_size = kStack;
    f->ctx.uc_link = nullptr;
    makecontext(&f->ctx, fiber_main, 0);
#endif
}

// Lanes whose collective can complete now: resolve them. Returns -1 on error, else
// the number of fibers released.
EMU_NO_TSAN int resolve_warps(int n) {
    int released = 0;
    for (int base = 0; base < n; base += 32) {
        int lanes = std::min(32, n - base);
        for (int l = 0; l < lanes; ++l) {
            Fiber* f = g_pool[base + l];
            if (f->state != AT_WARP) continue;
            unsigned mask = f->mask;
            if (!(mask >> l & 1u)) {
                g_error = "warp collective at " + where(f->file, f->line) + ": lane " +
                          std::to_string(l) + " is not in its own mask";
                return -1;
            }
            bool ready = true;
            for (int m = 0; m < 32; ++m) {
                if (!(mask >> m & 1u)) continue;
                if (m >= lanes) {
                    g_error = "warp collective at " + where(f->file, f->line) + ": mask 0x" +
                              std::to_string(mask) + " names lane " + std::to_string(m) +
                              " which does not exist in this block";
                    return -1;
                }
                Fiber* g = g_pool[base + m];
                if (g->state == DONE) {
                    g_error = "warp collective at " + where(f->file, f->line) + " waits for lane " +
                              std::to_string(m) + " which has exited";
                    return -1;
                }
                if (g->state != AT_WARP) {
                    ready = false;
                    break;
                }
                if (g->mask != mask || g->op != f->op || g->line != f->line || g->file != f->file) {
                    g_error = "mismatched warp collectives: lane " + std::to_string(l) + " at " +
                              where(f->file, f->line) + ", lane " + std::to_string(m) + " at " +
                              where(g->file, g->line);
                    return -1;
                }
            }
            if (!ready) continue;
            // Compute every lane's result, then release them together.
            unsigned long long vote = 0;
            int count = 0, ones = 0;
            for (int m = 0; m < 32; ++m) {
                if (!(mask >> m & 1u)) continue;
                Fiber* g = g_pool[base + m];
                count++;
                if (g->bits & 1ull) {
                    vote |= 1ull << m;
                    ones++;
                }
            }
            for (int m = 0; m < 32; ++m) {
                if (!(mask >> m & 1u)) continue;
                Fiber* g = g_pool[base + m];
                int w = g->width, seg = m & ~(w - 1), src = m;
                switch (g->op) {
                    case W_SHFL_IDX: src = seg + (g->arg & (w - 1)); break;
                    case W_SHFL_UP: src = ((m - seg) - g->arg < 0) ? m : m - g->arg; break;
                    case W_SHFL_DOWN: src = ((m - seg) + g->arg >= w) ? m : m + g->arg; break;
                    case W_SHFL_XOR: src = m ^ g->arg; if ((src & ~(w - 1)) != seg) src = m; break;
                    default: break;
                }
                if (g->op <= W_SHFL_XOR) {
                    if (src >= lanes || !(mask >> src & 1u)) {
                        g_error = "warp shuffle at " + where(g->file, g->line) + ": lane " +
                                  std::to_string(m) + " reads lane " + std::to_string(src) +
                                  " which is not in the mask";
                        return -1;
                    }
                    g->result = g_pool[base + src]->bits;
                } else if (g->op == W_BALLOT) {
                    g->result = vote;
                } else if (g->op == W_ANY) {
                    g->result = ones > 0;
                } else if (g->op == W_ALL) {
                    g->result = ones == count;
                } else {
                    g->result = 0;
                }
            }
            for (int m = 0; m < 32; ++m)
                if (mask >> m & 1u) {
                    g_pool[base + m]->state = RUNNABLE;
                    released++;
                }
            g_warp_gen[base / 32]++;
        }
    }
    return released;
}

EMU_NO_TSAN bool run_block(int n) {
    for (;;) {
        bool ran = false;
        for (int i = 0; i < n; ++i) {
            Fiber* f = g_pool[i];
            if (f->state != RUNNABLE) continue;
            run_fiber(f);
            ran = true;
            if (!g_error.empty()) return false;
        }
        if (ran) continue;
        int released = resolve_warps(n);
        if (released < 0) return false;
        if (released > 0) continue;
        int done = 0, barrier = 0, warp = 0;
        Fiber *first_bar = nullptr, *first_warp = nullptr, *first_done = nullptr;
        for (int i = 0; i < n; ++i) {
            Fiber* f = g_pool[i];
            if (f->state == DONE) {
                done++;
                if (!first_done) first_done = f;
            } else if (f->state == AT_BARRIER) {
                barrier++;
                if (!first_bar) first_bar = f;
            } else if (f->state == AT_WARP) {
                warp++;
                if (!first_warp) first_warp = f;
            }
        }
        if (done == n) return true;
        if (warp == 0 && barrier > 0 && done == 0) {
            for (int i = 0; i < n; ++i) {
                Fiber* f = g_pool[i];
                if (f->line != first_bar->line || f->file != first_bar->file) {
                    g_error = "mismatched __syncthreads(): thread " + tid_str(first_bar) +
                              " waits at " + where(first_bar->file, first_bar->line) +
                              ", thread " + tid_str(f) + " at " + where(f->file, f->line) +
                              " (__syncthreads in divergent code)";
                    return false;
                }
            }
            for (int i = 0; i < n; ++i) g_pool[i]->state = RUNNABLE;
            g_barrier_gen++;
            continue;
        }
        if (warp == 0) {
            g_error = std::to_string(done) + " thread(s) exited (first " + tid_str(first_done) +
                      ") while " + std::to_string(barrier) + " wait at __syncthreads() at " +
                      where(first_bar->file, first_bar->line) +
                      " (a barrier not reached by every thread of the block)";
            return false;
        }
        g_error = "deadlock: thread " + tid_str(first_warp) + " waits at the warp collective at " +
                  where(first_warp->file, first_warp->line) + " for lanes that are " +
                  (first_bar ? "waiting at __syncthreads() at " + where(first_bar->file, first_bar->line)
                             : std::string("blocked"));
        return false;
    }
}

// After a launch error the unfinished fibers are never resumed (their stacks are
// simply reused). Under TSan they must still hand their history to the scheduler, or
// later host writes to memory they read would look like races: a synchronising
// switch into each fiber's TSan state and straight back (no code runs in between).
EMU_NO_TSAN void abandon_block(int n) {
#if EMU_TSAN
    for (int i = 0; i < n; ++i) {
        Fiber* f = g_pool[i];
        if (f->state == DONE) continue;
        __tsan_switch_to_fiber(f->tsan, 0);
        __tsan_release(&g_sync_block_done);
        __tsan_switch_to_fiber(g_sched_tsan, 0);
    }
    __tsan_acquire(&g_sync_block_done);
#else
    (void)n;
#endif
}

}  // namespace

EMU_NO_TSAN void syncthreads(const char* file, int line) {
    Fiber* f = g_fiber;
    f->state = AT_BARRIER;
    f->file = file;
    f->line = line;
    f->gen = g_barrier_gen;
#if EMU_TSAN
    __tsan_release(&g_sync_barrier[f->gen & 1]);
#endif
    yield_to_scheduler(f, false);
#if EMU_TSAN
    __tsan_acquire(&g_sync_barrier[f->gen & 1]);
#endif
}

EMU_NO_TSAN unsigned long long warp_collective(int op, unsigned mask, unsigned long long bits,
                                               int arg, int width, const char* file, int line) {
    Fiber* f = g_fiber;
    if (width < 1 || width > 32 || (width & (width - 1))) kernel_trap("shuffle width must be a power of 2 <= 32", file, line);
    f->state = AT_WARP;
    f->op = op;
    f->mask = mask;
    f->bits = bits;
    f->arg = arg;
    f->width = width;
    f->file = file;
    f->line = line;
    int warp = (int)((f->ts.tid.x + g_block_dim.x * (f->ts.tid.y + g_block_dim.y * f->ts.tid.z)) / 32);
    f->gen = g_warp_gen[warp];
#if EMU_TSAN
    __tsan_release(&g_sync_warp[warp][f->gen & 1]);
#endif
    yield_to_scheduler(f, false);
#if EMU_TSAN
    __tsan_acquire(&g_sync_warp[warp][f->gen & 1]);
#endif
    return f->result;
}

EMU_NO_TSAN void kernel_trap(const char* what, const char* file, int line) {
    Fiber* f = g_fiber;
    g_error = std::string(what) + " at " + where(file, line) + " in thread " + tid_str(f);
    f->state = DONE;
    yield_to_scheduler(f, true);
    std::abort();
}

EMU_NO_TSAN int launch(const unsigned* grid, const unsigned* block, unsigned shared_mem,
                       Body body, void* closure, const char* name) {
    std::lock_guard<std::mutex> lock(g_mutex);
    g_error.clear();
    std::string kname = name ? name : "kernel";
    unsigned long long threads = (unsigned long long)block[0] * block[1] * block[2];
    if (block[0] == 0 || block[1] == 0 || block[2] == 0 || grid[0] == 0 || grid[1] == 0 ||
        grid[2] == 0) {
        g_error = kname + ": grid and block dims must be positive";
        return -1;
    }
    if (threads > 1024 || block[0] > 1024 || block[1] > 1024 || block[2] > 64) {
        g_error = kname + ": block (" + std::to_string(block[0]) + "," + std::to_string(block[1]) +
                  "," + std::to_string(block[2]) + ") has " + std::to_string(threads) +
                  " threads; CUDA allows at most 1024 (and z <= 64)";
        return -1;
    }
    if (grid[0] > 2147483647u || grid[1] > 65535 || grid[2] > 65535) {
        g_error = kname + ": grid exceeds CUDA's limits (x < 2^31, y and z <= 65535)";
        return -1;
    }
    if (shared_mem != 0) {
        g_error = kname + ": dynamic shared memory is not supported by the emulator";
        return -1;
    }
    int n = (int)threads;
    while ((int)g_pool.size() < n) {
        Fiber* f = new_fiber();
        if (!f) {
            g_error = kname + ": cannot allocate fiber stacks";
            return -1;
        }
        g_pool.push_back(f);
    }
#if EMU_TSAN
    g_sched_tsan = __tsan_get_current_fiber();
#endif
    g_body = body;
    g_closure = closure;
    g_block_dim = dim3(block[0], block[1], block[2]);
    g_grid_dim = dim3(grid[0], grid[1], grid[2]);
    for (unsigned bz = 0; bz < grid[2]; ++bz)
        for (unsigned by = 0; by < grid[1]; ++by)
            for (unsigned bx = 0; bx < grid[0]; ++bx) {
                g_block_idx = {bx, by, bz};
                g_barrier_gen = 0;
                for (int w = 0; w < 32; ++w) g_warp_gen[w] = 0;
                for (int i = 0; i < n; ++i) prepare_fiber(g_pool[i], i, block);
#if EMU_TSAN
                __tsan_release(&g_sync_block_start);
#endif
                bool ok = run_block(n);
#if EMU_TSAN
                __tsan_acquire(&g_sync_block_done);
#endif
                if (!ok) {
                    abandon_block(n);
                    g_error = kname + " block (" + std::to_string(bx) + "," + std::to_string(by) +
                              "," + std::to_string(bz) + "): " + g_error;
                    __atomic_store_n(&g_cur, (ThreadState*)nullptr, __ATOMIC_RELAXED);
                    return -1;
                }
            }
    __atomic_store_n(&g_cur, (ThreadState*)nullptr, __ATOMIC_RELAXED);
    return 0;
}

}  // namespace cuda_emu

extern "C" const char* cuda_emu_last_error() { return cuda_emu::g_error.c_str(); }
