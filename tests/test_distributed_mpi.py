"""Data-parallel training under a real ``mpiexec -n 2`` (subprocesses with a time
limit): the MPI communicator passes the interface checks, a step on 2 ranks with
half batches equals a step on 1 process with the full batch, runs repeat bit for
bit, and a failed or killed rank ends the whole job quickly with a clear error.

Skipped when mpi4py or mpiexec is missing (``pip install mpi4py mpich``)."""

from __future__ import annotations

import json
import os
import re
import shutil
import signal
import subprocess
import sys
import time

import numpy as np
import pytest

pytest.importorskip("mpi4py", reason="mpi4py is not installed (pip install mpi4py mpich)",
                    exc_type=ImportError)

HERE = os.path.dirname(os.path.abspath(__file__))
SCRIPTS = os.path.join(HERE, "mpi_scripts")
sys.path.insert(0, SCRIPTS)

from common import make_optimizer, params, tiny_data, tiny_model  # noqa: E402

from cnnfast.nn import training as T  # noqa: E402


def _find_mpiexec():
    # $CNNFAST_MPIEXEC first; then the launcher installed next to this Python (the
    # pip ``mpich`` package), which matches the MPI library mpi4py loads; then PATH.
    chosen = os.environ.get("CNNFAST_MPIEXEC", "").strip()
    if chosen:
        return shutil.which(chosen)
    local = os.path.join(os.path.dirname(sys.executable), "mpiexec")
    if os.access(local, os.X_OK):
        return local
    return shutil.which("mpiexec") or shutil.which("mpirun")


MPIEXEC = _find_mpiexec()
pytestmark = pytest.mark.skipif(MPIEXEC is None, reason="no mpiexec on PATH "
                                "(pip install mpich, or apt install mpich)")


def _open_mpi():
    version = subprocess.run([MPIEXEC, "--version"], capture_output=True, text=True,
                             timeout=30).stdout
    return "Open MPI" in version or "OpenRTE" in version


OPEN_MPI = MPIEXEC is not None and _open_mpi()


def _launcher_args(n):
    args = [MPIEXEC, "-n", str(n)]
    if OPEN_MPI:
        args += ["--oversubscribe"]
        if os.geteuid() == 0:  # CI runs as root; Open MPI refuses it unless told
            args += ["--allow-run-as-root"]
    return args


def mpirun(n, script, *args, timeout=60, env=None):
    """Run ``script`` on ``n`` ranks; returns (returncode, output, seconds). The job
    runs in its own process group, killed whole if it outlives ``timeout``."""
    full_env = dict(os.environ, CNNFAST_NUM_THREADS="1", PYTHONUNBUFFERED="1")
    if OPEN_MPI:
        # mpi4py's wheels carry both ABIs; with MPICH also installed (pip ``mpich``)
        # it must be told to load Open MPI's library under Open MPI's launcher.
        full_env.setdefault("MPI4PY_MPIABI", "openmpi")
    full_env.update(env or {})
    cmd = _launcher_args(n) + [sys.executable, os.path.join(SCRIPTS, script), *args]
    t0 = time.monotonic()
    proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                            text=True, env=full_env, start_new_session=True)
    try:
        out, _ = proc.communicate(timeout=timeout)
    except subprocess.TimeoutExpired:
        os.killpg(proc.pid, signal.SIGKILL)
        out, _ = proc.communicate()
        pytest.fail(f"mpiexec -n {n} {script} hung past {timeout} s:\n{out}")
    return proc.returncode, out, time.monotonic() - t0


def _load(path):
    with np.load(path) as z:
        return {k: z[k] for k in z.files}


def _train(tmp_path, n, *args, name="run"):
    out = tmp_path / name
    out.mkdir()
    rc, log, _ = mpirun(n, "train_check.py", "--out", str(out), *args)
    assert rc == 0, log
    return [_load(out / f"rank{r}.npz") for r in range(n)]


def _reference(kind="conv", opt="adam", n=21, batch_size=8, epochs=2, seed=0):
    """The single-process Trainer on the full batches."""
    model = tiny_model(kind, seed=seed)
    trainer = T.Trainer(model, make_optimizer(opt), batch_size=batch_size, seed=seed)
    images, labels = tiny_data(n)
    for _ in range(epochs):
        trainer.train_epoch(images, labels, progress=False)
    return params(model)


