"""``cnnfast train``: train a CNN (or a dense net) on Fashion-MNIST with cnnfast.nn,
or a denoising autoencoder / U-Net (``--model autoencoder|unet``).

Prints the model summary, a progress bar per epoch on stderr, and the test
accuracy after each epoch; writes ``OUT/metrics.jsonl`` (one JSON object per epoch)
and ``OUT/checkpoint.npz`` (atomically, every epoch). ``--resume`` continues from
``OUT/checkpoint.npz`` exactly where it stopped: the options the checkpoint fixes
(``RESUME_FIXED``) take its values, and one given explicitly must match them. Ctrl-C
finishes the current batch, saves a checkpoint and exits with status 130 (a second
Ctrl-C aborts at once). ``--augment SPEC`` (``cnnfast.augment``) transforms the
training batches only.

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

from .common import (CliError, check_model_fits_data, fraction, load_data, load_model,
                     non_negative_float, positive_float, positive_int, prepare_out,
                     random_seed, report_error, require_backend, set_threads)

HELP = ("train a CNN on Fashion-MNIST (no autograd; any backend), or a denoising "
        "autoencoder / U-Net, with checkpoints")
ENCDEC = ("autoencoder", "unet")  # cnnfast.nn.encdec.ENCDEC_MODELS, without importing it
DEFAULT_NOISE = 0.3

CHECKPOINT = "checkpoint.npz"
METRICS = "metrics.jsonl"

# The options a checkpoint fixes, with their defaults for a new run. Their parser
# default is None, so that --resume tells an option the user gave (it must match
# the checkpoint) from one left out (it takes the checkpoint's value). lr and
# weight_decay default by optimizer (_apply_defaults).
RESUME_FIXED = {"model": "cnn", "batch_size": 64, "optimizer": "adam", "lr": None,
                "momentum": 0.9, "nesterov": False, "weight_decay": None,
                "schedule": "constant", "step_size": 3, "gamma": 0.1,
                "dtype": "float32", "seed": 0}
# Options that only mean something with another one.
ONLY_WITH = {"momentum": ("optimizer", "sgd"), "nesterov": ("optimizer", "sgd"),
             "step_size": ("schedule", "step"), "gamma": ("schedule", "step")}


def add_arguments(parser):
    parser.add_argument("--model", choices=("cnn", "dense") + ENCDEC, default=None,
                        help="cnn: 2x(Conv 64 3x3, ReLU, MaxPool 2), Dense 128, Dense 10; "
                             "dense: Dense 128, Dense 10; autoencoder / unet: denoisers "
                             "(image to image, MSE; resume at epoch boundaries; "
                             "the schedule steps per epoch) (default: cnn)")
    parser.add_argument("--augment", default=None, metavar="SPEC",
                        help="augment training batches, e.g. 'flip,translate=2' or "
                             "'rotate=10,noise=0.05' (transforms: flip, rotate, translate, "
                             "crop, zoom, brightness, contrast, noise; default: none). "
                             "Fixed by the checkpoint on --resume")
    parser.add_argument("--noise", type=non_negative_float, default=None, metavar="STD",
                        help=f"denoisers: std of the Gaussian noise added to the inputs "
                             f"(default {DEFAULT_NOISE}; fixed by the checkpoint on --resume)")
    parser.add_argument("--epochs", type=positive_int, default=10,
                        help="total epochs (default 10)")
    parser.add_argument("--batch-size", type=positive_int, default=None, help="default 64")
    parser.add_argument("--lr", type=positive_float, default=None,
                        help="learning rate (default: 1e-3 for adam/adamw, 0.05 for sgd)")
    parser.add_argument("--optimizer", choices=("adam", "adamw", "sgd"), default=None,
                        help="default adam")
    parser.add_argument("--momentum", type=fraction, default=None,
                        help="SGD momentum (0.9)")
    parser.add_argument("--nesterov", action="store_true", default=None,
                        help="Nesterov momentum (SGD)")
    parser.add_argument("--weight-decay", type=non_negative_float, default=None,
                        help="weight decay (default: 0; 0.01 for adamw)")
    parser.add_argument("--schedule", choices=("constant", "step", "cosine"),
                        default=None,
                        help="learning-rate schedule (step: per epoch; cosine: per "
                             "batch, over --epochs) (default constant)")
    parser.add_argument("--step-size", type=positive_int, default=None,
                        help="epochs between decays for --schedule step (3)")
    parser.add_argument("--gamma", type=positive_float, default=None,
                        help="decay for --schedule step (0.1)")
    parser.add_argument("--backend", default=None,
                        help="kernel backend: numpy, numba, cpp, cupy (default: automatic)")
    parser.add_argument("--device", choices=("cpu", "gpu"), default=None,
                        help="where the model lives (default: gpu for --backend cupy)")
    parser.add_argument("--threads", type=positive_int, default=None,
                        help="CPU backend threads")
    parser.add_argument("--dtype", choices=("float32", "float64"), default=None,
                        help="default float32")
    parser.add_argument("--seed", type=random_seed, default=None,
                        help="weights, shuffling, dropout (default 0)")
    parser.add_argument("--limit", type=positive_int, default=None,
                        help="train on the first N training images only")
    parser.add_argument("--test-limit", type=positive_int, default=None,
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


def _flag(name):
    return "--" + name.replace("_", "-")


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


def _apply_defaults(args):
    """A new run: every RESUME_FIXED option left out takes its default; one that
    means nothing with the chosen optimizer or schedule is an error."""
    for name, (other, needed) in ONLY_WITH.items():
        chosen = getattr(args, other) or RESUME_FIXED[other]
        if getattr(args, name) is not None and chosen != needed:
            raise CliError(f"{_flag(name)} applies to {_flag(other)} {needed}, not "
                           f"{_flag(other)} {chosen}")
    for name, default in RESUME_FIXED.items():
        if getattr(args, name) is None:
            setattr(args, name, default)
    if args.lr is None:
        args.lr = 0.05 if args.optimizer == "sgd" else 1e-3
    if args.weight_decay is None:
        args.weight_decay = 0.01 if args.optimizer == "adamw" else 0.0


def _saved_options(model, opt, extra) -> dict:
    """The RESUME_FIXED options a checkpoint was trained with (None where one does
    not apply, e.g. --momentum for Adam)."""
    state = extra["trainer"]
    sched, ocfg = state["schedule"], opt.config()
    return {"model": extra.get("model") if extra.get("task") == "denoise" else model.name,
            "batch_size": state["batch_size"], "optimizer": ocfg.get("name"),
            "lr": sched.get("base_lr"), "momentum": ocfg.get("momentum"),
            "nesterov": ocfg.get("nesterov"), "weight_decay": ocfg.get("weight_decay"),
            "schedule": sched.get("name"), "step_size": sched.get("step_size"),
            "gamma": sched.get("gamma"), "dtype": model.dtype.name,
            "seed": extra.get("seed", 0)}


def _conflict(flag, given, saved, path) -> CliError:
    """The --resume error for an option that differs from the checkpoint's."""
    if saved is None:
        return CliError(f"--resume: {flag} {given} conflicts with {path}, whose run does "
                        f"not use {flag}")
    return CliError(f"--resume: {flag} {given} conflicts with {path}, trained with "
                    f"{flag} {saved} (drop {flag} to continue with the checkpoint's)")


