"""Very deep features and transfer (PAPER.md section 7): pooling, flips, scales, stacking, normalisation,
resumable extraction, SVM protocols and both VOC average-precision definitions."""
import json

import numpy as np
import pytest
import torch
from PIL import Image

from verydeep import transfer as T
from verydeep.cli import main
from verydeep.data import VOC, ImageFolder, open_source
from verydeep.features import descriptor, extract
from verydeep.transforms import rescale, to_uint8
from conftest import tiny
from imagegen import imagenet_folder, voc_xml


@pytest.fixture(scope="module")
def nets():
    torch.manual_seed(0)
    return tiny("A", crop_size=32, width=1 / 8), tiny("B", crop_size=32, width=1 / 8, fc_width=16)


def test_descriptor_arithmetic(nets):
    a, _ = nets
    img = Image.fromarray(np.random.default_rng(0).integers(0, 255, (50, 70, 3), dtype=np.uint8))
    d = descriptor([a], img, [40, 48], "relu7", "mean")
    want = []
    for q in (40, 48):
        x = a.preprocess(to_uint8(rescale(img, q))[None].float() / 255)
        with torch.no_grad():
            f = a.extract(torch.cat([x, x.flip(3)]), ["relu7"], dense=True)["relu7"]
        want.append(f.mean((2, 3)).mean(0))  # global average pooling, then the mirror average
    want = torch.stack(want).mean(0)
    np.testing.assert_allclose(d, (want / want.norm()).numpy(), rtol=1e-5, atol=1e-6)
    assert abs(np.linalg.norm(d) - 1) < 1e-5


def test_stacking_dimensions(nets):
    a, b = nets
    img = Image.new("RGB", (40, 40), (10, 200, 30))
    assert descriptor([a], img, [32, 40, 48], "relu7", "stack").shape == (32 * 3,)
    assert descriptor([a, b], img, [32, 40], "relu7", "mean").shape == (32 + 16,)
    assert descriptor([a, b], img, [32, 40], "pool5", "stack").shape == (2 * 2 * a.feature_channels,)


def test_extraction_is_resumable(nets, tmp_path):
    a, _ = nets
    src = ImageFolder(imagenet_folder(tmp_path / "d", per_class=30, size=(40, 36)))

    class Dies(ImageFolder):
        def read(self, i):
            if i == 70:
                raise KeyboardInterrupt
            return super().read(i)

    with pytest.raises(KeyboardInterrupt):
        extract([a], Dies(tmp_path / "d"), tmp_path / "f", [40], progress=False)
    meta = json.loads((tmp_path / "f.json").read_text())
    assert meta["done"] == 64  # flushed in blocks of 64
    feats, meta = extract([a], src, tmp_path / "f", [40], progress=False)
    fresh, _ = extract([a], src, tmp_path / "g", [40], progress=False)
    np.testing.assert_allclose(np.asarray(feats), np.asarray(fresh), atol=1e-6)
    assert meta["labels"] == src.labels().tolist()
    with pytest.raises(Exception, match="other settings"):
        extract([a], src, tmp_path / "f", [48], progress=False)


def test_ap_definitions_on_known_curves():
    # Ranked: +, -, +, -, - (2 positives). Precision at the hits: 1/1, 2/3.
    scores = np.array([0.9, 0.8, 0.7, 0.6, 0.5])
    pos = np.array([1, 0, 1, 0, 0], bool)
    assert T.ap_area(scores, pos) == pytest.approx(0.5 * 1 + 0.5 * 2 / 3)
    # 11-point: recall 0..0.5 -> max precision 1 (6 points); 0.6..1.0 -> 2/3 (5 points).
    assert T.ap_voc07(scores, pos) == pytest.approx((6 * 1 + 5 * 2 / 3) / 11)
    perfect = np.array([1, 1, 0, 0], bool)
    assert T.ap_area(np.array([4, 3, 2, 1]), perfect) == 1.0 and T.ap_voc07(np.array([4, 3, 2, 1]), perfect) == 1.0


def test_multiclass_protocol_on_separable_features():
    rng = np.random.default_rng(0)
    labels = np.repeat(np.arange(4), 20)
    x = np.eye(4)[labels] * 3 + rng.normal(0, 0.3, (80, 4))
    r = T.multiclass(x, labels, train_per_class=5, splits=3)
    assert r["mean_class_recall"] > 0.95 and len(r["splits"]) == 3
    with pytest.raises(Exception, match="no image left"):
        T.multiclass(x, labels, train_per_class=20)


