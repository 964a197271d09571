"""Helpers for the CLI tests: a user error's one-line exit, and the PNGs the
generative commands write."""

from __future__ import annotations

import struct
import zlib

import numpy as np

from cnnfast.cli import main


def cli_fails(capsys, argv, *needles):
    """Run ``cnnfast argv``: status 2, one line on stderr, prefixed by the command
    and holding every needle; returns that line."""
    capsys.readouterr()
    assert main(argv) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "Traceback" not in err, err
    assert err.startswith(f"cnnfast {argv[0]}: "), err
    for needle in needles:
        assert needle in err, err
    return err


def read_png(path):
    """An 8-bit greyscale PNG without filters (what cnnfast sample and the generative
    pictures write), decoded here; matplotlib's reader agrees where it is installed."""
    with open(path, "rb") as f:
        data = f.read()
    assert data[:8] == b"\x89PNG\r\n\x1a\n"
    w, h, depth, colour = struct.unpack(">IIBB", data[16:26])
    assert (depth, colour) == (8, 0)
    idat = data[data.index(b"IDAT") + 4:data.index(b"IEND") - 8]
    rows = np.frombuffer(zlib.decompress(idat), np.uint8).reshape(h, w + 1)
    assert (rows[:, 0] == 0).all()
    try:
        from matplotlib.image import imread
    except ImportError:
        return rows[:, 1:]
    np.testing.assert_array_equal(np.round(imread(path) * 255), rows[:, 1:])
    return rows[:, 1:]
