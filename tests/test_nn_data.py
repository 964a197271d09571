"""The IDX reader (good, truncated, corrupt files) and the Fashion-MNIST loader on
the slice shipped in tests/data."""

from __future__ import annotations

import gzip
import os
import struct

import numpy as np
import pytest

from cnnfast.nn import data as D

SLICE = os.path.join(os.path.dirname(__file__), "data", "fashion-mnist-slice")


@pytest.mark.parametrize("dtype", ["uint8", "int8", "int16", "int32", "float32", "float64"])
@pytest.mark.parametrize("compress", [False, True])
def test_idx_round_trip(tmp_path, dtype, compress):
    a = (np.arange(2 * 3 * 5) - 7).astype(dtype).reshape(2, 3, 5)
    if dtype == "uint8":
        a = np.arange(30, dtype=np.uint8).reshape(2, 3, 5)
    path = tmp_path / ("a.idx.gz" if compress else "a.idx")
    D.write_idx(path, a)
    b = D.read_idx(path)
    assert b.dtype == a.dtype and b.dtype.isnative
    np.testing.assert_array_equal(a, b)
    np.testing.assert_array_equal(D.read_idx(path, limit=1), a[:1])
    assert (path.read_bytes()[:2] == b"\x1f\x8b") == compress


def test_idx_header_layout(tmp_path):
    D.write_idx(tmp_path / "x", np.array([1, 2], ">i2"), compress=False)
    assert (tmp_path / "x").read_bytes() == bytes([0, 0, 0x0B, 1, 0, 0, 0, 2, 0, 1, 0, 2])


def _raw(code=0x08, dims=(2, 3), payload=None):
    n = int(np.prod(dims))
    payload = bytes(i % 256 for i in range(n)) if payload is None else payload
    return bytes([0, 0, code, len(dims)]) + struct.pack(f">{len(dims)}I", *dims) + payload


@pytest.mark.parametrize("content,match", [
    (b"", "truncated.*header"),
    (b"\x00\x00", "truncated.*header"),
    (b"\x01\x02\x08\x01" + b"\x00" * 8, "bad magic"),
    (_raw(code=0x07), "dtype code 0x07"),
    (bytes([0, 0, 8, 0]), "0 dims"),
    (bytes([0, 0, 8, 3, 0, 0, 0, 1]), "truncated.*dimensions"),
    (_raw()[:-1], "truncated.*found 5"),
    (_raw() + b"\x00", "trailing bytes"),
    (_raw(code=0x0D, dims=(2,), payload=b"\x00" * 7), "truncated"),
])
@pytest.mark.parametrize("compress", [False, True])
def test_idx_bad_files(tmp_path, content, match, compress):
    path = tmp_path / "bad"
    path.write_bytes(gzip.compress(content, mtime=0) if compress else content)
    with pytest.raises(D.IDXError, match=match):
        D.read_idx(path)


