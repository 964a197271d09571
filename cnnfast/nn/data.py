"""Data: an IDX file reader/writer (the MNIST format, gzipped or not) and the
Fashion-MNIST loader.

IDX layout: two zero bytes, a dtype code, the number of dims, then one big-endian
uint32 per dim, then the values, big-endian, in C order.

Fashion-MNIST (Zalando Research, MIT licence) is looked for in ``data`` (an
argument, ``--data`` on the command line), then ``$CNNFAST_DATA``, then
``/usr/share/datasets/fashion-mnist`` (Debian's ``dataset-fashion-mnist``); in each,
the standard file names ``train-images-idx3-ubyte[.gz]`` and so on, directly or
in a ``fashion-mnist/`` subfolder. Images stay ``uint8`` (47 MB for the training
set) and are scaled to float in [0, 1] one batch at a time (``to_float``).
"""

from __future__ import annotations

import gzip
import io
import math
import os
import struct
import zlib
from typing import Any, Dict, List, Optional, Tuple, Union, cast

import numpy as np

# IDX dtype code -> big-endian numpy dtype
IDX_DTYPES: Dict[int, np.dtype[Any]] = {
    0x08: np.dtype(">u1"), 0x09: np.dtype(">i1"), 0x0B: np.dtype(">i2"),
    0x0C: np.dtype(">i4"), 0x0D: np.dtype(">f4"), 0x0E: np.dtype(">f8")}
_CODES = {np.dtype(v).newbyteorder("="): k for k, v in IDX_DTYPES.items()}

CLASS_NAMES = ("T-shirt/top", "Trouser", "Pullover", "Dress", "Coat", "Sandal", "Shirt",
               "Sneaker", "Bag", "Ankle boot")

DEFAULT_DIRS = ("/usr/share/datasets/fashion-mnist",)
FILES = {"train": ("train-images-idx3-ubyte", "train-labels-idx1-ubyte"),
         "test": ("t10k-images-idx3-ubyte", "t10k-labels-idx1-ubyte")}


#: A file path: a str or an ``os.PathLike`` (``pathlib.Path``).
PathLike = Union[str, "os.PathLike[str]"]


class IDXError(ValueError):
    """A file that is not a valid IDX file (wrong magic, truncated, corrupt)."""


def _open(path: PathLike) -> Tuple[io.BufferedIOBase, bool]:
    """``(file, compressed)``: the file opened for reading, gunzipped when it
    starts with the gzip magic, whatever its name says."""
    with open(path, "rb") as f:
        head = f.read(2)
    if head == b"\x1f\x8b":
        return gzip.open(path, "rb"), True
    return open(path, "rb"), False


def _read(f: io.BufferedIOBase, n: int, path: PathLike, what: str) -> bytes:
    """Up to ``n`` bytes; a gzip error becomes an IDXError naming the file."""
    try:
        return f.read(n)
    except (EOFError, gzip.BadGzipFile, zlib.error, OSError) as exc:
        raise IDXError(f"{path}: corrupt or truncated gzip stream while reading {what} "
                       f"({type(exc).__name__}: {exc})") from exc


def _read_exact(f: io.BufferedIOBase, n: int, path: PathLike, what: str) -> bytes:
    data = _read(f, n, path, what)
    if len(data) != n:
        raise IDXError(f"{path}: truncated: expected {n} bytes of {what}, found "
                       f"{len(data)}")
    return data


def _truncated(path: PathLike, nbytes: int, found: int, what: str) -> IDXError:
    return IDXError(f"{path}: truncated: expected {nbytes} bytes of {what}, found {found}")


_CHUNK = 1 << 24


