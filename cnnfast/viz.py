"""Pictures of a trained model: first-layer filters, feature maps, Grad-CAM,
training curves, the confusion matrix and, for encoder-decoder models, denoising
examples.

The computations (:func:`grad_cam`, :func:`feature_maps`) need only numpy (or
cupy); the drawing needs matplotlib (``pip install cnnfast[viz]``), imported
lazily. The figures are built with matplotlib's object-oriented API
(``matplotlib.figure.Figure`` drawn by ``FigureCanvasAgg``): nothing here imports
``pyplot`` or calls ``matplotlib.use``, so the caller's backend (a notebook's
inline one, an interactive window) is left as it was and no display is needed.
Every PNG is written atomically: to a temporary file in the target folder, then
``os.replace``. Messages (a picture skipped) go to the ``cnnfast.viz`` logger.

Grad-CAM (Selvaraju et al., 2017) with the layers' own backward passes: the
gradient of the class logit with respect to the last convolution's output
feature maps ``A`` (N, K, h, w) (optionally after the ReLU that follows it);
channel weights ``alpha_k`` = the spatial mean of
that gradient; the map ``ReLU(sum_k alpha_k A_k)``, upsampled bilinearly to the
image size and divided by its maximum (so it lies in [0, 1]).
"""

from __future__ import annotations

import contextlib
import json
import logging
import os
from typing import (TYPE_CHECKING, Any, Callable, Dict, Iterable, Iterator, List, Optional,
                    Sequence, Tuple)

import numpy as np

from .atomic_file import write_atomic
from .nn.base import Array, to_numpy
from .nn.data import PathLike
from .nn.layers import Dropout, LeakyReLU, ReLU, _Conv, _ConvTranspose
from .nn.resample import _Block, resize_bilinear

if TYPE_CHECKING:
    from .nn.base import Layer
    from .nn.model import Sequential

logger = logging.getLogger(__name__)


def require_matplotlib() -> Any:
    """The ``matplotlib.figure.Figure`` class, or an ImportError that says how to
    install matplotlib. Neither pyplot nor the global backend is touched."""
    try:
        import matplotlib  # noqa: F401  (first: its absence is the usual failure)
        from matplotlib.figure import Figure
    except ImportError as exc:
        raise ImportError("cnnfast's pictures need matplotlib: pip install "
                          "'cnnfast[viz]' (or pip install matplotlib)") from exc
    return Figure


def new_figure(**kwargs: Any) -> Any:
    """A figure outside pyplot's figure manager, with an Agg canvas of its own:
    it draws without a display and without changing the session's backend, and is
    freed with its last reference (no ``plt.close`` to forget)."""
    Figure = require_matplotlib()
    from matplotlib.backends.backend_agg import FigureCanvasAgg

    fig = Figure(**kwargs)
    FigureCanvasAgg(fig)
    return fig


def save_figure(fig: Any, path: PathLike, dpi: int = 100) -> str:
    """Save ``fig`` (a :func:`new_figure`) as a PNG at ``path`` atomically."""
    return write_atomic(path, lambda f: fig.savefig(f, format="png", dpi=dpi,
                                                    bbox_inches="tight"), suffix=".png")


# ----------------------------------------------------------------------------- model walks


def walk_layers(layers: Iterable[Layer]) -> Iterator[Layer]:
    """Every layer, depth first, blocks' inner layers right after the block."""
    for _, layer in named_layers(layers):
        yield layer


def named_layers(layers: Iterable[Layer], prefix: str = "") -> Iterator[Tuple[str, Layer]]:
    """``(qualified name, layer)`` depth first; an inner layer of block ``skip`` is
    ``"skip.conv2d"`` (names are unique only within their block)."""
    for layer in layers:
        name = f"{prefix}{layer.name}"
        yield name, layer
        if isinstance(layer, _Block):
            yield from named_layers(layer.layers, name + ".")


def _is_conv(layer: Layer, transposed: bool) -> bool:
    return isinstance(layer, _Conv) and (transposed or not isinstance(layer, _ConvTranspose))


def conv_layers(model: Sequential, transposed: bool = True) -> List[Layer]:
    """The convolution layers of ``model`` in forward order (inside blocks too)."""
    return [layer for layer in walk_layers(model.layers) if _is_conv(layer, transposed)]


