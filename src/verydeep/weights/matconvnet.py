"""MatConvNet SimpleNN files: imagenet-vgg-verydeep-16.mat / -19.mat, the files most neural-style-transfer code reads.

The layout is the one MatConvNet's import-caffe.py writes (MATLAB v5, scipy.io): a `layers` cell of structs, each
with `type` ('conv', 'relu', 'pool', 'dropout', 'softmax', ...) and `name`; a conv layer's weights are either
`weights` = {filters, biases} (newer files) or the fields `filters`, `biases` (older ones). Filters are
H x W x in x out; the first layer's input channels are RGB (the importer flips Caffe's BGR). The FC layers are conv
layers after the last pooling (fc6's filter is 7 x 7 x 512 x 4096). The input convention is in the file: RGB,
0-255, minus `normalization.averageImage` (older) or `meta.normalization.averageImage` (newer), an image or a
mean colour. Pooling layers carry the importer's pad [0 1 0 1], which rounds output sizes up as Caffe did.
MATLAB v7.3 files (HDF5) are refused with a line saying how to convert them."""
from __future__ import annotations

from pathlib import Path

import numpy as np
import torch

from ..card import Preprocess
from ..errors import WeightsError
from .base import Layer, Tensors, register

MAGIC_V5 = b"MATLAB 5.0 MAT-file"
MAGIC_V73 = b"MATLAB 7.3 MAT-file"


def _one(v):
    """A MATLAB scalar struct or cell element as loadmat returns it (a 1x1 object array) unwrapped."""
    while isinstance(v, np.ndarray) and v.dtype == object and v.size == 1:
        v = v.ravel()[0]
    return v


def _field(s, *names):
    s = _one(s)
    for n in names:
        if s is not None and hasattr(s, n):
            return _one(getattr(s, n))
    return None


def _str(v) -> str:
    return str(v) if not isinstance(v, np.ndarray) else "".join(map(str, v.ravel()))


def _float(a, path: Path, name: str) -> np.ndarray:
    a = np.asarray(a)
    if a.dtype.kind not in "fiu":
        raise WeightsError(f"{path}: {name} is not numeric ({a.dtype})")
    return a.astype(np.float32)


@register("matconvnet", detect=lambda head, path: head.startswith((MAGIC_V5, MAGIC_V73)), order=25)
def read(path: Path) -> Tensors:
    with open(path, "rb") as f:
        if f.read(len(MAGIC_V73)) == MAGIC_V73:
            raise WeightsError(f"{path}: a MATLAB v7.3 (HDF5) file; save it as v5 in MATLAB (save(f, '-struct', "
                               f"'net', '-v7')) or load the v5 release of the same weights")
    try:
        import scipy.io
    except ImportError:  # pragma: no cover - scipy is a dependency of scikit-learn
        raise WeightsError(f"{path}: reading MatConvNet files needs scipy (pip install scipy)") from None
    try:
        # squeeze_me=False: a squeezed 1 x 1 x in x out filter could not be told from an H x W one
        data = scipy.io.loadmat(str(path), squeeze_me=False, struct_as_record=False)
    except (ValueError, TypeError, OSError, NotImplementedError, MemoryError) as e:
        raise WeightsError(f"{path}: cannot read as a MATLAB file: {str(e).splitlines()[0][:200]}") from None
    net = _one(data.get("net", None))
    root = net if net is not None and hasattr(net, "layers") else None
    layers = root.layers if root is not None else data.get("layers")
    if layers is None:
        raise WeightsError(f"{path}: MATLAB file without a `layers` cell: not a MatConvNet SimpleNN network")
    layers = [_one(v) for v in np.atleast_1d(layers).ravel()]
    kinds = [_str(_field(layer, "type") or "") for layer in layers]
    if "conv" not in kinds:
        raise WeightsError(f"{path}: no conv layers among {len(layers)} layers")
    last_pool = max((i for i, k in enumerate(kinds) if k == "pool"), default=-1)
    convs, fcs, ceil = [], [], False
    for i, (layer, kind) in enumerate(zip(layers, kinds)):
        name = _str(_field(layer, "name") or f"layer{i + 1}")
        if kind == "pool":
            pad = np.atleast_1d(_field(layer, "pad") if _field(layer, "pad") is not None else 0).ravel()
            ceil = ceil or (pad.size == 4 and (pad[1] > 0 or pad[3] > 0))
        if kind != "conv":
            continue
        w = _field(layer, "weights")
        if w is not None:
            w = [_one(v) for v in np.atleast_1d(w).ravel()]
            filters, biases = (w + [None, None])[:2]
        else:
            filters, biases = _field(layer, "filters"), _field(layer, "biases")
        if filters is None:
            raise WeightsError(f"{path}: conv layer {name!r} has no filters")
        f = _float(filters, path, f"{name} filters")
        if f.ndim == 2:  # MATLAB drops trailing singleton dimensions
            f = f.reshape(f.shape + (1, 1))
        elif f.ndim == 3:
            f = f[..., None]
        if f.ndim != 4:
            raise WeightsError(f"{path}: {name} filters have shape {f.shape}, not H x W x in x out")
        weight = torch.from_numpy(np.ascontiguousarray(f.transpose(3, 2, 0, 1)))
        bias = None if biases is None else torch.from_numpy(_float(biases, path, f"{name} biases").ravel().copy())
        if i > last_pool:  # an FC layer written as a convolution over the whole map
            fcs.append(Layer(name, weight.reshape(weight.shape[0], -1), bias))
        else:
            convs.append(Layer(name, weight, bias))
    meta = _field(root, "meta") if root is not None else _one(data.get("meta"))
    norm = _field(meta, "normalization") if meta is not None else (_field(root, "normalization") if root is not None
                                                                   else _one(data.get("normalization")))
    avg = _field(norm, "averageImage") if norm is not None else None
    preprocess = Preprocess()  # RGB, 0-255, ImageNet's mean colour: the importer's default
    if avg is not None and np.asarray(avg).size >= 3:
        a = _float(avg, path, "averageImage")
        mean = a.reshape(-1, 3).mean(0) if a.ndim != 3 else a.mean((0, 1))
        preprocess = Preprocess("RGB", 255.0, tuple(float(v) for v in mean), (1.0, 1.0, 1.0))
    return Tensors("matconvnet", convs, fcs, preprocess=preprocess, pooling="ceil" if ceil else "floor",
                   lrn="normalize" in kinds or "lrn" in kinds)
