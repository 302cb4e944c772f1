"""Evaluation protocols (PAPER.md section 3) and measures (section 5) on a tiny net and generated data."""
import json

import numpy as np
import pytest
import torch
from PIL import Image

import verydeep as vd
from verydeep.cli import main
from verydeep.data import ImageFolder
from verydeep.errors import UserError
from verydeep.evaluate import (Evaluator, Posteriors, format_table, measure, parse_scales, predict_image,
                               topk_error)
from verydeep.transforms import grid_positions, rescale, to_uint8
from conftest import tiny
from imagegen import imagenet_folder, photo, write_jpeg


@pytest.fixture(scope="module")
def data(tmp_path_factory):
    return ImageFolder(imagenet_folder(tmp_path_factory.mktemp("ev") / "val", per_class=3, size=(100, 75)))


@pytest.fixture(scope="module")
def model():
    torch.manual_seed(0)
    m = tiny("A", num_classes=3)
    m.card = m.card.but(train_scale=(73, 73))
    return m


def run(model, data, protocols, scales, **kw):
    ev = Evaluator(model, progress=False, **{"workers": 0, "batch_size": 4, "precision": "fp32", **kw})
    return ev, ev.run(data, protocols, scales)


def test_net_passes_per_protocol(model, data):
    n = len(data)
    for protocol, per_scale in (("center", 1), ("dense", 2), ("multicrop", 50)):
        ev, _ = run(model, data, [protocol], [64, 80, 96])
        assert ev.forward_images == n * per_scale * 3, protocol
    ev, _ = run(model, data, ["dense+multicrop"], [64])
    assert ev.forward_images == n * 52


def test_posteriors_sum_to_one(model, data):
    _, post = run(model, data, ["center", "dense", "multicrop", "dense+multicrop"], [64, 80])
    for p in ("center", "dense", "multicrop", "dense+multicrop"):
        np.testing.assert_allclose(post.combine(p, [64, 80]).sum(1), 1, atol=1e-5)


def test_dense_is_flip_averaged_mean_score_map(model, data):
    _, post = run(model, data, ["dense"], [80])
    img = rescale(Image.open(data.path(4)).convert("RGB"), 80)
    x = model.preprocess(to_uint8(img)[None].float() / 255)
    with torch.no_grad():
        a = model.score_map(x).mean((2, 3)).softmax(1)
        b = model.score_map(x.flip(3)).mean((2, 3)).softmax(1)
    np.testing.assert_allclose(post.probs[("dense", 80)][4], ((a + b) / 2)[0].numpy(), atol=1e-6)


def test_dense_images_and_flips_in_one_call_or_two_give_the_same(model, data):
    # batch 2: a full bucket of 2 runs images and flips apart; batch 64: each size's images and their flips in one
    # call (dense_posteriors)
    (_, apart), (_, together) = (run(model, data, ["dense"], [80], batch_size=b) for b in (2, 64))
    np.testing.assert_allclose(apart.probs[("dense", 80)], together.probs[("dense", 80)], atol=1e-6)
    for i in range(len(data)):
        x = model.preprocess(to_uint8(rescale(Image.open(data.path(i)).convert("RGB"), 80))[None].float() / 255)
        with torch.no_grad():
            want = (model.score_map(x).mean((2, 3)).softmax(1) + model.score_map(x.flip(3)).mean((2, 3)).softmax(1))
        np.testing.assert_allclose(together.probs[("dense", 80)][i], want[0].numpy() / 2, atol=1e-6)


def test_images_of_one_shape_gather_into_full_batches_among_many_shapes(model, tmp_path):
    # 48 images of 6 shapes, read in turn: every dense batch is full (8), though 40 images wait before the first
    # bucket fills: more than 4 batches, but far less than HOLD_BYTES (4 batches alone ran buckets of 1-7)
    for i in range(48):
        write_jpeg(tmp_path / "val" / "c0" / f"{i:02d}.jpg", photo(80 + 6 * (i % 6), 70, i))
    data = ImageFolder(tmp_path / "val")
    ev = Evaluator(model, progress=False, workers=0, batch_size=8, precision="fp32")
    sizes, dense = [], ev.dense_posteriors
    ev.dense_posteriors = lambda x: sizes.append(len(x)) or dense(x)
    post = ev.run(data, ["dense"], [64])
    assert sizes == [8] * 6
    _, alone = run(model, data, ["dense"], [64], batch_size=1)
    np.testing.assert_allclose(post.probs[("dense", 64)], alone.probs[("dense", 64)], atol=1e-5)