def feature_maps(model: Sequential, x: Array, transposed: bool = True) -> Dict[str, Array]:
    """``{qualified layer name: output}`` of every convolution (and transposed
    convolution, unless ``transposed=False``) for the batch ``x``, from one
    evaluation-mode forward pass."""
    targets = [(n, l) for n, l in named_layers(model.layers) if _is_conv(l, transposed)]
    outputs: Dict[str, Array] = {}

    def recorder(name: str, layer: Layer) -> Callable[..., Array]:
        forward = type(layer).forward

        def wrapped(x: Array, training: bool = False) -> Array:
            y = forward(layer, x, training)
            outputs[name] = y
            return y
        return wrapped

    # A fused model runs a convolution and its activation as one call, so the
    # convolution's own output would never pass through its forward: unfuse for now.
    fused = bool(getattr(model, "fuse", False))
    try:
        if fused:
            model.fuse = False
        for name, layer in targets:
            # An instance attribute shadows the method.
            setattr(layer, "forward", recorder(name, layer))
        model.forward(x)
    finally:
        for _, layer in targets:
            layer.__dict__.pop("forward", None)
        if fused:
            model.fuse = True
    return outputs


@contextlib.contextmanager
def _evaluation_with_caches(layers: Sequence[Layer]) -> Iterator[None]:
    """Run ``forward(x, training=True)`` with evaluation semantics, so that the
    layers keep what their backward needs: every layer frozen (BatchNorm then uses
    its running statistics, no parameter gradients are computed) and dropout off."""
    saved: List[Tuple[Layer, bool, Any]] = []
    for layer in walk_layers(layers):
        own = layer.__dict__.get("_trainable", layer.trainable) if isinstance(
            layer, _Block) else layer.trainable
        saved.append((layer, own, getattr(layer, "rate", None)))
    try:
        for layer, _, rate in saved:
            layer.trainable = False
            if isinstance(layer, Dropout):
                layer.rate = 0.0
        yield
    finally:
        for layer, own, rate in saved:  # outer blocks first: they push their flag down
            layer.trainable = own
            if isinstance(layer, Dropout):
                layer.rate = rate
            layer._cache = None
            layer.grads = {}


