"""The CPU backends' denormal policy: ``set_flush_denormal`` / ``get_flush_denormal``."""

from __future__ import annotations

import numpy as np

_flush = False


def set_flush_denormal(flush: bool) -> None:
    """Flush denormal (subnormal) floats to zero in the kernels (``True``), or keep
    them (``False``, the default).

    The default is IEEE arithmetic, as numpy, torch's default and the numpy reference
    use, so that every backend agrees with the reference on tiny values too. Turn it on
    when a backward pass slows down on denormals (gradients that decay towards zero:
    x86 cores take 10-100x longer per denormal operation): the kernels then treat
    denormal inputs as zero and produce zero instead of a denormal result.

    Honoured by ``cpp`` only: its kernels set the mode (x86 FTZ + DAZ, AArch64 FZ) in
    every worker thread for the duration of each call, and restore the threads' state
    after. ``numpy`` and ``numba`` cannot set the floating-point mode of the threads they
    compute on, and ``cuda-emu`` (like ``cupy``, whose kernels are compiled without
    ``-ftz``) runs the CUDA source as a GPU does: these keep denormals whatever this
    setting says. Process-wide, like ``torch.set_flush_denormal``.

    Parameters
    ----------
    flush : bool
        ``True``: flush denormals to zero; ``False``: keep them.

    Raises
    ------
    TypeError
        ``flush`` is not a bool.

    Examples
    --------
    >>> import cnnfast
    >>> before = cnnfast.get_flush_denormal()
    >>> cnnfast.set_flush_denormal(True)
    >>> cnnfast.get_flush_denormal()
    True
    >>> cnnfast.set_flush_denormal(before)
    """
    global _flush
    if not isinstance(flush, (bool, np.bool_)):
        raise TypeError(f"set_flush_denormal(flush={flush!r}): flush must be a bool")
    _flush = bool(flush)
    try:
        # the compiled extension: no stub for the type checker
        from .backends.cpp import _cpp  # type: ignore[attr-defined]
    except ImportError:  # not built: nothing else honours the setting
        return
    if hasattr(_cpp, "set_flush_denormal"):
        _cpp.set_flush_denormal(_flush)


def get_flush_denormal() -> bool:
    """The denormal policy set by ``set_flush_denormal`` (default ``False``: keep them).

    Examples
    --------
    >>> import cnnfast
    >>> type(cnnfast.get_flush_denormal())
    <class 'bool'>
    """
    return _flush
