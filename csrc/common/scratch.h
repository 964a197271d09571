// tscratch<T>: the per-thread scratch buffer of a slot (ScratchSlot, kernels.h) as
// an array of T.
// A part of the per-ISA kernels, in namespace cnnfast::CNNFAST_KNS: included by
// kernels_impl.h (compiled once per ISA, see there), not on its own.
#pragma once

#include "kernels.h"

namespace cnnfast {
namespace CNNFAST_KNS {

template <class T>
static inline T* tscratch(ScratchSlot slot, long count) {
    return static_cast<T*>(scratch(slot, (std::size_t)(count > 0 ? count : 1) * sizeof(T)));
}

}  // namespace CNNFAST_KNS
}  // namespace cnnfast