def grad_cam(model: Sequential, x: Array, class_index: Any = None,
             layer: Optional[str] = None, rectified: bool = False
             ) -> Tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Grad-CAM heatmaps for the batch ``x`` (N, C, H, W).

    ``class_index``: None (each image's predicted class), an int, or one per image.
    ``layer``: the name of a top-level convolution (default: the last one).
    ``rectified``: when a ReLU (or LeakyReLU) follows that convolution directly,
    use its output as the feature maps ``A`` instead of the convolution's raw
    output (the default). On small Fashion-MNIST CNNs with a dense head, the
    rectified maps more often give an all-zero heatmap.
    Returns ``(heatmaps (N, H, W) float64 numpy in [0, 1], classes (N,) int,
    logits (N, classes) numpy)``. An image whose map is zero everywhere (no
    positive evidence) gets an all-zero heatmap."""
    layers = model.layers
    candidates = [i for i, l in enumerate(layers) if isinstance(l, _Conv)]
    if layer is not None:
        candidates = [i for i in candidates if layers[i].name == layer]
        if not candidates:
            raise ValueError(f"layer={layer!r} is not a top-level convolution of the model")
    if not candidates:
        raise ValueError("Grad-CAM needs a model with a convolution layer at the top level")
    k = candidates[-1]
    if rectified and k + 1 < len(layers) and isinstance(layers[k + 1], (ReLU, LeakyReLU)):
        k += 1  # the rectified feature maps, as the paper's VGG "relu5_3"
    if model.output_shape is None or len(model.output_shape) != 1:
        raise ValueError(f"Grad-CAM needs a classifier (output (classes,)), this model "
                         f"outputs {model.output_shape}")
    xp = model.xp
    n = x.shape[0]
    a = x
    for l in layers[:k + 1]:
        a = l.forward(a, training=False)
    with _evaluation_with_caches(layers[k + 1:]):
        out = a
        for l in layers[k + 1:]:
            out = l.forward(out, training=True)
        logits = np.asarray(to_numpy(out))
        if class_index is None:
            classes = logits.argmax(axis=1)
        else:
            classes = np.broadcast_to(np.asarray(class_index, dtype=np.int64), (n,)).copy()
            if classes.min() < 0 or classes.max() >= logits.shape[1]:
                raise ValueError(f"class_index={class_index!r} outside [0, {logits.shape[1]})")
        onehot = np.zeros(logits.shape, np.dtype(model.dtype))
        onehot[np.arange(n), classes] = 1
        grad = xp.asarray(onehot)
        for l in reversed(layers[k + 1:]):
            grad = l.backward(grad, need_input_grad=True)
    alpha = grad.mean(axis=(2, 3), keepdims=True)
    cam = xp.maximum((alpha * a).sum(axis=1), 0).astype(np.float64)
    cam = xp.maximum(resize_bilinear(cam, x.shape[2:]), 0)
    peak = cam.max(axis=(1, 2), keepdims=True)
    cam = xp.where(peak > 0, cam / xp.where(peak > 0, peak, 1), 0)
    return np.asarray(to_numpy(cam)), classes, logits


def heat_inside_outside(heatmaps: Any, images: Any, threshold: float = 0.1
                        ) -> Tuple[np.ndarray, np.ndarray]:
    """Per image, the mean heat on the object's pixels (``image > threshold``) and
    the mean heat on the background: two (N,) arrays (NaN where a region is empty).
    ``images``: (N, H, W) in [0, 1]."""
    inside, outside = [], []
    for h, img in zip(np.asarray(heatmaps), np.asarray(images)):
        mask = img > threshold
        inside.append(h[mask].mean() if mask.any() else np.nan)
        outside.append(h[~mask].mean() if not mask.all() else np.nan)
    return np.asarray(inside, np.float64), np.asarray(outside, np.float64)


# ----------------------------------------------------------------------------- pictures


def _grid(count: int, max_cols: int = 8) -> Tuple[int, int]:
    cols = min(count, max_cols)
    return (count + cols - 1) // cols, cols


def plot_filters(model: Sequential, path: PathLike, max_filters: int = 64) -> str:
    """The first convolution's filters, one panel each (first input channel, or RGB
    for 3 input channels), on a symmetric colour scale per filter."""
    convs = conv_layers(model, transposed=False)
    if not convs:
        raise ValueError("the model has no convolution")
    first = convs[0]
    w = np.asarray(to_numpy(first.params["weight"])).astype(np.float64)
    if w.ndim != 4:
        raise NotImplementedError(f"filters of a {w.ndim - 2}-D convolution are not drawn")
    count = min(w.shape[0], max_filters)
    rows, cols = _grid(count)
    fig = new_figure(figsize=(1.1 * cols, 1.1 * rows + 0.4), layout="constrained")
    axes = fig.subplots(rows, cols, squeeze=False)
    for i, ax in enumerate(axes.flat):
        ax.axis("off")
        if i >= count:
            continue
        if w.shape[1] == 3:
            f = w[i].transpose(1, 2, 0)
            f = (f - f.min()) / max(f.max() - f.min(), 1e-12)
            ax.imshow(f, interpolation="nearest")
        else:
            lim = max(np.abs(w[i, 0]).max(), 1e-12)
            ax.imshow(w[i, 0], cmap="RdBu_r", vmin=-lim, vmax=lim, interpolation="nearest")
    fig.suptitle(f"{first.name}: {w.shape[0]} filters {w.shape[2]}x{w.shape[3]}"
                 + (f" (first {count})" if count < w.shape[0] else "")
                 + ("" if w.shape[1] in (1, 3) else ", input channel 0"), fontsize=9)
    return save_figure(fig, path)


def plot_feature_maps(name: str, maps: Any, image: Any, path: PathLike,
                      max_maps: int = 32) -> str:
    """One convolution's output channels for one image (``maps`` (K, h, w))."""
    maps = np.asarray(maps, dtype=np.float64)
    count = min(maps.shape[0], max_maps)
    rows, cols = _grid(count + 1)
    fig = new_figure(figsize=(1.2 * cols, 1.2 * rows + 0.4), layout="constrained")
    axes = fig.subplots(rows, cols, squeeze=False)
    for ax in axes.flat:
        ax.axis("off")
    axes.flat[0].imshow(image, cmap="gray", vmin=0, vmax=1)
    axes.flat[0].set_title("input", fontsize=7)
    for i in range(count):
        ax = axes.flat[i + 1]
        ax.imshow(maps[i], cmap="viridis", interpolation="nearest")
        ax.set_title(f"ch {i}", fontsize=7)
    fig.suptitle(f"{name}: {maps.shape[0]} maps {maps.shape[1]}x{maps.shape[2]}"
                 + (f" (first {count})" if count < maps.shape[0] else ""), fontsize=9)
    return save_figure(fig, path)