def _read_data(f: io.BufferedIOBase, nbytes: int, compressed: bool, path: PathLike,
               what: str) -> bytearray:
    """``nbytes`` of data as a writable buffer, never allocating more than the
    file turns out to hold: a plain file's size was checked against the header
    before this; a gzip stream's is unknown, so it is read in chunks."""
    if not compressed:
        buf = bytearray(nbytes)
        done = f.readinto(buf)
        if done != nbytes:  # the file shrank since its size was checked
            raise _truncated(path, nbytes, done, what)
        return buf
    buf = bytearray()
    while len(buf) < nbytes:
        chunk = _read(f, min(_CHUNK, nbytes - len(buf)), path, what)
        if not chunk:
            raise _truncated(path, nbytes, len(buf), what)
        buf += chunk
    return buf


def read_idx(path: PathLike, limit: Optional[int] = None) -> np.ndarray:
    """Read an IDX file (gzipped or not) into a native-endian numpy array. With
    ``limit``, only the first ``limit`` entries along axis 0 are read (the rest of
    the file is not checked). The header is checked against the file's size
    before anything is allocated (a corrupt or crafted header is an IDXError).

    Parameters
    ----------
    path : str or os.PathLike
        The file, gzipped or not (told by its first bytes, not its name).
    limit : int, optional
        Read only this many entries along axis 0.

    Returns
    -------
    numpy.ndarray
        The array, native-endian.

    Raises
    ------
    ValueError
        If ``limit`` is negative.
    IDXError
        If the file is not a valid IDX file (a ``ValueError``).
    FileNotFoundError
        If ``path`` does not exist.

    Examples
    --------
    >>> import os, tempfile
    >>> import numpy as np
    >>> from cnnfast.nn.data import read_idx, write_idx
    >>> with tempfile.TemporaryDirectory() as folder:
    ...     path = os.path.join(folder, "a-idx2-ubyte.gz")
    ...     write_idx(path, np.arange(6, dtype=np.uint8).reshape(3, 2))
    ...     read_idx(path, limit=2)
    array([[0, 1],
           [2, 3]], dtype=uint8)
    """
    path = os.fspath(path)
    if limit is not None and limit < 0:
        raise ValueError(f"limit={limit!r} must be >= 0")
    f, compressed = _open(path)
    with f:
        header = _read_exact(f, 4, path, "the header")
        if header[0] != 0 or header[1] != 0:
            raise IDXError(f"{path}: bad magic number {header[:2].hex()} (an IDX file "
                           f"starts with two zero bytes); not an IDX file")
        code, ndim = header[2], header[3]
        if code not in IDX_DTYPES:
            raise IDXError(f"{path}: unknown IDX dtype code 0x{code:02x}; expected one "
                           f"of {', '.join(f'0x{c:02x}' for c in IDX_DTYPES)}")
        if ndim == 0:
            raise IDXError(f"{path}: the header declares 0 dims")
        dims = list(struct.unpack(f">{ndim}I", _read_exact(f, 4 * ndim, path,
                                                           "the dimensions")))
        dtype = IDX_DTYPES[code]
        declared = tuple(dims)
        if limit is not None:
            dims[0] = min(dims[0], int(limit))
        count = math.prod(dims)  # Python ints: four uint32 dims overflow int64
        nbytes = count * dtype.itemsize
        what = f"data for shape {tuple(dims)} ({dtype.name})"
        if not compressed:
            available = os.fstat(f.fileno()).st_size - 4 - 4 * ndim
            if nbytes > available:
                raise _truncated(path, nbytes, available, what)
            if limit is None and nbytes < available:
                raise IDXError(f"{path}: {available - nbytes} trailing bytes after the "
                               f"{count} values the header declares for shape "
                               f"{declared}; wrong or corrupt file")
        # Straight into the array's memory: no second copy of a 47 MB file, and the
        # result is writable.
        arr = np.frombuffer(_read_data(f, nbytes, compressed, path, what), dtype)
        if limit is None and compressed and _read(f, 1, path, "the end of the stream"):
            raise IDXError(f"{path}: trailing bytes after the {count} values the header "
                           f"declares for shape {declared}; wrong or corrupt file")
    return arr.reshape(dims).astype(dtype.newbyteorder("="), copy=False)


