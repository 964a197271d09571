"""Environment variables read on every call, read fast.

The dispatcher reads ``CNNFAST_BACKEND`` and ``CNNFAST_NUM_THREADS`` on every call, so
that a change made while the process runs (``os.environ[...] = ...``, pytest's
``monkeypatch.setenv``) applies to the next call. ``os.environ.get`` costs about 1 us a
read (it encodes the name and decodes the value every time): two reads were a tenth
of the Python of a small call. ``getenv`` reads the same mapping through its encoded
store, the name encoded once (0.05 us when unset), and falls back to ``os.environ``
where that store is not there (another Python implementation).
"""

from __future__ import annotations

import os
from typing import Dict

_STORE = getattr(os.environ, "_data", None)  # CPython's os._Environ: the encoded dict
_encoded: Dict[str, object] = {}


def getenv(name: str) -> str:
    """``os.environ.get(name, "")``, faster."""
    store = _STORE
    if store is None or store is not getattr(os.environ, "_data", None):
        return os.environ.get(name, "")
    key = _encoded.get(name)
    if key is None:
        key = _encoded[name] = os.environ.encodekey(name)  # type: ignore[attr-defined]
    raw = store.get(key)
    return "" if raw is None else os.environ.decodevalue(raw)  # type: ignore[attr-defined]