def plot_grad_cam(images: Any, heatmaps: Any, titles: Sequence[Tuple[str, str]],
                  path: PathLike) -> str:
    """Each image above its Grad-CAM overlay (``images``, ``heatmaps``: (N, H, W))."""
    n = len(images)
    fig = new_figure(figsize=(1.6 * n, 3.6))
    axes = fig.subplots(2, n, squeeze=False)
    for i in range(n):
        top, bottom = axes[0, i], axes[1, i]
        top.imshow(images[i], cmap="gray", vmin=0, vmax=1)
        top.set_title(titles[i][0], fontsize=7)
        bottom.imshow(images[i], cmap="gray", vmin=0, vmax=1)
        bottom.imshow(heatmaps[i], cmap="jet", alpha=0.5, vmin=0, vmax=1)
        bottom.set_title(titles[i][1], fontsize=7)
        top.axis("off")
        bottom.axis("off")
    fig.suptitle("Grad-CAM (top: image, true class; bottom: heatmap for the explained class)",
                 fontsize=9)
    return save_figure(fig, path)


def read_metrics(path: PathLike) -> List[Dict[str, Any]]:
    """The JSON lines of a ``metrics.jsonl`` file (blank lines skipped); a line
    that is not a JSON object is a ValueError naming the file and line."""
    rows = []
    with open(path) as f:
        for number, line in enumerate(f, 1):
            if not line.strip():
                continue
            try:
                row = json.loads(line)
            except ValueError as exc:
                raise ValueError(f"{path}, line {number}: not JSON ({exc})") from exc
            if not isinstance(row, dict):
                raise ValueError(f"{path}, line {number}: not a JSON object")
            rows.append(row)
    return rows


def plot_curves(history: List[Dict[str, Any]], path: PathLike) -> str:
    """Loss, accuracy and PSNR per epoch from ``cnnfast train``'s metrics (keys
    ``epoch``, ``train_loss``, ``test_loss``, ``train_acc``, ``test_acc``,
    ``psnr_noisy``, ``psnr_denoised``; a panel whose keys are all missing is left
    out)."""
    if not history:
        raise ValueError("no metrics to plot")
    known = [("loss", ("train_loss", "test_loss")), ("accuracy", ("train_acc", "test_acc")),
             ("PSNR (dB)", ("psnr_noisy", "psnr_denoised"))]
    panels = [(t, [k for k in keys if any(k in m for m in history)]) for t, keys in known]
    panels = [(t, keys) for t, keys in panels if keys]
    if not panels:
        raise ValueError(f"no known metric in the history (keys: {sorted(history[0])})")
    return _plot_panels(history, panels, path)


def _plot_panels(history: List[Dict[str, Any]], panels: Sequence[Tuple[str, Sequence[str]]],
                 path: PathLike, labels: Optional[Dict[str, str]] = None) -> str:
    """One panel per ``(title, keys)``: each key's values per epoch (the epochs a
    record lacks it are skipped), labelled by ``labels`` or the key itself."""
    epochs = [m.get("epoch", i + 1) for i, m in enumerate(history)]
    fig = new_figure(figsize=(4.2 * len(panels), 3.2))
    axes = fig.subplots(1, len(panels), squeeze=False)
    for ax, (title, keys) in zip(axes[0], panels):
        for key in keys:
            pts = [(e, m[key]) for e, m in zip(epochs, history) if key in m]
            ax.plot([p[0] for p in pts], [p[1] for p in pts], marker="o", markersize=3,
                    label=(labels or {}).get(key, key.replace("_", " ")))
        ax.set_xlabel("epoch")
        ax.set_title(title, fontsize=10)
        ax.grid(alpha=0.3)
        ax.legend(fontsize=8)
    return save_figure(fig, path)


