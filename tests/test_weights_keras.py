"""Against Keras' own VGG16/VGG19 (Keras 3, torch backend): random weights saved as .h5 in every layout, loaded by
verydeep, the same logits after model.preprocess (relative error < 1e-4)."""
import os

os.environ.setdefault("KERAS_BACKEND", "torch")

import h5py
import numpy as np
import pytest
import torch

keras = pytest.importorskip("keras")

import verydeep as vd  # noqa: E402

APPS = {"vgg16": ("D", keras.applications.VGG16, keras.applications.vgg16.preprocess_input),
        "vgg19": ("E", keras.applications.VGG19, keras.applications.vgg19.preprocess_input)}


def write_distributed_layout(model, path, names="keras1"):
    """The layout of the distributed vgg16/vgg19_weights_tf_dim_ordering_tf_kernels.h5 files: root attribute
    layer_names; per layer a group with attribute weight_names and one dataset per name (Keras 1 named them
    <layer>_W_1:0 / <layer>_b_1:0, Keras 2 <layer>/kernel:0 / <layer>/bias:0)."""
    with h5py.File(path, "w") as f:
        f.attrs["layer_names"] = [l.name.encode() for l in model.layers]
        f.attrs["backend"] = b"tensorflow"
        f.attrs["keras_version"] = b"2.0.8"
        for layer in model.layers:
            g = f.create_group(layer.name)
            weights = layer.get_weights()
            suffixes = ["_W_1:0", "_b_1:0"] if names == "keras1" else ["/kernel:0", "/bias:0"]
            wnames = [layer.name + s for s in suffixes[:len(weights)]]
            g.attrs["weight_names"] = [w.encode() for w in wnames]
            for w, arr in zip(wnames, weights):
                g.create_dataset(w, data=arr)


def save(model, path, layout):
    if layout == "keras3":
        model.save_weights(str(path))  # Keras 3's own .weights.h5
    elif layout == "keras3_archive":
        model.save(str(path))  # Keras 3's .keras: a zip holding model.weights.h5
    elif layout == "keras3_full_model":
        model.save(str(path))  # legacy HDF5 whole-model file: weights under model_weights/
    elif layout == "keras_legacy_api":
        from keras.src.legacy.saving import legacy_h5_format

        with h5py.File(path, "w") as f:
            legacy_h5_format.save_weights_to_hdf5_group(f, model)
    else:
        write_distributed_layout(model, path, layout)


def compare(app, size, layout, tmp_path, classes):
    name, build, preprocess_input = APPS[app]
    keras.utils.set_random_seed(0)
    km = build(weights=None, input_shape=(size, size, 3), classes=classes, classifier_activation=None)
    path = tmp_path / {"keras3": "w.weights.h5", "keras3_archive": "w.keras"}.get(layout, "w.h5")
    save(km, path, layout)
    m = vd.load(path, app).eval()
    assert m.config.num_classes == classes and m.config.crop_size == size
    assert m.input_convention == vd.CAFFE
    rng = np.random.default_rng(0)
    rgb = rng.uniform(0, 255, size=(2, size, size, 3)).astype(np.float32)
    want = np.asarray(km.predict(preprocess_input(rgb.copy()), verbose=0))
    x = torch.from_numpy(rgb / 255.0).permute(0, 3, 1, 2)
    with torch.inference_mode():
        got = m(m.preprocess(x)).numpy()
    rel = np.abs(got - want).max() / np.abs(want).max()
    assert rel < 1e-4, rel
    # The dense score map on a crop equals the logits too.
    with torch.inference_mode():
        s = m.score_map(m.preprocess(x))[:, :, 0, 0].numpy()
    assert np.abs(s - want).max() / np.abs(want).max() < 1e-4


@pytest.mark.parametrize("layout", ["keras3", "keras3_archive", "keras3_full_model", "keras_legacy_api", "keras1",
                                    "keras2"])
@pytest.mark.parametrize("app", ["vgg16", "vgg19"])
def test_keras_logits_match(app, layout, tmp_path):
    # 96x96 input: fc1 flattens a 3x3x512 NHWC tensor, so the reordering to PyTorch's CHW order is exercised.
    compare(app, 96, layout, tmp_path, classes=11)


@pytest.mark.slow
def test_keras_vgg16_full_size(tmp_path):
    compare("vgg16", 224, "keras1", tmp_path, classes=1000)


def test_keras_notop_file_loads_conv_layers(tmp_path):
    keras.utils.set_random_seed(0)
    km = keras.applications.VGG16(weights=None, include_top=False, input_shape=(64, 64, 3))
    write_distributed_layout(km, tmp_path / "notop.h5", "keras2")
    with pytest.raises(vd.WeightsError, match="strict=False"):
        vd.load(tmp_path / "notop.h5", "vgg16")
    m = vd.load(tmp_path / "notop.h5", "vgg16", strict=False, crop_size=64)
    k = km.get_layer("block5_conv3").get_weights()[0]
    assert np.array_equal(m.layer("conv5_3").weight.detach().numpy(), k.transpose(3, 2, 0, 1))


def test_keras_wrong_architecture(tmp_path):
    km = keras.applications.VGG16(weights=None, input_shape=(64, 64, 3), classes=5)
    save(km, tmp_path / "w.h5", "keras2")
    with pytest.raises(vd.WeightsError, match="file has 13 conv layers, model E has 16"):
        vd.load(tmp_path / "w.h5", "vgg19")


def test_hdf5_that_is_not_keras(tmp_path):
    with h5py.File(tmp_path / "x.h5", "w") as f:
        f.create_dataset("data", data=np.zeros(3))
    with pytest.raises(vd.WeightsError, match="not a Keras weight file"):
        vd.load(tmp_path / "x.h5", "vgg16")


def test_keras_archive_that_lies_about_its_member_is_refused(tmp_path):
    import zipfile

    p = tmp_path / "bomb.keras"
    with zipfile.ZipFile(p, "w", zipfile.ZIP_DEFLATED) as z:
        z.writestr("model.weights.h5", b"\0" * 10_000_000)  # 10 MB of zeros deflate to ~10 KB
    assert vd.weights.detect_format(p) == "keras-archive"
    with pytest.raises(vd.WeightsError, match="model.weights.h5 claims 10,000,000 bytes"):
        vd.load(p, "vgg16")
    with zipfile.ZipFile(p, "w") as z:
        z.writestr("model.weights.h5", b"not hdf5")
    with pytest.raises(vd.WeightsError, match=r"bomb.keras!model.weights.h5"):
        vd.load(p, "vgg16")


@pytest.mark.parametrize("make", ["dataset", "group_without_vars", "vars_not_numbered"])
def test_hdf5_with_a_layers_group_that_is_not_keras(tmp_path, make):
    with h5py.File(tmp_path / "x.h5", "w") as f:
        g = f.create_group("layers")
        if make == "dataset":
            g.create_dataset("x", data=np.zeros(3))
        elif make == "group_without_vars":
            g.create_group("dense").create_dataset("kernel", data=np.zeros((3, 4)))
        else:
            g.create_group("dense").create_group("vars").create_dataset("kernel", data=np.zeros((3, 4)))
    with pytest.raises(vd.WeightsError, match=r"x\.h5: "):
        vd.load(tmp_path / "x.h5", "vgg16")
