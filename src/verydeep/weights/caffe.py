"""The authors' Caffe release (.caffemodel): a NetParameter protobuf, in the newer `layer` (LayerParameter) form or the
old V1 `layers` form that the 2014 VGG models use. The message definitions below are the subset of BVLC caffe.proto
that holds weights, with its field numbers; the protobuf library parses them, and unknown fields (solver state,
layer parameters) are skipped. Expects Caffe preprocessing: BGR, 0-255, BGR mean subtracted (PAPER.md section 8)."""
from __future__ import annotations

import math
from functools import lru_cache
from pathlib import Path

import numpy as np
import torch

from ..errors import WeightsError
from ..card import CAFFE
from .base import Layer, Tensors, register

# (message, [(field, number, label, type, type_name, packed)]) from BVLC caffe.proto (src/caffe/proto/caffe.proto).
_OPT, _REP = 1, 3
_T = {"double": 1, "float": 2, "int64": 3, "int32": 5, "string": 9, "message": 11, "enum": 14}
MESSAGES = [
    ("BlobShape", [("dim", 1, _REP, "int64", None, True)]),
    ("BlobProto", [
        ("num", 1, _OPT, "int64", None, False), ("channels", 2, _OPT, "int64", None, False),
        ("height", 3, _OPT, "int64", None, False), ("width", 4, _OPT, "int64", None, False),
        ("data", 5, _REP, "float", None, True), ("diff", 6, _REP, "float", None, True),
        ("shape", 7, _OPT, "message", ".caffe.BlobShape", False),
        ("double_data", 8, _REP, "double", None, True), ("double_diff", 9, _REP, "double", None, True)]),
    ("LayerParameter", [
        ("name", 1, _OPT, "string", None, False), ("type", 2, _OPT, "string", None, False),
        ("bottom", 3, _REP, "string", None, False), ("top", 4, _REP, "string", None, False),
        ("blobs", 7, _REP, "message", ".caffe.BlobProto", False)]),
    ("V1LayerParameter", [
        ("bottom", 2, _REP, "string", None, False), ("top", 3, _REP, "string", None, False),
        ("name", 4, _OPT, "string", None, False),
        ("type", 5, _OPT, "enum", ".caffe.V1LayerParameter.LayerType", False),
        ("blobs", 6, _REP, "message", ".caffe.BlobProto", False)]),
    ("NetParameter", [
        ("name", 1, _OPT, "string", None, False),
        ("layers", 2, _REP, "message", ".caffe.V1LayerParameter", False),
        ("input", 3, _REP, "string", None, False), ("input_dim", 4, _REP, "int64", None, False),
        ("layer", 100, _REP, "message", ".caffe.LayerParameter", False)]),
]
# V1LayerParameter.LayerType, as in caffe.proto.
V1_LAYER_TYPES = {
    "NONE": 0, "ABSVAL": 35, "ACCURACY": 1, "ARGMAX": 30, "BNLL": 2, "CONCAT": 3, "CONTRASTIVE_LOSS": 37,
    "CONVOLUTION": 4, "DATA": 5, "DECONVOLUTION": 39, "DROPOUT": 6, "DUMMY_DATA": 32, "EUCLIDEAN_LOSS": 7,
    "ELTWISE": 25, "EXP": 38, "FLATTEN": 8, "HDF5_DATA": 9, "HDF5_OUTPUT": 10, "HINGE_LOSS": 28, "IM2COL": 11,
    "IMAGE_DATA": 12, "INFOGAIN_LOSS": 13, "INNER_PRODUCT": 14, "LRN": 15, "MEMORY_DATA": 29,
    "MULTINOMIAL_LOGISTIC_LOSS": 16, "MVN": 34, "POOLING": 17, "POWER": 26, "RELU": 18, "SIGMOID": 19,
    "SIGMOID_CROSS_ENTROPY_LOSS": 27, "SILENCE": 36, "SOFTMAX": 20, "SOFTMAX_LOSS": 21, "SPLIT": 22, "SLICE": 33,
    "TANH": 23, "WINDOW_DATA": 24, "THRESHOLD": 31,
}
# Protobuf's own limit is 2 GiB; the largest VGG caffemodel (E) is ~575 MB.
MAX_FILE_BYTES = 2**31 - 1