def _assert_ranks_identical(ranks):
    for other in ranks[1:]:
        assert sorted(other) == sorted(ranks[0])
        for k in ranks[0]:
            np.testing.assert_array_equal(other[k], ranks[0][k], err_msg=k)


def test_mpi_comm_passes_the_interface_checks():
    for n in (2, 3):
        rc, out, _ = mpirun(n, "comm_checks.py", "mpi")
        assert rc == 0, out
        assert sorted(re.findall(r"OK rank (\d)/(\d) \(mpi\)", out)) == \
            [(str(r), str(n)) for r in range(n)], out


def test_an_uncaught_exception_outside_the_guard_aborts_the_job():
    rc, out, seconds = mpirun(2, "comm_checks.py", "mpi", "1")
    assert rc != 0, out
    assert "rank 1/2 failed: RuntimeError: injected uncaught error on rank 1" in out, out
    assert "OK rank" not in out
    assert seconds < 30


@pytest.mark.parametrize("ranks_n,kind,opt,n,batch", [
    (2, "conv", "adam", 21, 8),   # last global batch 5: slices 3 + 2
    (2, "dense", "sgd", 17, 8),   # last global batch 1: rank 1's slice is empty
    (3, "conv", "sgd", 21, 8),    # slices 3 + 3 + 2, then 2 + 2 + 1
])
def test_n_ranks_with_split_batches_equal_one_process(tmp_path, ranks_n, kind, opt, n,
                                                      batch):
    ranks = _train(tmp_path, ranks_n, "--model", kind, "--optimizer", opt, "--n", str(n),
                   "--batch-size", str(batch))
    _assert_ranks_identical(ranks)
    expected = _reference(kind, opt, n, batch)
    for k, v in expected.items():
        np.testing.assert_allclose(ranks[0][k], v, rtol=1e-10, atol=1e-12, err_msg=k)
    steps = 2 * -(-n // batch)
    assert list(ranks[0]["__counters__"]) == [2, 0, steps, steps]  # one allreduce a step
    assert not np.allclose(ranks[0]["param/dense.bias"], 0)  # it did train


def test_rank_zero_weights_are_broadcast(tmp_path):
    # Each rank initialises from seed + rank; the result must be rank 0's run.
    ranks = _train(tmp_path, 2, "--rank-seeds")
    _assert_ranks_identical(ranks)
    for k, v in _reference().items():
        np.testing.assert_allclose(ranks[0][k], v, rtol=1e-10, atol=1e-12, err_msg=k)


def test_two_runs_are_identical(tmp_path):
    a = _train(tmp_path, 2, name="a")
    b = _train(tmp_path, 2, name="b")
    _assert_ranks_identical([a[0], b[0], a[1], b[1]])
    history = json.loads(str(a[0]["__history__"]))
    assert [h["epoch"] for h in history] == [1, 2]


def test_batchnorm_statistics_agree_after_evaluation(tmp_path):
    ranks = _train(tmp_path, 2, "--model", "bn")
    _assert_ranks_identical(ranks)
    assert any(k.startswith("buffer/") for k in ranks[0])


def test_a_stop_request_on_one_rank_stops_every_rank_after_the_same_step(tmp_path):
    ranks = _train(tmp_path, 2, "--fault", "stop", "--fault-step", "1", "--epochs", "3")
    _assert_ranks_identical(ranks)
    # requested during step 1 (0-based): both ranks stop after it, at epoch 0 batch 2
    assert list(ranks[0]["__counters__"]) == [0, 2, 2, 2]


def test_an_exception_on_one_rank_aborts_the_job_with_the_rank_and_message(tmp_path):
    rc, out, seconds = mpirun(2, "train_check.py", "--out", str(tmp_path),
                              "--fault", "raise", "--epochs", "50")
    assert rc != 0, out
    assert "rank 1/2 failed: ValueError: injected failure at step 2" in out, out
    assert "Traceback" in out
    assert seconds < 30
    assert not list(tmp_path.iterdir())  # nobody finished


def test_a_killed_rank_ends_the_job_within_bounded_time(tmp_path):
    # Rank 1 dies at step 5; rank 0 then sits in an allreduce that can never
    # complete. The job ends only because the launcher notices the dead rank and
    # kills the survivor (MPICH's Hydra and Open MPI's mpirun both do).
    rc, out, seconds = mpirun(2, "train_check.py", "--out", str(tmp_path),
                              "--fault", "kill", "--fault-step", "5", "--epochs", "400",
                              timeout=60)
    assert rc != 0, out
    assert re.search(r"signal 9|killed|BAD TERMINATION", out, re.IGNORECASE), out
    assert seconds < 30, (seconds, out)
    assert not list(tmp_path.iterdir())


def test_a_rank_that_returns_early_aborts_the_job_after_the_exit_timeout(tmp_path):
    rc, out, seconds = mpirun(2, "train_check.py", "--out", str(tmp_path),
                              "--fault", "return", "--epochs", "400",
                              env={"CNNFAST_EXIT_TIMEOUT": "2"})
    assert rc == 3, out
    assert "rank 1/2 failed: returned status 3 but other ranks did not finish " \
           "within 2 s" in out, out
    assert seconds < 30


# ----------------------------------------------------------------------------- the command


def _train_has_distributed_flag():
    import argparse

    try:
        from cnnfast.cli import train
    except ImportError:
        return False
    parser = argparse.ArgumentParser()
    train.add_arguments(parser)
    return "--distributed" in parser._option_string_actions


SLICE = os.path.join(HERE, "data", "fashion-mnist-slice")
TRAIN = [sys.executable, "-m", "cnnfast", "train"]


@pytest.mark.skipif(not _train_has_distributed_flag(),
                    reason="cnnfast train has no --distributed flag yet")
@pytest.mark.skipif(not os.path.isdir(SLICE), reason="no Fashion-MNIST slice in tests/data")
def test_cnnfast_train_distributed_matches_one_process_and_resumes(tmp_path):
    from cnnfast import nn

    common = ["--data", SLICE, "--limit", "96", "--test-limit", "64", "--batch-size", "32",
              "--backend", "numpy", "--model", "dense", "--no-progress"]
    env = dict(os.environ, CNNFAST_NUM_THREADS="1")
    single = subprocess.run(TRAIN + common + ["--epochs", "2", "--out",
                                              str(tmp_path / "one")],
                            capture_output=True, text=True, timeout=120, env=env)
    assert single.returncode == 0, single.stdout + single.stderr

    def dist(*extra):
        cmd = _launcher_args(2) + TRAIN + common + ["--distributed", *extra]
        proc = subprocess.run(cmd, capture_output=True, text=True, timeout=120,
                              env=dict(env, **({"MPI4PY_MPIABI": "openmpi"}
                                               if OPEN_MPI else {})))
        assert proc.returncode == 0, proc.stdout + proc.stderr
        return proc.stdout

    out = dist("--epochs", "2", "--out", str(tmp_path / "two"))
    assert out.count("done: final test accuracy") == 1  # rank 0 alone prints
    dist("--epochs", "1", "--out", str(tmp_path / "resumed"))
    dist("--epochs", "2", "--resume", "--out", str(tmp_path / "resumed"))

    one = nn.read_arrays(tmp_path / "one" / "checkpoint.npz")
    two = nn.read_arrays(tmp_path / "two" / "checkpoint.npz")
    resumed = nn.read_arrays(tmp_path / "resumed" / "checkpoint.npz")
    params = [k for k in one if k.startswith("param/")]
    assert params
    for k in params:  # float32: the half-batch sums round differently
        np.testing.assert_allclose(two[k], one[k], rtol=1e-4, atol=1e-6, err_msg=k)
    for k in two:  # resuming is bit-exact
        if k != "__meta__":
            np.testing.assert_array_equal(resumed[k], two[k], err_msg=k)
    with open(tmp_path / "two" / "metrics.jsonl") as f:
        assert [json.loads(line)["epoch"] for line in f] == [1, 2]