def _check_resume_options(args, saved, path):
    """--resume: an option given explicitly must be the checkpoint's; one left out
    takes the checkpoint's value (so the same command line + --resume works)."""
    for name in RESUME_FIXED:
        given = getattr(args, name)
        if given is None:
            setattr(args, name, saved[name])
        elif given != saved[name]:
            raise _conflict(_flag(name), given, saved[name], path)


def _check_freeze(args, model, resumed_path=None):
    """--freeze K: |K| at most the number of layers; on --resume, the layers the
    checkpoint has frozen must be those K freezes."""
    if args.freeze is None:
        return
    n = len(model.layers)
    if abs(args.freeze) > n:
        raise CliError(f"--freeze {args.freeze}: the model has {n} layers (use -{n} to "
                       f"{n})")
    if resumed_path is not None:
        frozen = set(range(n)[:args.freeze])
        if [not layer.trainable for layer in model.layers] != [i in frozen
                                                              for i in range(n)]:
            raise CliError(f"--resume: --freeze {args.freeze} conflicts with the layers "
                           f"{resumed_path} has frozen (drop --freeze to keep them)")


def _build(args):
    from .. import nn
    from ..nn.training import MODELS

    if args.model in ENCDEC:
        model = nn.build_encdec(args.model, seed=args.seed, dtype=args.dtype,
                                backend=args.backend)
    else:
        model = MODELS[args.model](seed=args.seed, dtype=args.dtype, backend=args.backend)
    name, lr, wd = args.optimizer, args.lr, args.weight_decay
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
        raise CliError(str(exc)) from exc
    D.install_excepthook(comm)
    D.configure_threads(comm, args.threads)
    if args.backend == "cupy" or args.device == "gpu":
        D.select_gpu(comm)
    with D.quiet_unless_root(comm):
        return D.run_guarded(comm, _run_reporting_errors, args, comm)


