"""cnnfast.atomic_file: the one atomic writer behind checkpoints, pictures, bench
results, weight files and the autotune cache."""

from __future__ import annotations

import os

import pytest

from cnnfast.atomic_file import umask, write_atomic


def test_writes_replaces_and_makes_the_folder(tmp_path):
    path = tmp_path / "new" / "f.bin"
    assert write_atomic(path, lambda f: f.write(b"one")) == str(path)
    assert path.read_bytes() == b"one"
    assert path.stat().st_mode & 0o777 == 0o666 & ~umask()  # not mkstemp's 0600
    write_atomic(path, lambda f: f.write(b"two"), mode=0o640, fsync=True)
    assert path.read_bytes() == b"two" and path.stat().st_mode & 0o777 == 0o640
    assert os.listdir(path.parent) == ["f.bin"]


@pytest.mark.parametrize("error", [OSError("disk full"), KeyboardInterrupt()])
def test_a_failed_write_leaves_the_old_file_and_no_temporary(tmp_path, error):
    path = tmp_path / "f.bin"
    path.write_bytes(b"old")

    def fail(f):
        f.write(b"half")
        raise error

    with pytest.raises(type(error)):
        write_atomic(path, fail, prefix=".x-", suffix=".tmp")
    assert path.read_bytes() == b"old" and os.listdir(tmp_path) == ["f.bin"]