def test_multicrop_is_the_mean_of_50_crop_posteriors(model, data):
    _, post = run(model, data, ["multicrop"], [70])
    big = to_uint8(rescale(Image.open(data.path(1)).convert("RGB"), 70))
    views = torch.stack([big[:, y:y + 64, x:x + 64] for x, y in grid_positions(big.shape[2], big.shape[1], 64)])
    views = torch.cat([views, views.flip(3)])
    assert len(views) == 50
    with torch.no_grad():
        want = model(model.preprocess(views.float() / 255)).softmax(1).mean(0)
    np.testing.assert_allclose(post.probs[("multicrop", 70)][1], want.numpy(), atol=1e-6)


def test_default_precision_agrees_with_fp32(model, data):
    # The default ("auto": bf16 where the CPU computes it natively) must give the fp32 posteriors closely.
    _, ref = run(model, data, ["center", "dense"], [72])
    ev, post = run(model, data, ["center", "dense"], [72], precision="auto")
    for p in ("center", "dense"):
        diff = np.abs(post.combine(p, [72]) - ref.combine(p, [72])).max()
        assert diff < (0.03 if ev.precision == "bf16" else 1e-5), (p, ev.precision, diff)


def test_int8_recomputes_the_reported_results_that_are_near_ties(model, data):
    # Where an image's reported result (a protocol over the scales) has a top-2 margin under `recheck`, fp32
    # recomputes that protocol for the image at every scale: 1 takes every result, 0 none, and a margin between
    # exactly the results whose int8 margin is that close; the others keep int8's posteriors.
    protocols, scales = ["center", "multicrop"], [72, 90]
    _, ref = run(model, data, protocols, scales)
    raw, raw_post = run(model, data, protocols, scales, precision="int8", recheck=0.0)
    assert raw.rechecked == 0 and raw.precision_text == "int8"
    assert max(np.abs(raw_post.probs[k] - ref.probs[k]).max() for k in ref.probs) > 1e-4
    ev, post = run(model, data, protocols, scales, precision="int8", recheck=1.0)
    assert ev.rechecked == ev.checked == 2 * len(data) and ev.precision_text == "int8 (100.0% fp32)"
    for k in ref.probs:
        np.testing.assert_allclose(post.probs[k], ref.probs[k], atol=1e-5)
    margin = {}
    for p in protocols:
        top2 = np.sort(raw_post.combine(p, scales), 1)[:, -2:]
        margin[p] = top2[:, 1] - top2[:, 0]
    m = float(np.median(np.concatenate(list(margin.values()))))
    ev, post = run(model, data, protocols, scales, precision="int8", recheck=m)
    near = {p: margin[p] < m for p in protocols}
    assert ev.checked == 2 * len(data) and 0 < ev.rechecked == sum(n.sum() for n in near.values()) < 2 * len(data)
    for (p, q), got in post.probs.items():
        np.testing.assert_allclose(got[near[p]], ref.probs[(p, q)][near[p]], atol=1e-5)
        np.testing.assert_array_equal(got[~near[p]], raw_post.probs[(p, q)][~near[p]])


def test_int8_predict_image_recomputes_a_near_tie(model, data):
    img = Image.open(data.path(0)).convert("RGB")
    want = predict_image(model, img, "dense+multicrop", [72, 90], precision="fp32")
    ev = Evaluator(model, workers=0, precision="int8", progress=False, recheck=1.0)
    ev.calibrate(data, 72)
    torch.testing.assert_close(predict_image(model, img, "dense+multicrop", [72, 90], evaluator=ev), want,
                               atol=1e-5, rtol=0)
    assert ev.checked == ev.rechecked == 1
    ev.recheck = 0.0
    assert (predict_image(model, img, "dense+multicrop", [72, 90], evaluator=ev) - want).abs().max() > 1e-4


def test_int8_calibrates_on_the_given_images(model, data):
    ev = Evaluator(model, workers=0, precision="int8", progress=False)
    ev.calibrate(data, 72, n=4)
    assert ev.net.calibrated
    with pytest.raises(ValueError, match="applies once"):
        ev.net.calibrate(torch.zeros(1, 3, 64, 64))


