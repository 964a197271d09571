"""``cnnfast train``: train a CNN (or a dense net) on Fashion-MNIST with cnnfast.nn,
a denoising autoencoder / U-Net (``--model autoencoder|unet``), a class-conditional
DCGAN (``--model dcgan``) or diffusion model (``--model diffusion``).

Prints the model summary, a progress bar per epoch on stderr, and the test
accuracy after each epoch; writes ``OUT/metrics.jsonl`` (one JSON object per epoch)
and ``OUT/checkpoint.npz`` (atomically, every epoch). ``--resume`` continues from
``OUT/checkpoint.npz`` exactly where it stopped: the options the checkpoint fixes
(``RESUME_FIXED``) take its values, and one given explicitly must match them. Ctrl-C
finishes the current batch, saves a checkpoint and exits with status 130 (a second
Ctrl-C aborts at once). ``--augment SPEC`` (``cnnfast.augment``) transforms the
training batches only.

Denoisers learn to map ``clip(x + noise * N(0, 1), 0, 1)`` to ``x`` (mean squared
error): they resume at epoch boundaries (Ctrl-C finishes the epoch in progress,
then saves), the learning-rate schedule steps per epoch, and each epoch reports the
PSNR of noisy and denoised test images (the test noise is the same every epoch).

The DCGAN (``cnnfast.nn.gan``) trains its generator and discriminator with Adam (beta1
0.5, lr 2e-4 unless ``--lr``), resumes at epoch boundaries like the denoisers, and
each epoch reports both losses and the discriminator's mean "real" probability on
test images and on generated ones; ``cnnfast sample`` draws from its checkpoint.
The diffusion model (``--model diffusion``, ``cnnfast.nn.diffusion``) trains its U-Net
noise predictor with DDPM's objective (``--noise-schedule``, ``--timesteps``,
``--p-uncond``, fixed by the checkpoint), resumes at epoch boundaries too, and reports
the noise-prediction MSE on training and test images; ``cnnfast sample`` draws from
it with DDIM or DDPM (``--steps``) and classifier-free guidance (``--guidance``).

This module reads and checks the options; the training is the library's, the same
for both tasks: ``cnnfast.nn.runs`` (the epoch loop, Ctrl-C, the checkpoint
schema) around ``cnnfast.nn.training.Trainer`` with a task from
``cnnfast.nn.tasks``.
"""

from __future__ import annotations

import argparse
import os
import sys
from typing import TYPE_CHECKING, Any, Callable, Dict, Optional, Tuple, TypeVar

from .common import (CliError, check_model_fits_data, fraction, load_data, load_model,
                     non_negative_float, positive_float, positive_int, prepare_out,
                     random_seed, report_error, require_backend, set_threads)

if TYPE_CHECKING:  # the library is imported when a command runs, not to build the parser
    import numpy as np

    from ..augment import Pipeline
    from ..distributed import Communicator
    from ..nn.diffusion import DiffusionRun
    from ..nn.gan import DCGAN, GanRun
    from ..nn.model import Sequential
    from ..nn.optim import Optimizer, Schedule
    from ..nn.runs import TrainingRun
    from ..nn.training import Trainer

# Either generative run (``_resume_generative``): both load from a checkpoint path.
_GenerativeRun = TypeVar("_GenerativeRun", "GanRun", "DiffusionRun")

HELP = ("train a CNN on Fashion-MNIST (no autograd; any backend), a denoising "
        "autoencoder / U-Net, or a class-conditional DCGAN or diffusion model, with "
        "checkpoints")