def plot_confusion(confusion: Any, class_names: Optional[Sequence[str]],
                   path: PathLike) -> str:
    """The confusion matrix (rows: true class, columns: predicted), row-normalised
    colours with the counts written in."""
    conf = np.asarray(confusion)
    k = conf.shape[0]
    names = (list(class_names) if class_names and len(class_names) == k
             else [str(i) for i in range(k)])
    rates = conf / np.maximum(conf.sum(axis=1, keepdims=True), 1)
    fig = new_figure(figsize=(0.55 * k + 2.5, 0.55 * k + 1.8))
    ax = fig.subplots()
    ax.imshow(rates, cmap="Blues", vmin=0, vmax=1)
    for i in range(k):
        for j in range(k):
            if conf[i, j]:
                ax.text(j, i, str(int(conf[i, j])), ha="center", va="center", fontsize=7,
                        color="white" if rates[i, j] > 0.5 else "black")
    ax.set_xticks(range(k))
    ax.set_xticklabels(names, rotation=45, ha="right", fontsize=8)
    ax.set_yticks(range(k))
    ax.set_yticklabels(names, fontsize=8)
    ax.set_xlabel("predicted")
    ax.set_ylabel("true")
    acc = conf.trace() / max(conf.sum(), 1)
    ax.set_title(f"confusion matrix: accuracy {acc:.4f} on {int(conf.sum())} images",
                 fontsize=10)
    return save_figure(fig, path)


def plot_denoising(noisy: Any, output: Any, clean: Any, path: PathLike) -> str:
    """Rows: noisy input, model output, clean image (each (N, H, W) in [0, 1]),
    with each image's PSNR in the titles."""
    from .nn.encdec import psnr

    n = len(clean)
    fig = new_figure(figsize=(1.3 * n, 4.4))
    axes = fig.subplots(3, n, squeeze=False)
    for i in range(n):
        for r, (img, label) in enumerate(((noisy[i], "noisy"), (output[i], "output"),
                                          (clean[i], "clean"))):
            ax = axes[r, i]
            ax.imshow(img, cmap="gray", vmin=0, vmax=1)
            ax.axis("off")
            if r < 2:
                ax.set_title(f"{label} {psnr(img, clean[i]):.1f} dB", fontsize=7)
            else:
                ax.set_title(label, fontsize=7)
    fig.suptitle(f"denoising: PSNR noisy {psnr(noisy, clean):.2f} dB -> output "
                 f"{psnr(output, clean):.2f} dB", fontsize=9)
    return save_figure(fig, path)


# ----------------------------------------------------------------------------- everything


def _first_channel(batch: Array) -> np.ndarray:
    return np.asarray(to_numpy(batch))[:, 0]


def visualize(model: Sequential, images: Any, out_dir: PathLike, *, labels: Any = None,
              image_index: int = 0, class_index: Optional[int] = None,
              history: Optional[List[Dict[str, Any]]] = None,
              class_names: Optional[Sequence[str]] = None, noise_std: float = 0.3,
              seed: int = 0, cam_images: int = 8, denoise_images: int = 8,
              log: Optional[Callable[[str], Any]] = None) -> List[str]:
    """Write every picture that applies to ``model`` into ``out_dir``; returns the
    paths. ``images``: uint8 or float (N, C, H, W) test images (float in [0, 1]);
    ``labels`` (N,) for the confusion matrix and titles; ``history``: the metrics
    per epoch. Classifiers get filters, feature maps, Grad-CAM, curves and the
    confusion matrix; image-to-image models get filters, feature maps, curves and
    the denoising grid. A picture that does not apply is reported through ``log``
    (default: ``logging.getLogger("cnnfast.viz").info``)."""
    from .nn.data import to_float
    from .nn.encdec import add_noise, is_encdec

    require_matplotlib()
    log = log or logger.info
    if not 0 <= image_index < len(images):
        raise ValueError(f"image index {image_index} outside [0, {len(images)})")
    xp = model.xp

    def as_float(batch: Any) -> Array:
        if np.asarray(to_numpy(batch)).dtype == np.uint8:
            return to_float(batch, model.dtype, xp)
        return xp.asarray(batch).astype(model.dtype, copy=False)

    written: List[str] = []
    os.makedirs(out_dir, exist_ok=True)
    encdec = is_encdec(model)
    if conv_layers(model, transposed=False):
        written.append(plot_filters(model, os.path.join(out_dir, "filters.png")))
    one = as_float(images[image_index:image_index + 1])
    if encdec:  # what the model sees when it denoises
        one = add_noise(one, noise_std, np.random.default_rng(seed))
    maps = feature_maps(model, one)
    for i, (name, fmap) in enumerate(maps.items()):
        written.append(plot_feature_maps(name, np.asarray(to_numpy(fmap))[0],
                                         _first_channel(one)[0],
                                         os.path.join(out_dir, f"features_{i:02d}_{name}.png")))
    if history:
        written.append(plot_curves(history, os.path.join(out_dir, "curves.png")))
    else:
        log("no metrics history: curves.png skipped")
    if encdec:
        sel = slice(image_index, min(image_index + denoise_images, len(images)))
        clean = as_float(images[sel])
        noisy = add_noise(clean, noise_std, np.random.default_rng(seed))
        out = model.predict(noisy)
        written.append(plot_denoising(_first_channel(noisy), _first_channel(out),
                                      _first_channel(clean),
                                      os.path.join(out_dir, "denoising.png")))
        return written
    if any(isinstance(layer, _Conv) for layer in model.layers):
        written.append(_grad_cam_picture(model, images[image_index:image_index + cam_images],
                                         image_index, as_float, labels, class_index,
                                         class_names, out_dir))
    else:  # a dense classifier: nothing for Grad-CAM to look at
        log("no top-level convolution: gradcam.png skipped")
    if labels is not None:
        from .nn.training import evaluate

        images_u8 = np.asarray(to_numpy(images))
        if images_u8.dtype != np.uint8:
            images_u8 = np.clip(np.rint(images_u8 * 255), 0, 255).astype(np.uint8)
        result = evaluate(model, images_u8, np.asarray(to_numpy(labels)))
        written.append(plot_confusion(result["confusion"], class_names,
                                      os.path.join(out_dir, "confusion.png")))
    return written


