"""Writing a file so that readers see the old content or the new, never half of it
(checkpoints, pictures, results and caches): the content goes to a temporary file in
the same folder, which then replaces the target with ``os.replace``. A failure, or an
interrupt, removes the temporary file and re-raises; the target is untouched."""

from __future__ import annotations

import os
import tempfile
from typing import IO, Callable, Optional


def umask() -> int:
    """The process's umask (read by setting and restoring it)."""
    mask = os.umask(0o22)
    os.umask(mask)
    return mask


def write_atomic(path: str | os.PathLike[str], write: Callable[[IO[bytes]], object], *,
                 prefix: str = ".tmp-", suffix: str = ".tmp", mode: Optional[int] = None,
                 fsync: bool = False) -> str:
    """``write(f)`` into a binary temporary file ``prefix*suffix`` beside ``path``
    (its folder made if missing), then renamed over ``path``; returns ``path``.

    ``mode``: the file's permission bits (default what ``open()`` would give,
    ``0o666 & ~umask``; mkstemp's 0600 is for the temporary name only). ``fsync``:
    flush the data to disk before the rename (files a crash must not lose)."""
    path = os.fspath(path)
    folder = os.path.dirname(os.path.abspath(path))
    os.makedirs(folder, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=prefix, suffix=suffix, dir=folder)
    try:
        os.chmod(tmp, 0o666 & ~umask() if mode is None else mode)
        with os.fdopen(fd, "wb") as f:
            write(f)
            if fsync:
                f.flush()
                os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        try:
            os.unlink(tmp)
        except FileNotFoundError:
            pass
        raise
    return path