@lru_cache(maxsize=None)
def messages() -> dict:
    """Message classes built at run time from the definitions above (no generated code, no protoc)."""
    from google.protobuf import descriptor_pb2, descriptor_pool, message_factory

    fdp = descriptor_pb2.FileDescriptorProto(name="verydeep/caffe_subset.proto", package="caffe", syntax="proto2")
    for mname, fields in MESSAGES:
        m = fdp.message_type.add(name=mname)
        if mname == "V1LayerParameter":
            enum = m.enum_type.add(name="LayerType")
            for ename, number in V1_LAYER_TYPES.items():
                enum.value.add(name=ename, number=number)
        for fname, number, label, ftype, type_name, packed in fields:
            f = m.field.add(name=fname, number=number, label=label, type=_T[ftype])
            if type_name:
                f.type_name = type_name
            if packed:
                f.options.packed = True
    pool = descriptor_pool.DescriptorPool()
    pool.Add(fdp)
    return {name: message_factory.GetMessageClass(pool.FindMessageTypeByName(f"caffe.{name}"))
            for name, _ in MESSAGES}


def _blob(blob, path: Path, where: str) -> torch.Tensor:
    if blob.HasField("shape"):
        shape = tuple(int(d) for d in blob.shape.dim)
    else:  # V1 blobs: 4-D num/channels/height/width
        shape = (int(blob.num), int(blob.channels), int(blob.height), int(blob.width))
    if any(d < 0 for d in shape) or len(shape) > 4:
        raise WeightsError(f"{path}: {where}: impossible blob shape {shape}")
    n = len(blob.data) or len(blob.double_data)
    count = math.prod(shape) if shape else 0  # Python integers: a lying shape cannot overflow
    if n != count:
        raise WeightsError(f"{path}: {where}: shape {shape} needs {count} values, blob holds {n}")
    values = blob.data if len(blob.data) else blob.double_data
    return torch.from_numpy(np.array(values, dtype=np.float32).reshape(shape))


def _is_caffe(head: bytes, path: Path) -> bool:
    """Protobuf has no magic number: the name, or a NetParameter's first tag: field 1 (name), 2 (layers) or 100."""
    return path.suffix.lower() in (".caffemodel", ".binaryproto", ".pb") or head[:1] in (b"\x0a", b"\x12", b"\xa2")


@register("caffe", detect=_is_caffe, order=90)
def read(path: Path) -> Tensors:
    size = path.stat().st_size
    if size > MAX_FILE_BYTES:
        raise WeightsError(f"{path}: {size} bytes is larger than protobuf allows (2 GiB)")
    data = path.read_bytes()
    net = messages()["NetParameter"]()
    try:
        net.ParseFromString(data)
    except Exception as e:  # google.protobuf.message.DecodeError and friends
        raise WeightsError(f"{path}: not a valid Caffe NetParameter ({type(e).__name__}: "
                           f"{str(e).splitlines()[0][:120] if str(e) else 'truncated or corrupt'})") from None
    del data
    if len(net.layer) and len(net.layers):
        raise WeightsError(f"{path}: file mixes V1 'layers' and new 'layer' definitions")
    v1 = bool(len(net.layers))
    convs, fcs = [], []
    lrn = False
    for layer in net.layers if v1 else net.layer:
        if v1:
            kind = {4: "Convolution", 14: "InnerProduct", 15: "LRN"}.get(layer.type, str(layer.type))
        else:
            kind = layer.type
        lrn = lrn or kind == "LRN"
        if not len(layer.blobs):
            continue
        if kind not in ("Convolution", "InnerProduct"):
            raise WeightsError(f"{path}: layer {layer.name!r} of type {kind} has weights; a VGG net has only "
                               f"Convolution and InnerProduct layers with weights")
        if len(layer.blobs) > 2:
            raise WeightsError(f"{path}: layer {layer.name!r} has {len(layer.blobs)} blobs (expected weight, bias)")
        w = _blob(layer.blobs[0], path, f"{layer.name}.weight")
        b = _blob(layer.blobs[1], path, f"{layer.name}.bias").reshape(-1) if len(layer.blobs) > 1 else None
        if kind == "Convolution":
            if w.ndim != 4:
                raise WeightsError(f"{path}: {layer.name}.weight: expected 4-D conv weights, got {tuple(w.shape)}")
            convs.append(Layer(layer.name, w, b))
        else:
            # V1 stores FC weights as (1, 1, out, in); the newer format as (out, in).
            if w.ndim == 4 and w.shape[0] == 1 and w.shape[1] == 1:
                w = w.reshape(w.shape[2], w.shape[3])
            if w.ndim != 2:
                raise WeightsError(f"{path}: {layer.name}.weight: expected an (out, in) matrix, got {tuple(w.shape)}")
            fcs.append(Layer(layer.name, w, b))
    # A deploy file's layer list is the network: an LRN layer (or none) tells A-LRN from A, whose weights are alike.
    # Caffe's pooling rounds output sizes up: dense evaluation of the authors' weights on sides that are not
    # multiples of 32 matches Caffe only with the same rule
    return Tensors("caffe", convs, fcs, preprocess=CAFFE, pooling="ceil",
                   lrn=lrn if (len(net.layers) or len(net.layer)) else None)
