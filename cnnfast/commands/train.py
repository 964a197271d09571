"""``cnnfast train``: train a CNN (or a dense net) on Fashion-MNIST with cnnfast.nn,
or a denoising autoencoder / U-Net (``--model autoencoder|unet``).

Prints the model summary, a progress bar per epoch on stderr, and the test
accuracy after each epoch; writes ``OUT/metrics.jsonl`` (one JSON object per epoch)
and ``OUT/checkpoint.npz`` (atomically, every epoch). ``--resume`` continues from
``OUT/checkpoint.npz`` exactly where it stopped. Ctrl-C finishes the current batch,
saves a checkpoint and exits with status 130 (a second Ctrl-C aborts at once).
``--augment SPEC`` (``cnnfast.augment``) transforms the training batches only.

Denoisers learn to map ``clip(x + noise * N(0, 1), 0, 1)`` to ``x`` (mean squared
error) with ``cnnfast.nn.encdec.train_denoiser``, one epoch per call: they resume
at epoch boundaries (Ctrl-C finishes the epoch in progress, then saves), the
learning-rate schedule steps per epoch, and each epoch reports the PSNR of noisy
and denoised test images (the test noise is the same every epoch).
"""

from __future__ import annotations

import json
import math
import os
import signal
import sys
import time

HELP = ("train a CNN on Fashion-MNIST (no autograd; any backend), or a denoising "
        "autoencoder / U-Net, with checkpoints")
ENCDEC = ("autoencoder", "unet")  # cnnfast.nn.encdec.ENCDEC_MODELS, without importing it
DEFAULT_NOISE = 0.3

CHECKPOINT = "checkpoint.npz"
METRICS = "metrics.jsonl"


def add_arguments(parser):
    parser.add_argument("--model", choices=("cnn", "dense") + ENCDEC, default="cnn",
                        help="cnn: 2x(Conv 64 3x3, ReLU, MaxPool 2), Dense 128, Dense 10; "
                             "dense: Dense 128, Dense 10; autoencoder / unet: denoisers "
                             "(image to image, MSE; resume at epoch boundaries; "
                             "the schedule steps per epoch) (default: cnn)")
    parser.add_argument("--augment", default=None, metavar="SPEC",
                        help="augment training batches, e.g. 'flip,translate=2' or "
                             "'rotate=10,noise=0.05' (transforms: flip, rotate, translate, "
                             "crop, zoom, brightness, contrast, noise; default: none). "
                             "Fixed by the checkpoint on --resume")
    parser.add_argument("--noise", type=float, default=None, metavar="STD",
                        help=f"denoisers: std of the Gaussian noise added to the inputs "
                             f"(default {DEFAULT_NOISE}; fixed by the checkpoint on --resume)")
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
                        help="continue from OUT/checkpoint.npz (classifiers: exactly, "
                             "mid-epoch too; denoisers: from the last finished epoch)")
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

    if args.model in ENCDEC:
        model = nn.build_encdec(args.model, seed=args.seed, dtype=args.dtype,
                                backend=args.backend)
    else:
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
    from ..threads import single_threaded_blas

    # numpy's BLAS (dense layers) on one thread: its spinning workers would take the
    # cores of the convolution kernels (see single_threaded_blas).
    with single_threaded_blas():
        return _run_any(args)


def _run_any(args) -> int:
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


def _augment_pipeline(spec, seed):
    """The pipeline for ``--augment spec`` (None for none); ValueError if bad."""
    from ..augment import pipeline_from_spec
    from ..nn.training import augment_seed

    pipeline = pipeline_from_spec(spec, seed=augment_seed(seed))
    return pipeline if len(pipeline) else None