def test_evaluate_states_agreement_with_fp32(tmp_path, model, data):
    vd.save(model, tmp_path / "a.safetensors")
    assert main(["evaluate", "--weights", str(tmp_path / "a.safetensors"), "--data", str(data.root), "--protocol",
                 "dense", "--precision", "int8", "--agreement", "5", "--out", str(tmp_path / "t")]) == 0
    row = json.loads((tmp_path / "t.json").read_text())["rows"][0]
    assert row["precision"].startswith("int8 (") and row["top-1 = fp32"].split("% of ")[1].startswith("5 (")
    assert main(["evaluate", "--weights", str(tmp_path / "a.safetensors"), "--data", str(data.root), "--protocol",
                 "dense", "--precision", "fp32", "--out", str(tmp_path / "f")]) == 0
    assert json.loads((tmp_path / "f.json").read_text())["rows"][0]["top-1 = fp32"] == "-"


def test_dense_at_the_crop_size_equals_the_fc_net(model):
    # A square image at Q = crop: the score map is 1x1 and equals the FC output (section 3).
    img = Image.fromarray(np.random.default_rng(0).integers(0, 255, (64, 64, 3), dtype=np.uint8))
    x = model.preprocess(to_uint8(img)[None].float() / 255)
    with torch.no_grad():
        assert model.score_map(x).shape[-2:] == (1, 1)
        torch.testing.assert_close(model.score_map(x)[:, :, 0, 0], model(x), rtol=1e-4, atol=1e-5)
    p = predict_image(model, img, "dense", [64], precision="fp32")
    with torch.no_grad():
        want = (model(x).softmax(1) + model(x.flip(3)).softmax(1)) / 2
    torch.testing.assert_close(p, want[0], rtol=1e-4, atol=1e-6)


def test_auto_scale_rules():
    from verydeep.paper import test_scales

    assert test_scales((256, 256), 224, False) == [256]
    assert test_scales((256, 512), 224, False) == [384]
    assert test_scales((256, 256), 224, True) == [224, 256, 288]
    assert test_scales((384, 384), 224, True) == [352, 384, 416]
    assert test_scales((256, 512), 224, True) == [256, 384, 512]
    assert test_scales((73, 146), 64, True) == [73, 109, 146]
    assert test_scales((73, 73), 64, True) == [64, 73, 82]  # 32 scaled to the crop: 9
    with pytest.raises(UserError, match="needs the net's training scale"):
        parse_scales("auto", tiny("A"))


def test_parse_scales(model):
    assert parse_scales("auto", model) == [73]
    assert parse_scales("80,96", model) == [80, 96]
    with pytest.raises(UserError, match="at least the 64 crop"):
        parse_scales("32", model)


def test_topk_error_hand_computed():
    probs = np.array([[0.1, 0.6, 0.3], [0.5, 0.2, 0.3], [0.2, 0.3, 0.5], [0.4, 0.35, 0.25]])
    labels = np.array([1, 2, 0, 2])
    assert topk_error(probs, labels, 1) == 0.75   # only image 0 right
    assert topk_error(probs, labels, 2) == 0.5    # images 0 and 1 within the top 2
    assert topk_error(probs, labels, 5) == 0.0


def test_fusion_of_identical_nets_is_the_net(model, data, tmp_path):
    vd.save(model, tmp_path / "a.safetensors")
    vd.save(model, tmp_path / "b.safetensors")
    root = str(data.root)
    assert main(["evaluate", "--weights", str(tmp_path / "a.safetensors"), "--weights", str(tmp_path / "b.safetensors"),
                 "--data", root, "--protocol", "dense", "--scales", "72", "--workers", "0", "--no-progress",
                 "--out", str(tmp_path / "t")]) == 0
    doc = json.loads((tmp_path / "t.json").read_text())
    rows = doc["rows"]
    assert doc["provenance"]["verydeep"] == vd.__version__ and "commit" in doc["provenance"]
    assert [r["net"] for r in rows] == ["a", "b", "fusion(a+b)"]
    assert rows[0]["top-1 err (%)"] == rows[2]["top-1 err (%)"] and rows[0]["top-5 err (%)"] == rows[2]["top-5 err (%)"]
    assert (tmp_path / "t.md").read_text().startswith("| net")
    assert (tmp_path / "t.csv").read_text().startswith("net,train S")


