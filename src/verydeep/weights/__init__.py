"""Weights in every released format (PAPER.md section 8), one module per format in this package: a reader turns a
file into one format-neutral ``Tensors`` set (torch layouts, layers in network order) and registers itself with
``base.register`` (how to detect it, how to read it); every module here is imported, so a new format is one new
file. ``build`` maps a Tensors set onto a model by order, checking every shape, and gives it its card (card.py).

Hostile files: nothing is allocated on a file's word. Readers bound what they read by the file's own size (torch
files memory-mapped, protobuf and safetensors data present in the file, HDF5 datasets declared at most a few times
the file and read only later, as ``Lazy`` tensors). ``build`` then makes the model on the meta device, checks
every shape and dtype of the file against it, and only then allocates the model and reads the data."""
from __future__ import annotations

import importlib
import logging
import math
import os
import pkgutil
from functools import lru_cache
from pathlib import Path

import numpy as np
import torch

from ..card import Card, Preprocess
from ..errors import WeightsError
from ..models import VGG, config_name, model_config
from .base import FORMATS, Lazy, Tensors

log = logging.getLogger("verydeep")


@lru_cache(maxsize=1)
def formats() -> dict:
    """Every format module of this package, imported once (each registers itself)."""
    for m in pkgutil.iter_modules(__path__):
        if m.name != "base":
            importlib.import_module(f"{__name__}.{m.name}")
    return FORMATS


def materialise(t) -> torch.Tensor:
    return t.load() if isinstance(t, Lazy) else t


def _is_float(t) -> bool:
    if isinstance(t, Lazy):
        return np.dtype(t.dtype).kind == "f"
    return t.dtype.is_floating_point


def detect_format(path: str | os.PathLike) -> str:
    """A weight file's format from its first bytes (and, for formats without a magic number, its name)."""
    path = Path(path)
    if not path.exists():
        raise WeightsError(f"{path}: no such file")
    if path.is_dir():
        raise WeightsError(f"{path}: is a directory, not a weight file")
    if path.stat().st_size == 0:
        raise WeightsError(f"{path}: empty file")
    try:
        with open(path, "rb") as f:
            head = f.read(64)
    except OSError as e:
        raise WeightsError(f"{path}: cannot read ({e.strerror})") from None
    for fmt in sorted(formats().values(), key=lambda f: f.order):
        if fmt.detect(head, path):
            return fmt.name
    raise WeightsError(f"{path}: unrecognised weight file format (known: {', '.join(sorted(formats()))})")


def read(path: str | os.PathLike, fmt: str | None = None) -> Tensors:
    """Read any supported weight file into a Tensors set."""
    fmt = fmt or detect_format(path)
    if fmt not in formats():
        raise WeightsError(f"{path}: unknown format {fmt!r}; choose one of {', '.join(sorted(formats()))}")
    t = formats()[fmt].read(Path(path))
    if not t.convs:
        raise WeightsError(f"{path}: no convolution layers found in this {fmt} file")
    return t


