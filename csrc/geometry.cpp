// The geometry of the kernels' bindings: _cpp.ConvGeometry (ConvGeo) and
// _cpp.PoolGeometry (PoolGeo), made by keyword in cnnfast/backends/cpp/backend.py:
//
//     _cpp.ConvGeometry(batch=, in_channels=, out_channels=, groups=, in_size=,
//                       out_size=, kernel=, stride=, dilation=, pad_before=)
//     _cpp.PoolGeometry(planes=, in_size=, out_size=, kernel=, stride=, dilation=,
//                       pad_before=)
//
// (spatial fields: 3 entries each). A geometry is checked once, when it is made
// (ValueError with the offending fields), and is read-only afterwards, so every kernel
// it reaches has a valid one. Registered by register_kernels (kernels.cpp).
#include <pybind11/pybind11.h>
#include <pybind11/stl.h>

#include <initializer_list>
#include <string>
#include <vector>

#include "kernels.h"

namespace py = pybind11;

namespace cnnfast {

namespace {

using Dims = std::vector<long>;

std::string dims_str(const long* v) {
    return "(" + std::to_string(v[0]) + ", " + std::to_string(v[1]) + ", " +
           std::to_string(v[2]) + ")";
}

void set_dims(const char* geo, const char* name, const Dims& v, long* dst) {
    if (v.size() != 3)
        throw py::value_error(std::string(geo) + " geometry: " + name + " must have 3 entries "
                              "(rank 1 and 2 lifted with leading ones), got " +
                              std::to_string(v.size()));
    for (int i = 0; i < 3; ++i) dst[i] = v[i];
}

// The spatial fields shared by both geometries: extents, kernel, stride and dilation
// >= 1 and padding >= 0 in every dim.
template <class G>
void set_spatial(const char* geo, G& g, const Dims& in, const Dims& out, const Dims& k,
                 const Dims& s, const Dims& d, const Dims& lo) {
    set_dims(geo, "in_size", in, g.in);
    set_dims(geo, "out_size", out, g.out);
    set_dims(geo, "kernel", k, g.k);
    set_dims(geo, "stride", s, g.s);
    set_dims(geo, "dilation", d, g.d);
    set_dims(geo, "pad_before", lo, g.lo);
    const std::string pre = std::string(geo) + " geometry: ";
    for (int i = 0; i < 3; ++i) {
        if (g.in[i] < 1 || g.out[i] < 1 || g.k[i] < 1)
            throw py::value_error(pre + "in_size " + dims_str(g.in) + ", out_size " +
                                  dims_str(g.out) + " and kernel " + dims_str(g.k) +
                                  " must be >= 1 in every dim");
        if (g.s[i] < 1 || g.d[i] < 1)
            throw py::value_error(pre + "stride " + dims_str(g.s) + " and dilation " +
                                  dims_str(g.d) + " must be >= 1 in every dim");
        if (g.lo[i] < 0)
            throw py::value_error(pre + "pad_before " + dims_str(g.lo) + " must be >= 0");
    }
}

// a * b * ..., or a ValueError when it does not fit in a long.
long checked_product(const char* geo, std::initializer_list<long> v) {
    long r = 1;
    for (long x : v)
        if (__builtin_mul_overflow(r, x, &r))
            throw py::value_error(std::string(geo) + " geometry: sizes overflow");
    return r;
}

ConvGeo make_conv_geo(long batch, long in_channels, long out_channels, long groups,
                      const Dims& in, const Dims& out, const Dims& k, const Dims& s,
                      const Dims& d, const Dims& lo) {
    ConvGeo g;
    g.N = batch;
    g.C = in_channels;
    g.O = out_channels;
    g.G = groups;
    set_spatial("conv", g, in, out, k, s, d, lo);
    if (g.N < 1 || g.C < 1 || g.O < 1 || g.G < 1)
        throw py::value_error("conv geometry: batch " + std::to_string(g.N) + ", in_channels " +
                              std::to_string(g.C) + ", out_channels " + std::to_string(g.O) +
                              " and groups " + std::to_string(g.G) + " must be >= 1");
    if (g.C % g.G || g.O % g.G)
        throw py::value_error("conv geometry: groups " + std::to_string(g.G) +
                              " must divide in_channels " + std::to_string(g.C) +
                              " and out_channels " + std::to_string(g.O));
    // every size a kernel or a binding forms (x, y, weight) fits in a long
    checked_product("conv", {g.N, g.C, g.in[0], g.in[1], g.in[2]});
    checked_product("conv", {g.N, g.O, g.out[0], g.out[1], g.out[2]});
    checked_product("conv", {g.O, g.C / g.G, g.k[0], g.k[1], g.k[2]});
    g.finish();
    return g;
}

PoolGeo make_pool_geo(long planes, const Dims& in, const Dims& out, const Dims& k,
                      const Dims& s, const Dims& d, const Dims& lo) {
    PoolGeo g;
    g.planes = planes;
    set_spatial("pool", g, in, out, k, s, d, lo);
    if (g.planes < 0)
        throw py::value_error("pool geometry: planes " + std::to_string(g.planes) +
                              " must be >= 0");
    checked_product("pool", {g.planes, g.in[0], g.in[1], g.in[2]});
    checked_product("pool", {g.planes, g.out[0], g.out[1], g.out[2]});
    return g;
}

py::tuple dims_tuple(const long* v) { return py::make_tuple(v[0], v[1], v[2]); }

}  // namespace

void register_geometry(py::module_& m) {
    py::class_<ConvGeo>(m, "ConvGeometry",
                        "A convolution in the forward orientation, x (batch, in_channels, "
                        "*in_size) -> y (batch, out_channels, *out_size) with the weight "
                        "(out_channels, in_channels/groups, *kernel); spatial fields have 3 "
                        "entries (rank 1 and 2 lifted with leading ones: extents 1, padding "
                        "0). Checked when made (ValueError), read-only.")
        .def(py::init(&make_conv_geo), py::kw_only(), py::arg("batch"), py::arg("in_channels"),
             py::arg("out_channels"), py::arg("groups"), py::arg("in_size"), py::arg("out_size"),
             py::arg("kernel"), py::arg("stride"), py::arg("dilation"), py::arg("pad_before"))
        .def_readonly("batch", &ConvGeo::N)
        .def_readonly("in_channels", &ConvGeo::C)
        .def_readonly("out_channels", &ConvGeo::O)
        .def_readonly("groups", &ConvGeo::G)
        .def_property_readonly("in_size", [](const ConvGeo& g) { return dims_tuple(g.in); })
        .def_property_readonly("out_size", [](const ConvGeo& g) { return dims_tuple(g.out); })
        .def_property_readonly("kernel", [](const ConvGeo& g) { return dims_tuple(g.k); })
        .def_property_readonly("stride", [](const ConvGeo& g) { return dims_tuple(g.s); })
        .def_property_readonly("dilation", [](const ConvGeo& g) { return dims_tuple(g.d); })
        .def_property_readonly("pad_before", [](const ConvGeo& g) { return dims_tuple(g.lo); })
        .def("__repr__", [](const ConvGeo& g) {
            return "ConvGeometry(batch=" + std::to_string(g.N) + ", in_channels=" +
                   std::to_string(g.C) + ", out_channels=" + std::to_string(g.O) +
                   ", groups=" + std::to_string(g.G) + ", in_size=" + dims_str(g.in) +
                   ", out_size=" + dims_str(g.out) + ", kernel=" + dims_str(g.k) +
                   ", stride=" + dims_str(g.s) + ", dilation=" + dims_str(g.d) +
                   ", pad_before=" + dims_str(g.lo) + ")";
        });
    py::class_<PoolGeo>(m, "PoolGeometry",
                        "Pooling over `planes` = N*C independent planes, spatial fields as "
                        "in ConvGeometry. Checked when made (ValueError), read-only.")
        .def(py::init(&make_pool_geo), py::kw_only(), py::arg("planes"), py::arg("in_size"),
             py::arg("out_size"), py::arg("kernel"), py::arg("stride"), py::arg("dilation"),
             py::arg("pad_before"))
        .def_readonly("planes", &PoolGeo::planes)
        .def_property_readonly("in_size", [](const PoolGeo& g) { return dims_tuple(g.in); })
        .def_property_readonly("out_size", [](const PoolGeo& g) { return dims_tuple(g.out); })
        .def_property_readonly("kernel", [](const PoolGeo& g) { return dims_tuple(g.k); })
        .def_property_readonly("stride", [](const PoolGeo& g) { return dims_tuple(g.s); })
        .def_property_readonly("dilation", [](const PoolGeo& g) { return dims_tuple(g.d); })
        .def_property_readonly("pad_before", [](const PoolGeo& g) { return dims_tuple(g.lo); })
        .def("__repr__", [](const PoolGeo& g) {
            return "PoolGeometry(planes=" + std::to_string(g.planes) + ", in_size=" +
                   dims_str(g.in) + ", out_size=" + dims_str(g.out) + ", kernel=" +
                   dims_str(g.k) + ", stride=" + dims_str(g.s) + ", dilation=" +
                   dims_str(g.d) + ", pad_before=" + dims_str(g.lo) + ")";
        });
}

}  // namespace cnnfast
