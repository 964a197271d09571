// DenormalGuard: the denormal policy on the calling thread while it lives.
// A part of the per-ISA kernels, in namespace cnnfast::CNNFAST_KNS: included by
// kernels_impl.h (compiled once per ISA, see there), not on its own.
#pragma once

#include "kernels.h"

namespace cnnfast {
namespace CNNFAST_KNS {

// The denormal policy (cnnfast.set_flush_denormal, read through flush_denormal()) on
// the calling thread while the guard lives; the thread's floating-point state is
// restored on exit. MXCSR (FPCR) is per thread, so every parallel region makes one
// guard in each of its threads. Flushing (FTZ + DAZ: denormal results and inputs are
// zero) avoids the 10-100x slowdown of denormal arithmetic on x86 in backward passes;
// keeping them (the default) gives IEEE results, as the numpy reference and torch.
// The bits are cleared as well as set: the policy holds whatever state the thread
// had (OpenMP workers inherit their creator's at creation).
struct DenormalGuard {
#if defined(__x86_64__) || defined(__i386__)
    unsigned int saved;
    DenormalGuard() : saved(_mm_getcsr()) {
        const unsigned int ftz_daz = 0x8040u;
        _mm_setcsr(flush_denormal() ? saved | ftz_daz : saved & ~ftz_daz);
    }
    ~DenormalGuard() { _mm_setcsr(saved); }
#elif defined(__aarch64__)
    unsigned long saved;
    DenormalGuard() {
        __asm__ __volatile__("mrs %0, fpcr" : "=r"(saved));
        const unsigned long fz = 1ul << 24;
        unsigned long v = flush_denormal() ? saved | fz : saved & ~fz;
        __asm__ __volatile__("msr fpcr, %0" : : "r"(v));
    }
    ~DenormalGuard() { __asm__ __volatile__("msr fpcr, %0" : : "r"(saved)); }
#endif
};

}  // namespace CNNFAST_KNS
}  // namespace cnnfast
