"""Localisation (PAPER.md section 6): box arithmetic, transforms, OverFeat's greedy merge, SCR/PCR training, the two
test protocols, and the drawing command."""
import numpy as np
import pytest
import torch

import verydeep as vd
from verydeep import localize as L
from verydeep.cli import main
from verydeep.data import ImageFolder
from conftest import tiny
from imagegen import box_dataset


def test_iou_hand_computed():
    a = np.array([[0, 0, 10, 10]])
    b = np.array([[5, 5, 15, 15], [0, 0, 10, 10], [20, 20, 30, 30], [0, 0, 5, 10]])
    np.testing.assert_allclose(L.iou(a, b)[0], [25 / 175, 1.0, 0.0, 0.5])


def test_box_conversions_round_trip():
    b = np.array([[2.0, 4.0, 10.0, 8.0]])
    np.testing.assert_allclose(L.to_cxcywh(b), [[6, 6, 8, 4]])
    np.testing.assert_allclose(L.to_xyxy(L.to_cxcywh(b)), b)


def test_box_follows_rescale_crop_and_flip_exactly():
    box = np.array([10, 20, 30, 60])            # original pixels
    t = L.crop_box_transform(box, 2.0, 4, 8, 64, flip=False)
    # x2: (20, 40, 60, 120); minus (4, 8): (16, 32, 56, 112); clipped to 64: (16, 32, 56, 64)
    np.testing.assert_allclose(t, np.array([36, 48, 40, 32]) / 64)
    f = L.crop_box_transform(box, 2.0, 4, 8, 64, flip=True)
    np.testing.assert_allclose(f, np.array([64 - 36, 48, 40, 32]) / 64)


def test_greedy_merge_hand_cases():
    boxes = np.array([[0, 0, 10, 10], [1, 1, 11, 11], [50, 50, 60, 60]])
    merged, scores = L.greedy_merge(boxes, np.array([0.5, 0.25, 0.6]), threshold=0.5)
    assert len(merged) == 2
    np.testing.assert_allclose(merged[0], [0.5, 0.5, 10.5, 10.5])  # the average of the two overlapping boxes
    assert scores[0] == pytest.approx(0.75) and scores[1] == pytest.approx(0.6)  # summed; beats the lone 0.6
    one, s1 = L.greedy_merge(boxes[:1], np.array([0.3]))
    assert len(one) == 1 and s1[0] == pytest.approx(0.3)
    everything, _ = L.greedy_merge(boxes, np.ones(3), threshold=100)
    assert len(everything) == 1


@pytest.fixture(scope="module")
def boxes(tmp_path_factory):
    return box_dataset(tmp_path_factory.mktemp("boxes"))


@pytest.fixture(scope="module")
def classifier():
    torch.manual_seed(0)
    m = tiny("A", num_classes=2, crop_size=32, width=1 / 8)
    m.card = m.card.but(class_names=("blue", "red"))
    return m


@pytest.mark.parametrize("mode,layers", [("scr", "all"), ("pcr", "fc")])
def test_localisation_heads_train(boxes, classifier, mode, layers):
    src = ImageFolder(boxes / "train")
    assert src.read(0).boxes.shape == (1, 4)
    cfg = L.LocTrainConfig(mode=mode, layers=layers, train_scale=[40], lr=0.01, epochs=6, batch_size=8, workers=0,
                           progress=False, precision="fp32", device="cpu")
    net, losses = L.fine_tune(classifier, src, cfg)
    assert losses[-1] < losses[0]
    assert net.config.num_classes == (4 if mode == "scr" else 8)
    if layers == "fc":  # the conv layers were not touched
        assert torch.equal(net.layer("conv3_2").weight, classifier.layer("conv3_2").weight)
    r = L.centre_crop_error(net, ImageFolder(boxes / "val"), 40)
    assert r["images"] == 12 and 0 <= r["error"] <= 1
    d = L.dense_error(L.Dense(net, classifier), ImageFolder(boxes / "val"), [40, 56])
    assert d["images"] == 12 and 0 <= d["top5_loc_error"] <= 1 and 0 <= d["gt_class_loc_error"] <= 1