def _run_reporting_errors(args, comm) -> int:
    """Under run_guarded, a user error is a status (every rank returns it), not an
    exception (which would abort the job with a traceback)."""
    try:
        return _run(args, comm)
    except CliError as exc:
        return report_error("cnnfast train", exc)


def _augment_pipeline(spec, seed):
    """The pipeline for ``--augment spec`` (None for none); ValueError if bad."""
    from ..augment import pipeline_from_spec
    from ..nn.training import augment_seed

    pipeline = pipeline_from_spec(spec, seed=augment_seed(seed))
    return pipeline if len(pipeline) else None


def _check_augment_matches(args, saved_spec, path):
    """On --resume, an explicit --augment must be the checkpoint's (a different one
    would break the exact continuation)."""
    if getattr(args, "augment", None) is None:
        return
    given = _augment_pipeline(args.augment, 0)
    given = given.spec if given is not None else None
    if given != (saved_spec or None):
        raise _conflict("--augment", repr(given or "none"), repr(saved_spec or "none"),
                        path)


def _install_sigint(handler):
    try:
        return signal.signal(signal.SIGINT, handler)
    except ValueError:  # not the main thread: Ctrl-C handling is the caller's
        return None


def _fresh_model(args, device):
    """A new model for ``args`` (no --resume): built, ``--weights`` loaded,
    ``--freeze`` applied, moved to the device; with its optimizer and schedule."""
    from ..nn.checkpoint import read_arrays

    model, opt, schedule = _build(args)
    _check_freeze(args, model)
    if args.weights:
        try:
            loaded = model.load_state_dict(read_arrays(args.weights), strict=False)
        except (OSError, ValueError) as exc:  # missing, corrupt, crafted
            raise CliError(f"--weights: {exc}") from exc
        if not loaded:
            raise CliError(f"--weights {args.weights}: no array matches this model "
                           f"(--model {args.model}) by name and shape")
        print(f"loaded {len(loaded)} arrays from {args.weights}")
    if args.freeze is not None:
        model.freeze(args.freeze)
    if device == "gpu":
        model.to("gpu")
    return model, opt, schedule


def _resume(args, device, ckpt_path):
    """``(model, optimizer, extra)`` from OUT/checkpoint.npz for --resume, with the
    options it fixes checked against the command line and filled into ``args``."""
    if not os.path.exists(ckpt_path):
        raise CliError(f"--resume: no checkpoint at {ckpt_path}")
    model, opt, extra = load_model(ckpt_path, "--resume", backend=args.backend,
                                   device=device)
    try:
        if opt is None:
            raise KeyError("optimizer")
        saved = _saved_options(model, opt, extra)
    except (KeyError, TypeError, AttributeError) as exc:  # no or corrupt trainer state
        raise CliError(f"--resume: {ckpt_path} holds no usable training state "
                       f"(missing {exc})") from exc
    _check_resume_options(args, saved, ckpt_path)
    _check_augment_matches(args, extra["trainer"].get("augment"), ckpt_path)
    _check_freeze(args, model, ckpt_path)
    if args.weights:
        print(f"note: --weights {args.weights} is not loaded: --resume continues from "
              f"the checkpoint's weights", file=sys.stderr)
    return model, opt, extra


def _start_out(out, root):
    """The output folder, created; stale temporary checkpoint files that a killed
    run left in it are removed (with a note)."""
    from ..nn.checkpoint import remove_stale_temporaries

    prepare_out(out)
    if root:
        for path in remove_stale_temporaries(out):
            print(f"note: removed {path}, a partial checkpoint left by an interrupted "
                  f"run", file=sys.stderr)


