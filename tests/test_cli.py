"""The `verydeep` command: Table 2 from `info`, predictions, exports, and one-line errors for user mistakes."""
import json
import subprocess
import sys

import numpy as np
import pytest
import torch
from PIL import Image

import verydeep as vd
from verydeep.cli import main
from conftest import tiny


def test_info_prints_table_2(capsys):
    assert main(["info"]) == 0
    out = capsys.readouterr().out
    for count in ("132,863,336", "133,047,848", "133,638,952", "138,357,544", "143,667,240"):
        assert count in out
    d = next(line for line in out.splitlines() if line.startswith("D "))
    assert d.split()[1:] == ["16", "138,357,544", "138.4", "138", "15.47", "15.47", "196"]


def test_info_one_model(capsys):
    assert main(["info", "C"]) == 0
    out = capsys.readouterr().out
    assert "conv3_3" in out and "conv1-256" in out and "133,638,952" in out


@pytest.fixture
def image(tmp_path):
    rng = np.random.default_rng(0)
    p = tmp_path / "img.jpg"
    Image.fromarray(rng.integers(0, 255, (90, 120, 3), dtype=np.uint8)).save(p, quality=90)
    return p


@pytest.fixture
def weights(tmp_path):
    m = tiny("A")
    m.card = m.card.but(class_names=("ant", "bee", "cat", "dog", "eel", "fox", "gnu"))
    p = tmp_path / "a.safetensors"
    vd.save(m, p)
    return p


@pytest.mark.parametrize("protocol", ["dense", "center"])
def test_predict_json(weights, image, capsys, protocol):
    assert main(["predict", "--weights", str(weights), str(image), "--json", "-", "--protocol", protocol]) == 0
    res = json.loads(capsys.readouterr().out)["results"]
    top = res[0]["top"]
    assert len(top) == 5 and top[0]["name"] in {"ant", "bee", "cat", "dog", "eel", "fox", "gnu"}
    probs = [t["probability"] for t in top]
    assert probs == sorted(probs, reverse=True) and 0 < sum(probs) <= 1.0 + 1e-6


def test_predict_dense_is_flip_averaged_posterior(weights, image):
    from verydeep.evaluate import predict_image
    from verydeep.transforms import load_rgb, rescale, to_uint8

    m = vd.load(weights).eval()
    p = predict_image(m, load_rgb(image), "dense", [73], precision="fp32")
    x = m.preprocess(to_uint8(rescale(load_rgb(image), 73))[None].float() / 255)
    with torch.no_grad():
        a = m.score_map(x).mean((2, 3)).softmax(1)
        b = m.score_map(x.flip(3)).mean((2, 3)).softmax(1)
    torch.testing.assert_close(p, ((a + b) / 2)[0])
    assert abs(float(p.sum()) - 1) < 1e-5


def test_export_cli(weights, tmp_path, capsys):
    pytest.importorskip("onnxruntime")
    assert main(["export", "--weights", str(weights), "--out", str(tmp_path / "m.onnx"), "--graph",
                 "score_map"]) == 0
    assert "max relative difference" in capsys.readouterr().out
    assert main(["export", "--model", "A", "--weights", str(weights), "--out", str(tmp_path / "b.safetensors")]) == 0
    assert vd.load(tmp_path / "b.safetensors").config == vd.load(weights).config


@pytest.mark.parametrize("args,match", [
    (["predict", "--weights", "{w}", "/no/such/image.jpg"], "/no/such/image.jpg: no such file"),
    (["predict", "--weights", "{w}", "{bad}"], "not an image file"),
    (["predict", "--weights", "/no/such.pth", "{img}"], "/no/such.pth: no such file"),
    (["predict", "--model", "vgg17", "{img}"], "unknown model 'vgg17'"),
    (["predict", "--weights", "{w}", "--labels", "{bad}", "{img}"], "1 labels for a 7-class model"),
    (["export", "--weights", "{w}", "--out", "x.zip"], "choose an output ending in .onnx or .safetensors"),
])
def test_user_mistakes_are_one_line(weights, image, tmp_path, args, match):
    bad = tmp_path / "notes.jpg"
    bad.write_text("this is text\n")
    argv = [a.format(w=weights, img=image, bad=bad) for a in args]
    r = subprocess.run([sys.executable, "-m", "verydeep", *argv], capture_output=True, text=True, cwd=tmp_path)
    assert r.returncode == 2
    assert "Traceback" not in r.stderr
    lines = r.stderr.strip().splitlines()
    assert len(lines) == 1 and match in lines[0], r.stderr


def test_predict_reports_bad_images_and_goes_on(weights, image, tmp_path):
    Image.fromarray(np.full((2, 10000, 3), 90, np.uint8)).save(tmp_path / "strip.png")  # 10000x2
    (tmp_path / "text.jpg").write_text("not an image")
    r = subprocess.run([sys.executable, "-m", "verydeep", "predict", "--weights", str(weights), "--json", "-",
                        str(tmp_path / "strip.png"), str(tmp_path / "text.jpg"), str(image)],
                       capture_output=True, text=True)
    assert r.returncode == 2 and "Traceback" not in r.stderr
    err = r.stderr.strip().splitlines()
    assert len(err) == 2 and "strip.png: extreme aspect ratio (10000x2 would be" in err[0]
    assert "text.jpg: not an image file" in err[1]
    assert [x["image"] for x in json.loads(r.stdout)["results"]] == [str(image)]  # the good one still predicted


@pytest.mark.parametrize("args,match", [
    (["evaluate", "--weights", "{w}", "--data", "{d}", "--threads", "-2"], "--threads -2: give at least 1"),
    (["evaluate", "--weights", "{w}", "--data", "{d}", "--device", "tpu"], "--device 'tpu': choose auto, cpu"),
    (["bench", "--device", "tpu"], "--device 'tpu': choose auto, cpu"),
])
def test_shared_options_are_checked(weights, tmp_path, args, match):
    argv = [a.format(w=weights, d=tmp_path) for a in args]
    r = subprocess.run([sys.executable, "-m", "verydeep", *argv], capture_output=True, text=True)
    assert r.returncode == 2 and len(r.stderr.strip().splitlines()) == 1 and match in r.stderr, r.stderr


def test_loaded_nets_are_in_eval_mode_and_untrained_nets_are_named(weights, image, caplog):
    # vd.load gives a net ready to predict (dropout off: two calls agree); predict without --weights says the net
    # is untrained
    import logging

    import verydeep as vd
    from verydeep.predict import PredictConfig, predict

    m = vd.load(weights)
    assert not m.training
    x = torch.randn(1, 3, m.config.crop_size, m.config.crop_size)
    with torch.no_grad():
        assert torch.equal(m(x), m(x))
    with caplog.at_level(logging.WARNING, logger="verydeep"):
        predict(PredictConfig(model="A", width=1 / 16, fc_width=32, crop=64, num_classes=7, images=[str(image)]))
    assert "untrained (random weights)" in caplog.text