def write_idx(path: PathLike, array: Any, compress: Optional[bool] = None) -> None:
    """Write ``array`` as IDX (gzipped when ``compress`` or the name ends in .gz).

    Parameters
    ----------
    path : str or os.PathLike
        The file to write.
    array : array_like
        uint8, int8, int16, int32, float32 or float64, 1 to 255 dims.
    compress : bool, optional
        Gzip it (``None``: when the name ends in ``.gz``).

    Raises
    ------
    TypeError
        If the dtype has no IDX code.
    ValueError
        If the array has 0 or more than 255 dims.

    Examples
    --------
    See ``read_idx``.
    """
    path = os.fspath(path)
    array = np.asarray(array)
    code = _CODES.get(array.dtype.newbyteorder("="))
    if code is None:
        raise TypeError(f"dtype {array.dtype} has no IDX code")
    if array.ndim == 0 or array.ndim > 255:
        raise ValueError("IDX holds arrays of 1 to 255 dims")
    payload = (bytes([0, 0, code, array.ndim]) + struct.pack(f">{array.ndim}I", *array.shape)
               + array.astype(IDX_DTYPES[code], copy=False).tobytes())
    if compress is None:
        compress = path.endswith(".gz")
    if compress:
        buf = io.BytesIO()
        # mtime=0: the same array gives the same bytes
        with gzip.GzipFile(fileobj=buf, mode="wb", mtime=0) as g:
            g.write(payload)
        payload = buf.getvalue()
    with open(path, "wb") as f:
        f.write(payload)


# ----------------------------------------------------------------------------- Fashion-MNIST


def _candidates(data: Optional[PathLike]) -> List[Tuple[str, str]]:
    dirs = []
    if data:
        dirs.append(("--data", os.fspath(data)))
    env = os.environ.get("CNNFAST_DATA", "").strip()
    if env:
        dirs.append(("$CNNFAST_DATA", env))
    dirs += [("default", d) for d in DEFAULT_DIRS]
    return dirs


def _find_file(directory: str, stem: str) -> Optional[str]:
    for sub in ("", "fashion-mnist"):
        for suffix in (".gz", ""):
            p = os.path.join(directory, sub, stem + suffix)
            if os.path.isfile(p):
                return p
    return None


def find_fashion_mnist(data: Optional[PathLike] = None) -> str:
    """The first directory holding all four Fashion-MNIST files (see module doc).
    An explicit ``data`` that lacks them is an error (no silent fallback).

    Parameters
    ----------
    data : str or os.PathLike, optional
        A folder to look in first (and only, when given).

    Returns
    -------
    str
        The folder.

    Raises
    ------
    FileNotFoundError
        If no folder holds the four files (the message lists where it looked).

    Examples
    --------
    A folder with four (tiny) files in the standard names is found; one without
    them is an error that says what is missing:

    >>> import os, tempfile
    >>> import numpy as np
    >>> from cnnfast.nn.data import FILES, find_fashion_mnist, write_idx
    >>> tmp = tempfile.TemporaryDirectory()
    >>> for images, labels in FILES.values():
    ...     path = os.path.join(tmp.name, images + ".gz")
    ...     write_idx(path, np.zeros((2, 28, 28), np.uint8))
    ...     write_idx(os.path.join(tmp.name, labels + ".gz"), np.zeros(2, np.uint8))
    >>> find_fashion_mnist(tmp.name) == tmp.name
    True
    >>> find_fashion_mnist(os.path.join(tmp.name, "elsewhere"))
    Traceback (most recent call last):
    ...
    FileNotFoundError: Fashion-MNIST not found: .../elsewhere (--data): missing ...
    >>> tmp.cleanup()
    """
    tried = []
    for origin, d in _candidates(data):
        stems = FILES["train"] + FILES["test"]
        missing = [s for s in stems if _find_file(d, s) is None]
        if not missing:
            return d
        tried.append(f"{d} ({origin}): missing {', '.join(missing)}")
        if origin == "--data":
            break
    # One line: the command line prints it as its one-line error.
    raise FileNotFoundError(
        "Fashion-MNIST not found: " + "; ".join(tried)
        + ". Pass --data DIR (or set CNNFAST_DATA) to a folder with the four files "
          "train-images-idx3-ubyte.gz, train-labels-idx1-ubyte.gz, "
          "t10k-images-idx3-ubyte.gz, t10k-labels-idx1-ubyte.gz (Debian: apt install "
          "dataset-fashion-mnist)")


