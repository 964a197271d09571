// bias_grad: the bias gradient (sum of gy over n and positions per channel).
// A part of the per-ISA kernels, in namespace cnnfast::CNNFAST_KNS: included by
// kernels_impl.h (compiled once per ISA, see there), not on its own.
#pragma once

#include "common/denormal.h"

namespace cnnfast {
namespace CNNFAST_KNS {

template <class T>
static void bias_grad(long N, long O, long P, const T* gy, T* gb, int nt) {
#pragma omp parallel num_threads(nt)
    {
        DenormalGuard fp;
#pragma omp for schedule(static)
        for (long o = 0; o < O; ++o) {
            T acc[8] = {T(0), T(0), T(0), T(0), T(0), T(0), T(0), T(0)};
            for (long n = 0; n < N; ++n) {
                const T* s = gy + (n * O + o) * P;
                T part[8] = {T(0), T(0), T(0), T(0), T(0), T(0), T(0), T(0)};
                long i = 0;
                for (; i + 8 <= P; i += 8)
                    for (int j = 0; j < 8; ++j) part[j] += s[i + j];
                for (; i < P; ++i) part[i & 7] += s[i];
                for (int j = 0; j < 8; ++j) acc[j] += part[j];
            }
            gb[o] = ((acc[0] + acc[4]) + (acc[1] + acc[5])) + ((acc[2] + acc[6]) + (acc[3] + acc[7]));
        }
    }
}

}  // namespace CNNFAST_KNS
}  // namespace cnnfast