def test_fusion_arithmetic_from_saved_posteriors(model, data, tmp_path):
    _, a = run(model, data, ["center"], [72])
    b = Posteriors(a.labels, {("center", 72): np.roll(a.probs[("center", 72)], 1, axis=1)}, a.valid, a.paths)
    a.save(tmp_path / "a.npz")
    b.save(tmp_path / "b.npz")
    loaded = Posteriors.load(tmp_path / "a.npz")
    np.testing.assert_array_equal(loaded.probs[("center", 72)], a.probs[("center", 72)])
    assert main(["evaluate", "--fuse", str(tmp_path / "a.npz"), "--fuse", str(tmp_path / "b.npz"), "--protocol", "center",
                 "--out", str(tmp_path / "f")]) == 0
    fused = (a.probs[("center", 72)] + b.probs[("center", 72)]) / 2
    want = measure(fused, a, "x", "-", [], "center")
    got = json.loads((tmp_path / "f.json").read_text())["rows"][0]
    assert got["top-1 err (%)"] == round(100 * want.top1, 2)


def test_results_do_not_depend_on_batch_size_or_workers(model, data):
    _, ref = run(model, data, ["dense", "multicrop"], [64, 90], batch_size=1, workers=0)
    _, other = run(model, data, ["dense", "multicrop"], [64, 90], batch_size=5, workers=2)
    for k in ref.probs:
        np.testing.assert_allclose(ref.probs[k], other.probs[k], atol=1e-5)
    assert ref.labels.tolist() == other.labels.tolist() == data.labels().tolist()


def test_images_of_many_shapes_are_run_before_the_pass_ends(model, tmp_path, monkeypatch):
    """Dense batches need one shape: with every image of its own shape, at most 4 batches of images wait once they
    take more than HOLD_BYTES (without a bound all of them did, to the end: 11 GB for the study's 5,000 test images),
    and the posteriors are those of each image run alone."""
    import verydeep.evaluate as evaluate

    monkeypatch.setattr(evaluate, "HOLD_BYTES", 0)  # these small images would all fit in the default
    for i in range(24):
        write_jpeg(tmp_path / "val" / f"c{i % 3}" / f"{i}.jpg", photo(80 + 6 * i, 70, i))
    data = ImageFolder(tmp_path / "val")
    reads, done, waiting = [0], [0], []
    read = data.read

    def counted_read(i):
        reads[0] += 1
        return read(i)

    data.read = counted_read
    ev = Evaluator(model, progress=False, workers=0, batch_size=2, precision="fp32")
    dense = ev.dense_posteriors

    def counted_dense(x):
        waiting.append(reads[0] - done[0])  # read, not yet run
        done[0] += len(x)
        return dense(x)

    ev.dense_posteriors = counted_dense
    post = ev.run(data, ["dense"], [64])
    assert max(waiting) <= 4 * 2 + 1 and done[0] == 24
    _, alone = run(model, data, ["dense"], [64], batch_size=1)
    np.testing.assert_allclose(post.probs[("dense", 64)], alone.probs[("dense", 64)], atol=1e-5)


def test_unreadable_images_are_excluded_and_counted(model, data, tmp_path):
    folder = imagenet_folder(tmp_path / "v", per_class=2, size=(100, 75))
    (folder / "n01" / "broken.JPEG").write_bytes(b"\xff\xd8\xff garbage")
    src = ImageFolder(folder)
    _, post = run(model, src, ["center"], [64])
    assert post.valid.sum() == len(src) - 1
    row = measure(post.combine("center", [64]), post, "m", "-", [64], "center")
    assert row.images == len(src) - 1


def test_table_formats():
    post = Posteriors(np.array([0, 1]), {}, np.array([True, True]))
    row = measure(np.array([[0.9, 0.1], [0.2, 0.8]]), post, "D", "256", [256], "dense")
    assert row.top1 == 0.0
    text = format_table([row])
    assert "protocol" in text.splitlines()[0] and "dense" in text


