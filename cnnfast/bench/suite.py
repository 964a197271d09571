"""The benchmark suite: one declarative TOML file (``suite.toml``) turned into cases.

A case is one layer shape; each of its ``ops`` is timed separately. The work of an
op (floating-point operations for convolutions, bytes moved for poolings) is
computed here once, so every report states the same model:

* convolution (any rank, grouped): ``2 * N * C_out * prod(out) * C_in/groups *
  prod(kernel)`` -- one multiply and one add per weight tap per output element. The
  input gradient and the weight gradient do the same number of multiply-adds, so
  each backward pass counts the same. A transposed convolution is the input gradient
  of a convolution from its output to its input, so the formula runs with the roles
  of input and output swapped.
* pooling: the minimum traffic, bytes read plus bytes written: forward reads ``x``
  and writes ``y`` (plus the int64 indices of max pooling when it returns them);
  backward reads ``grad_y`` (plus the indices for max pooling) and writes ``grad_x``.
"""

from __future__ import annotations

import tomllib
from dataclasses import dataclass, field
from importlib import resources
from pathlib import Path
from typing import TYPE_CHECKING, Any, Iterable, List, Optional, cast

from .. import params as P

if TYPE_CHECKING:
    from ..nn.data import PathLike

CONV_KINDS = ("conv", "conv_transpose")
POOL_KINDS = ("max_pool", "avg_pool")
CONV_OPS = ("forward", "backward_input", "backward_weight")
POOL_OPS = ("forward", "backward")
ALL_OPS = ("forward", "backward_input", "backward_weight", "backward")

_COMMON_KEYS = {"name", "group", "kind", "batch", "x", "ops", "quick", "dtype"}
_KIND_KEYS = {
    "conv": {"weight", "stride", "padding", "dilation", "groups", "bias"},
    "conv_transpose": {"weight", "stride", "padding", "dilation", "groups", "bias",
                       "output_padding"},
    "max_pool": {"kernel", "stride", "padding", "dilation", "ceil_mode", "return_indices"},
    "avg_pool": {"kernel", "stride", "padding", "ceil_mode", "count_include_pad",
                 "divisor_override"},
}


class SuiteError(ValueError):
    """A suite file that does not describe valid cases."""


