"""Keras HDF5 weights: the legacy layout of the distributed vgg16/vgg19_weights_tf_dim_ordering_tf_kernels.h5 files
(root attribute layer_names, per-layer weight_names; also inside a full model's 'model_weights' group) and the
layout Keras 3 writes with save_weights (layers/<auto-name>/vars/<i>). Kernels are HWIO (conv) and (in, out)
(dense); the first dense layer flattens an NHWC tensor, which assign() reorders. Expects Caffe preprocessing."""
from __future__ import annotations

import re
from pathlib import Path

import numpy as np
import torch

from ..errors import WeightsError
from ..models import CAFFE
from . import Layer, Tensors

# Refuse absurd datasets before reading them: VGG-19's largest tensor has ~103M elements.
MAX_ELEMENTS = 1 << 31


def _natural(key: str):
    """conv2d, conv2d_1, ..., conv2d_10: Keras' auto-names in creation order."""
    m = re.match(r"^(.*?)(?:_(\d+))?$", key)
    return m.group(1), int(m.group(2) or 0)


def _array(ds, path: Path, name: str) -> np.ndarray:
    import h5py

    if not isinstance(ds, h5py.Dataset):
        raise WeightsError(f"{path}: {name} is not a dataset")
    if ds.size > MAX_ELEMENTS or ds.dtype.kind != "f":
        raise WeightsError(f"{path}: {name} has unsupported shape {ds.shape} or dtype {ds.dtype}")
    return np.asarray(ds[()], dtype=np.float32)


def _legacy_layers(group, path: Path) -> list[tuple[str, list[np.ndarray]]]:
    names = [n.decode() if isinstance(n, bytes) else str(n) for n in group.attrs["layer_names"]]
    out = []
    for lname in names:
        if lname not in group:
            raise WeightsError(f"{path}: layer {lname!r} listed in layer_names is missing")
        g = group[lname]
        wnames = [n.decode() if isinstance(n, bytes) else str(n) for n in g.attrs.get("weight_names", [])]
        arrays = []
        for w in wnames:
            if w not in g:
                raise WeightsError(f"{path}: {lname}/{w} listed in weight_names is missing")
            arrays.append(_array(g[w], path, f"{lname}/{w}"))
        out.append((lname, arrays))
    return out


def _keras3_layers(group, path: Path) -> list[tuple[str, list[np.ndarray]]]:
    out = []
    for key in sorted(group, key=_natural):
        g = group[key]
        if "vars" not in g:
            continue
        v = g["vars"]
        lname = v.attrs.get("name", key)
        lname = lname.decode() if isinstance(lname, bytes) else str(lname)
        arrays = [_array(v[i], path, f"{key}/vars/{i}") for i in sorted(v, key=int)]
        out.append((lname, arrays))
    return out


def read(path: Path) -> Tensors:
    try:
        import h5py
    except ImportError:  # pragma: no cover - h5py is a dependency
        raise WeightsError(f"{path}: reading Keras .h5 files needs h5py (pip install h5py)") from None
    try:
        with h5py.File(path, "r") as f:
            root = f["model_weights"] if "model_weights" in f else f
            if "layer_names" in root.attrs:
                layers = _legacy_layers(root, path)
            elif "layers" in root:
                layers = _keras3_layers(root["layers"], path)
            else:
                raise WeightsError(f"{path}: HDF5 file is not a Keras weight file (no layer_names, no layers/)")
    except WeightsError:
        raise
    except (OSError, KeyError, ValueError, TypeError) as e:
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
        b = torch.from_numpy(biases[0]) if biases else None
        if k.ndim == 4:  # HWIO -> OIHW
            convs.append(Layer(lname, torch.from_numpy(k.transpose(3, 2, 0, 1).copy()), b))
        else:  # (in, out) -> (out, in)
            fcs.append(Layer(lname, torch.from_numpy(k.T.copy()), b))
    return Tensors("keras", convs, fcs, fc6_layout="nhwc", preprocess=CAFFE)