def _check_augment_matches(args, saved_spec) -> bool:
    """On --resume, an explicit --augment must be the checkpoint's (a different one
    would break the exact continuation)."""
    if getattr(args, "augment", None) is None:
        return True
    given = _augment_pipeline(args.augment, 0)
    given = given.spec if given is not None else None
    if given != (saved_spec or None):
        print(f"cnnfast train: --resume: the checkpoint was trained with --augment "
              f"{saved_spec or 'none'!r}, not {given or 'none'!r} (drop --augment to "
              f"keep the checkpoint's)", file=sys.stderr)
        return False
    return True


def _install_sigint(handler):
    try:
        return signal.signal(signal.SIGINT, handler)
    except ValueError:  # not the main thread: Ctrl-C handling is the caller's
        return None


def _fresh_model(args, device):
    """A new model for ``args`` (no --resume): built, ``--weights`` loaded,
    ``--freeze`` applied, moved to the device; with its optimizer and schedule."""
    model, opt, schedule = _build(args)
    if args.weights:
        loaded = model.load_weights(args.weights, strict=False)
        print(f"loaded {len(loaded)} arrays from {args.weights}")
    if args.freeze is not None:
        model.freeze(args.freeze)
    if device == "gpu":
        model.to("gpu")
    return model, opt, schedule


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
    # Option errors first, before the data is read.
    augment_arg = getattr(args, "augment", None)
    noise_arg = getattr(args, "noise", None)
    try:
        augment = _augment_pipeline(augment_arg, args.seed)
    except (ValueError, TypeError) as exc:
        print(f"cnnfast train: {exc}", file=sys.stderr)
        return 2
    if noise_arg is not None and not (math.isfinite(noise_arg) and noise_arg >= 0):
        print(f"cnnfast train: --noise {noise_arg!r} must be a finite number >= 0",
              file=sys.stderr)
        return 2
    if noise_arg is not None and args.model not in ENCDEC and not args.resume:
        print("cnnfast train: --noise is for the denoisers (--model autoencoder or unet)",
              file=sys.stderr)
        return 2
    if comm is not None and args.model in ENCDEC:
        print("cnnfast train: --distributed trains the classifiers (cnn, dense) only",
              file=sys.stderr)
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
        if extra.get("task") == "denoise" or args.model in ENCDEC:
            return _run_denoiser(args, comm, device, data_dir, train_x, test_x,
                                 resumed=(model, opt, extra))
        if noise_arg is not None:
            print("cnnfast train: --noise is for the denoisers; this checkpoint holds a "
                  "classifier", file=sys.stderr)
            return 2
        state = extra["trainer"]
        if not _check_augment_matches(args, state.get("augment")):
            return 2
        trainer = Trainer(model, opt, nn.make_schedule(state["schedule"]),
                          batch_size=state["batch_size"], seed=extra.get("seed", 0))
        trainer.restore(state)  # rebuilds the checkpoint's augmentation
        # The metrics file follows the checkpoint (a line written after the last
        # checkpoint by a crashed run is dropped).
        if root:
            with open(metrics_path, "w") as f:
                for m in trainer.history:
                    f.write(json.dumps(m) + "\n")
        print(f"resuming from {ckpt_path}: epoch {trainer.epoch + 1}, batch "
              f"{trainer.batch}")
        seed = extra.get("seed", 0)
    elif args.model in ENCDEC:
        return _run_denoiser(args, comm, device, data_dir, train_x, test_x,
                             augment=augment)
    else:
        model, opt, schedule = _fresh_model(args, device)
        trainer = Trainer(model, opt, schedule, batch_size=args.batch_size, seed=args.seed,
                          augment=augment)
        if root:
            open(metrics_path, "w").close()
        seed = args.seed

    model.summary()
    backend = args.backend or f"auto ({_auto_backend_name(device)})"
    print(f"data: {data_dir} ({len(train_x)} train, {len(test_x)} test images); "
          f"backend: {backend}; device: {device}; optimizer: {opt.config()}")
    if trainer.augment is not None:
        print(f"augmentation: {trainer.augment.spec}")

    def save():
        if not root:
            return
        nn.save_checkpoint(ckpt_path, model, opt, {
            "trainer": trainer.state(), "data": data_info, "seed": seed,
            "augment": trainer.augment.spec if trainer.augment is not None else None})

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