# cnnfast.nn.encdec.ENCDEC_MODELS and cnnfast.nn.tasks.DEFAULT_NOISE, without
# importing the library to build the parser.
ENCDEC = ("autoencoder", "unet")
DEFAULT_NOISE = 0.3
# cnnfast.nn.gan.GAN_MODELS and DEFAULT_LR, likewise.
GAN = ("dcgan",)
GAN_LR = 2e-4
# cnnfast.nn.diffusion.DIFFUSION_MODELS and SCHEDULES, likewise; the defaults of a
# new --model diffusion run.
DIFFUSION = ("diffusion",)
NOISE_SCHEDULES = ("linear", "cosine")
DIFFUSION_DEFAULTS: dict = {"noise_schedule": "linear", "timesteps": 1000, "p_uncond": 0.1}

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


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--model", choices=("cnn", "dense") + ENCDEC + GAN + DIFFUSION,
                        default=None,
                        help="cnn: 2x(Conv 64 3x3, ReLU, MaxPool 2), Dense 128, Dense 10; "
                             "dense: Dense 128, Dense 10; autoencoder / unet: denoisers "
                             "(image to image, MSE; resume at epoch boundaries; "
                             "the schedule steps per epoch); dcgan: a class-conditional "
                             "GAN (Adam beta1 0.5, lr 2e-4; resumes at epoch boundaries; "
                             "cnnfast sample draws from it); diffusion: a "
                             "class-conditional DDPM with a U-Net noise predictor "
                             "(resumes at epoch boundaries; cnnfast sample draws from "
                             "it) (default: cnn)")
    parser.add_argument("--noise-schedule", choices=NOISE_SCHEDULES, default=None,
                        help="diffusion: the forward process's variances (default "
                             "linear; fixed by the checkpoint on --resume)")
    parser.add_argument("--timesteps", type=positive_int, default=None, metavar="T",
                        help="diffusion: noising steps T (default 1000; fixed by the "
                             "checkpoint on --resume)")
    parser.add_argument("--p-uncond", type=fraction, default=None, metavar="P",
                        help="diffusion: probability of dropping the label in training, "
                             "for classifier-free guidance (default 0.1; fixed by the "
                             "checkpoint on --resume)")
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


def _flag(name: str) -> str:
    return "--" + name.replace("_", "-")


def _auto_backend_name(device: str) -> str:
    from ..registry import AUTO_CPU_ORDER, get_backend

    if device == "gpu":
        return "cupy"
    for name in AUTO_CPU_ORDER:
        if get_backend(name).available:
            return name
    return "none available"


def _apply_defaults(args: argparse.Namespace) -> None:
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
        args.lr = 0.05 if args.optimizer == "sgd" else (
            GAN_LR if args.model in GAN else 1e-3)
    if args.weight_decay is None:
        args.weight_decay = 0.01 if args.optimizer == "adamw" else 0.0


def _saved_options(model: Sequential, opt: Optimizer, info: Dict[str, Any]
                   ) -> Dict[str, Any]:
    """The RESUME_FIXED options a checkpoint (``info``: its upgraded extra) was
    trained with (None where one does not apply, e.g. --momentum for Adam)."""
    state = info["trainer"]
    sched, ocfg = state["schedule"], opt.config()
    return {"model": info["model"], "batch_size": state["batch_size"],
            "optimizer": ocfg.get("name"), "lr": sched.get("base_lr"),
            "momentum": ocfg.get("momentum"), "nesterov": ocfg.get("nesterov"),
            "weight_decay": ocfg.get("weight_decay"), "schedule": sched.get("name"),
            "step_size": sched.get("step_size"), "gamma": sched.get("gamma"),
            "dtype": model.dtype.name, "seed": info["seed"]}


def _conflict(flag: str, given: Any, saved: Any, path: str) -> CliError:
    """The --resume error for an option that differs from the checkpoint's."""
    if saved is None:
        return CliError(f"--resume: {flag} {given} conflicts with {path}, whose run does "
                        f"not use {flag}")
    return CliError(f"--resume: {flag} {given} conflicts with {path}, trained with "
                    f"{flag} {saved} (drop {flag} to continue with the checkpoint's)")


