// The cnnfast.backends.cpp._cpp extension module: build information and CPU features.
// Kernel bindings are added by the files that define them (see bindings in
// kernels.cpp once present).
#include <pybind11/pybind11.h>

#include <string>

#include "cpu_features.h"

#ifdef _OPENMP
#include <omp.h>
#endif

namespace py = pybind11;

#ifndef CNNFAST_VERSION
#define CNNFAST_VERSION "unknown"
#endif

static std::string compiler_name() {
#if defined(__clang__)
    return std::string("clang ") + __clang_version__;
#elif defined(__GNUC__)
    return "gcc " + std::to_string(__GNUC__) + "." + std::to_string(__GNUC_MINOR__) + "." +
           std::to_string(__GNUC_PATCHLEVEL__);
#elif defined(_MSC_VER)
    return "msvc " + std::to_string(_MSC_VER);
#else
    return "unknown";
#endif
}

namespace cnnfast {
// Defined by kernel translation units; a weak default keeps the module importable
// while it has none.
void register_kernels(py::module_& m) __attribute__((weak));
}

PYBIND11_MODULE(_cpp, m) {
    m.doc() = "cnnfast C++ kernels";
    m.def("version", [] { return std::string(CNNFAST_VERSION); }, "Version the extension was built as.");
    m.def("compiler", &compiler_name, "Compiler that built the extension.");
    m.def("openmp", [] {
#ifdef _OPENMP
        return py::make_tuple(true, _OPENMP, omp_get_max_threads());
#else
        return py::make_tuple(false, 0, 1);
#endif
    }, "(enabled, _OPENMP date, omp_get_max_threads()).");
    m.def("debug_build", [] {
#ifdef CNNFAST_DEBUG
        return true;
#else
        return false;
#endif
    }, "True for a CNNFAST_DEBUG=1 (sanitizer) build.");
    m.def("cpu_features", [] {
        cnnfast::CpuFeatures f = cnnfast::detect_cpu_features();
        py::dict d;
        d["sse4.2"] = f.sse42;
        d["avx"] = f.avx;
        d["avx2"] = f.avx2;
        d["fma"] = f.fma;
        d["avx512f"] = f.avx512f;
        d["avx512vl"] = f.avx512vl;
        d["avx512dq"] = f.avx512dq;
        d["avx512bw"] = f.avx512bw;
        d["neon"] = f.neon;
        return d;
    }, "CPU features detected at run time.");
    m.def("simd_path", [] { return cnnfast::simd_path(); },
          "Kernel path chosen at load: 'avx512', 'avx2' or 'portable' (CNNFAST_SIMD=portable, "
          "avx2 or avx512 forces one this CPU can run).");
    if (cnnfast::register_kernels) cnnfast::register_kernels(m);
}