def _plan(model: VGG, t: Tensors, path, strict: bool) -> list[tuple[torch.Tensor, object, str, bool]]:
    """Every (model tensor, file tensor, name, reorder) pair, checked for count, shape and dtype without reading any
    file data: on a meta-device model it allocates nothing."""
    convs = [(n, m) for n, m in model.weight_layers() if n.startswith("conv")]
    fcs = [(n, m) for n, m in model.weight_layers() if n.startswith("fc")]
    arch = config_name(model.config)
    if len(t.convs) != len(convs):
        raise WeightsError(f"{path}: file has {len(t.convs)} conv layers, model {arch} has {len(convs)}")
    if t.fcs and len(t.fcs) != len(fcs):
        raise WeightsError(f"{path}: file has {len(t.fcs)} fully-connected layers, model {arch} has {len(fcs)}")
    if not t.fcs and strict:
        raise WeightsError(f"{path}: file has no fully-connected layers (a 'notop' file?); "
                           f"load with strict=False to take its conv layers only")
    if t.bns and not model.config.batch_norm:
        raise WeightsError(f"{path}: file has batch-norm layers; use a *_bn model (e.g. vgg16_bn)")
    if model.config.batch_norm and not t.bns and strict:
        raise WeightsError(f"{path}: model {arch} has batch-norm layers but the file has none")
    if t.lrn is not None and t.lrn != model.config.lrn:
        raise WeightsError(f"{path}: the file's network {'has' if t.lrn else 'has no'} LRN layer; model {arch} "
                           f"{'has one' if model.config.lrn else 'has none'} (A and A-LRN differ only there)")
    if t.card is not None:
        have, want = t.card.config, model.config
        if (have.config, have.lrn, have.batch_norm) != (want.config, want.lrn, want.batch_norm):
            raise WeightsError(f"{path}: file holds a {config_name(have)} model, not {arch}")
    plan = []

    def add(dst, src, name, reorder=False):
        if src is None:
            raise WeightsError(f"{path}: {name}: missing in file")
        if not _is_float(src):
            raise WeightsError(f"{path}: {name}: holds {getattr(src, 'dtype', '?')} values; weights are floating "
                               f"point")
        if tuple(src.shape) != tuple(dst.shape):
            raise WeightsError(f"{path}: {name}: file has {tuple(src.shape)}, model expects {tuple(dst.shape)}")
        plan.append((dst, src, name, reorder))

    for (name, m), layer in zip(convs, t.convs):
        add(m.weight, layer.weight, f"{name}.weight")
        add(m.bias, layer.bias, f"{name}.bias")
    if t.bns:
        bn_layers = [(n, model.layer(n)) for n in model.feature_names if n.startswith("bn")]
        if len(bn_layers) != len(t.bns):
            raise WeightsError(f"{path}: file has {len(t.bns)} batch-norm layers, model {arch} has {len(bn_layers)}")
        for (name, m), bn in zip(bn_layers, t.bns):
            for key in ("weight", "bias", "running_mean", "running_var"):
                add(getattr(m, key), bn.get(key), f"{name}.{key}")
    for i, ((name, m), layer) in enumerate(zip(fcs, t.fcs)):
        k, c = model.config.head_kernel, model.feature_channels
        # Keras flattens an NHWC tensor: fc6's inputs are reordered to PyTorch's (C, H, W) flattening.
        reorder = i == 0 and t.fc6_layout == "nhwc" and layer.weight.ndim == 2 and layer.weight.shape[1] == k * k * c
        add(m.weight, layer.weight, f"{name}.weight", reorder)
        add(m.bias, layer.bias, f"{name}.bias")
    return plan


@torch.no_grad()
def assign(model: VGG, t: Tensors, path: str | os.PathLike = "<weights>", strict: bool = True) -> None:
    """Copy a Tensors set onto a model, layer by layer in network order, with a one-line error on any mismatch. Every
    shape is checked before any data is read."""
    k, c = model.config.head_kernel, model.feature_channels
    for dst, src, name, reorder in _plan(model, t, path, strict):
        try:
            w = materialise(src)
        except (OSError, ValueError, TypeError, KeyError) as e:
            raise WeightsError(f"{path}: {name}: cannot read ({str(e).splitlines()[0][:160]})") from None
        if reorder:
            w = w.reshape(w.shape[0], k, k, c).permute(0, 3, 1, 2).reshape(w.shape[0], -1)
        if not torch.isfinite(w).all():
            raise WeightsError(f"{path}: {name}: contains NaN or infinite values")
        dst.copy_(w.to(dst.dtype))


def _card(t: Tensors, cfg, preprocess: Preprocess | None, pooling: str | None = None) -> Card:
    """The card of weights read from a file: the file's own, or what its origin implies; what the caller states
    (the input convention, the pooling rule) wins."""
    card = t.card if t.card is not None else Card(cfg, preprocess=t.preprocess, origin=t.fmt, pooling=t.pooling)
    stated = {k: v for k, v in (("preprocess", preprocess), ("pooling", pooling)) if v is not None}
    return card.but(**stated) if stated else card


