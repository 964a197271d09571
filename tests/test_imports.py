"""The package has no import cycles, read from the source.

Every module under ``cnnfast/`` is parsed with ``ast``; every import counts, at any
level (module top, inside functions, under ``if TYPE_CHECKING``), relative imports
resolved. A lazy import inside a function is still a dependency: it only hides the
cycle from the interpreter, not from the reader. Checked twice: between modules, and
between subpackages (``cnnfast.nn`` as one node), where two modules that do not
import each other can still tie their packages together.

Not seen: modules loaded by name at run time (``importlib.import_module`` in
``cnnfast.cli`` and ``cnnfast.registry``); those are plugin lookups, one way only.
"""

from __future__ import annotations

import ast
from pathlib import Path

PACKAGE_DIR = Path(__file__).resolve().parent.parent / "cnnfast"
PACKAGE = PACKAGE_DIR.name

# Compiled extension modules: no Python source to parse (and no imports of ours).
EXTENSION_MODULES = {"cnnfast.backends.cpp._cpp": "built from csrc/ by setup.py"}

# Cycles kept on purpose: {frozenset of the cycle's modules (or subpackages): why}.
# Empty: none is needed.
KNOWN_CYCLES: dict = {}


def _module_name(path: Path) -> str:
    parts = (PACKAGE,) + path.relative_to(PACKAGE_DIR).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def _modules() -> dict:
    """Module name -> (path, is a package); path None for an extension module."""
    found = {_module_name(p): (p, p.name == "__init__.py")
             for p in sorted(PACKAGE_DIR.rglob("*.py"))}
    found.update((name, (None, False)) for name in EXTENSION_MODULES)
    return found


def _owner(name: str, modules) -> str | None:
    """The package module that ``import name`` runs last: the longest prefix of
    ``name`` that is one of ours (None for an outside module)."""
    parts = name.split(".")
    for end in range(len(parts), 0, -1):
        candidate = ".".join(parts[:end])
        if candidate in modules:
            return candidate
    return None


def _imports(module: str, path: Path, is_package: bool, modules) -> set:
    """The package modules that ``module`` imports anywhere in its source."""
    found = set()
    for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"), str(path))):
        if isinstance(node, ast.Import):
            found.update(_owner(alias.name, modules) for alias in node.names)
        elif isinstance(node, ast.ImportFrom):
            if node.level:
                # The package the dots count from: the module itself for an
                # __init__, else its parent; each extra dot goes one package up.
                base = module if is_package else module.rpartition(".")[0]
                for _ in range(node.level - 1):
                    base = base.rpartition(".")[0]
                source = base + ("." + node.module if node.module else "")
            else:
                source = node.module
            for alias in node.names:
                # `from pkg import name`: name is a submodule or a name of pkg.
                found.add(_owner(f"{source}.{alias.name}", modules))
    found.discard(None)
    # Importing a.b.c first runs the packages a and a.b: an edge to each, except the
    # packages that contain `module` (they are already running when it is imported).
    for name in list(found):
        parts = name.split(".")
        found.update(p for p in (".".join(parts[:end]) for end in range(1, len(parts)))
                     if not (module + ".").startswith(p + "."))
    found.discard(module)
    return found


def import_graph() -> dict:
    modules = _modules()
    return {name: _imports(name, path, is_pkg, modules) if path else set()
            for name, (path, is_pkg) in modules.items()}


def find_cycles(graph: dict) -> list:
    """The strongly connected components with more than one module (Tarjan), each
    sorted."""
    index, low, on_stack, stack, cycles = {}, {}, set(), [], []

    def visit(v):
        index[v] = low[v] = len(index)
        stack.append(v)
        on_stack.add(v)
        for w in sorted(graph.get(v, ())):
            if w not in index:
                visit(w)
                low[v] = min(low[v], low[w])
            elif w in on_stack:
                low[v] = min(low[v], index[w])
        if low[v] == index[v]:
            component = []
            while True:
                w = stack.pop()
                on_stack.discard(w)
                component.append(w)
                if w == v:
                    break
            if len(component) > 1:
                cycles.append(sorted(component))

    for v in sorted(graph):
        if v not in index:
            visit(v)
    return cycles


def _one_loop(graph: dict, component: list) -> list:
    """One closed import path through ``component``, for the error message."""
    members = set(component)
    path, seen = [component[0]], {component[0]: 0}
    while True:
        nxt = min(w for w in graph[path[-1]] if w in members)
        if nxt in seen:
            return path[seen[nxt]:] + [nxt]
        seen[nxt] = len(path)
        path.append(nxt)


