"""``cnnfast train``: train a CNN (or a dense net) on Fashion-MNIST with cnnfast.nn.

Prints the model summary, a progress bar per epoch on stderr, and the test
accuracy after each epoch; writes ``OUT/metrics.jsonl`` (one JSON object per epoch)
and ``OUT/checkpoint.npz`` (atomically, every epoch). ``--resume`` continues from
``OUT/checkpoint.npz`` exactly where it stopped. Ctrl-C finishes the current batch,
saves a checkpoint and exits with status 130 (a second Ctrl-C aborts at once).
"""

from __future__ import annotations

import json
import os
import signal
import sys
import time

HELP = "train a CNN on Fashion-MNIST (no autograd; any backend), with checkpoints"

CHECKPOINT = "checkpoint.npz"
METRICS = "metrics.jsonl"


def add_arguments(parser):
    parser.add_argument("--model", choices=("cnn", "dense"), default="cnn",
                        help="cnn: 2x(Conv 64 3x3, ReLU, MaxPool 2), Dense 128, Dense 10; "
                             "dense: Dense 128, Dense 10 (default: cnn)")
    parser.add_argument("--epochs", type=int, default=10, help="total epochs (default 10)")
    parser.add_argument("--batch-size", type=int, default=64, help="default 64")
    parser.add_argument("--lr", type=float, default=None,
                        help="learning rate (default: 1e-3 for adam/adamw, 0.05 for sgd)")
    parser.add_argument("--optimizer", choices=("adam", "adamw", "sgd"), default="adam")
    parser.add_argument("--momentum", type=float, default=0.9, help="SGD momentum (0.9)")
    parser.add_argument("--nesterov", action="store_true", help="Nesterov momentum (SGD)")
    parser.add_argument("--weight-decay", type=float, default=None,
                        help="weight decay (default: 0; 0.01 for adamw)")
    parser.add_argument("--schedule", choices=("constant", "step", "cosine"),
                        default="constant",
                        help="learning-rate schedule (step: per epoch; cosine: per "
                             "batch, over --epochs)")
    parser.add_argument("--step-size", type=int, default=3,
                        help="epochs between decays for --schedule step (3)")
    parser.add_argument("--gamma", type=float, default=0.1, help="decay for --schedule step")
    parser.add_argument("--backend", default=None,
                        help="kernel backend: numpy, numba, cpp, cupy (default: automatic)")
    parser.add_argument("--device", choices=("cpu", "gpu"), default=None,
                        help="where the model lives (default: gpu for --backend cupy)")
    parser.add_argument("--threads", type=int, default=None, help="CPU backend threads")
    parser.add_argument("--dtype", choices=("float32", "float64"), default="float32")
    parser.add_argument("--seed", type=int, default=0, help="weights, shuffling, dropout")
    parser.add_argument("--limit", type=int, default=None,
                        help="train on the first N training images only")
    parser.add_argument("--test-limit", type=int, default=None,
                        help="evaluate on the first N test images only")
    parser.add_argument("--data", default=None,
                        help="Fashion-MNIST folder (else $CNNFAST_DATA, else "
                             "/usr/share/datasets/fashion-mnist)")
    parser.add_argument("--out", default="runs/fashion-mnist",
                        help="folder for checkpoint.npz and metrics.jsonl "
                             "(default runs/fashion-mnist)")
    parser.add_argument("--resume", action="store_true",
                        help="continue from OUT/checkpoint.npz")
    parser.add_argument("--weights", default=None, metavar="CHECKPOINT",
                        help="start from the weights of CHECKPOINT (those whose names and "
                             "shapes match; fine-tuning)")
    parser.add_argument("--freeze", type=int, default=None, metavar="K",
                        help="freeze the first K layers (negative: all but the last -K)")
    parser.add_argument("--no-progress", action="store_true", help="no progress bar")
    parser.add_argument("--distributed", nargs="?", const="mpi", choices=("mpi", "nccl"),
                        default=None,
                        help="data-parallel training over MPI: mpiexec -n N cnnfast train "
                             "--distributed; 'nccl' reduces cupy gradients through NCCL. "
                             "--batch-size is the global batch (each rank takes 1/N)")