def _check_resume_options(args: argparse.Namespace, saved: Dict[str, Any],
                          path: str) -> None:
    """--resume: an option given explicitly must be the checkpoint's; one left out
    takes the checkpoint's value (so the same command line + --resume works)."""
    for name in RESUME_FIXED:
        given = getattr(args, name)
        if given is None:
            setattr(args, name, saved[name])
        elif given != saved[name]:
            raise _conflict(_flag(name), given, saved[name], path)


def _check_freeze(args: argparse.Namespace, model: Sequential,
                  resumed_path: Optional[str] = None) -> None:
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


def _schedule(args: argparse.Namespace) -> Schedule:
    from .. import nn

    if args.schedule == "step":
        return nn.StepLR(args.lr, args.step_size, args.gamma)
    if args.schedule == "cosine":
        return nn.CosineLR(args.lr, args.epochs)
    return nn.Schedule(args.lr)


def _optimizer(args: argparse.Namespace) -> Optimizer:
    from .. import nn

    name, lr, wd = args.optimizer, args.lr, args.weight_decay
    if name == "sgd":
        return nn.SGD(lr, momentum=args.momentum, nesterov=args.nesterov, weight_decay=wd)
    return nn.make_optimizer({"name": name, "lr": lr, "weight_decay": wd})


def _build(args: argparse.Namespace) -> Tuple[Sequential, Optimizer, Schedule]:
    from ..nn.runs import build_model

    model = build_model(args.model, seed=args.seed, dtype=args.dtype, backend=args.backend)
    return model, _optimizer(args), _schedule(args)


def _check_gan_options(args: argparse.Namespace, device: str) -> None:
    """The options a DCGAN run does not take (before anything is read)."""
    if device == "gpu":
        raise CliError("--model dcgan trains on the CPU (no --device gpu / --backend "
                       "cupy yet)")
    if args.optimizer not in (None, "adam"):
        raise CliError(f"--optimizer {args.optimizer}: --model dcgan trains both networks "
                       f"with Adam (beta1 0.5)")
    if args.weight_decay:
        raise CliError("--weight-decay: --model dcgan trains without weight decay")
    for flag, value in (("--weights", args.weights), ("--freeze", args.freeze),
                        ("--noise", args.noise)):
        if value is not None:
            raise CliError(f"{flag} does not apply to --model dcgan")


def _check_diffusion_options(args: argparse.Namespace, device: str) -> None:
    """The options a diffusion run does not take (before anything is read)."""
    if device == "gpu":
        raise CliError("--model diffusion trains on the CPU (no --device gpu / --backend "
                       "cupy yet)")
    for flag, value in (("--weights", args.weights), ("--freeze", args.freeze),
                        ("--noise", args.noise)):
        if value is not None:
            raise CliError(f"{flag} does not apply to --model diffusion")


def _check_diffusion_only(args: argparse.Namespace) -> None:
    """--noise-schedule, --timesteps, --p-uncond: for --model diffusion only (on
    --resume, once args.model holds the checkpoint's)."""
    if args.model in DIFFUSION:
        return
    for name in DIFFUSION_DEFAULTS:
        if getattr(args, name, None) is not None:
            raise CliError(f"{_flag(name)} applies to --model diffusion")


def _check_gan_fits_data(gan: DCGAN, images: np.ndarray, labels: np.ndarray,
                         name: str) -> None:
    """CliError unless the GAN draws images of the data's shape for its labels."""
    if tuple(gan.image_shape) != tuple(images.shape[1:]):
        raise CliError(f"{name}: the GAN draws {tuple(gan.image_shape)} images, the data "
                       f"has {tuple(images.shape[1:])}")
    if len(labels) and int(labels.max()) >= gan.classes:
        raise CliError(f"{name}: the GAN has {gan.classes} classes, the data's labels "
                       f"reach {int(labels.max())}")


def run(args: argparse.Namespace) -> int:
    from ..threads import single_threaded_blas

    # numpy's BLAS on one thread for the whole run: the dense layers limit their own
    # products (serial_blas); this also covers the others (Upsample's interpolation).
    with single_threaded_blas():
        return _run_any(args)