def test_the_graph_sees_every_kind_of_import():
    # Guards the finder itself: a graph that missed relative, lazy or aliased
    # imports would find no cycle anywhere.
    graph = import_graph()
    assert "cnnfast.params" in graph["cnnfast.api"]  # from . import params as P
    assert "cnnfast.registry" in graph["cnnfast.api"]  # from .registry import select
    assert "cnnfast.api" in graph["cnnfast.nn.layers.conv"]  # from ... import api
    assert "cnnfast.threads" in graph["cnnfast.backends.cpp.backend"]  # from .. import
    assert "cnnfast.nn.training" in graph["cnnfast.distributed.trainer"]  # from ..nn.training
    assert "cnnfast.nn" in graph["cnnfast.distributed.trainer"]  # the package runs first
    assert "cnnfast" not in graph["cnnfast.api"]  # its own package: already running
    assert "cnnfast.augment" in graph["cnnfast.nn.training"]  # a lazy import counts
    assert find_cycles({"a": {"b"}, "b": {"c"}, "c": {"a"}, "d": {"a"}}) == [["a", "b", "c"]]


def test_the_extension_modules_are_built_by_setup_py():
    setup = (PACKAGE_DIR.parent / "setup.py").read_text(encoding="utf-8")
    for name in EXTENSION_MODULES:
        assert f'"{name}"' in setup, f"{name} is no longer built by setup.py"


def test_no_import_cycles():
    graph = import_graph()
    unexpected = [c for c in find_cycles(graph) if frozenset(c) not in KNOWN_CYCLES]
    loops = [" -> ".join(_one_loop(graph, c)) for c in unexpected]
    assert not loops, "import cycles in the package:\n  " + "\n  ".join(loops)


def _unit(module: str) -> str:
    """The layer a module belongs to: its subpackage of cnnfast (cnnfast.nn.model ->
    cnnfast.nn), or the module itself when it sits at the top."""
    return ".".join(module.split(".")[:2])


def package_graph(graph: dict) -> dict:
    """The module graph with each subpackage as one node: two modules that do not
    import each other can still tie their packages in a knot (augment -> nn.base,
    nn.training -> augment)."""
    units = {}
    for module, targets in graph.items():
        units.setdefault(_unit(module), set()).update(_unit(t) for t in targets)
    for unit, targets in units.items():
        targets.discard(unit)
    return units


def test_no_import_cycles_between_subpackages():
    graph = package_graph(import_graph())
    unexpected = [c for c in find_cycles(graph) if frozenset(c) not in KNOWN_CYCLES]
    loops = [" -> ".join(_one_loop(graph, c)) for c in unexpected]
    assert not loops, "import cycles between subpackages:\n  " + "\n  ".join(loops)


# Who may import a backend's folder from outside it, and why. Everything else reaches a
# backend through the registry, by name, so that deleting a folder deletes the backend.
BACKEND_IMPORTERS = {
    # The cpp extension honours the denormal policy and reports its SIMD path; each
    # import is guarded by `except ImportError` (no extension: nothing to tell it).
    ("cnnfast.fpmode", "cnnfast.backends.cpp"),
    ("cnnfast.cli.info", "cnnfast.backends.cpp"),
    ("cnnfast.bench.results", "cnnfast.backends.cpp"),
}


def _backend_of(module: str):
    parts = module.split(".")
    return ".".join(parts[:3]) if parts[:2] == ["cnnfast", "backends"] and len(parts) > 2 \
        else None


def test_backends_are_reached_only_through_the_registry():
    graph = import_graph()
    strays = []
    for module, targets in graph.items():
        for target in targets:
            owner = _backend_of(target)
            if owner is None or _backend_of(module) == owner:
                continue
            if (module, owner) not in BACKEND_IMPORTERS:
                strays.append(f"{module} imports {target}")
    assert not strays, ("a backend is imported from outside its folder (go through "
                        "cnnfast.registry, or list the exception here with the reason):\n  "
                        + "\n  ".join(sorted(strays)))


def test_the_backend_rule_sees_a_stray_import():
    assert _backend_of("cnnfast.backends.cuda.conv_launch") == "cnnfast.backends.cuda"
    assert _backend_of("cnnfast.backends") is None
    assert _backend_of("cnnfast.api") is None