def test_difficult_only_images_count_for_neither_side(tmp_path):
    """The VOC devkit's rule: an image whose only objects of a class are marked difficult is ignored for it."""
    root = tmp_path / "VOC"
    (root / "ImageSets" / "Main").mkdir(parents=True)
    (root / "Annotations").mkdir()
    (root / "ImageSets" / "Main" / "test.txt").write_text("a\nb\n")
    obj = "<object><name>{}</name><difficult>{}</difficult><bndbox><xmin>1</xmin><ymin>1</ymin><xmax>5</xmax>" \
          "<ymax>5</ymax></bndbox></object>"
    (root / "Annotations" / "a.xml").write_text(f"<annotation>{obj.format('cat', 1)}{obj.format('dog', 0)}</annotation>")
    (root / "Annotations" / "b.xml").write_text(f"<annotation>{obj.format('cat', 0)}{obj.format('cat', 1)}</annotation>")
    has, ignore = VOC(root, "test").targets()
    cat, dog = VOC.classes.index("cat"), VOC.classes.index("dog")
    assert (has[0, cat], ignore[0, cat], has[0, dog], has[1, cat], ignore[1, cat]) == (False, True, True, True, False)
    # an ignored image scored above every positive would otherwise be a false positive
    rng = np.random.default_rng(0)
    t = np.array([1, 0] * 20 + [0], bool)[:, None]
    x = (t * 2.0 + rng.normal(0, 0.3, t.shape)).astype(np.float32)
    x[-1] = 5.0
    ig = np.zeros_like(t)
    ig[-1] = True
    train, test = np.arange(30), np.arange(30, 41)
    assert T.multilabel(x, t, train, test, ignore=ig)["map_area"] > T.multilabel(x, t, train, test)["map_area"]


def test_multilabel_protocol():
    rng = np.random.default_rng(1)
    t = rng.random((60, 3)) < 0.4
    x = t * 2.0 + rng.normal(0, 0.2, (60, 3))
    r = T.multilabel(x, t, np.arange(40), np.arange(40, 60))
    assert r["map_area"] > 0.9 and len(r["ap_voc07"]) == 3


def test_voc_layout_and_cli(nets, tmp_path, capsys):
    root = tmp_path / "VOC"
    (root / "ImageSets" / "Main").mkdir(parents=True)
    (root / "JPEGImages").mkdir()
    (root / "Annotations").mkdir()
    rng = np.random.default_rng(0)
    for split, n in (("trainval", 12), ("test", 6)):
        ids = [f"{split}_{i:03d}" for i in range(n)]
        (root / "ImageSets" / "Main" / f"{split}.txt").write_text("\n".join(ids))
        for k, i in enumerate(ids):
            Image.fromarray(rng.integers(0, 255, (40, 50, 3), dtype=np.uint8)).save(root / "JPEGImages" / f"{i}.jpg")
            voc_xml(root / "Annotations" / f"{i}.xml", 50, 40, [(["dog", "cat"][k % 2], (1, 2, 20, 30)),
                                                                 ("person", (5, 5, 9, 9))])
    src = open_source(root, split="trainval")
    assert isinstance(src, VOC) and len(src) == 12
    t, ignore = src.targets()
    assert t.shape == (12, 20) and t[:, VOC.classes.index("person")].all() and t[0, VOC.classes.index("dog")]
    assert not ignore.any()
    a, _ = nets
    import verydeep as vd
    vd.save(a, tmp_path / "a.safetensors")
    for split in ("trainval", "test"):
        assert main(["features", "--weights", str(tmp_path / "a.safetensors"), "--data", str(root), "--split", split,
                     "--out", str(tmp_path / split), "--scales", "32,40", "--no-progress"]) == 0
    assert main(["transfer", "--features", str(tmp_path / "trainval.npy"), "--test-features",
                 str(tmp_path / "test.npy")]) == 0
    assert "mAP" in capsys.readouterr().out


def test_transfer_refuses_features_that_do_not_match_their_index(tmp_path):
    np.save(tmp_path / "f.npy", np.zeros((5, 3), np.float32))
    (tmp_path / "f.json").write_text(json.dumps({"labels": [0, 1, 0], "classes": ["a", "b"]}))
    r = main(["transfer", "--features", str(tmp_path / "f.npy")])
    assert r == 2


def test_transfer_defaults_follow_the_named_dataset():
    from verydeep.config import build
    from verydeep.transfer import TransferConfig

    c = build(TransferConfig)  # Caltech-101 (Appendix B): 30 training, at most 50 test images per class
    assert (c.train_per_class, c.test_per_class) == (30, 50)
    c = build(TransferConfig, {"dataset": "caltech256"})
    assert (c.train_per_class, c.test_per_class) == (60, 0)  # 0: all the rest
    c = build(TransferConfig, {"dataset": "caltech256", "test_per_class": 25})  # what is given wins
    assert c.test_per_class == 25


def test_transfer_leaves_out_the_rows_the_extraction_skipped(tmp_path, capsys):
    # an unreadable image is an all-zero row in the features; it must neither train nor test an SVM
    import json

    from verydeep.transfer import TransferConfig, read_features, run

    rng = np.random.default_rng(0)
    labels = np.repeat(np.arange(3), 12)
    x = rng.normal(size=(36, 8)).astype(np.float32) + labels[:, None] * 3.0
    skipped = [0, 13, 30]
    x[skipped] = 0.0
    np.save(tmp_path / "f.npy", x)
    (tmp_path / "f.json").write_text(json.dumps({"labels": labels.tolist(), "skipped": skipped,
                                                 "classes": ["a", "b", "c"]}))
    _, _, keep = read_features(tmp_path / "f.npy")
    assert (~keep).nonzero()[0].tolist() == skipped
    r = run(TransferConfig(features=str(tmp_path / "f.npy"), train_per_class=5, test_per_class=0, splits=2))
    assert r["left_out"] == 3 and "3 image(s) the extraction skipped (unreadable) left out" in capsys.readouterr().out