def _run_any(args: argparse.Namespace) -> int:
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


def _run_reporting_errors(args: argparse.Namespace, comm: Communicator) -> int:
    """Under run_guarded, a user error is a status (every rank returns it), not an
    exception (which would abort the job with a traceback)."""
    try:
        return _run(args, comm)
    except CliError as exc:
        return report_error("cnnfast train", exc)


def _augment_pipeline(spec: Optional[str], seed: int) -> Optional[Pipeline]:
    """The pipeline for ``--augment spec`` (None for none); ValueError if bad."""
    from ..augment import pipeline_from_spec
    from ..nn.training import augment_seed

    pipeline = pipeline_from_spec(spec, seed=augment_seed(seed))
    return pipeline if len(pipeline) else None


def _check_augment_matches(args: argparse.Namespace, saved_spec: Optional[str],
                           path: str) -> None:
    """On --resume, an explicit --augment must be the checkpoint's (a different one
    would break the exact continuation)."""
    if getattr(args, "augment", None) is None:
        return
    pipeline = _augment_pipeline(args.augment, 0)
    given = pipeline.spec if pipeline is not None else None
    if given != (saved_spec or None):
        raise _conflict("--augment", repr(given or "none"), repr(saved_spec or "none"),
                        path)


def _fresh_model(args: argparse.Namespace, device: str
                 ) -> Tuple[Sequential, Optimizer, Schedule]:
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


def _resume(args: argparse.Namespace, device: str, ckpt_path: str,
            trainer_cls: Callable[..., Trainer]) -> TrainingRun:
    """The ``TrainingRun`` that OUT/checkpoint.npz continues, for --resume, with the
    options it fixes checked against the command line and filled into ``args``."""
    from ..nn.runs import TrainingRun, upgrade_extra
    from ..nn.tasks import DenoisingTask

    from ..nn.diffusion import is_diffusion_checkpoint  # also registers its layers
    from ..nn.gan import is_gan_checkpoint

    if not os.path.exists(ckpt_path):
        raise CliError(f"--resume: no checkpoint at {ckpt_path}")
    model, opt, extra = load_model(ckpt_path, "--resume", backend=args.backend,
                                   device=device)
    if is_gan_checkpoint(extra):
        return _resume_gan(args, device, ckpt_path)
    if is_diffusion_checkpoint(extra):
        return _resume_diffusion(args, device, ckpt_path)
    try:
        if opt is None:
            raise KeyError("optimizer")
        info = upgrade_extra(extra, model)
        saved = _saved_options(model, opt, info)
    except (KeyError, TypeError, AttributeError) as exc:  # no or corrupt trainer state
        raise CliError(f"--resume: {ckpt_path} holds no usable training state "
                       f"(missing {exc})") from exc
    except ValueError as exc:  # e.g. a corrupt noise_std
        raise CliError(f"--resume: {ckpt_path}: corrupt training state ({exc})") from exc
    _check_resume_options(args, saved, ckpt_path)
    _check_augment_matches(args, info["trainer"].get("augment"), ckpt_path)
    _check_freeze(args, model, ckpt_path)
    if args.weights:
        print(f"note: --weights {args.weights} is not loaded: --resume continues from "
              f"the checkpoint's weights", file=sys.stderr)
    if args.noise is not None and info["task"] != "denoise":
        raise CliError("--noise is for the denoisers; this checkpoint holds a classifier")
    try:
        run = TrainingRun.resume(model, opt, extra, trainer=trainer_cls)
    except (KeyError, TypeError, ValueError) as exc:
        raise CliError(f"--resume: {ckpt_path}: corrupt training state "
                       f"({type(exc).__name__}: {exc})") from exc
    # --noise was refused above unless the checkpoint holds a denoiser
    task = run.task
    if args.noise is not None and isinstance(task, DenoisingTask) and \
            args.noise != task.noise_std:
        raise _conflict("--noise", f"{args.noise:g}", f"{task.noise_std:g}", ckpt_path)
    return run