def _run_denoiser(args, comm, device, data_dir, train_x, test_x, *, resumed=None,
                  augment=None) -> int:
    """``--model autoencoder|unet``: ``train_denoiser`` one epoch per call, with the
    optimizer carried over (its state is in the checkpoint) and a seed per epoch
    (a new shuffle and new noise each epoch; the same on a resumed run)."""
    import numpy as np

    from .. import nn
    from ..nn.encdec import evaluate_denoiser, train_denoiser
    from ..nn.training import Progress, _jsonable_state

    if comm is not None:
        print("cnnfast train: --distributed trains the classifiers (cnn, dense) only",
              file=sys.stderr)
        return 2
    if len(train_x) < 1 or len(test_x) < 1:
        print(f"cnnfast train: a denoiser needs training and test images (got "
              f"{len(train_x)} and {len(test_x)})", file=sys.stderr)
        return 2
    ckpt_path = os.path.join(args.out, CHECKPOINT)
    metrics_path = os.path.join(args.out, METRICS)
    data_info = {"train_size": len(train_x), "limit": args.limit}
    if resumed is not None:
        model, opt, extra = resumed
        if extra.get("task") != "denoise":
            print(f"cnnfast train: --resume: {ckpt_path} holds a classifier, not a "
                  f"denoiser (drop --model {args.model})", file=sys.stderr)
            return 2
        model_name = extra.get("model", model.name)
        if args.model in ENCDEC and args.model != model_name:
            print(f"cnnfast train: --resume: {ckpt_path} holds a {model_name}, not a "
                  f"{args.model}", file=sys.stderr)
            return 2
        noise = float(extra["noise_std"])
        if getattr(args, "noise", None) is not None and args.noise != noise:
            print(f"cnnfast train: --resume: the checkpoint was trained with --noise "
                  f"{noise:g}, not {args.noise:g}", file=sys.stderr)
            return 2
        state = extra["trainer"]
        if not _check_augment_matches(args, state.get("augment")):
            return 2
        seed = int(extra.get("seed", 0))
        augment = _augment_pipeline(state.get("augment"), seed)
        if augment is not None:
            augment.set_state(state["augment_state"])
        schedule = nn.make_schedule(state["schedule"])
        batch_size = int(state["batch_size"])
        epoch, history = int(state["epoch"]), list(state["history"])
        model.rng.bit_generator.state = state["model_rng_state"]
        with open(metrics_path, "w") as f:  # the metrics follow the checkpoint
            for m in history:
                f.write(json.dumps(m) + "\n")
        print(f"resuming from {ckpt_path}: {model_name}, epoch {epoch + 1}")
    else:
        model, opt, schedule = _fresh_model(args, device)
        model_name = args.model
        noise = getattr(args, "noise", None)
        noise = DEFAULT_NOISE if noise is None else noise
        seed, batch_size, epoch, history = args.seed, args.batch_size, 0, []
        open(metrics_path, "w").close()

    model.summary()
    backend = args.backend or f"auto ({_auto_backend_name(device)})"
    print(f"data: {data_dir} ({len(train_x)} train, {len(test_x)} test images); "
          f"backend: {backend}; device: {device}; optimizer: {opt.config()}; "
          f"noise std {noise:g}")
    if augment is not None:
        print(f"augmentation: {augment.spec}")
    spec = augment.spec if augment is not None else None
    # The test noise is drawn from one seed every epoch, so the PSNRs compare.
    test_seed = int(np.random.SeedSequence([seed, 5]).generate_state(1)[0])
    steps = math.ceil(len(train_x) / batch_size)

    def save():
        state = {"epoch": epoch, "history": list(history), "batch_size": batch_size,
                 "schedule": schedule.config(), "augment": spec,
                 "augment_state": (_jsonable_state(augment.get_state())
                                   if augment is not None else None),
                 "model_rng_state": _jsonable_state(model.rng.bit_generator.state)}
        nn.save_checkpoint(ckpt_path, model, opt, {
            "task": "denoise", "model": model_name, "trainer": state, "noise_std": noise,
            "data": data_info, "seed": seed, "augment": spec})

    stop = {"requested": False}

    def on_sigint(signum, frame):
        stop["requested"] = True
        print("\ninterrupt: stopping after this epoch (denoisers resume at epoch "
              "boundaries) and saving a checkpoint (Ctrl-C again to abort without "
              "saving)", file=sys.stderr)
        signal.signal(signal.SIGINT, signal.default_int_handler)

    start_epoch = epoch
    previous = _install_sigint(on_sigint)
    try:
        while epoch < args.epochs:
            opt.lr = schedule(epoch)
            bar = None if args.no_progress else Progress(steps, f"epoch {epoch + 1}")
            running = {"sum": 0.0, "start": time.perf_counter()}

            def progress(step, total, loss, bar=bar, running=running):
                running["sum"] += loss
                if bar is not None:
                    seen = min(step * batch_size, len(train_x))
                    rate = seen / max(time.perf_counter() - running["start"], 1e-9)
                    bar.update(step, f"loss {running['sum'] / step:.5f} {rate:,.0f} img/s",
                               final=step == total)

            # A seed per epoch: a fresh shuffle and fresh noise, reproducible on resume.
            epoch_seed = int(np.random.SeedSequence([seed, 4, epoch]).generate_state(1)[0])
            # train_denoiser always evaluates its test images at the end; hand it one
            # (the real evaluation below uses the whole test set and a fixed noise).
            result = train_denoiser(model, train_x, epochs=1, batch_size=batch_size,
                                    noise_std=noise, seed=epoch_seed, progress=progress,
                                    test_images=test_x[:1], augment=augment,
                                    optimizer=opt)
            t0 = time.perf_counter()
            ev = evaluate_denoiser(model, test_x, noise, seed=test_seed)
            metrics = {"epoch": epoch + 1, "train_loss": float(result["history"][0]),
                       "test_loss": ev["mse_denoised"], "psnr_noisy": ev["psnr_noisy"],
                       "psnr_denoised": ev["psnr_denoised"],
                       "images_per_s": len(train_x) / max(result["seconds"], 1e-9),
                       "train_time_s": result["seconds"],
                       "eval_time_s": time.perf_counter() - t0, "lr": opt.lr,
                       "peak_rss_mb": _peak_rss_mb()}
            history.append(metrics)
            epoch += 1
            save()
            with open(metrics_path, "a") as f:
                f.write(json.dumps(metrics) + "\n")
            print(f"epoch {epoch}/{args.epochs}: train loss {metrics['train_loss']:.5f} | "
                  f"test loss {metrics['test_loss']:.5f} | PSNR noisy "
                  f"{metrics['psnr_noisy']:.2f} dB -> denoised "
                  f"{metrics['psnr_denoised']:.2f} dB | {metrics['images_per_s']:,.0f} "
                  f"img/s", flush=True)
            if stop["requested"]:
                print(f"saved {ckpt_path} after epoch {epoch}; continue with --resume")
                return 130
    except KeyboardInterrupt:
        print("aborted; the last checkpoint is the previous one", file=sys.stderr)
        return 130
    finally:
        if previous is not None:
            signal.signal(signal.SIGINT, previous)
    if epoch > start_epoch:
        last = history[-1]
        best = max(m["psnr_denoised"] for m in history)
        print(f"done: test PSNR noisy {last['psnr_noisy']:.2f} dB -> denoised "
              f"{last['psnr_denoised']:.2f} dB (best {best:.2f} dB) on {len(test_x)} "
              f"images, noise std {noise:g}; checkpoint {ckpt_path}; peak RSS "
              f"{_peak_rss_mb():,.0f} MB")
    else:
        print(f"nothing to do: the checkpoint already has {epoch} epochs")
    return 0