def _auto_backend_name(device):
    from ..registry import AUTO_CPU_ORDER, get_backend

    if device == "gpu":
        return "cupy"
    for name in AUTO_CPU_ORDER:
        if get_backend(name).available:
            return name
    return "none available"


def _peak_rss_mb() -> float:
    try:
        import resource
    except ImportError:  # not on POSIX
        return float("nan")
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024  # KiB on Linux


def backend_problem(name):
    """Why backend ``name`` cannot be used here (None when it can)."""
    from ..registry import get_backend

    try:
        backend = get_backend(name)
    except ValueError as exc:
        return str(exc)
    return None if backend.available else f"backend {name!r} is unavailable: {backend.reason}"


def _build(args):
    from .. import nn
    from ..nn.training import MODELS

    model = MODELS[args.model](seed=args.seed, dtype=args.dtype, backend=args.backend)
    name = args.optimizer
    lr = args.lr if args.lr is not None else (0.05 if name == "sgd" else 1e-3)
    wd = args.weight_decay if args.weight_decay is not None else (
        0.01 if name == "adamw" else 0.0)
    if name == "sgd":
        opt = nn.SGD(lr, momentum=args.momentum, nesterov=args.nesterov, weight_decay=wd)
    else:
        opt = nn.make_optimizer({"name": name, "lr": lr, "weight_decay": wd})
    if args.schedule == "step":
        schedule = nn.StepLR(lr, args.step_size, args.gamma)
    elif args.schedule == "cosine":
        schedule = nn.CosineLR(lr, args.epochs)
    else:
        schedule = nn.Schedule(lr)
    return model, opt, schedule


def run(args) -> int:
    if not getattr(args, "distributed", None):
        return _run(args)
    from .. import distributed as D

    try:
        comm = D.get_communicator(args.distributed)
    except (RuntimeError, ImportError) as exc:
        print(f"cnnfast train: {exc}", file=sys.stderr)
        return 2
    D.install_excepthook(comm)
    D.configure_threads(comm, args.threads)
    if args.backend == "cupy" or args.device == "gpu":
        D.select_gpu(comm)
    with D.quiet_unless_root(comm):
        return D.run_guarded(comm, _run, args, comm)