def test_explain_writes_a_png(model, data, tmp_path, capsys):
    vd.save(model, tmp_path / "m.safetensors")
    assert main(["explain", data.path(0), "--weights", str(tmp_path / "m.safetensors"), "--scales", "128",
                 "--out", str(tmp_path / "e.png")]) == 0
    assert (tmp_path / "e.png").read_bytes()[:4] == b"\x89PNG"
    assert "score map 3x4" in capsys.readouterr().out  # 171x128 -> pool5 5x4 -> 3x4 windows
    # explain's probability is predict's (dense + flip at the same scale), said in its output
    assert main(["explain", data.path(0), "--weights", str(tmp_path / "m.safetensors"), "--scales", "128",
                 "--out", str(tmp_path / "e.png")]) == 0
    said = capsys.readouterr().out
    assert main(["predict", data.path(0), "--weights", str(tmp_path / "m.safetensors"), "--scales", "128",
                 "--json", "-"]) == 0
    top = json.loads(capsys.readouterr().out)["results"][0]["top"][0]
    assert f"p = {top['probability']:.3f}, dense + flip at Q = 128, as predict" in said


def test_predict_protocols_and_scales(model, data, tmp_path, capsys):
    vd.save(model, tmp_path / "m.safetensors")
    for protocol in ("center", "dense", "multicrop", "dense+multicrop"):
        assert main(["predict", data.path(0), "--weights", str(tmp_path / "m.safetensors"), "--protocol", protocol,
                     "--scales", "auto-multi", "--json", "-"]) == 0
        out = json.loads(capsys.readouterr().out)["results"][0]
        assert out["scales"] == [64, 73, 82] and len(out["top"]) == 3


def test_posteriors_file_declaring_more_than_it_holds(tmp_path):
    import io
    import zipfile

    buf = io.BytesIO()
    np.lib.format.write_array_header_1_0(buf, {"descr": "<f4", "fortran_order": False, "shape": (10**9, 1000)})
    with zipfile.ZipFile(tmp_path / "p.npz", "w", zipfile.ZIP_DEFLATED) as z:
        z.writestr("dense@256.npy", buf.getvalue() + b"\0" * 64)
        z.writestr("labels.npy", b"")
    with pytest.raises(UserError, match=r"not a verydeep posteriors file \(member dense@256.npy declares"):
        Posteriors.load(tmp_path / "p.npz")


def test_multicrop_views_are_50_per_scale_with_flips():
    from verydeep.evaluate import grid_views

    img = Image.fromarray(np.random.default_rng(1).integers(0, 255, (375, 500, 3), dtype=np.uint8))
    big = to_uint8(rescale(img, 256))
    crops = grid_views(big, 224)
    assert crops.shape == (50, 3, 224, 224)
    assert torch.equal(crops[:25].flip(3), crops[25:])
    x, y = grid_positions(big.shape[2], big.shape[1], 224)[7]
    assert torch.equal(crops[7], big[:, y:y + 224, x:x + 224])


@pytest.fixture
def ten_crop():
    """A newcomer's protocol (AlexNet's ten crops: four corners and the centre, and their mirrors), registered the
    one way there is: every command and the study take it from the registry."""
    from verydeep import evaluate as E

    def views(big, crop):
        h, w = big.shape[1:]
        corners = [(0, 0), (w - crop, 0), (0, h - crop), (w - crop, h - crop), ((w - crop) // 2, (h - crop) // 2)]
        five = torch.stack([big[:, y:y + crop, x:x + crop] for x, y in corners])
        return torch.cat([five, five.flip(3)])

    E.register_protocol(E.Protocol("ten-crop", "AlexNet's 10 crops (a test's own protocol)", views=views))
    yield "ten-crop"
    E.PROTOCOLS.pop("ten-crop")


def test_a_registered_protocol_reaches_every_command(model, data, tmp_path, capsys, ten_crop):
    ev, post = run(model, data, [ten_crop], [72])
    assert ev.forward_images == 10 * len(data)
    np.testing.assert_allclose(post.combine(ten_crop, [72]).sum(1), 1, atol=1e-5)
    vd.save(model, tmp_path / "m.safetensors")
    assert main(["predict", data.path(0), "--weights", str(tmp_path / "m.safetensors"), "--protocol", ten_crop,
                 "--json", "-"]) == 0
    assert json.loads(capsys.readouterr().out)["results"][0]["protocol"] == ten_crop
    assert main(["evaluate", "--weights", str(tmp_path / "m.safetensors"), "--data", str(data.root), "--protocol",
                 "all", "--scales", "72", "--workers", "0", "--no-progress"]) == 0
    assert ten_crop in capsys.readouterr().out
