"""Data-parallel training speed of the ``cnn`` model: images/s on 1 and 2 ranks and
the share of a step spent communicating.

Run without ``mpiexec``: the script launches itself as ``mpiexec -n R`` for each
``R`` in ``--ranks`` (one thread per rank, ``CNNFAST_NUM_THREADS=1``) and prints a
table and one JSON line per run::

    python benchmarks/distributed_speed.py --ranks 1 2 --steps 30 --batch-size 64

Each rank trains on its slice of every global batch of ``--batch-size`` images
(real Fashion-MNIST when found, else random pixels) with ``DistributedTrainer``'s
step. Every step is timed in three parts, on every rank, and the slowest rank's
wall time counts:

* compute: forward, loss, backward, flattening and the optimizer update;
* wait: a barrier before the allreduce (load imbalance and jitter between ranks;
  the real training loop has no such barrier -- the time then shows up inside the
  allreduce instead);
* allreduce: the one allreduce of the flat gradient buffer (~0.93 MiB in float32).

A separate loop times the bare allreduce of a buffer of the same size
(``--allreduce-reps``), which gives this machine's shared-memory cost per call.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import statistics
import subprocess
import sys
import time

import numpy as np


def _data(n, data, seed):
    from cnnfast.nn.data import load_fashion_mnist

    try:
        x, y = load_fashion_mnist("train", data, limit=n)
        if len(x) == n:
            return x, y, "fashion-mnist"
    except FileNotFoundError:
        pass
    rng = np.random.default_rng(seed)
    return (rng.integers(0, 256, (n, 1, 28, 28), dtype=np.uint8),
            rng.integers(0, 10, n).astype(np.int64), "random")


class _TimedComm:
    """Wraps a communicator: a barrier (timed as wait) before each allreduce
    (timed as transfer)."""

    def __init__(self, comm):
        self.inner = comm
        self.wait = []
        self.transfer = []

    def __getattr__(self, name):
        return getattr(self.inner, name)

    def allreduce_sum(self, buf):
        t0 = time.perf_counter()
        self.inner.barrier()
        t1 = time.perf_counter()
        self.inner.allreduce_sum(buf)
        t2 = time.perf_counter()
        self.wait.append(t1 - t0)
        self.transfer.append(t2 - t1)
        return buf


def worker(args):
    from cnnfast import distributed as D
    from cnnfast import nn
    from cnnfast.nn.data import to_float
    from cnnfast.nn.training import cnn_model

    comm = D.get_communicator("auto")
    D.install_excepthook(comm)
    timed = _TimedComm(comm)
    model = cnn_model(seed=0, backend=args.backend)
    trainer = D.DistributedTrainer(model, nn.Adam(1e-3), batch_size=args.batch_size,
                                   comm=timed)
    trainer.sync_from_root()
    total = args.batch_size * (args.steps + args.warmup)
    images, labels, source = _data(total, args.data, 0)

    step_times = []
    for s in range(args.warmup + args.steps):
        sl = slice(s * args.batch_size, (s + 1) * args.batch_size)
        x, y = to_float(images[sl], model.dtype), labels[sl]
        t0 = time.perf_counter()
        trainer.train_step(x, y)
        step_times.append(time.perf_counter() - t0)
    keep = slice(args.warmup, None)
    step = np.array(step_times[keep])
    wait = np.array(timed.wait[keep])
    transfer = np.array(timed.transfer[keep])
    compute = step - wait - transfer

    # The bare allreduce of a buffer of the gradient's size.
    _, n_params = D.grad_layout(model)
    buf = np.ones(n_params + D.DistributedStep.EXTRA, model.dtype)
    comm.barrier()
    bare = []
    for _ in range(args.allreduce_reps):
        t0 = time.perf_counter()
        comm.allreduce_sum(buf)
        bare.append(time.perf_counter() - t0)

    local = np.stack([step, compute, wait, transfer])
    gathered = np.zeros((comm.size,) + local.shape)
    gathered[comm.rank] = local
    comm.allreduce_sum(gathered)  # every rank's timings, on every rank
    bare_med = np.array([statistics.median(bare)])
    comm.allreduce_sum(bare_med)
    if comm.rank != 0:
        return 0
    slowest = gathered[:, 0].max(axis=0)  # the step ends when the slowest rank ends
    med = lambda a: float(np.median(a))  # noqa: E731
    result = {
        "ranks": comm.size, "threads_per_rank": _threads(), "backend": args.backend,
        "global_batch": args.batch_size, "steps": args.steps, "data": source,
        "params": int(n_params), "grad_bytes": int(n_params * model.dtype.itemsize),
        "step_s_median": med(slowest),
        "images_per_s": args.batch_size / med(slowest),
        "compute_s_median": med(gathered[:, 1].max(axis=0)),
        "wait_s_median": med(gathered[:, 2].max(axis=0)),
        "allreduce_s_median": med(gathered[:, 3].max(axis=0)),
        "bare_allreduce_s_median": float(bare_med[0] / comm.size),
    }
    result["comm_share"] = (result["wait_s_median"] + result["allreduce_s_median"]) \
        / result["step_s_median"]
    result["allreduce_share"] = result["allreduce_s_median"] / result["step_s_median"]
    print("RESULT " + json.dumps(result), flush=True)
    return 0


def _threads():
    from cnnfast.threads import get_num_threads

    return get_num_threads()


def _mpiexec():
    local = os.path.join(os.path.dirname(sys.executable), "mpiexec")
    return local if os.access(local, os.X_OK) else shutil.which("mpiexec")


def launcher(args):
    mpiexec = _mpiexec()
    if mpiexec is None:
        sys.exit("no mpiexec: pip install mpi4py mpich")
    env = dict(os.environ, CNNFAST_NUM_THREADS=str(args.threads))
    results = []
    passthrough = ["--steps", str(args.steps), "--warmup", str(args.warmup),
                   "--batch-size", str(args.batch_size), "--backend", args.backend,
                   "--allreduce-reps", str(args.allreduce_reps)]
    if args.data:
        passthrough += ["--data", args.data]
    for rounds in range(args.rounds):
        for n in args.ranks:
            cmd = [mpiexec, "-n", str(n), sys.executable, os.path.abspath(__file__),
                   "--worker", *passthrough]
            out = subprocess.run(cmd, env=env, capture_output=True, text=True,
                                 timeout=600)
            if out.returncode != 0:
                sys.exit(f"{' '.join(cmd)} failed ({out.returncode}):\n"
                         f"{out.stdout}{out.stderr}")
            line = next(l for l in out.stdout.splitlines() if l.startswith("RESULT "))
            results.append(json.loads(line[len("RESULT "):]))
            print(line, flush=True)
    print()
    print(f"{'ranks':>5} {'img/s':>8} {'step ms':>8} {'compute':>8} {'wait':>7} "
          f"{'allred':>7} {'bare':>7} {'comm %':>7}")
    for n in args.ranks:
        rs = [r for r in results if r["ranks"] == n]
        pick = sorted(rs, key=lambda r: r["images_per_s"])[len(rs) // 2]  # median round
        print(f"{n:>5} {pick['images_per_s']:>8.0f} {1e3 * pick['step_s_median']:>8.1f} "
              f"{1e3 * pick['compute_s_median']:>8.1f} {1e3 * pick['wait_s_median']:>7.2f} "
              f"{1e3 * pick['allreduce_s_median']:>7.2f} "
              f"{1e3 * pick['bare_allreduce_s_median']:>7.2f} "
              f"{100 * pick['comm_share']:>6.1f}%")
    return 0


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--ranks", type=int, nargs="+", default=[1, 2])
    p.add_argument("--threads", type=int, default=1, help="threads per rank (1)")
    p.add_argument("--steps", type=int, default=30)
    p.add_argument("--warmup", type=int, default=3)
    p.add_argument("--rounds", type=int, default=1, help="repeat the 1..N sweep")
    p.add_argument("--batch-size", type=int, default=64, help="global batch (64)")
    p.add_argument("--backend", default="cpp")
    p.add_argument("--allreduce-reps", type=int, default=200)
    p.add_argument("--data", default=None)
    p.add_argument("--worker", action="store_true", help=argparse.SUPPRESS)
    args = p.parse_args(argv)
    return worker(args) if args.worker else launcher(args)


if __name__ == "__main__":
    sys.exit(main())
