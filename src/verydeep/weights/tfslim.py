"""TF-slim checkpoints of VGG (vgg_16.ckpt / vgg_19.ckpt: V1 files, or V2 `.index` + `.data-*` pairs), variables
vgg_16/conv1/conv1_1/weights (H x W x in x out), ..., vgg_16/fc6/weights (7 x 7 x 512 x 4096), fc7, fc8. Input: TF-slim's
vgg_preprocessing, RGB 0-255 minus (123.68, 116.78, 103.94); 'VALID' max-pooling rounds down. Reading a TensorFlow
checkpoint needs TensorFlow's own reader (the format has no maintained reader without it): without TensorFlow the
file is recognised and refused with the line that says what to install."""
from __future__ import annotations

import re
from pathlib import Path

import numpy as np
import torch

from ..card import Preprocess
from ..errors import WeightsError
from .base import Layer, Tensors, register

TABLE_MAGIC = (0xDB4775248B80FB57).to_bytes(8, "little")   # the footer of TensorFlow's SSTable (index, V1 files)
_VAR = re.compile(r"^vgg_(?:16|19)/(?:conv(\d)/conv\d_(\d)|fc([678]))/(weights|biases)$")
SLIM = Preprocess("RGB", 255.0, (123.68, 116.78, 103.94), (1.0, 1.0, 1.0))


def _prefix(path: Path) -> Path:
    """The checkpoint prefix TensorFlow's reader takes, from any of its files."""
    name = re.sub(r"\.(index|data-\d{5}-of-\d{5})$", "", path.name)
    return path.with_name(name)


def _is_tf_checkpoint(head: bytes, path: Path) -> bool:
    if not (path.name.endswith(".index") or ".ckpt" in path.name or re.search(r"\.data-\d{5}-of-\d{5}$", path.name)):
        return False
    index = path if not re.search(r"\.data-\d{5}-of-\d{5}$", path.name) else _prefix(path).with_suffix(
        _prefix(path).suffix + ".index")
    try:
        with open(index, "rb") as f:
            f.seek(-8, 2)
            return f.read(8) == TABLE_MAGIC
    except OSError:
        return False


@register("tf-slim", detect=_is_tf_checkpoint, order=80)
def read(path: Path) -> Tensors:
    try:
        import tensorflow as tf
    except ImportError:
        raise WeightsError(f"{path}: a TensorFlow checkpoint; reading it needs TensorFlow (pip install tensorflow-cpu)"
                           ) from None
    prefix = _prefix(path)
    try:
        reader = tf.train.load_checkpoint(str(prefix))
        shapes = reader.get_variable_to_shape_map()
    except Exception as e:  # TensorFlow's errors have no common base worth importing
        raise WeightsError(f"{path}: cannot read as a TensorFlow checkpoint: {str(e).splitlines()[0][:200]}") from None
    found = {}
    for name in shapes:
        m = _VAR.match(name)
        if m:
            key = (0, int(m.group(1)), int(m.group(2))) if m.group(1) else (1, int(m.group(3)), 0)
            found.setdefault(key, {})[m.group(4)] = name
    if not found:
        raise WeightsError(f"{path}: no vgg_16/ or vgg_19/ variables: not a TF-slim VGG checkpoint")
    convs, fcs = [], []
    for key in sorted(found):
        names = found[key]
        if "weights" not in names:
            raise WeightsError(f"{path}: {sorted(names.values())[0]}: no weights beside it")
        w = np.asarray(reader.get_tensor(names["weights"]), np.float32)
        if w.ndim != 4:
            raise WeightsError(f"{path}: {names['weights']} has shape {w.shape}, not H x W x in x out")
        weight = torch.from_numpy(np.ascontiguousarray(w.transpose(3, 2, 0, 1)))
        bias = torch.from_numpy(np.asarray(reader.get_tensor(names["biases"]), np.float32).copy()) \
            if "biases" in names else torch.zeros(weight.shape[0])
        layer_name = names["weights"].rsplit("/", 1)[0]
        if key[0] == 0:
            convs.append(Layer(layer_name, weight, bias))
        else:
            fcs.append(Layer(layer_name, weight.reshape(weight.shape[0], -1), bias))
    return Tensors("tf-slim", convs, fcs, preprocess=SLIM, pooling="floor")
