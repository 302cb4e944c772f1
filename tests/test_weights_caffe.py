"""Caffe round trip: .caffemodel files written here byte by byte with the official caffe.proto field numbers (a
wire-format encoder independent of verydeep's message definitions), in both the old V1 `layers` format of the
2014 VGG release and the newer `layer` format; loaded by verydeep, they predict like the source tensors."""
import struct

import numpy as np
import pytest
import torch

import verydeep as vd
from conftest import tiny


def varint(n):
    out = bytearray()
    while True:
        b = n & 0x7F
        n >>= 7
        out.append(b | (0x80 if n else 0))
        if not n:
            return bytes(out)


def field(num, wire, payload):
    return varint(num << 3 | wire) + payload


def ld(num, data):  # length-delimited: strings, bytes, sub-messages, packed repeated
    return field(num, 2, varint(len(data)) + data)


def vint(num, n):
    return field(num, 0, varint(n))


# caffe.proto field numbers
BLOB_NUM, BLOB_CHANNELS, BLOB_HEIGHT, BLOB_WIDTH, BLOB_DATA, BLOB_SHAPE = 1, 2, 3, 4, 5, 7
SHAPE_DIM = 1
LP_NAME, LP_TYPE, LP_BOTTOM, LP_TOP, LP_BLOBS, LP_CONV_PARAM = 1, 2, 3, 4, 7, 106
V1_BOTTOM, V1_TOP, V1_NAME, V1_TYPE, V1_BLOBS = 2, 3, 4, 5, 6
V1_CONVOLUTION, V1_INNER_PRODUCT, V1_RELU, V1_POOLING, V1_DROPOUT, V1_SOFTMAX, V1_LRN = 4, 14, 18, 17, 6, 20, 15
NET_NAME, NET_LAYERS, NET_INPUT, NET_INPUT_DIM, NET_LAYER = 1, 2, 3, 4, 100


def blob_new(t):
    a = t.detach().numpy().astype("<f4")
    shape = ld(SHAPE_DIM, b"".join(varint(d) for d in a.shape))  # packed int64 dims
    return ld(BLOB_SHAPE, shape) + ld(BLOB_DATA, a.tobytes())


def blob_v1(t, packed):
    a = t.detach().numpy().astype("<f4")
    dims = (1,) * (4 - a.ndim) + a.shape  # V1 blobs are 4-D: num, channels, height, width
    head = b"".join(vint(n, d) for n, d in zip((BLOB_NUM, BLOB_CHANNELS, BLOB_HEIGHT, BLOB_WIDTH), dims))
    if packed:
        return head + ld(BLOB_DATA, a.tobytes())
    return head + b"".join(field(BLOB_DATA, 5, struct.pack("<f", v)) for v in a.ravel())


def caffemodel(model, fmt, dense=False):
    """Serialise a verydeep model the way Caffe would, with the non-weight layers (ReLU, pooling, dropout, softmax)
    in between, as VGG_ILSVRC_16_layers.caffemodel has them. dense: the fully convolutional net of Caffe's "net
    surgery" (fc6 a kxk convolution, fc7 and fc8 1x1), the one that computes the paper's dense score maps."""
    layers, bottom = [], "data"
    for name, module in zip(model.layer_names, list(model.features) + list(model.classifier)):
        if name.startswith(("conv", "fc")):
            kind, v1 = ("Convolution", V1_CONVOLUTION) if name.startswith("conv") or dense else ("InnerProduct",
                                                                                                 V1_INNER_PRODUCT)
            blobs = [module.weight, module.bias]
            if dense and name.startswith("fc"):
                k = model.config.head_kernel if name == "fc6" else 1
                blobs[0] = module.weight.reshape(module.weight.shape[0], -1, k, k)
        elif name.startswith("relu"):
            kind, v1, blobs = "ReLU", V1_RELU, []
        elif name.startswith("pool"):
            kind, v1, blobs = "Pooling", V1_POOLING, []
        elif name.startswith("drop"):
            kind, v1, blobs = "Dropout", V1_DROPOUT, []
        elif name.startswith("norm"):
            kind, v1, blobs = "LRN", V1_LRN, []
        else:
            continue
        top = name if not name.startswith(("relu", "drop")) else bottom  # in-place, as in Caffe
        if fmt == "new":
            msg = ld(LP_NAME, name.encode()) + ld(LP_TYPE, kind.encode()) + ld(LP_BOTTOM, bottom.encode()) + \
                ld(LP_TOP, top.encode())
            if kind == "Convolution":  # a field verydeep does not define: must be skipped
                msg += ld(LP_CONV_PARAM, vint(1, getattr(module, "out_channels", None) or module.out_features))
            msg += b"".join(ld(LP_BLOBS, blob_new(b)) for b in blobs)
            layers.append(ld(NET_LAYER, msg))
        else:
            msg = ld(V1_BOTTOM, bottom.encode()) + ld(V1_TOP, top.encode()) + ld(V1_NAME, name.encode()) + \
                vint(V1_TYPE, v1)
            # FC weights as (1, 1, out, in), as the 2014 release stores them; unpacked floats for the conv layers.
            msg += b"".join(ld(V1_BLOBS, blob_v1(b, packed=not name.startswith("conv"))) for b in blobs)
            layers.append(ld(NET_LAYERS, msg))
        bottom = top
    header = ld(NET_NAME, b"VGG_ILSVRC_16_layers") + ld(NET_INPUT, b"data")
    header += b"".join(vint(NET_INPUT_DIM, d) for d in (10, 3, 224, 224))
    return header + b"".join(layers)


