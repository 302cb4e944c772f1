"""An ONNX file given as weights: the initialisers of a VGG graph, read in the graph's node order. Conv nodes before
the last max-pool are the conv layers; after it, Conv (the dense score-map graph), Gemm or MatMul + Add nodes are
the FC layers. A file written by `verydeep export` carries its model card in the metadata; any other is taken as
torchvision's input convention (the ONNX model zoo's VGGs use it), with the max-pools' own rounding."""
from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import torch

from ..card import TORCHVISION, Card
from ..errors import WeightsError
from .base import Layer, Tensors, register


def _is_onnx(head: bytes, path: Path) -> bool:
    return path.suffix.lower() == ".onnx" and head[:1] == b"\x08"  # ModelProto field 1 (ir_version), a varint


@register("onnx", detect=_is_onnx, order=85)
def read(path: Path) -> Tensors:
    try:
        import onnx
        from onnx import numpy_helper
    except ImportError:
        raise WeightsError(f"{path}: reading ONNX files needs onnx: pip install 'verydeep[onnx]'") from None
    try:
        model = onnx.load(str(path), load_external_data=False)
    except Exception as e:  # the protobuf parser's errors have no common base
        raise WeightsError(f"{path}: cannot read as ONNX: {str(e).splitlines()[0][:200]}") from None
    graph = model.graph
    inits = {i.name: i for i in graph.initializer}
    if any(i.data_location == onnx.TensorProto.EXTERNAL for i in inits.values()):
        raise WeightsError(f"{path}: keeps its weights in external files; refused (export them into the file)")

    def arr(name: str) -> torch.Tensor | None:
        if name not in inits:
            return None
        a = numpy_helper.to_array(inits[name])
        if a.dtype.kind != "f":
            raise WeightsError(f"{path}: initialiser {name!r} is {a.dtype}, not floating point")
        return torch.from_numpy(np.ascontiguousarray(a, dtype=np.float32))

    nodes = list(graph.node)
    pools = [i for i, n in enumerate(nodes) if n.op_type == "MaxPool"]
    if not pools:
        raise WeightsError(f"{path}: an ONNX graph without max-pooling is not a VGG")
    last_pool, ceil = pools[-1], any(a.name == "ceil_mode" and a.i for n in nodes if n.op_type == "MaxPool"
                                     for a in n.attribute)
    consumers = {}
    for n in nodes:
        for x in n.input:
            consumers.setdefault(x, []).append(n)
    convs, fcs = [], []
    for i, n in enumerate(nodes):
        if n.op_type == "Conv":
            w = arr(n.input[1])
            if w is None:
                raise WeightsError(f"{path}: Conv node {n.name!r} computes its weight; only initialisers are read")
            b = arr(n.input[2]) if len(n.input) > 2 and n.input[2] else torch.zeros(w.shape[0])  # none: no bias
            (convs if i < last_pool else fcs).append(Layer(n.name, w if i < last_pool else w.reshape(w.shape[0], -1),
                                                           b))
        elif n.op_type == "Gemm" and i > last_pool:
            w, b = arr(n.input[1]), arr(n.input[2]) if len(n.input) > 2 and n.input[2] else None
            trans_b = any(a.name == "transB" and a.i for a in n.attribute)
            if w is None:
                raise WeightsError(f"{path}: Gemm node {n.name!r} computes its weight; only initialisers are read")
            w = w if trans_b else w.t().contiguous()
            fcs.append(Layer(n.name, w, b if b is not None else torch.zeros(w.shape[0])))
        elif n.op_type == "MatMul" and i > last_pool and arr(n.input[1]) is not None:
            add = [c for c in consumers.get(n.output[0], []) if c.op_type == "Add"]
            b = next((arr(x) for c in add for x in c.input if arr(x) is not None), None)
            w = arr(n.input[1]).t().contiguous()
            fcs.append(Layer(n.name, w, b if b is not None else torch.zeros(w.shape[0])))
    if not convs:
        raise WeightsError(f"{path}: no Conv nodes with initialised weights before the last max-pool")
    t = Tensors("onnx", convs, fcs, preprocess=TORCHVISION, pooling="ceil" if ceil else "floor",
                lrn=any(n.op_type == "LRN" for n in nodes) or None)
    meta = {p.key: p.value for p in model.metadata_props}
    if "verydeep" in meta:
        try:
            t.card = Card.from_dict(json.loads(meta["verydeep"])["card"])
        except (KeyError, TypeError, ValueError) as e:
            raise WeightsError(f"{path}: malformed verydeep metadata ({e})") from None
        t.preprocess, t.pooling = t.card.preprocess, t.card.pooling
    return t