def _run(args, comm=None) -> int:
    from .. import nn
    from ..nn.data import find_fashion_mnist, load_fashion_mnist
    from ..nn.training import Trainer

    root = comm is None or comm.rank == 0
    if comm is not None:
        from functools import partial

        from ..distributed import DistributedTrainer

        Trainer = partial(DistributedTrainer, comm=comm)  # noqa: N806
    if args.threads is not None and comm is None:
        from ..threads import set_num_threads

        set_num_threads(args.threads)
    device = args.device or ("gpu" if args.backend == "cupy" else "cpu")
    if args.backend is not None:
        problem = backend_problem(args.backend)
        if problem:
            print(f"cnnfast train: {problem}", file=sys.stderr)
            return 2
    try:
        data_dir = find_fashion_mnist(args.data)
    except FileNotFoundError as exc:
        print(f"cnnfast train: {exc}", file=sys.stderr)
        return 2
    train_x, train_y = load_fashion_mnist("train", data_dir, args.limit)
    test_x, test_y = load_fashion_mnist("test", data_dir, args.test_limit)

    os.makedirs(args.out, exist_ok=True)
    ckpt_path = os.path.join(args.out, CHECKPOINT)
    metrics_path = os.path.join(args.out, METRICS)
    data_info = {"train_size": len(train_x), "limit": args.limit}
    if args.resume:
        if not os.path.exists(ckpt_path):
            print(f"cnnfast train: --resume: no checkpoint at {ckpt_path}", file=sys.stderr)
            return 2
        model, opt, extra = nn.load_checkpoint(ckpt_path, backend=args.backend,
                                               device=device)
        if extra.get("data") and extra["data"]["train_size"] != len(train_x):
            print(f"cnnfast train: the checkpoint was trained on "
                  f"{extra['data']['train_size']} images but this run loads "
                  f"{len(train_x)} (use the same --limit)", file=sys.stderr)
            return 2
        state = extra["trainer"]
        trainer = Trainer(model, opt, nn.make_schedule(state["schedule"]),
                          batch_size=state["batch_size"], seed=extra.get("seed", 0))
        trainer.restore(state)
        # The metrics file follows the checkpoint (a line written after the last
        # checkpoint by a crashed run is dropped).
        if root:
            with open(metrics_path, "w") as f:
                for m in trainer.history:
                    f.write(json.dumps(m) + "\n")
        print(f"resuming from {ckpt_path}: epoch {trainer.epoch + 1}, batch "
              f"{trainer.batch}")
        seed = extra.get("seed", 0)
    else:
        model, opt, schedule = _build(args)
        if args.weights:
            loaded = model.load_weights(args.weights, strict=False)
            print(f"loaded {len(loaded)} arrays from {args.weights}")
        if args.freeze is not None:
            model.freeze(args.freeze)
        if device == "gpu":
            model.to("gpu")
        trainer = Trainer(model, opt, schedule, batch_size=args.batch_size, seed=args.seed)
        if root:
            open(metrics_path, "w").close()
        seed = args.seed

    model.summary()
    backend = args.backend or f"auto ({_auto_backend_name(device)})"
    print(f"data: {data_dir} ({len(train_x)} train, {len(test_x)} test images); "
          f"backend: {backend}; device: {device}; optimizer: {opt.config()}")

    def save():
        if not root:
            return
        nn.save_checkpoint(ckpt_path, model, opt, {"trainer": trainer.state(),
                                                    "data": data_info, "seed": seed})

    def on_sigint(signum, frame):
        trainer.stop_requested = True
        print("\ninterrupt: stopping after this batch and saving a checkpoint "
              "(Ctrl-C again to abort without saving)", file=sys.stderr)
        signal.signal(signal.SIGINT, signal.default_int_handler)

    previous = None
    try:
        previous = signal.signal(signal.SIGINT, on_sigint)
    except ValueError:  # not the main thread: Ctrl-C handling is the caller's
        pass
    try:
        while trainer.epoch < args.epochs:
            metrics = trainer.train_epoch(train_x, train_y, progress=not args.no_progress)
            if metrics.get("interrupted"):
                save()
                print(f"saved {ckpt_path} (epoch {trainer.epoch + 1}, batch "
                      f"{trainer.batch}); continue with --resume")
                return 130
            t0 = time.perf_counter()
            result = trainer.evaluate(test_x, test_y)
            metrics.update(test_loss=result["loss"], test_acc=result["accuracy"],
                           eval_time_s=time.perf_counter() - t0, peak_rss_mb=_peak_rss_mb())
            trainer.history.append(metrics)
            save()
            if root:
                with open(metrics_path, "a") as f:
                    f.write(json.dumps(metrics) + "\n")
            print(f"epoch {metrics['epoch']}/{args.epochs}: train loss "
                  f"{metrics['train_loss']:.4f} acc {metrics['train_acc']:.4f} | test loss "
                  f"{metrics['test_loss']:.4f} acc {metrics['test_acc']:.4f} | "
                  f"{metrics['images_per_s']:,.0f} img/s", flush=True)
            if trainer.stop_requested:
                print(f"saved {ckpt_path} after epoch {trainer.epoch}; continue with "
                      f"--resume")
                return 130
    except KeyboardInterrupt:
        print("aborted; the last checkpoint is the previous one", file=sys.stderr)
        return 130
    finally:
        if previous is not None:
            signal.signal(signal.SIGINT, previous)
    if trainer.history:
        best = max(m["test_acc"] for m in trainer.history)
        print(f"done: final test accuracy {trainer.history[-1]['test_acc']:.4f} "
              f"(best {best:.4f}); checkpoint {ckpt_path}; peak RSS "
              f"{_peak_rss_mb():,.0f} MB")
    else:
        print(f"nothing to do: the checkpoint already has {trainer.epoch} epochs")
    return 0
