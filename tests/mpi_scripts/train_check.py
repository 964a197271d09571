"""Run under ``mpiexec -n N``: data-parallel training of a tiny model with
``cnnfast.distributed.DistributedTrainer``; each rank writes its final parameters,
metrics and counters to ``OUT/rank<r>.npz`` (the tests compare them with a
single-process ``Trainer``).

Fault modes (``--fault``), acting on rank ``--fault-rank`` at global step
``--fault-step``: ``raise`` (an exception), ``kill`` (SIGKILL itself), ``return``
(leave the training loop early with status 3), ``stop`` (set ``stop_requested``, as
a SIGINT handler does).
"""

from __future__ import annotations

import argparse
import json
import os
import signal
import sys

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

import numpy as np  # noqa: E402

from common import make_optimizer, params, tiny_data, tiny_model  # noqa: E402

from cnnfast import distributed as D  # noqa: E402


def main(argv=None):
    p = argparse.ArgumentParser()
    p.add_argument("--out", required=True)
    p.add_argument("--model", default="conv")
    p.add_argument("--optimizer", default="adam")
    p.add_argument("--n", type=int, default=21)
    p.add_argument("--batch-size", type=int, default=8)
    p.add_argument("--epochs", type=int, default=2)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--rank-seeds", action="store_true",
                   help="initialise each rank's model with seed + rank (the broadcast "
                        "must make them equal)")
    p.add_argument("--fault", choices=("none", "raise", "kill", "return", "stop"),
                   default="none")
    p.add_argument("--fault-rank", type=int, default=1)
    p.add_argument("--fault-step", type=int, default=2)
    p.add_argument("--comm", default="mpi")
    args = p.parse_args(argv)

    comm = D.get_communicator(args.comm)
    D.install_excepthook(comm)
    return D.run_guarded(comm, train, args, comm)


def train(args, comm):
    seed = args.seed + (comm.rank if args.rank_seeds else 0)
    model = tiny_model(args.model, seed=seed)
    opt = make_optimizer(args.optimizer)
    trainer = D.DistributedTrainer(model, opt, batch_size=args.batch_size, seed=seed,
                                   comm=comm)
    images, labels = tiny_data(args.n)
    faulty = args.fault != "none" and comm.rank == args.fault_rank
    step = 0
    base_step = trainer.train_step

    def step_with_fault(x, y):
        nonlocal step
        if faulty and step == args.fault_step:
            if args.fault == "raise":
                raise ValueError(f"injected failure at step {step}")
            if args.fault == "kill":
                os.kill(os.getpid(), signal.SIGKILL)
            if args.fault == "stop":
                trainer.stop_requested = True
        step += 1
        return base_step(x, y)

    trainer.train_step = step_with_fault
    history = []
    while trainer.epoch < args.epochs:
        if faulty and args.fault == "return" and step >= args.fault_step:
            return 3
        metrics = trainer.train_epoch(images, labels, progress=False)
        if metrics.get("interrupted"):
            break
        metrics.update(trainer.evaluate(images, labels, batch_size=5))
        metrics.pop("confusion")
        history.append({k: v for k, v in metrics.items()
                        if k not in ("images_per_s", "train_time_s")})
    out = dict(params(model))
    out["__counters__"] = np.array([trainer.epoch, trainer.batch, step,
                                    trainer.step_impl.steps])
    out["__history__"] = np.array(json.dumps(history))
    np.savez(os.path.join(args.out, f"rank{comm.rank}.npz"), **out)
    return 0


if __name__ == "__main__":
    sys.exit(main())