def test_dense_boxes_are_in_image_coordinates(classifier, boxes):
    net = L.localisation_net(classifier, "scr")
    from PIL import Image
    img = Image.open(boxes / "val" / "red" / "red_0.png").convert("RGB")
    preds = L.dense_boxes(L.Dense(net, classifier), img, [40, 56], top_k=2)
    assert len(preds) == 2 and preds[0][1] >= preds[1][1]  # most probable class first
    for _, p, box, score in preds:
        assert box[2] > box[0] and box[3] > box[1] and score > 0
        assert -32 < box[0] < img.size[0] and -32 < box[1] < img.size[1]


def test_localize_cli_train_evaluate_predict(boxes, classifier, tmp_path, capsys):
    vd.save(classifier, tmp_path / "cls.safetensors")
    assert main(["localize", "train", "--data", str(boxes), "--classifier", str(tmp_path / "cls.safetensors"),
                 "--mode", "pcr", "--train-scale", "40", "--epochs", "1", "--batch-size", "8", "--workers", "0",
                 "--out", str(tmp_path / "loc.safetensors"), "--no-progress"]) == 0
    loc = vd.load(tmp_path / "loc.safetensors")
    assert loc.box_mode == "pcr" and loc.box_classes == 2
    assert main(["localize", "evaluate", "--weights", str(tmp_path / "loc.safetensors"), "--data", str(boxes),
                 "--scales", "40"]) == 0
    assert "protocol 1" in capsys.readouterr().out
    assert main(["localize", "evaluate", "--weights", str(tmp_path / "loc.safetensors"), "--classifier",
                 str(tmp_path / "cls.safetensors"), "--data", str(boxes), "--protocol", "dense",
                 "--scales", "40,56"]) == 0
    assert "top-5 localisation error" in capsys.readouterr().out
    out = tmp_path / "p.png"
    assert main(["localize", "predict", str(boxes / "val" / "red" / "red_1.png"), "--weights",
                 str(tmp_path / "loc.safetensors"), "--classifier", str(tmp_path / "cls.safetensors"),
                 "--out", str(out), "--scales", "40", "--top", "2"]) == 0
    assert out.read_bytes()[:4] == b"\x89PNG"
    with pytest.raises(vd.UserError, match="not a localisation net"):
        L.box_net(vd.load(tmp_path / "cls.safetensors"), tmp_path / "cls.safetensors")


def test_fusing_localisation_nets_pools_their_boxes(classifier, boxes, tmp_path, capsys):
    """Table 9: several localisation nets' boxes all join the greedy merge. A net fused with itself gives its own
    boxes, each merged twice as strongly."""
    from PIL import Image

    net = L.localisation_net(classifier, "pcr")
    img = Image.open(boxes / "val" / "blue" / "blue_1.png").convert("RGB")
    one = L.dense_boxes(L.Dense(net, classifier), img, [40, 56], top_k=2)
    two = L.dense_boxes(L.Dense([net, net], classifier), img, [40, 56], top_k=2)
    for (c1, p1, b1, s1), (c2, p2, b2, s2) in zip(one, two):
        assert (c1, p1) == (c2, p2) and s2 == pytest.approx(2 * s1)
        np.testing.assert_allclose(b1, b2, atol=1e-4)
    vd.save(net, tmp_path / "loc.safetensors")
    vd.save(classifier, tmp_path / "cls.safetensors")
    args = ["localize", "evaluate", "--weights", str(tmp_path / "loc.safetensors"), "--weights",
            str(tmp_path / "loc.safetensors"), "--classifier", str(tmp_path / "cls.safetensors"), "--data", str(boxes),
            "--scales", "40", "--no-progress"]
    assert main(args + ["--protocol", "dense"]) == 0 and "2 nets fused" in capsys.readouterr().out
    assert main(args) == 2  # protocol 1 takes one net