def load_fashion_mnist(split: str = "train", data: Optional[PathLike] = None,
                       limit: Optional[int] = None) -> Tuple[np.ndarray, np.ndarray]:
    """``(images, labels)``: images uint8 (N, 1, 28, 28), labels int64 (N,).

    Parameters
    ----------
    split : str
        ``'train'`` or ``'test'``.
    data : str or os.PathLike, optional
        The folder holding the files (see ``find_fashion_mnist``).
    limit : int, optional
        Read only the first ``limit`` images and labels.

    Returns
    -------
    tuple of numpy.ndarray
        ``(images, labels)``.

    Raises
    ------
    ValueError
        For an unknown ``split``.
    FileNotFoundError
        If the files are not found.
    IDXError
        If a file is invalid or images and labels do not match.


    Examples
    --------
    With tiny stand-in files (the real ones: see the module doc):

    >>> import os, tempfile
    >>> import numpy as np
    >>> from cnnfast.nn.data import FILES, load_fashion_mnist, write_idx
    >>> tmp = tempfile.TemporaryDirectory()
    >>> for images, labels in FILES.values():
    ...     write_idx(os.path.join(tmp.name, images), np.zeros((3, 28, 28), np.uint8))
    ...     write_idx(os.path.join(tmp.name, labels), np.array([9, 0, 3], np.uint8))
    >>> x, y = load_fashion_mnist("test", tmp.name, limit=2)
    >>> x.shape, x.dtype, y
    ((2, 1, 28, 28), dtype('uint8'), array([9, 0]))
    >>> tmp.cleanup()
    """
    if split not in FILES:
        raise ValueError(f"split={split!r}: expected 'train' or 'test'")
    directory = find_fashion_mnist(data)
    # find_fashion_mnist returned a folder holding all four files.
    img_path, lab_path = (cast(str, _find_file(directory, s)) for s in FILES[split])
    images = read_idx(img_path, limit)
    labels = read_idx(lab_path, limit)
    if images.ndim != 3 or images.dtype != np.uint8:
        raise IDXError(f"{img_path}: expected uint8 images (N, rows, cols), got "
                       f"{images.dtype} {images.shape}")
    if labels.ndim != 1:
        raise IDXError(f"{lab_path}: expected labels (N,), got shape {labels.shape}")
    if len(labels) != len(images):
        raise IDXError(f"{lab_path} has {len(labels)} labels but {img_path} has "
                       f"{len(images)} images")
    if labels.dtype.kind not in "iu":
        raise IDXError(f"{lab_path}: expected integer labels, got {labels.dtype}")
    if labels.size and (labels.min() < 0 or labels.max() >= len(CLASS_NAMES)):
        bad = labels.min() if labels.min() < 0 else labels.max()
        raise IDXError(f"{lab_path}: label {bad} out of range [0, 10)")
    return images[:, None], labels.astype(np.int64)


def to_float(batch: Any, dtype: Any = np.float32, xp: Any = np) -> Any:
    """uint8 pixels -> ``dtype`` in [0, 1], as an array of module ``xp`` (the
    uint8 batch travels to the GPU, a quarter of the float bytes).

    Parameters
    ----------
    batch : array_like
        uint8 pixels.
    dtype : numpy dtype
        The result's dtype.
    xp : module
        ``numpy`` or ``cupy``.

    Returns
    -------
    array
        ``batch / 255`` as ``dtype``.

    Examples
    --------
    >>> import numpy as np
    >>> from cnnfast.nn.data import to_float
    >>> to_float(np.array([0, 255], np.uint8))
    array([0., 1.], dtype=float32)
    """
    dt = np.dtype(dtype)
    return xp.asarray(batch).astype(dt) / dt.type(255)