@dataclass(frozen=True)
class Case:
    """One benchmark shape. ``options`` holds the keyword arguments of the cnnfast
    call (stride, padding, ...) exactly as the public API takes them."""

    name: str
    group: str
    kind: str
    x_shape: tuple
    ops: tuple
    quick: bool
    dtype: str = "float32"
    w_shape: Optional[tuple] = None
    bias: bool = False
    options: dict = field(default_factory=dict)

    @property
    def rank(self) -> int:
        return len(self.x_shape) - 2

    def params(self) -> Any:
        """The normalised ``cnnfast.params`` object (validates the case)."""
        o = self.options
        if self.kind == "conv":
            return P.conv_params(self.x_shape, self.w_shape, o.get("stride", 1),
                                 o.get("padding", 0), o.get("dilation", 1),
                                 o.get("groups", 1))
        if self.kind == "conv_transpose":
            return P.conv_transpose_params(self.x_shape, self.w_shape, o.get("stride", 1),
                                           o.get("padding", 0), o.get("output_padding", 0),
                                           o.get("groups", 1), o.get("dilation", 1))
        return P.pool_params(self.x_shape, o["kernel"], o.get("stride"), o.get("padding", 0),
                             o.get("dilation", 1), o.get("ceil_mode", False),
                             o.get("count_include_pad", True), o.get("divisor_override"))

    @property
    def out_channels(self) -> int:
        if self.kind == "conv":
            return cast(tuple, self.w_shape)[0]  # convolutions have a weight
        if self.kind == "conv_transpose":
            return cast(tuple, self.w_shape)[1] * self.options.get("groups", 1)
        return self.x_shape[1]

    @property
    def y_shape(self) -> tuple:
        return (self.x_shape[0], self.out_channels) + tuple(self.params().out_shape)

    def describe(self) -> str:
        """A short human description: ``x 8x64x56x56, w 64x64x3x3, pad 1``."""
        fmt = lambda s: "x".join(map(str, s))  # noqa: E731
        parts = [f"x {fmt(self.x_shape)}"]
        if self.w_shape is not None:
            parts.append(f"w {fmt(self.w_shape)}")
        for key, value in self.options.items():
            parts.append(f"{key} {value}")
        return ", ".join(parts)

    def flops(self, op: str) -> Optional[int]:
        """Floating-point operations of ``op`` (convolutions only)."""
        if self.kind not in CONV_KINDS:
            return None
        p = self.params()
        groups = p.groups
        n = self.x_shape[0]
        if self.kind == "conv":
            c_in, c_out = self.x_shape[1], cast(tuple, self.w_shape)[0]
            points = P.prod(p.out_shape)
        else:  # the forward of a conv from y to x, run backwards
            c_in, c_out, points = (self.out_channels, self.x_shape[1],
                                   P.prod(self.x_shape[2:]))
        return 2 * n * c_out * points * (c_in // groups) * P.prod(p.kernel)

    def bytes(self, op: str) -> Optional[int]:
        """Bytes read plus written by ``op`` (poolings only)."""
        if self.kind not in POOL_KINDS:
            return None
        item = 8 if self.dtype == "float64" else 4 if self.dtype == "float32" else 2
        x_elems = P.prod(self.x_shape)
        y_elems = P.prod(self.y_shape)
        with_indices = self.kind == "max_pool"
        if op == "forward":
            with_indices = with_indices and self.options.get("return_indices", True)
            return (x_elems + y_elems) * item + (y_elems * 8 if with_indices else 0)
        return (y_elems + x_elems) * item + (y_elems * 8 if with_indices else 0)

    def to_json(self) -> dict:
        return {"name": self.name, "group": self.group, "kind": self.kind,
                "x": list(self.x_shape),
                "weight": list(self.w_shape) if self.w_shape is not None else None,
                "bias": self.bias, "dtype": self.dtype,
                "options": {k: (list(v) if isinstance(v, tuple) else v)
                            for k, v in self.options.items()}}


def default_suite_path() -> Path:
    """The suite shipped inside the package (found by the installed CLI too)."""
    return Path(str(resources.files("cnnfast.bench").joinpath("suite.toml")))


def load_suite(path: Optional[PathLike] = None) -> List[Case]:
    """Read a suite file (default: the packaged ``suite.toml``) and return its cases,
    one per batch size, in file order. Raises ``SuiteError`` naming the case and the
    key for anything it does not understand."""
    path = Path(path) if path is not None else default_suite_path()
    try:
        with open(path, "rb") as fh:
            data = tomllib.load(fh)
    except FileNotFoundError:
        raise SuiteError(f"suite file {str(path)!r} does not exist") from None
    except tomllib.TOMLDecodeError as exc:
        raise SuiteError(f"suite file {str(path)!r} is not valid TOML: {exc}") from None
    entries = data.get("case")
    if not isinstance(entries, list) or not entries:
        raise SuiteError(f"suite file {str(path)!r} has no [[case]] tables")
    unknown_top = set(data) - {"case"}
    if unknown_top:
        raise SuiteError(f"suite file {str(path)!r}: unknown top-level keys "
                         f"{sorted(unknown_top)} (only [[case]] tables are read)")
    cases, seen = [], set()
    for i, entry in enumerate(entries):
        for case in _expand(entry, i, path):
            if case.name in seen:
                raise SuiteError(f"{path}: case name {case.name!r} appears twice")
            seen.add(case.name)
            cases.append(case)
    return cases


def _expand(entry: dict, index: int, path) -> list:
    where = f"{path}: case #{index + 1} ({entry.get('name', '?')!r})"

    def need(key, typ):
        if key not in entry:
            raise SuiteError(f"{where}: missing key {key!r}")
        if not isinstance(entry[key], typ):
            raise SuiteError(f"{where}: {key}={entry[key]!r} must be a {typ.__name__}")
        return entry[key]

    name = need("name", str)
    kind = need("kind", str)
    if kind not in _KIND_KEYS:
        raise SuiteError(f"{where}: kind={kind!r}; expected one of {sorted(_KIND_KEYS)}")
    unknown = set(entry) - _COMMON_KEYS - _KIND_KEYS[kind]
    if unknown:
        raise SuiteError(f"{where}: unknown keys {sorted(unknown)} for kind {kind!r}")
    x = need("x", list)
    if not 2 <= len(x) <= 4 or not all(_pos_int(v) for v in x):
        raise SuiteError(f"{where}: x={x!r} must be [C, *spatial] with 1 to 3 spatial "
                         f"sizes, all positive ints")
    batches = entry.get("batch", 1)
    batches = batches if isinstance(batches, list) else [batches]
    if not batches or not all(_pos_int(b) for b in batches):
        raise SuiteError(f"{where}: batch={entry.get('batch')!r} must be a positive int "
                         f"or a list of them")
    allowed_ops = CONV_OPS if kind in CONV_KINDS else POOL_OPS
    ops = need("ops", list)
    if not ops or any(op not in allowed_ops for op in ops) or len(set(ops)) != len(ops):
        raise SuiteError(f"{where}: ops={ops!r}; expected distinct names from "
                         f"{list(allowed_ops)}")
    quick = entry.get("quick", False)
    if isinstance(quick, bool):
        quick_batches = set(batches) if quick else set()
    elif isinstance(quick, list) and all(b in batches for b in quick):
        quick_batches = set(quick)
    else:
        raise SuiteError(f"{where}: quick={quick!r} must be true, false or a list of "
                         f"batch sizes from batch={batches}")
    dtype = entry.get("dtype", "float32")
    if dtype not in ("float16", "float32", "float64"):
        raise SuiteError(f"{where}: dtype={dtype!r} must be float16, float32 or float64")
    group = entry.get("group", kind)
    options = {k: _tuple(v) for k, v in entry.items() if k in _KIND_KEYS[kind]
               and k not in ("weight", "bias")}
    w_shape = None
    if kind in CONV_KINDS:
        w = need("weight", list)
        if len(w) != len(x) + 1 or not all(_pos_int(v) for v in w):
            raise SuiteError(f"{where}: weight={w!r} must have {len(x) + 1} positive ints")
        w_shape = tuple(w)
    elif "kernel" not in entry:
        raise SuiteError(f"{where}: missing key 'kernel'")
    bias = entry.get("bias", False)
    if not isinstance(bias, bool):
        raise SuiteError(f"{where}: bias={bias!r} must be true or false")
    cases = []
    for b in batches:
        case = Case(name=name if len(batches) == 1 else f"{name}.n{b}", group=group,
                    kind=kind, x_shape=(b,) + tuple(x), ops=tuple(ops),
                    quick=b in quick_batches, dtype=dtype, w_shape=w_shape, bias=bias,
                    options=options)
        try:
            case.params()
        except (ValueError, TypeError) as exc:
            raise SuiteError(f"{where}: {exc}") from None
        cases.append(case)
    return cases


def _pos_int(v) -> bool:
    return isinstance(v, int) and not isinstance(v, bool) and v > 0


def _tuple(v):
    return tuple(_tuple(e) for e in v) if isinstance(v, list) else v


def select_cases(cases: List[Case], *, quick: bool = False,
                 shapes: Optional[Iterable[str]] = None) -> List[Case]:
    """The cases to run: the quick subset when ``quick``; with ``shapes`` (a list of
    fnmatch patterns or substrings), those whose name or group matches one."""
    import fnmatch

    out = []
    for case in cases:
        if quick and not case.quick:
            continue
        if shapes:
            def hit(pat):
                if any(ch in pat for ch in "*?["):
                    return fnmatch.fnmatchcase(case.name, pat) or fnmatch.fnmatchcase(
                        case.group, pat)
                return pat in case.name or pat == case.group
            if not any(hit(p) for p in shapes):
                continue
        out.append(case)
    return out