def _run(args, comm=None) -> int:
    from .. import nn
    from ..nn.training import Trainer

    root = comm is None or comm.rank == 0
    if comm is not None:
        from functools import partial

        from ..distributed import DistributedTrainer

        Trainer = partial(DistributedTrainer, comm=comm)  # noqa: N806
    if args.threads is not None and comm is None:
        set_threads(args.threads)
    device = args.device or ("gpu" if args.backend == "cupy" else "cpu")
    require_backend(args.backend, device)
    # Option errors first, before the checkpoint and the data are read.
    try:
        _augment_pipeline(args.augment, 0)
    except (ValueError, TypeError) as exc:  # the message names --augment
        raise CliError(str(exc)) from exc
    if args.noise is not None and args.model not in ENCDEC and not args.resume:
        raise CliError("--noise is for the denoisers (--model autoencoder or unet)")
    if comm is not None and args.model in ENCDEC:
        raise CliError("--distributed trains the classifiers (cnn, dense) only")
    ckpt_path = os.path.join(args.out, CHECKPOINT)
    metrics_path = os.path.join(args.out, METRICS)
    if args.resume:
        model, opt, extra = _resume(args, device, ckpt_path)
        denoiser = extra.get("task") == "denoise"
        if args.noise is not None and not denoiser:
            raise CliError("--noise is for the denoisers; this checkpoint holds a "
                           "classifier")
        if comm is not None and denoiser:
            raise CliError("--distributed trains the classifiers (cnn, dense) only")
    else:
        _apply_defaults(args)
        augment = _augment_pipeline(args.augment, args.seed)
        model, opt, schedule = _fresh_model(args, device)
        denoiser = args.model in ENCDEC
    _start_out(args.out, root)
    data_dir, (train_x, train_y) = load_data("train", args.data, args.limit)
    _, (test_x, test_y) = load_data("test", data_dir, args.test_limit)
    check_model_fits_data(model, train_x, ckpt_path if args.resume else
                          f"--model {args.model}")
    data_info = {"train_size": len(train_x), "limit": args.limit}
    if args.resume:
        trained_on = extra.get("data") if isinstance(extra.get("data"), dict) else {}
        if trained_on and trained_on.get("train_size") != len(train_x):
            raise CliError(f"--resume: the checkpoint was trained on "
                           f"{trained_on.get('train_size')} images but this run loads "
                           f"{len(train_x)} (use the same --limit)")
        if denoiser:
            return _run_denoiser(args, device, data_dir, train_x, test_x,
                                 model, opt, resumed=extra)
        state = extra["trainer"]
        try:
            trainer = Trainer(model, opt, nn.make_schedule(state["schedule"]),
                              batch_size=state["batch_size"], seed=extra.get("seed", 0))
            trainer.restore(state)  # rebuilds the checkpoint's augmentation
        except (KeyError, TypeError, ValueError) as exc:
            raise CliError(f"--resume: {ckpt_path}: corrupt training state "
                           f"({type(exc).__name__}: {exc})") from exc
        # The metrics file follows the checkpoint (a line written after the last
        # checkpoint by a crashed run is dropped).
        if root:
            with open(metrics_path, "w") as f:
                for m in trainer.history:
                    f.write(json.dumps(m) + "\n")
        print(f"resuming from {ckpt_path}: epoch {trainer.epoch + 1}, batch "
              f"{trainer.batch}")
        seed = extra.get("seed", 0)
    elif denoiser:
        return _run_denoiser(args, device, data_dir, train_x, test_x, model, opt,
                             schedule=schedule, augment=augment)
    else:
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


def _run_denoiser(args, device, data_dir, train_x, test_x, model, opt, *, resumed=None,
                  schedule=None, augment=None) -> int:
    """``--model autoencoder|unet``: ``train_denoiser`` one epoch per call, with the
    optimizer carried over (its state is in the checkpoint) and a seed per epoch
    (a new shuffle and new noise each epoch; the same on a resumed run). ``resumed``
    is the checkpoint's ``extra`` on --resume."""
    import numpy as np

    from .. import nn
    from ..nn.encdec import evaluate_denoiser, train_denoiser
    from ..nn.training import Progress, _jsonable_state

    if len(train_x) < 1 or len(test_x) < 1:
        raise CliError(f"a denoiser needs training and test images (got {len(train_x)} "
                       f"and {len(test_x)})")
    ckpt_path = os.path.join(args.out, CHECKPOINT)
    metrics_path = os.path.join(args.out, METRICS)
    data_info = {"train_size": len(train_x), "limit": args.limit}
    if resumed is not None:
        extra = resumed
        model_name = extra.get("model", model.name)
        try:
            noise = float(extra["noise_std"])
            if args.noise is not None and args.noise != noise:
                raise _conflict("--noise", f"{args.noise:g}", f"{noise:g}", ckpt_path)
            state = extra["trainer"]
            seed = int(extra.get("seed", 0))
            augment = _augment_pipeline(state.get("augment"), seed)
            if augment is not None:
                augment.set_state(state["augment_state"])
            schedule = nn.make_schedule(state["schedule"])
            batch_size = int(state["batch_size"])
            epoch, history = int(state["epoch"]), list(state["history"])
            model.rng.bit_generator.state = state["model_rng_state"]
        except (KeyError, TypeError, ValueError) as exc:
            raise CliError(f"--resume: {ckpt_path}: corrupt training state "
                           f"({type(exc).__name__}: {exc})") from exc
        with open(metrics_path, "w") as f:  # the metrics follow the checkpoint
            for m in history:
                f.write(json.dumps(m) + "\n")
        print(f"resuming from {ckpt_path}: {model_name}, epoch {epoch + 1}")
    else:
        model_name = args.model
        noise = DEFAULT_NOISE if args.noise is None else args.noise
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