def _resume_generative(args: argparse.Namespace, device: str, ckpt_path: str,
                       run_cls: type[_GenerativeRun],
                       check_options: Callable[[argparse.Namespace, str], None]
                       ) -> _GenerativeRun:
    """The ``GanRun`` / ``DiffusionRun`` that OUT/checkpoint.npz continues (see
    ``_resume``), after ``check_options`` (the model's option rules)."""
    check_options(args, device)
    try:
        run = run_cls.load(ckpt_path, backend=args.backend)
    except (OSError, ValueError) as exc:  # CheckpointError: no usable training state
        raise CliError(f"--resume: {' '.join(str(exc).split())}") from exc
    state = run.trainer.state()
    saved = _saved_options(run.model, run.trainer.optimizer,
                           {"trainer": state, "model": run.model_name, "seed": run.seed})
    _check_resume_options(args, saved, ckpt_path)
    _check_augment_matches(args, state.get("augment"), ckpt_path)
    return run


def _resume_diffusion(args: argparse.Namespace, device: str, ckpt_path: str
                      ) -> DiffusionRun:
    """The ``DiffusionRun`` that OUT/checkpoint.npz continues; its noise schedule,
    timesteps and label-drop rate are fixed by the checkpoint."""
    from ..nn.diffusion import DiffusionRun

    run = _resume_generative(args, device, ckpt_path, DiffusionRun, _check_diffusion_options)
    d = run.diffusion
    for name, value in (("noise_schedule", d.schedule.kind),
                        ("timesteps", d.schedule.steps), ("p_uncond", d.p_uncond)):
        given = getattr(args, name, None)
        if given is not None and given != value:
            raise _conflict(_flag(name), given, value, ckpt_path)
    return run


def _resume_gan(args: argparse.Namespace, device: str, ckpt_path: str) -> GanRun:
    from ..nn.gan import GanRun

    return _resume_generative(args, device, ckpt_path, GanRun, _check_gan_options)


def _fresh_run(args: argparse.Namespace, device: str, trainer_cls: Callable[..., Trainer]
               ) -> TrainingRun:
    """A new ``TrainingRun`` for ``args`` (no --resume)."""
    from ..nn.runs import TrainingRun, task_of_model
    from ..nn.tasks import make_task

    augment = _augment_pipeline(args.augment, args.seed)
    if args.model in GAN:
        from ..nn.gan import new_run

        return new_run(args.model, seed=args.seed, lr=args.lr, batch_size=args.batch_size,
                       schedule=_schedule(args), dtype=args.dtype, backend=args.backend,
                       augment=augment)
    if args.model in DIFFUSION:
        from ..nn.diffusion import new_run as new_diffusion_run

        options = {name: default if getattr(args, name, None) is None
                   else getattr(args, name) for name, default in DIFFUSION_DEFAULTS.items()}
        return new_diffusion_run(args.model, seed=args.seed, optimizer=_optimizer(args),
                                 batch_size=args.batch_size, schedule=_schedule(args),
                                 dtype=args.dtype, backend=args.backend, augment=augment,
                                 steps=options["timesteps"],
                                 noise_schedule=options["noise_schedule"],
                                 p_uncond=options["p_uncond"])
    model, opt, schedule = _fresh_model(args, device)
    if task_of_model(args.model) == "denoise":
        task = make_task("denoise", noise_std=DEFAULT_NOISE if args.noise is None
                         else args.noise)
    else:
        task = make_task("classify")
    trainer = trainer_cls(model, opt, schedule, batch_size=args.batch_size, seed=args.seed,
                          augment=augment, task=task)
    return TrainingRun(trainer, model_name=args.model, seed=args.seed)


def _start_out(out: str, root: bool) -> None:
    """The output folder, created; stale temporary checkpoint files that a killed
    run left in it are removed (with a note)."""
    from ..nn.checkpoint import remove_stale_temporaries

    prepare_out(out)
    if root:
        for path in remove_stale_temporaries(out):
            print(f"note: removed {path}, a partial checkpoint left by an interrupted "
                  f"run", file=sys.stderr)