def _grad_cam_picture(model: Sequential, images: Any, image_index: int,
                      as_float: Callable[[Any], Array], labels: Any, class_index: Any,
                      class_names: Optional[Sequence[str]], out_dir: PathLike) -> str:
    """gradcam.png for the test images from ``image_index`` (``images`` is that slice)."""
    batch = as_float(images)
    heat, classes, logits = grad_cam(model, batch, class_index)
    probs = np.exp(logits - logits.max(axis=1, keepdims=True))
    probs /= probs.sum(axis=1, keepdims=True)
    names = list(class_names) if class_names else [str(i) for i in range(logits.shape[1])]
    titles = []
    for j, c in enumerate(classes):
        i = image_index + j
        true = f"#{i} {names[int(labels[i])]}" if labels is not None else f"#{i}"
        pred = int(logits[j].argmax())
        what = "pred" if class_index is None else "class"
        titles.append((true, f"{what} {names[int(c)]} {probs[j, int(c)]:.2f}"
                       + ("" if class_index is None or pred == c else f"\n(pred {names[pred]})")))
    return plot_grad_cam(_first_channel(batch), heat, titles,
                         os.path.join(out_dir, "gradcam.png"))


# ----------------------------------------------------------------------------- generative models
# The tiles of these pictures are computed here and written by the caller as
# greyscale PNG grids (``cnnfast visualize`` uses ``cnnfast sample``'s writer), so a
# tile is the image itself, pixel for pixel; only the curves need matplotlib.

FORWARD_FRACTIONS = (0.0, 0.1, 0.25, 0.5, 0.75, 1.0)


def forward_timesteps(steps: int, fractions: Sequence[float] = FORWARD_FRACTIONS
                      ) -> List[int]:
    """The distinct timesteps ``min(int(f * steps), steps - 1)`` for ``fractions``
    (default: 0, T/10, T/4, T/2, 3T/4, T - 1), in increasing order."""
    if isinstance(steps, bool) or not isinstance(steps, (int, np.integer)) or steps < 1:
        raise ValueError(f"steps={steps!r} must be a positive int")
    if any(not 0 <= f <= 1 for f in fractions):
        raise ValueError(f"fractions={tuple(fractions)!r} must lie in [0, 1]")
    return sorted({min(int(f * steps), int(steps) - 1) for f in fractions})


def forward_noising(diffusion: Any, image: Any, timesteps: Sequence[int],
                    rng: np.random.Generator) -> np.ndarray:
    """The clean ``image`` ((C, H, W) in [0, 1], or uint8) then ``q(x_t | x_0)`` at
    each of ``timesteps``, as ``(1 + len(timesteps), C, H, W)`` float in [0, 1] (the
    model's [-1, 1] mapped back, clipped). One noise draw from ``rng`` serves every
    ``t``, so the tiles show the same noise growing over the image."""
    x0 = np.asarray(to_numpy(image))
    if x0.dtype == np.uint8:
        x0 = x0.astype(np.float64) / 255
    shape = tuple(diffusion.image_shape)
    if x0.shape != shape:
        raise ValueError(f"image {x0.shape}: the model's images are {shape}")
    t = np.asarray(timesteps, np.int64)
    noise = rng.standard_normal(shape)
    x = np.repeat(x0[None] * 2 - 1, len(t), axis=0)
    x_t = diffusion.schedule.q_sample(x, t, np.repeat(noise[None], len(t), axis=0))
    return np.concatenate([x0[None], np.clip((x_t + 1) / 2, 0, 1)])