def test_idx_truncated_and_corrupt_gzip(tmp_path):
    good = gzip.compress(_raw(dims=(50, 40)), mtime=0)
    (tmp_path / "cut.gz").write_bytes(good[: len(good) // 2])
    with pytest.raises(D.IDXError, match="truncated|corrupt"):
        D.read_idx(tmp_path / "cut.gz")
    bad = bytearray(good)
    bad[-6] ^= 0xFF  # the CRC32 trailer
    (tmp_path / "crc.gz").write_bytes(bytes(bad))
    with pytest.raises(D.IDXError, match="corrupt"):
        D.read_idx(tmp_path / "crc.gz")
    assert isinstance(D.IDXError("x"), ValueError)


def test_fashion_slice_loads(monkeypatch):
    monkeypatch.delenv("CNNFAST_DATA", raising=False)
    x, y = D.load_fashion_mnist("train", SLICE)
    assert x.shape == (512, 1, 28, 28) and x.dtype == np.uint8
    assert y.shape == (512,) and y.dtype == np.int64 and set(y.tolist()) == set(range(10))
    xt, yt = D.load_fashion_mnist("test", SLICE, limit=100)
    assert xt.shape == (100, 1, 28, 28) and len(yt) == 100
    assert len(D.CLASS_NAMES) == 10 and D.CLASS_NAMES[9] == "Ankle boot"
    f = D.to_float(x[:4])
    assert f.dtype == np.float32 and 0 <= f.min() and f.max() <= 1 and f.max() > 0.9
    assert D.to_float(x[:1], np.float64)[0, 0, 14, 14] == x[0, 0, 14, 14] / 255


def test_fashion_lookup_order(monkeypatch, tmp_path):
    monkeypatch.setenv("CNNFAST_DATA", SLICE)
    assert D.find_fashion_mnist() == SLICE
    with pytest.raises(FileNotFoundError, match="missing train-images"):
        D.find_fashion_mnist(tmp_path)  # an explicit folder never falls back
    monkeypatch.setenv("CNNFAST_DATA", str(tmp_path))
    monkeypatch.setattr(D, "DEFAULT_DIRS", (str(tmp_path / "nowhere"),))
    with pytest.raises(FileNotFoundError, match="CNNFAST_DATA"):
        D.find_fashion_mnist()
    sub = tmp_path / "fashion-mnist"  # a fashion-mnist/ subfolder is found too
    sub.mkdir()
    for f in os.listdir(SLICE):
        if f.endswith(".gz"):
            (sub / f[:-3]).write_bytes(gzip.decompress(open(os.path.join(SLICE, f),
                                                            "rb").read()))
    x, _ = D.load_fashion_mnist("test")
    assert x.shape == (256, 1, 28, 28)


def test_fashion_label_count_mismatch(tmp_path):
    for f in os.listdir(SLICE):
        if f.endswith(".gz"):
            (tmp_path / f).write_bytes(open(os.path.join(SLICE, f), "rb").read())
    D.write_idx(tmp_path / "t10k-labels-idx1-ubyte.gz", np.zeros(10, np.uint8))
    with pytest.raises(D.IDXError, match="10 labels but"):
        D.load_fashion_mnist("test", tmp_path)


@pytest.mark.parametrize("compress", [False, True])
@pytest.mark.parametrize("dims", [(2 ** 32 - 1,) * 3, (60000, 28, 28), (2 ** 31, 2 ** 31)])
def test_idx_header_is_checked_before_allocating(tmp_path, compress, dims):
    """A corrupt or crafted header that declares more data than the file holds is
    an IDXError naming the file, and nothing of the declared size is allocated
    (four uint32 dims even overflow int64)."""
    import tracemalloc

    path = tmp_path / ("big.gz" if compress else "big")
    content = _raw(code=0x0E, dims=(1,), payload=bytes(100))
    content = content[:3] + bytes([len(dims)]) + struct.pack(f">{len(dims)}I", *dims) \
        + bytes(100)
    path.write_bytes(gzip.compress(content, mtime=0) if compress else content)
    tracemalloc.start()
    try:
        with pytest.raises(D.IDXError, match="truncated") as info:
            D.read_idx(path)
        with pytest.raises(D.IDXError, match="truncated"):
            D.read_idx(path, limit=5)
        peak = tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()
    assert str(path) in str(info.value) and "found 100" in str(info.value)
    assert peak < 2 ** 25


def test_fashion_bad_labels(tmp_path):
    for f in os.listdir(SLICE):
        if f.endswith(".gz"):
            (tmp_path / f).write_bytes(open(os.path.join(SLICE, f), "rb").read())
    D.write_idx(tmp_path / "t10k-labels-idx1-ubyte.gz", np.full(256, -1, np.int8))
    with pytest.raises(D.IDXError, match="label -1 out of range"):
        D.load_fashion_mnist("test", tmp_path)
    D.write_idx(tmp_path / "t10k-labels-idx1-ubyte.gz", np.zeros(256, np.float32))
    with pytest.raises(D.IDXError, match="expected integer labels"):
        D.load_fashion_mnist("test", tmp_path)


@pytest.mark.skipif(not os.path.exists("/usr/share/datasets/fashion-mnist"),
                    reason="Debian dataset-fashion-mnist not installed")
def test_slice_equals_the_full_dataset_head():
    x, y = D.load_fashion_mnist("test", "/usr/share/datasets/fashion-mnist", limit=256)
    xs, ys = D.load_fashion_mnist("test", SLICE)
    np.testing.assert_array_equal(x, xs)
    np.testing.assert_array_equal(y, ys)
