"""MatConvNet SimpleNN files: imagenet-vgg-verydeep-16.mat / -19.mat, the files most neural-style-transfer code reads.

The layout is the one MatConvNet's import-caffe.py writes (MATLAB v5, scipy.io): a `layers` cell of structs, each
with `type` ('conv', 'relu', 'pool', 'dropout', 'softmax', ...) and `name`; a conv layer's weights are either
`weights` = {filters, biases} (newer files) or the fields `filters`, `biases` (older ones). Filters are
H x W x in x out; the first layer's input channels are RGB (the importer flips Caffe's BGR). The FC layers are conv
layers after the last pooling (fc6's filter is 7 x 7 x 512 x 4096). The input convention is in the file: RGB,
0-255, minus `normalization.averageImage` (older) or `meta.normalization.averageImage` (newer), an image or a
mean colour. Pooling layers carry the importer's pad [0 1 0 1], which rounds output sizes up as Caffe did.
MATLAB v7.3 files (HDF5: cells as object references, structs as groups, arrays with their dimensions reversed, chars
as UTF-16 codes) are read through the same parser, each dataset's declared size checked against the file's before
it is read."""
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


MAX_DECLARED_PER_FILE_BYTE = 4   # v7.3 datasets may declare more than the file holds (compression): bounded


class _H5Struct:
    """A MATLAB v7.3 struct (an HDF5 group) seen as loadmat's struct objects are: fields as attributes."""

    def __init__(self, file, group, budget):
        self._file, self._group, self._budget = file, group, budget

    def __getattr__(self, name):
        if name.startswith("_") or name not in self._group:
            raise AttributeError(name)
        return _h5_value(self._file, self._group[name], self._budget)

    def get(self, name, default=None):
        return getattr(self, name) if name in self._group else default


def _h5_value(file, node, budget):
    import h5py

    if isinstance(node, h5py.Group):
        return _H5Struct(file, node, budget)
    cls = node.attrs.get("MATLAB_class", b"")
    cls = cls.decode() if isinstance(cls, bytes) else str(cls)
    if node.attrs.get("MATLAB_empty", 0):
        return None
    if node.dtype == h5py.ref_dtype or node.dtype.kind == "O":  # a cell: references to its elements
        refs = np.asarray(node[()]).T
        out = np.empty(refs.shape, object)
        for i, r in np.ndenumerate(refs):
            out[i] = _h5_value(file, file[r], budget)
        return out
    if node.is_virtual or node.external:
        raise WeightsError(f"{node.name} keeps its data outside the file; refused")
    budget[0] -= int(np.prod(node.shape, dtype=object)) * node.dtype.itemsize
    if budget[0] < 0:
        raise WeightsError(f"{node.name}: the file declares more data than it could hold; refused unread")
    a = np.asarray(node[()]).T   # MATLAB's column-major dimensions, back in MATLAB's order
    if cls == "char":
        return "".join(map(chr, a.ravel(order="F")))
    return a


def _load_v73(path: Path) -> dict:
    import h5py

    f = h5py.File(path, "r")  # kept open while the parser walks it; closed by the caller
    budget = [MAX_DECLARED_PER_FILE_BYTE * path.stat().st_size]
    return {"__file__": f, **{k: _h5_value(f, f[k], budget) for k in f if not k.startswith("#")}}


@register("matconvnet", detect=lambda head, path: head.startswith((MAGIC_V5, MAGIC_V73)), order=25)
def read(path: Path) -> Tensors:
    with open(path, "rb") as f:
        v73 = f.read(len(MAGIC_V73)) == MAGIC_V73
    try:
        if v73:
            data = _load_v73(path)
            try:
                return _parse(path, data)
            finally:
                data["__file__"].close()
        import scipy.io

        # squeeze_me=False: a squeezed 1 x 1 x in x out filter could not be told from an H x W one
        data = scipy.io.loadmat(str(path), squeeze_me=False, struct_as_record=False)
    except WeightsError as e:
        raise WeightsError(f"{path}: {e}" if not str(e).startswith(str(path)) else str(e)) from None
    except (ValueError, TypeError, OSError, KeyError, NotImplementedError, MemoryError) as e:
        raise WeightsError(f"{path}: cannot read as a MATLAB file: {str(e).splitlines()[0][:200]}") from None
    return _parse(path, data)


def _parse(path: Path, data: dict) -> Tensors:
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