def _run(args: argparse.Namespace, comm: Optional[Communicator] = None) -> int:
    from ..nn.runs import CHECKPOINT, fit
    from ..nn.training import Trainer

    root = comm is None or comm.rank == 0
    trainer_cls: Callable[..., Trainer] = Trainer
    if comm is not None:
        from functools import partial

        from ..distributed import DistributedTrainer

        trainer_cls = partial(DistributedTrainer, comm=comm)
    if args.threads is not None and comm is None:
        set_threads(args.threads)
    device = args.device or ("gpu" if args.backend == "cupy" else "cpu")
    if args.model in GAN and not args.resume:
        _check_gan_options(args, device)
    if args.model in DIFFUSION and not args.resume:
        _check_diffusion_options(args, device)
    if not args.resume:
        _check_diffusion_only(args)
    require_backend(args.backend, device)
    # Option errors first, before the checkpoint and the data are read.
    try:
        _augment_pipeline(args.augment, 0)
    except (ValueError, TypeError) as exc:  # the message names --augment
        raise CliError(str(exc)) from exc
    if args.noise is not None and args.model not in ENCDEC and not args.resume:
        raise CliError("--noise is for the denoisers (--model autoencoder or unet)")
    ckpt_path = os.path.join(args.out, CHECKPOINT)
    if args.resume:
        run = _resume(args, device, ckpt_path, trainer_cls)
        _check_diffusion_only(args)
    else:
        _apply_defaults(args)
        run = _fresh_run(args, device, trainer_cls)
    # DistributedTrainer reduces a classifier's statistics and evaluates a classifier.
    if comm is not None and run.task.name != "classify":
        raise CliError("--distributed trains the classifiers (cnn, dense) only")
    trainer, model = run.trainer, run.model
    _start_out(args.out, root)
    data_dir, (train_x, train_y) = load_data("train", args.data, args.limit)
    _, (test_x, test_y) = load_data("test", data_dir, args.test_limit)
    gan = getattr(run, "gan", None)
    name = ckpt_path if args.resume else f"--model {args.model}"
    if gan is not None:
        _check_gan_fits_data(gan, train_x, train_y, name)
    else:
        check_model_fits_data(model, train_x, name)
    diffusion = getattr(run, "diffusion", None)
    if diffusion is not None and len(train_y) and int(train_y.max()) >= diffusion.classes:
        raise CliError(f"{name}: the diffusion model has {diffusion.classes} classes, the "
                       f"data's labels reach {int(train_y.max())}")
    if args.resume:
        trained_on = run.data or {}
        if trained_on and trained_on.get("train_size") != len(train_x):
            raise CliError(f"--resume: the checkpoint was trained on "
                           f"{trained_on.get('train_size')} images but this run loads "
                           f"{len(train_x)} (use the same --limit)")
        where = (f"epoch {trainer.epoch + 1}, batch {trainer.batch}"
                 if run.task.stops_mid_epoch else
                 f"{run.model_name}, epoch {trainer.epoch + 1}")
        print(f"resuming from {ckpt_path}: {where}")
    run.data = {"train_size": len(train_x), "limit": args.limit}

    for network in (model,) if gan is None else (gan.generator, gan.discriminator):
        network.summary()
    backend = args.backend or f"auto ({_auto_backend_name(device)})"
    described = run.task.describe()
    print(f"data: {data_dir} ({len(train_x)} train, {len(test_x)} test images); "
          f"backend: {backend}; device: {device}; optimizer: {trainer.optimizer.config()}"
          + (f"; {described}" if described else ""))
    if trainer.augment is not None:
        print(f"augmentation: {trainer.augment.spec}")
    outcome = fit(run, train_x, train_y, test_x, test_y, args.epochs, args.out,
                  progress=not args.no_progress, root=root)
    return 0 if outcome == "done" else 130
