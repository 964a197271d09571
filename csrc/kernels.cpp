// The cpp backend's driver: per-thread workspace, the choice of the SIMD variant,
// and the Python bindings of the kernels (registered into cnnfast.backends.cpp._cpp by
// register_kernels, which module.cpp calls).
//
// Arrays arrive C-contiguous from cnnfast/backends/cpp/backend.py, outputs
// preallocated there with numpy; nothing is copied here. Dtypes, contiguity and
// sizes are checked (cheap) before the GIL is released around every kernel; the
// geometry arrives as a ConvGeometry / PoolGeometry, checked when it was made
// (geometry.cpp).
#include <pybind11/numpy.h>
#include <pybind11/pybind11.h>
#include <pybind11/stl.h>

#include <atomic>
#include <cstdint>
#include <cstdlib>
#include <stdexcept>
#include <string>
#include <vector>

#include "cpu_features.h"
#include "kernels.h"

namespace py = pybind11;

namespace cnnfast {

// ----------------------------------------------------------------------------- workspace

namespace {
std::atomic<long long> g_ws_bytes{0};
std::atomic<long long> g_ws_peak{0};

struct Scratch {
    void* p[kScratchSlots] = {};
    std::size_t n[kScratchSlots] = {};
    void release() {
        for (int i = 0; i < kScratchSlots; ++i) {
            std::free(p[i]);
            g_ws_bytes -= (long long)n[i];
            p[i] = nullptr;
            n[i] = 0;
        }
    }
    ~Scratch() { release(); }
};
thread_local Scratch t_scratch;

// Frees the workspace of the calling thread and of the threads of its kernel team of
// nt (those a call with nt threads runs on), and restarts the peak from what is still
// held (other threads'): a test hook, so that a test can measure one call's peak after
// larger calls (release_workspace in Python).
void release_workspace(int nt) {
#pragma omp parallel num_threads(nt)
    t_scratch.release();
    t_scratch.release();
    g_ws_peak = g_ws_bytes.load();
}
}  // namespace

void* scratch(ScratchSlot slot, std::size_t bytes) {
    Scratch& s = t_scratch;
    if (bytes > s.n[slot]) {
        const std::size_t nb = (bytes + 4095) / 4096 * 4096;
        std::free(s.p[slot]);
        g_ws_bytes -= (long long)s.n[slot];
        s.p[slot] = std::aligned_alloc(64, nb);
        if (!s.p[slot]) {
            s.n[slot] = 0;
            std::fprintf(stderr, "cnnfast: out of memory for a %zu-byte workspace\n", nb);
            std::abort();  // inside an OpenMP region: an exception cannot escape
        }
        s.n[slot] = nb;
        const long long now = (g_ws_bytes += (long long)nb);
        long long peak = g_ws_peak.load();
        while (now > peak && !g_ws_peak.compare_exchange_weak(peak, now)) {
        }
    }
    return s.p[slot];
}

// ----------------------------------------------------------------------------- denormals

namespace {
std::atomic<bool> g_flush_denormal{false};  // set from Python, read by every kernel thread
}  // namespace

bool flush_denormal() { return g_flush_denormal.load(std::memory_order_relaxed); }

// ----------------------------------------------------------------------------- SIMD choice

namespace {
// The kernel table in use: simd_path()'s choice unless a test forced one
// (set_simd_path). Written only by that test switch, between calls.
enum class Simd { kAuto, kPortable, kAvx2, kAvx512 };
Simd g_simd_override = Simd::kAuto;

Simd simd_from_name(const std::string& name) {
    if (name == "avx512") return Simd::kAvx512;
    if (name == "avx2") return Simd::kAvx2;
    return Simd::kPortable;
}

Simd run_simd() {
    static const Simd chosen = simd_from_name(simd_path());
    return g_simd_override == Simd::kAuto ? chosen : g_simd_override;
}

std::string join(const std::vector<std::string>& names) {
    std::string out;
    for (const std::string& n : names) out += (out.empty() ? "" : ", ") + n;
    return out;
}

const char* simd_name(Simd s) {
    return s == Simd::kAvx512 ? "avx512" : s == Simd::kAvx2 ? "avx2" : "portable";
}

template <class T>
const KernelTable<T>& table();
template <>
const KernelTable<float>& table<float>() {
#if defined(__x86_64__)
    switch (run_simd()) {
        case Simd::kAvx512: return avx512_table_f32();
        case Simd::kAvx2: return avx2_table_f32();
        default: break;
    }
#endif
    return portable_table_f32();
}
template <>
const KernelTable<double>& table<double>() {
#if defined(__x86_64__)
    switch (run_simd()) {
        case Simd::kAvx512: return avx512_table_f64();
        case Simd::kAvx2: return avx2_table_f64();
        default: break;
    }
#endif
    return portable_table_f64();
}

// ----------------------------------------------------------------------------- arrays

enum class DT { F32, F64 };

DT dtype_of(const py::array& a, const char* name) {
    if (a.dtype().is(py::dtype::of<float>())) return DT::F32;
    if (a.dtype().is(py::dtype::of<double>())) return DT::F64;
    throw py::type_error(std::string(name) + " must be float32 or float64");
}

void check_array(const py::array& a, const char* name, long size, bool writable) {
    if (!(a.flags() & py::array::c_style))
        throw py::value_error(std::string(name) + " must be C-contiguous");
    if (writable && !a.writeable()) throw py::value_error(std::string(name) + " is read-only");
    if ((long)a.size() != size)
        throw py::value_error(std::string(name) + " has " + std::to_string(a.size()) +
                              " elements; expected " + std::to_string(size));
}

template <class T>
const T* in_ptr(const py::array& a, const char* name, long size) {
    if (!a.dtype().is(py::dtype::of<T>()))
        throw py::type_error(std::string(name) + " has a different dtype from the other arrays");
    check_array(a, name, size, false);
    return static_cast<const T*>(a.data());
}

template <class T>
T* out_ptr(py::array& a, const char* name, long size) {
    if (!a.dtype().is(py::dtype::of<T>()))
        throw py::type_error(std::string(name) + " has a different dtype from the other arrays");
    check_array(a, name, size, true);
    return static_cast<T*>(a.mutable_data());
}

int threads_arg(int nt) { return nt < 1 ? 1 : nt; }

// ----------------------------------------------------------------------------- paths

// A forced path that cannot run the geometry: NotImplementedError in Python (the
// cpp backend's answer to algorithm=... for that case).
struct PathUnfit : std::runtime_error {
    using std::runtime_error::runtime_error;
};

// The path kernel `op` runs on g: choose_path's for "auto", else the named one if it
// can run g (PathUnfit with the reason if not).
// `why` (optional) receives the reason of the choice.
int resolve_path(int op, const ConvGeo& g, const std::string& name, const char** why = nullptr) {
    if (name == "auto") return choose_path(op, g, why);
    if (why) *why = "forced by algorithm=";
    for (int p = 0; p < kNumPaths; ++p) {
        if (name != kPathNames[p]) continue;
        if (const char* why = path_unfit(op, p, g)) throw PathUnfit(why);
        return p;
    }
    std::string known = "'auto'";
    for (int p = 0; p < kNumPaths; ++p) known += std::string(", '") + kPathNames[p] + "'";
    throw py::value_error("unknown conv path '" + name + "'; expected one of " + known);
}

int conv_op(const std::string& op) {
    if (op == "forward") return kFwd;
    if (op == "backward_data") return kBwdData;
    if (op == "backward_weight") return kBwdWeight;
    throw py::value_error("conv op '" + op +
                          "': expected 'forward', 'backward_data' or 'backward_weight'");
}

// The ActKind of an activation name (cnnfast.activation's, or "none").
int act_kind(const std::string& name) {
    for (int a = 0; a < kNumActs; ++a)
        if (name == kActNames[a]) return a;
    throw py::value_error("activation '" + name +
                          "': expected 'none', 'relu', 'leaky_relu', 'sigmoid' or 'tanh'");
}

// g with the epilogue of a kernel that writes a layer's output (ConvGeo::act).
ConvGeo with_act(const ConvGeo& g, const std::string& activation, double slope) {
    if (!(slope >= 0)) throw py::value_error("negative_slope must be >= 0");
    ConvGeo h = g;
    h.act = act_kind(activation);
    h.slope = h.act == kActLeakyRelu ? slope : 0.0;
    return h;
}

// ----------------------------------------------------------------------------- bindings

template <class T>
void conv_forward_t(const py::array& x, const py::array& w, const py::object& b, py::array& y,
                    const ConvGeo& g, int nt, int path) {
    const T* xp = in_ptr<T>(x, "x", g.N * g.C * g.Pin);
    const T* wp = in_ptr<T>(w, "weight", g.O * g.Kw);
    const T* bp = nullptr;
    if (!b.is_none()) bp = in_ptr<T>(b.cast<py::array>(), "bias", g.O);
    T* yp = out_ptr<T>(y, "y", g.N * g.O * g.Pout);
    py::gil_scoped_release nogil;
    table<T>().conv_fwd(g, xp, wp, bp, yp, nt, path);
}

template <class T>
void conv_backward_data_t(const py::array& gy, const py::array& w, const py::object& b,
                          py::array& gx, const ConvGeo& g, int nt, int path) {
    const T* gyp = in_ptr<T>(gy, "grad_y", g.N * g.O * g.Pout);
    const T* wp = in_ptr<T>(w, "weight", g.O * g.Kw);
    const T* bp = nullptr;
    if (!b.is_none()) bp = in_ptr<T>(b.cast<py::array>(), "bias", g.C);
    T* gxp = out_ptr<T>(gx, "grad_x", g.N * g.C * g.Pin);
    py::gil_scoped_release nogil;
    table<T>().conv_bwd_data(g, gyp, wp, bp, gxp, nt, path);
}

template <class T>
void conv_backward_weight_t(const py::array& x, const py::array& gy, py::array& gw,
                            const ConvGeo& g, int nt, int path) {
    const T* xp = in_ptr<T>(x, "x", g.N * g.C * g.Pin);
    const T* gyp = in_ptr<T>(gy, "grad_y", g.N * g.O * g.Pout);
    T* gwp = out_ptr<T>(gw, "grad_weight", g.O * g.Kw);
    py::gil_scoped_release nogil;
    table<T>().conv_bwd_weight(g, xp, gyp, gwp, nt, path);
}

template <class T>
void bias_grad_t(const py::array& gy, py::array& gb, int nt) {
    if (gy.ndim() < 2) throw py::value_error("grad_y must be (N, C, ...)");
    const long N = (long)gy.shape(0), O = (long)gy.shape(1);
    const long P = (N * O) != 0 ? (long)gy.size() / (N * O) : 0;
    const T* gyp = in_ptr<T>(gy, "grad_y", N * O * P);
    T* gbp = out_ptr<T>(gb, "grad_bias", O);
    py::gil_scoped_release nogil;
    table<T>().bias_grad(N, O, P, gyp, gbp, nt);
}

template <class T>
void act_grad_t(const py::array& gy, const py::array& y, int act, double slope, py::array& g,
                const py::object& gb, int nt) {
    if (gy.ndim() < 2) throw py::value_error("grad_y must be (N, C, ...)");
    const long N = (long)gy.shape(0), O = (long)gy.shape(1);
    const long P = (N * O) != 0 ? (long)gy.size() / (N * O) : 0;
    const T* gyp = in_ptr<T>(gy, "grad_y", N * O * P);
    const T* yp = in_ptr<T>(y, "y", N * O * P);
    T* gp = out_ptr<T>(g, "g", N * O * P);
    T* gbp = nullptr;
    if (!gb.is_none()) {
        py::array gba = gb.cast<py::array>();
        gbp = out_ptr<T>(gba, "grad_bias", O);
    }
    if (gp == gyp || gp == yp) throw py::value_error("g must not be grad_y or y");
    py::gil_scoped_release nogil;
    table<T>().act_grad(N, O, P, gyp, yp, act, slope, gp, gbp, nt);
}

template <class T>
void max_pool_t(const py::array& x, py::array& y, const py::object& idx, const PoolGeo& g,
                int nt) {
    const T* xp = in_ptr<T>(x, "x", g.planes * g.Pin());
    T* yp = out_ptr<T>(y, "y", g.planes * g.Pout());
    std::int64_t* ip = nullptr;
    if (!idx.is_none()) {
        py::array ia = idx.cast<py::array>();
        if (!ia.dtype().is(py::dtype::of<std::int64_t>()))
            throw py::type_error("indices must be int64");
        check_array(ia, "indices", g.planes * g.Pout(), true);
        ip = static_cast<std::int64_t*>(ia.mutable_data());
    }
    py::gil_scoped_release nogil;
    table<T>().max_pool(g, xp, yp, ip, nt);
}

template <class T>
void max_pool_backward_t(const py::array& gy, const py::array& idx, py::array& gx, int nt) {
    if (gx.ndim() < 3 || gy.ndim() != gx.ndim())
        throw py::value_error("grad_y and grad_x must be (N, C, *spatial) of one rank");
    const long planes = (long)(gx.shape(0) * gx.shape(1));
    if (planes == 0) return;
    if ((long)(gy.shape(0) * gy.shape(1)) != planes)
        throw py::value_error("grad_y and grad_x differ in (N, C)");
    const long Pin = (long)gx.size() / planes, Pout = (long)gy.size() / planes;
    const T* gyp = in_ptr<T>(gy, "grad_y", planes * Pout);
    if (!idx.dtype().is(py::dtype::of<std::int64_t>()))
        throw py::type_error("indices must be int64");
    check_array(idx, "indices", planes * Pout, false);
    const std::int64_t* ip = static_cast<const std::int64_t*>(idx.data());
    T* gxp = out_ptr<T>(gx, "grad_x", planes * Pin);
    long bad;
    {
        py::gil_scoped_release nogil;
        bad = table<T>().max_pool_bwd(planes, Pin, Pout, gyp, ip, gxp, nt);
    }
    if (bad)
        throw py::value_error(std::to_string(bad) + " indices lie outside their (n, c) plane of " +
                              std::to_string(Pin) + " elements");
}

struct Counts {
    std::vector<double> z, y, x;
};

Counts counts_of(const PoolGeo& g, const std::vector<double>& cz, const std::vector<double>& cy,
                 const std::vector<double>& cx, double ov) {
    if (ov <= 0 && ((long)cz.size() != g.out[0] || (long)cy.size() != g.out[1] ||
                    (long)cx.size() != g.out[2]))
        throw py::value_error("avg_pool divisor counts must have one entry per output position");
    Counts c{cz, cy, cx};
    if (c.z.empty()) c.z.push_back(1.0);
    if (c.y.empty()) c.y.push_back(1.0);
    if (c.x.empty()) c.x.push_back(1.0);
    return c;
}

template <class T>
void avg_pool_t(const py::array& x, py::array& y, const Counts& c, double ov, const PoolGeo& g,
                int nt) {
    const T* xp = in_ptr<T>(x, "x", g.planes * g.Pin());
    T* yp = out_ptr<T>(y, "y", g.planes * g.Pout());
    py::gil_scoped_release nogil;
    table<T>().avg_pool(g, xp, c.z.data(), c.y.data(), c.x.data(), ov, yp, nt);
}

template <class T>
void avg_pool_backward_t(const py::array& gy, py::array& gx, const Counts& c, double ov,
                         const PoolGeo& g, int nt) {
    const T* gyp = in_ptr<T>(gy, "grad_y", g.planes * g.Pout());
    T* gxp = out_ptr<T>(gx, "grad_x", g.planes * g.Pin());
    py::gil_scoped_release nogil;
    table<T>().avg_pool_bwd(g, gyp, c.z.data(), c.y.data(), c.x.data(), ov, gxp, nt);
}

}  // namespace

// geometry.cpp: _cpp.ConvGeometry and _cpp.PoolGeometry, the bindings' geometry arguments.
void register_geometry(py::module_& m);

void register_kernels(py::module_& m) {
    register_geometry(m);  // first: the kernels' signatures name the geometry types
    m.def("conv_forward",
          [](const py::array& x, const py::array& w, const py::object& b, py::array& y,
             const ConvGeo& g, int nt, const std::string& path, const std::string& act,
             double slope) {
              const int pa = resolve_path(kFwd, g, path);
              const ConvGeo h = with_act(g, act, slope);
              if (dtype_of(x, "x") == DT::F32)
                  conv_forward_t<float>(x, w, b, y, h, threads_arg(nt), pa);
              else
                  conv_forward_t<double>(x, w, b, y, h, threads_arg(nt), pa);
              return std::string(kPathNames[pa]);
          },
          py::arg("x"), py::arg("weight"), py::arg("bias"), py::arg("y"), py::arg("geometry"),
          py::arg("threads"), py::arg("path") = "auto", py::arg("activation") = "none",
          py::arg("negative_slope") = 0.0,
          "y = activation(conv(x, weight) (+ bias)) into the preallocated y. geometry: a "
          "ConvGeometry. path: 'auto' or a "
          "name of conv_paths() (PathUnfit if it cannot run the geometry). activation: "
          "'none', 'relu', 'leaky_relu' (negative_slope), 'sigmoid' or 'tanh', fused where "
          "y is written. Returns the path that ran.");
    m.def("conv_backward_data",
          [](const py::array& gy, const py::array& w, const py::object& b, py::array& gx,
             const ConvGeo& g, int nt, const std::string& path, const std::string& act,
             double slope) {
              const int pa = resolve_path(kBwdData, g, path);
              const ConvGeo h = with_act(g, act, slope);
              if (dtype_of(gy, "grad_y") == DT::F32)
                  conv_backward_data_t<float>(gy, w, b, gx, h, threads_arg(nt), pa);
              else
                  conv_backward_data_t<double>(gy, w, b, gx, h, threads_arg(nt), pa);
              return std::string(kPathNames[pa]);
          },
          py::arg("grad_y"), py::arg("weight"), py::arg("bias"), py::arg("grad_x"),
          py::arg("geometry"), py::arg("threads"), py::arg("path") = "auto",
          py::arg("activation") = "none", py::arg("negative_slope") = 0.0,
          "grad_x = the adjoint of conv wrt x applied to grad_y (+ bias per x channel); "
          "also the forward pass of a transposed convolution, with its activation fused "
          "as in conv_forward.");
    m.def("conv_backward_weight",
          [](const py::array& x, const py::array& gy, py::array& gw, const ConvGeo& g, int nt,
             const std::string& path) {
              const int pa = resolve_path(kBwdWeight, g, path);
              if (dtype_of(x, "x") == DT::F32)
                  conv_backward_weight_t<float>(x, gy, gw, g, threads_arg(nt), pa);
              else
                  conv_backward_weight_t<double>(x, gy, gw, g, threads_arg(nt), pa);
              return std::string(kPathNames[pa]);
          },
          py::arg("x"), py::arg("grad_y"), py::arg("grad_weight"), py::arg("geometry"),
          py::arg("threads"), py::arg("path") = "auto",
          "grad_weight of conv into the preallocated array; returns the path that ran.");
    m.def("conv_path",
          [](const std::string& op, const ConvGeo& g, const std::string& path) {
              const char* why = "";
              const int pa = resolve_path(conv_op(op), g, path, &why);
              return py::make_tuple(std::string(kPathNames[pa]), std::string(why));
          },
          py::arg("op"), py::arg("geometry"), py::arg("path") = "auto",
          "(path, why): the path conv kernel op ('forward', 'backward_data', "
          "'backward_weight') would run on geometry and the reason, without running it "
          "(PathUnfit if a forced path cannot).");
    m.def("conv_paths", [] { return std::vector<std::string>(kPathNames, kPathNames + kNumPaths); },
          "The names of the conv kernels' paths (the cpp backend's algorithm vocabulary).");
    py::register_exception<PathUnfit>(m, "PathUnfit", PyExc_NotImplementedError);
    m.def("bias_grad",
          [](const py::array& gy, py::array& gb, int nt) {
              if (dtype_of(gy, "grad_y") == DT::F32)
                  bias_grad_t<float>(gy, gb, threads_arg(nt));
              else
                  bias_grad_t<double>(gy, gb, threads_arg(nt));
          },
          py::arg("grad_y"), py::arg("grad_bias"), py::arg("threads"),
          "grad_bias[c] = sum of grad_y over every axis but the channel axis.");
    m.def("act_grad",
          [](const py::array& gy, const py::array& y, const std::string& act, double slope,
             py::array& g, const py::object& gb, int nt) {
              const int a = act_kind(act);
              if (!(slope >= 0)) throw py::value_error("negative_slope must be >= 0");
              if (dtype_of(gy, "grad_y") == DT::F32)
                  act_grad_t<float>(gy, y, a, slope, g, gb, threads_arg(nt));
              else
                  act_grad_t<double>(gy, y, a, slope, g, gb, threads_arg(nt));
          },
          py::arg("grad_y"), py::arg("y"), py::arg("activation"), py::arg("negative_slope"),
          py::arg("g"), py::arg("grad_bias"), py::arg("threads"),
          "g = grad_y * activation'(y) read from the activated output y (a preallocated "
          "array of grad_y's shape), and grad_bias (when not None) = the sum of g over every "
          "axis but the channel axis, with bias_grad's bits, in one pass.");
    m.def("max_pool",
          [](const py::array& x, py::array& y, const py::object& idx, const PoolGeo& g, int nt) {
              if (dtype_of(x, "x") == DT::F32)
                  max_pool_t<float>(x, y, idx, g, threads_arg(nt));
              else
                  max_pool_t<double>(x, y, idx, g, threads_arg(nt));
          },
          py::arg("x"), py::arg("y"), py::arg("indices"), py::arg("geometry"), py::arg("threads"),
          "Max pooling into y (and int64 indices when given). geometry: a PoolGeometry.");
    m.def("max_pool_backward",
          [](const py::array& gy, const py::array& idx, py::array& gx, int nt) {
              if (dtype_of(gy, "grad_y") == DT::F32)
                  max_pool_backward_t<float>(gy, idx, gx, threads_arg(nt));
              else
                  max_pool_backward_t<double>(gy, idx, gx, threads_arg(nt));
          },
          py::arg("grad_y"), py::arg("indices"), py::arg("grad_x"), py::arg("threads"),
          "grad_x = grad_y scattered to the indices of max_pool.");
    m.def("avg_pool",
          [](const py::array& x, py::array& y, const std::vector<double>& cz,
             const std::vector<double>& cy, const std::vector<double>& cx, double ov,
             const PoolGeo& g, int nt) {
              const Counts c = counts_of(g, cz, cy, cx, ov);
              if (dtype_of(x, "x") == DT::F32)
                  avg_pool_t<float>(x, y, c, ov, g, threads_arg(nt));
              else
                  avg_pool_t<double>(x, y, c, ov, g, threads_arg(nt));
          },
          py::arg("x"), py::arg("y"), py::arg("count_z"), py::arg("count_y"), py::arg("count_x"),
          py::arg("divisor_override"), py::arg("geometry"), py::arg("threads"),
          "Average pooling; divisor = divisor_override if > 0 else the product of the "
          "per-dim counts.");
    m.def("avg_pool_backward",
          [](const py::array& gy, py::array& gx, const std::vector<double>& cz,
             const std::vector<double>& cy, const std::vector<double>& cx, double ov,
             const PoolGeo& g, int nt) {
              const Counts c = counts_of(g, cz, cy, cx, ov);
              if (dtype_of(gy, "grad_y") == DT::F32)
                  avg_pool_backward_t<float>(gy, gx, c, ov, g, threads_arg(nt));
              else
                  avg_pool_backward_t<double>(gy, gx, c, ov, g, threads_arg(nt));
          },
          py::arg("grad_y"), py::arg("grad_x"), py::arg("count_z"), py::arg("count_y"),
          py::arg("count_x"), py::arg("divisor_override"), py::arg("geometry"),
          py::arg("threads"), "Gradient of avg_pool.");
    m.def("workspace_bytes",
          [] { return py::make_tuple(g_ws_bytes.load(), g_ws_peak.load()); },
          "(bytes held now, peak bytes) of the kernels' reusable per-thread workspace.");
    m.def("release_workspace",
          [](int nt) {
              py::gil_scoped_release nogil;
              release_workspace(threads_arg(nt));
          },
          py::arg("threads"),
          "Free the workspace of this thread and of its kernel threads (a team of "
          "`threads`), and restart the peak of workspace_bytes() from what other threads "
          "still hold (tests: one call's peak after larger calls).");
    m.def("set_flush_denormal", [](bool flush) { g_flush_denormal = flush; }, py::arg("flush"),
          "The kernels' denormal policy (use cnnfast.set_flush_denormal): True flushes "
          "denormals to zero (FTZ + DAZ) in every kernel thread, False keeps them.");
    m.def("get_flush_denormal", [] { return g_flush_denormal.load(); },
          "The kernels' denormal policy (see set_flush_denormal).");
    m.def("kernel_path", [] { return std::string(simd_name(run_simd())); },
          "The SIMD variant the kernels run now ('avx512', 'avx2' or 'portable').");
    m.def("simd_paths", &runnable_simd_paths,
          "The SIMD variants this build can run on this CPU, lowest first.");
    m.def("avx512_emulated", &avx512_emulated,
          "True for a CNNFAST_AVX512_EMULATE=1 build: its 'avx512' kernels run over "
          "csrc/isa/avx512_emulation.h on AVX2 (a test build).");
    m.def("set_simd_path",
          [](const std::string& path) {
              if (path == "auto") {
                  g_simd_override = Simd::kAuto;
                  return;
              }
              const std::vector<std::string> ok = runnable_simd_paths();
              for (const std::string& p : ok)
                  if (p == path) {
                      g_simd_override = simd_from_name(path);
                      return;
                  }
              if (path == "avx2" || path == "avx512")
                  throw py::value_error("set_simd_path('" + path + "'): this build or CPU "
                                        "cannot run it (runnable: " + join(ok) + ")");
              throw py::value_error("set_simd_path(" + path +
                                    "): expected 'auto', 'portable', 'avx2' or 'avx512'");
          },
          py::arg("path"),
          "Test switch: force the 'portable', 'avx2' or 'avx512' kernels (one of simd_paths()), "
          "or 'auto' (CNNFAST_SIMD / CPU).");
}

}  // namespace cnnfast