def reverse_trajectory(diffusion: Any, labels: Any, rng: np.random.Generator,
                       steps: Optional[int] = None, frames: int = 8,
                       guidance: float = 0.0) -> Tuple[List[int], np.ndarray]:
    """The reverse process of ``diffusion.sample(labels, rng, steps, guidance)`` caught at
    ``frames`` evenly spaced points: ``(times, x)`` with ``x`` (N, frames', C, H, W) in
    [0, 1] (``frames' <= frames``) and ``times`` the timestep each frame enters (-1:
    the final sample, the last frame; it equals what ``sample`` returns)."""
    from .nn.diffusion import sample

    labels = np.asarray(labels)
    if labels.ndim != 1 or not labels.size or labels.dtype.kind not in "iu" or \
            labels.min() < 0 or labels.max() >= diffusion.classes:
        raise ValueError(f"labels must be a non-empty (N,) of ints in "
                         f"[0, {diffusion.classes})")
    if frames < 2:
        raise ValueError(f"frames={frames!r} must be >= 2")
    states: List[np.ndarray] = []
    times: List[int] = []

    def eps_model(x: Array, t: np.ndarray, y: Optional[np.ndarray]) -> Array:
        if y is not None:  # the conditional call: once per step, before the step
            states.append(np.asarray(to_numpy(x)))
            times.append(int(t[0]))
        return diffusion.predict_noise(x, t, y)

    total = diffusion.schedule.steps
    method = "ddpm" if steps is None or int(steps) == total else "ddim"
    xp, dtype = diffusion.net.xp, diffusion.net.dtype
    x = sample(eps_model, diffusion.schedule, (len(labels),) + tuple(diffusion.image_shape),
               rng, labels=labels, steps=steps, method=method, guidance=guidance,
               dtype=dtype, xp=xp)
    states.append(np.asarray(to_numpy(x)))
    times.append(-1)
    pick = np.unique(np.linspace(0, len(states) - 1, frames).round().astype(int))
    # the same mapping to [0, 1] as Diffusion.sample
    tiles = np.stack([np.clip((states[i] + 1) * dtype.type(0.5), 0, 1) for i in pick],
                     axis=1)
    return [times[i] for i in pick], tiles


GENERATIVE_PANELS = {
    "gan": [("losses", ("d_loss", "g_loss")), ("D on test images", ("d_real", "d_fake"))],
    "diffusion": [("noise-prediction MSE", ("train_loss", "test_loss"))],
}
_CURVE_LABELS = {"d_loss": "D loss", "g_loss": "G loss", "d_real": "D(real)",
                 "d_fake": "D(fake)"}


def generative_panels(history: List[Dict[str, Any]], task: str
                      ) -> List[Tuple[str, List[str]]]:
    """``(title, keys)`` of the panels :func:`plot_generative_curves` draws for
    ``history`` (a ValueError when there is nothing to draw: a caller can check
    before any work)."""
    if task not in GENERATIVE_PANELS:
        raise ValueError(f"task={task!r}: expected one of {', '.join(GENERATIVE_PANELS)}")
    if not history:
        raise ValueError("no metrics to plot")
    panels = [(t, [k for k in keys if any(k in m for m in history)])
              for t, keys in GENERATIVE_PANELS[task]]
    panels = [(t, keys) for t, keys in panels if keys]
    if not panels:
        raise ValueError(f"no {task} metric in the history (keys: {sorted(history[0])})")
    return panels


def plot_generative_curves(history: List[Dict[str, Any]], task: str,
                           path: PathLike) -> str:
    """Training curves of a GAN (``task="gan"``: ``d_loss``, ``g_loss``; ``d_real``,
    ``d_fake``) or a diffusion model (``"diffusion"``: ``train_loss``, ``test_loss``,
    the noise-prediction MSE) per epoch, from ``cnnfast train``'s metrics."""
    return _plot_panels(history, generative_panels(history, task), path, _CURVE_LABELS)