def load_into(model: VGG, path: str | os.PathLike, strict: bool = True, fmt: str | None = None) -> VGG:
    """Load a weight file of any format into an existing model (its card follows the file)."""
    t = read(path, fmt)
    assign(model, t, path, strict)
    model.card = _card(t, model.config, None)
    return model


def _inferred_options(t: Tensors) -> dict:
    """Architecture options implied by the tensors: input channels, width, FC width, classes, crop size."""
    first, last = t.convs[0].weight, t.convs[-1].weight
    if first.ndim != 4 or last.ndim != 4:
        raise WeightsError(f"file's first and last conv weights are {tuple(first.shape)} and {tuple(last.shape)}, "
                           f"not 4-D")
    opts = {"in_channels": int(first.shape[1]), "width": first.shape[0] / 64.0}
    if t.fcs:
        fc6 = t.fcs[0].weight
        opts["fc_width"] = int(fc6.shape[0])
        opts["num_classes"] = int(t.fcs[-1].weight.shape[0])
        k = math.isqrt(max(int(fc6.shape[1]) // int(last.shape[0]), 1))
        if k * k * last.shape[0] == fc6.shape[1]:
            opts["crop_size"] = 32 * k
    return opts


def build(path: str | os.PathLike, name: str | None = None, *, num_classes: int | None = None,
          preprocess: Preprocess | None = None, pooling: str | None = None, strict: bool = True,
          fmt: str | None = None, **options) -> VGG:
    """A model with a weight file's weights: the architecture from `name` and options, sizes the caller left out
    taken from the file (verydeep files carry their whole card). `preprocess` and `pooling` override what the file's
    origin implies (Caffe weights saved under torchvision's keys need preprocess=CAFFE)."""
    t = read(path, fmt)
    if num_classes is not None:
        options["num_classes"] = num_classes
    if t.card is not None:
        cfg = t.card.config
        if name is not None:
            want = model_config(name)
            if (want.config, want.lrn, want.batch_norm) != (cfg.config, cfg.lrn, cfg.batch_norm):
                raise WeightsError(f"{path}: file holds a {config_name(cfg)} model, not {name}")
        clash = {k: v for k, v in options.items() if getattr(cfg, k) != v}
        if clash:
            k, v = next(iter(clash.items()))
            raise WeightsError(f"{path}: {k}: file has {getattr(cfg, k)!r}, requested {v!r}")
    else:
        if name is None:
            raise WeightsError(f"{path}: a {t.fmt} file does not name its architecture; pass the model name")
        try:
            merged = {**_inferred_options(t), **options}
            cfg = model_config(name, **merged)
        except (ValueError, WeightsError) as e:
            raise WeightsError(f"{path}: {e}") from None
    with torch.device("meta"):  # every shape checked against the file before anything is allocated
        _plan(VGG(cfg, init=None), t, path, strict)  # (an init on meta tensors imports torch._dynamo: 1.7 s)
    if t.known and preprocess is not None and preprocess != t.preprocess:
        log.warning("%s is %s, made for %s input; the stated preprocessing (%s) overrides that", path, t.known,
                    convention_name(t.preprocess), convention_name(preprocess))
    # strict: the file sets every weight, so the paper's init would be drawn for nothing (1.6 s for VGG-16)
    model = VGG(_card(t, cfg, preprocess, pooling), init=None if strict else "paper")
    assign(model, t, path, strict)
    return model


def convention_name(p: Preprocess) -> str:
    from ..card import CONVENTIONS

    return next((k for k, v in CONVENTIONS.items() if v == p), f"{p.order} x{p.scale:g} mean {p.mean} std {p.std}")


def load(path: str | os.PathLike, name: str | None = None, **options) -> VGG:
    """The one way to load a net, whatever the file: verydeep files need nothing else, other formats the model
    name. In eval mode (dropout off), ready to predict; ``model.train()`` to fine-tune."""
    return build(path, name, **options).eval()


def save(model: VGG, path: str | os.PathLike) -> None:
    """Write verydeep's own format: safetensors weights plus the model card in the header."""
    from .native import write

    write(model, Path(path))