@pytest.mark.parametrize("fmt", ["v1", "new"])
@pytest.mark.parametrize("name", ["vgg16", "vgg19", "A-LRN"])
def test_caffemodel_round_trip(tmp_path, name, fmt):
    src = tiny(name)
    path = tmp_path / "net.caffemodel"
    path.write_bytes(caffemodel(src, fmt))
    m = vd.load(path, name).eval()
    assert m.config == src.config
    assert m.input_convention == vd.CAFFE
    for (n, a), (_, b) in zip(m.weight_layers(), src.weight_layers()):
        assert torch.equal(a.weight, b.weight) and torch.equal(a.bias, b.bias), n
    x = torch.randn(2, 3, 64, 64)
    assert torch.equal(m(x), src(x))


def test_caffe_bgr_preprocessing():
    x = torch.rand(1, 3, 2, 2)
    y = vd.CAFFE(x)
    mean_bgr = torch.tensor([103.939, 116.779, 123.68]).view(1, 3, 1, 1)
    torch.testing.assert_close(y, x[:, [2, 1, 0]] * 255 - mean_bgr)


def test_truncated_and_corrupt_caffemodels(tmp_path):
    data = caffemodel(tiny("vgg16"), "new")
    p = tmp_path / "t.caffemodel"
    p.write_bytes(data[: len(data) // 2])
    with pytest.raises(vd.WeightsError, match="not a valid Caffe NetParameter"):
        vd.load(p, "vgg16")
    p.write_bytes(b"\xff" * 64)
    with pytest.raises(vd.WeightsError, match="not a valid Caffe NetParameter"):
        vd.load(p, "vgg16")


def test_blob_shape_that_lies_is_refused_without_allocating(tmp_path):
    # A blob claiming 10^12 values but holding 4: an error, never an allocation of the claimed size.
    lying = ld(BLOB_SHAPE, ld(SHAPE_DIM, varint(10**6) + varint(10**6))) + ld(BLOB_DATA, np.zeros(4, "<f4").tobytes())
    layer = ld(LP_NAME, b"conv1_1") + ld(LP_TYPE, b"Convolution") + ld(LP_BLOBS, lying)
    p = tmp_path / "lie.caffemodel"
    p.write_bytes(ld(NET_LAYER, layer))
    with pytest.raises(vd.WeightsError, match=r"shape \(1000000, 1000000\) needs 1000000000000 values, blob holds 4"):
        vd.load(p, "vgg16")


def test_unexpected_layer_with_weights(tmp_path):
    layer = ld(LP_NAME, b"bn1") + ld(LP_TYPE, b"BatchNorm") + ld(LP_BLOBS, blob_new(torch.zeros(4)))
    p = tmp_path / "bn.caffemodel"
    p.write_bytes(ld(NET_LAYER, layer))
    with pytest.raises(vd.WeightsError, match="of type BatchNorm has weights"):
        vd.load(p, "vgg16")


@pytest.mark.parametrize("src,model,match", [
    ("vgg16", "A", "file has 13 conv layers, model A has 8"),
    ("A-LRN", "A", "the file's network has LRN layer; model A has none"),  # the weights alone are alike
    ("A", "A-LRN", "the file's network has no LRN layer; model A-LRN has one"),
])
def test_wrong_architecture(tmp_path, src, model, match):
    p = tmp_path / "net.caffemodel"
    p.write_bytes(caffemodel(tiny(src), "v1"))
    with pytest.raises(vd.WeightsError, match=match):
        vd.load(p, model)


def test_blob_dimensions_that_overflow_int64(tmp_path):
    dims = ld(SHAPE_DIM, varint(2**62) + varint(2**62))
    layer = ld(LP_NAME, b"conv1_1") + ld(LP_TYPE, b"Convolution") + ld(LP_BLOBS, ld(BLOB_SHAPE, dims))
    p = tmp_path / "big.caffemodel"
    p.write_bytes(ld(NET_LAYER, layer))
    with pytest.raises(vd.WeightsError, match=r"needs 21267647932558653966460912964485513216 values, blob holds 0"):
        vd.load(p, "vgg16")



def prototxt(model, h, w, dense=True):
    """The network definition Caffe (and OpenCV's Caffe importer) reads beside the weights: VGG's layers with their
    parameters, pooling MAX 2x2 stride 2 (Caffe rounds its output size up)."""
    out, bottom = ['name: "vgg"', 'input: "data"', f"input_dim: 1 input_dim: 3 input_dim: {h} input_dim: {w}"], "data"
    for name, module in zip(model.layer_names, list(model.features) + list(model.classifier)):
        if name.startswith("conv"):
            body = f'type: "Convolution" convolution_param {{ num_output: {module.out_channels} kernel_size: 3 pad: 1 }}'
        elif name.startswith("fc"):
            k = model.config.head_kernel if name == "fc6" else 1
            body = f'type: "Convolution" convolution_param {{ num_output: {module.out_features} kernel_size: {k} }}'
        elif name.startswith("relu"):
            body = 'type: "ReLU"'
        elif name.startswith("pool"):
            body = 'type: "Pooling" pooling_param { pool: MAX kernel_size: 2 stride: 2 }'
        elif name.startswith("norm"):  # Caffe divides alpha by local_size: VGG's A-LRN prototxt says 0.0005
            body = 'type: "LRN" lrn_param { local_size: 5 alpha: 0.0005 beta: 0.75 k: 2 }'
        else:
            continue
        top = bottom if name.startswith("relu") else name
        out.append(f'layer {{ name: "{name}" {body} bottom: "{bottom}" top: "{top}" }}')
        bottom = top
    return "\n".join(out) + "\n"


# The released nets (D, E). Not A-LRN: OpenCV's Caffe importer ignores lrn_param's k (it computes with k = 1, measured:
# its norm1 equals local_response_norm(k=1) to 1e-5), so it is not Caffe's LRN for Krizhevsky's k = 2.
@pytest.mark.parametrize("name", ["vgg16", "vgg19"])
@pytest.mark.parametrize("size", [(64, 64), (83, 117), (101, 70)])
def test_dense_score_maps_equal_opencvs_caffe(tmp_path, name, size):
    # Caffe-origin weights evaluate densely as Caffe did: ceil-mode pooling. OpenCV's Caffe importer (an engine we
    # did not write) runs the fully convolutional net on odd-sized inputs; verydeep's score map must equal it.
    cv2 = pytest.importorskip("cv2")
    if not hasattr(cv2.dnn, "readNetFromCaffe"):
        pytest.skip("this OpenCV no longer reads Caffe models (5.x)")
    src = tiny(name)
    (tmp_path / "net.caffemodel").write_bytes(caffemodel(src, "new"))
    (tmp_path / "dense.caffemodel").write_bytes(caffemodel(src, "new", dense=True))
    (tmp_path / "dense.prototxt").write_text(prototxt(src, *size))
    m = vd.load(tmp_path / "net.caffemodel", name)
    assert m.card.pooling == "ceil"
    x = torch.randn(1, 3, *size) * 40
    net = cv2.dnn.readNetFromCaffe(str(tmp_path / "dense.prototxt"), str(tmp_path / "dense.caffemodel"))
    net.setInput(x.numpy())
    theirs = torch.from_numpy(net.forward())
    with torch.no_grad():
        ours = m.score_map(x)
    assert ours.shape == theirs.shape
    torch.testing.assert_close(ours, theirs, rtol=1e-4, atol=1e-4 * theirs.abs().max().item())
    floor = vd.load(tmp_path / "net.caffemodel", name, pooling="floor")  # the rule is selectable
    assert floor.card.pooling == "floor"
    if size[0] % 32 or size[1] % 32:
        with torch.no_grad():
            assert floor.score_map(x).shape != theirs.shape
