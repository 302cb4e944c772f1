"""Keras weights: HDF5 files in the legacy layout of the distributed vgg16/vgg19_weights_tf_dim_ordering_tf_kernels.h5 files
(root attribute layer_names, per-layer weight_names; also inside a full model's 'model_weights' group) and the
layout Keras 3 writes with save_weights (layers/<auto-name>/vars/<i>). Kernels are HWIO (conv) and (in, out)
(dense); the first dense layer flattens an NHWC tensor, which assign() reorders. Expects Caffe preprocessing. Keras 3
`.keras` archives (a zip holding model.weights.h5 in the Keras 3 layout) are read through the same path."""
from __future__ import annotations

import re
import shutil
import tempfile
import zipfile
from pathlib import Path

import numpy as np
from ..errors import WeightsError
from ..card import CAFFE
from .base import Layer, Lazy, Tensors, register

MAGIC_HDF5 = b"\x89HDF\r\n\x1a\n"

# HDF5 datasets can declare more than the file holds (unallocated or compressed storage). Keras writes weights
# uncompressed, so a weight file declares about its own size; more than this many times is refused unread.
MAX_DECLARED_PER_FILE_BYTE = 4


def _natural(key: str):
    """conv2d, conv2d_1, ..., conv2d_10: Keras' auto-names in creation order."""
    m = re.match(r"^(.*?)(?:_(\d+))?$", key)
    return m.group(1), int(m.group(2) or 0)


class _Budget:
    """Declared dataset bytes so far, against what the file could hold."""

    def __init__(self, path: Path):
        self.path, self.used = path, 0
        self.limit = MAX_DECLARED_PER_FILE_BYTE * path.stat().st_size

    def take(self, nbytes: int, name: str) -> None:
        self.used += nbytes
        if self.used > self.limit:
            raise WeightsError(f"{self.path}: {name}: the file declares over {self.used:,} bytes of weights but is "
                               f"{self.path.stat().st_size:,} bytes long; refused unread")


def _array(group, key: str, path: Path, name: str, budget: _Budget) -> Lazy:
    """A dataset as a Lazy tensor: its shape and dtype now, its data when assign() asks, after the shape check."""
    import h5py

    link = group.get(key, getlink=True)
    if not isinstance(link, h5py.HardLink):
        raise WeightsError(f"{path}: {name} is a link to elsewhere ({type(link).__name__}); refused")
    ds = group[key]
    if not isinstance(ds, h5py.Dataset):
        raise WeightsError(f"{path}: {name} is not a dataset")
    if ds.is_virtual or ds.external:
        raise WeightsError(f"{path}: {name} keeps its data outside the file; refused")
    if ds.dtype.kind != "f" or ds.ndim > 4:
        raise WeightsError(f"{path}: {name} has unsupported shape {ds.shape} or dtype {ds.dtype}")
    budget.take(int(np.prod(ds.shape, dtype=object)) * ds.dtype.itemsize, name)
    dataset_name = ds.name

    def read() -> np.ndarray:
        with h5py.File(path, "r") as f:
            return np.asarray(f[dataset_name][()], dtype=np.float32)
    return Lazy(tuple(int(d) for d in ds.shape), ds.dtype, read)


def _decoded(names) -> list[str]:
    return [n.decode() if isinstance(n, bytes) else str(n) for n in np.atleast_1d(np.asarray(names))]


def _legacy_layers(group, path: Path, budget: _Budget) -> list[tuple[str, list[Lazy]]]:
    import h5py

    names = _decoded(group.attrs["layer_names"])
    out = []
    for lname in names:
        if lname not in group or not isinstance(group[lname], h5py.Group):
            raise WeightsError(f"{path}: layer {lname!r} listed in layer_names is missing")
        g = group[lname]
        wnames = _decoded(g.attrs["weight_names"]) if "weight_names" in g.attrs else []
        arrays = []
        for w in wnames:
            if w not in g:
                raise WeightsError(f"{path}: {lname}/{w} listed in weight_names is missing")
            arrays.append(_array(g, w, path, f"{lname}/{w}", budget))
        out.append((lname, arrays))
    return out


def _keras3_layers(group, path: Path, budget: _Budget) -> list[tuple[str, list[Lazy]]]:
    import h5py

    out = []
    for key in sorted(group, key=_natural):
        g = group[key]
        if not isinstance(g, h5py.Group) or not isinstance(g.get("vars"), h5py.Group):
            continue
        v = g["vars"]
        if not all(i.isdigit() for i in v):
            raise WeightsError(f"{path}: {key}/vars holds {sorted(v)[:3]}; Keras 3 numbers its variables")
        arrays = [_array(v, i, path, f"{key}/vars/{i}", budget) for i in sorted(v, key=int)]
        out.append((key, arrays))
    return out


def _transposed(t: Lazy, axes: tuple[int, ...]) -> Lazy:
    return Lazy(tuple(t.shape[a] for a in axes), t.dtype, lambda: t.read().transpose(axes))


@register("keras", detect=lambda head, path: head.startswith(MAGIC_HDF5), order=20)
def read(path: Path) -> Tensors:
    try:
        import h5py
    except ImportError:  # pragma: no cover - h5py is a dependency
        raise WeightsError(f"{path}: reading Keras .h5 files needs h5py (pip install h5py)") from None
    budget = _Budget(path)
    try:
        with h5py.File(path, "r") as f:
            root = f["model_weights"] if isinstance(f.get("model_weights"), h5py.Group) else f
            if "layer_names" in root.attrs:
                layers = _legacy_layers(root, path, budget)
            elif isinstance(root.get("layers"), h5py.Group):
                layers = _keras3_layers(root["layers"], path, budget)
            else:
                raise WeightsError(f"{path}: HDF5 file is not a Keras weight file (no layer_names, no layers/)")
    except WeightsError:
        raise
    except (OSError, KeyError, ValueError, TypeError, AttributeError) as e:
        raise WeightsError(f"{path}: cannot read as Keras HDF5: {str(e).splitlines()[0][:200]}") from None
    convs, fcs = [], []
    for lname, arrays in layers:
        kernels = [a for a in arrays if a.ndim in (2, 4)]
        biases = [a for a in arrays if a.ndim == 1]
        if not kernels:
            if arrays:
                raise WeightsError(f"{path}: layer {lname!r} holds unsupported weights (batch norm?)")
            continue
        if len(kernels) != 1 or len(biases) > 1:
            raise WeightsError(f"{path}: layer {lname!r} has {len(arrays)} weight arrays; expected kernel and bias")
        k = kernels[0]
        b = biases[0] if biases else None
        if k.ndim == 4:  # HWIO -> OIHW
            convs.append(Layer(lname, _transposed(k, (3, 2, 0, 1)), b))
        else:  # (in, out) -> (out, in)
            fcs.append(Layer(lname, _transposed(k, (1, 0)), b))
    return Tensors("keras", convs, fcs, fc6_layout="nhwc", preprocess=CAFFE)


ARCHIVE_MEMBER = "model.weights.h5"
MAX_MEMBER_PER_ARCHIVE_BYTE = 8   # weights barely compress: a member far larger than its archive is a zip bomb


def _is_keras_archive(head: bytes, path: Path) -> bool:
    if not head.startswith(b"PK\x03\x04"):
        return False
    try:
        with zipfile.ZipFile(path) as z:
            return ARCHIVE_MEMBER in z.namelist()
    except (OSError, zipfile.BadZipFile):
        return False


@register("keras-archive", detect=_is_keras_archive, order=35)  # before torch's zip archives
def read_archive(path: Path) -> Tensors:
    """A Keras 3 .keras file: its model.weights.h5, extracted (bounded by the archive's size) and read as above; the
    tensors are loaded before the extracted copy is removed."""
    try:
        with zipfile.ZipFile(path) as z:
            info = z.getinfo(ARCHIVE_MEMBER)
            if info.file_size > MAX_MEMBER_PER_ARCHIVE_BYTE * path.stat().st_size:
                raise WeightsError(f"{path}: {ARCHIVE_MEMBER} claims {info.file_size:,} bytes in a "
                                   f"{path.stat().st_size:,}-byte archive; refused")
            tmp = Path(tempfile.mkdtemp(prefix="verydeep-keras-"))
            try:
                with z.open(info) as src, open(tmp / ARCHIVE_MEMBER, "wb") as dst:
                    shutil.copyfileobj(src, dst)
                t = read(tmp / ARCHIVE_MEMBER)
                for layer in t.convs + t.fcs:
                    layer.weight = layer.weight.load() if isinstance(layer.weight, Lazy) else layer.weight
                    layer.bias = layer.bias.load() if isinstance(layer.bias, Lazy) else layer.bias
            finally:
                shutil.rmtree(tmp, ignore_errors=True)
    except WeightsError as e:
        raise WeightsError(str(e).replace(str(tmp / ARCHIVE_MEMBER) if "tmp" in locals() else "\0",
                                          f"{path}!{ARCHIVE_MEMBER}")) from None
    except (OSError, zipfile.BadZipFile, KeyError, ValueError) as e:
        raise WeightsError(f"{path}: cannot read as a Keras archive: {str(e).splitlines()[0][:200]}") from None
    return t
