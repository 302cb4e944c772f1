"""The paper's transforms (PAPER.md sections 2-3): geometry, flips, PCA colour shift, mean subtraction, test views."""
import io

import numpy as np
import pytest
import torch
from PIL import Image

import verydeep as vd
from verydeep.transforms import (BadImage, TrainTransform, decode, grid_positions, random_crop_resized, rescale,
                                 scaled_size, to_model_input)


def jpeg(w, h, seed=0, quality=90, mode="RGB"):
    rng = np.random.default_rng(seed)
    base = Image.fromarray(rng.integers(0, 255, (h // 8 + 1, w // 8 + 1, 3), dtype=np.uint8)).resize((w, h))
    buf = io.BytesIO()
    base.convert(mode).save(buf, "JPEG", quality=quality)
    return buf.getvalue()


def gradient(w, h):
    """x-coordinate in R, y in G: pixel values tell where a crop came from."""
    x = np.tile(np.linspace(0, 255, w), (h, 1))
    y = np.tile(np.linspace(0, 255, h)[:, None], (1, w))
    return Image.fromarray(np.stack([x, y, np.full_like(x, 128)], -1).round().astype(np.uint8))


@pytest.mark.parametrize("w,h,s", [(500, 375, 256), (375, 500, 384), (100, 60, 256), (224, 224, 224)])
def test_scaled_size_is_isotropic_smallest_side(w, h, s):
    W, H = scaled_size(w, h, s)
    assert min(W, H) == s
    assert abs(W / H - w / h) < 2 / s  # aspect kept (up to rounding)


def test_scale_range_honoured_and_uniform():
    t = TrainTransform(256, 512)
    rng = np.random.default_rng(0)
    s = np.array([t.sample_scale(rng) for _ in range(20000)])
    assert s.min() == 256 and s.max() == 512
    hist = np.bincount(s - 256) / len(s)
    assert hist.max() < 3 / 257  # roughly uniform over the 257 integers
    fixed = TrainTransform(384, 384)
    assert {fixed.sample_scale(rng) for _ in range(100)} == {384}
    with pytest.raises(ValueError, match="crop <= Smin"):
        TrainTransform(200, 256, crop=224)


def test_crop_is_inside_the_rescaled_image_and_equals_rescale_then_crop():
    img = gradient(500, 375)
    rng = np.random.default_rng(1)
    for _ in range(20):
        s = int(rng.integers(256, 513))
        state = rng.bit_generator.state
        fast = np.asarray(random_crop_resized(img, s, 224, rng), np.float64)
        rng2 = np.random.default_rng()
        rng2.bit_generator.state = state
        big = rescale(img, s)
        x = int(rng2.integers(0, big.size[0] - 224 + 1))
        y = int(rng2.integers(0, big.size[1] - 224 + 1))
        slow = np.asarray(big.crop((x, y, x + 224, y + 224)), np.float64)
        assert fast.shape == (224, 224, 3)
        # Same pixels up to the filter's treatment of the box border.
        assert np.abs(fast[2:-2, 2:-2] - slow[2:-2, 2:-2]).mean() < 1.0


def test_crop_positions_cover_the_whole_image():
    rng = np.random.default_rng(0)
    img = gradient(400, 300)
    xs = []
    for _ in range(300):
        c = np.asarray(random_crop_resized(img, 300, 224, rng))
        xs.append(c[0, 0, 0])
    # Left edges span from the image's left border to its right-most legal position.
    assert min(xs) < 8 and max(xs) > 255 * (400 - 224) / 400 - 8


def test_flip_is_exact_mirror():
    t = TrainTransform(64, 64, crop=64, flip=True)
    img = gradient(64, 64)
    seen = set()
    for seed in range(16):
        out, _ = t(img, np.random.default_rng(seed))
        ref = np.asarray(img)
        if np.array_equal(out, ref):
            seen.add("plain")
        else:
            assert np.array_equal(out, ref[:, ::-1])
            seen.add("flip")
    assert seen == {"plain", "flip"}


def test_pca_colour_shift_statistics():
    eigval = (0.2175, 0.0188, 0.0045)  # ImageNet's, [0, 1] units
    eigvec = np.linalg.qr(np.random.default_rng(0).normal(size=(3, 3)))[0]
    t = TrainTransform(256, 256, eigval=eigval, eigvec=tuple(map(tuple, eigvec)))
    rng = np.random.default_rng(0)
    shifts = np.stack([t.colour_shift(rng) for _ in range(20000)])
    # Projected on eigenvector i the shift is alpha_i * lambda_i with alpha ~ N(0, 0.1).
    proj = shifts @ eigvec
    np.testing.assert_allclose(proj.std(0), 0.1 * np.asarray(eigval), rtol=0.03)
    np.testing.assert_allclose(proj.mean(0), 0, atol=0.02 * max(eigval))
    assert abs(np.corrcoef(proj.T)[0, 1]) < 0.03
    assert not TrainTransform(256, 256).colour_shift(rng).any()  # no statistics, no shift


def test_mean_subtraction_and_shift_in_one_place():
    images = torch.full((2, 3, 4, 4), 100, dtype=torch.uint8)
    shifts = torch.tensor([[10.0, 0, 0], [0, 0, -5.0]]) / 255  # [0, 1] units
    x = to_model_input(images, shifts, vd.VERYDEEP)
    mean = torch.tensor(vd.VERYDEEP.mean)
    torch.testing.assert_close(x[0, :, 0, 0], torch.tensor([110.0, 100, 100]) - mean, atol=1e-4, rtol=0)
    torch.testing.assert_close(x[1, :, 0, 0], torch.tensor([100.0, 100, 95]) - mean, atol=1e-4, rtol=0)


def test_grid_positions_5x5():
    pos = grid_positions(384, 288, 224)
    assert len(pos) == 25
    xs, ys = sorted({p[0] for p in pos}), sorted({p[1] for p in pos})
    assert xs == [0, 40, 80, 120, 160] and ys == [0, 16, 32, 48, 64]  # regular, corners included
    assert all(x + 224 <= 384 and y + 224 <= 288 for x, y in pos)


def test_simplejpeg_decode_equals_pillow():
    data = jpeg(320, 240)
    ref = np.asarray(Image.open(io.BytesIO(data)).convert("RGB"))
    assert np.array_equal(np.asarray(decode(data)), ref)


def test_dct_downscale_keeps_enough_resolution():
    data = jpeg(2000, 1500)
    img = decode(data, min_side=256)
    assert 256 <= min(img.size) < 1500 / 2 + 1  # decoded at a DCT scale, never below the needed side


@pytest.mark.parametrize("mode", ["L", "CMYK"])
def test_grayscale_and_cmyk_jpegs_become_rgb(mode):
    img = decode(jpeg(64, 48, mode=mode))
    assert img.mode == "RGB" and img.size == (64, 48)


@pytest.mark.parametrize("mode", ["P", "RGBA", "LA", "I;16", "1"])
def test_png_modes_become_rgb(mode):
    rng = np.random.default_rng(0)
    if mode == "I;16":
        src = Image.fromarray(rng.integers(0, 65535, (20, 30), dtype=np.uint16))
        assert src.mode.startswith("I;16")
    else:
        src = Image.fromarray(rng.integers(0, 255, (20, 30, 3), dtype=np.uint8)).convert(mode)
    buf = io.BytesIO()
    src.save(buf, "PNG")
    out = decode(buf.getvalue())
    assert out.mode == "RGB" and out.size == (30, 20)


def test_transparent_pixels_composite_onto_white():
    src = Image.new("RGBA", (4, 4), (255, 0, 0, 0))
    buf = io.BytesIO()
    src.save(buf, "PNG")
    assert np.asarray(decode(buf.getvalue()))[0, 0].tolist() == [255, 255, 255]


@pytest.mark.parametrize("data,reason", [
    (b"", "empty file"),
    (b"this is a text file, not a jpeg\n", "not an image"),
])
def test_bad_bytes(data, reason):
    with pytest.raises(BadImage) as e:
        decode(data)
    assert e.value.reason == reason


def test_truncated_jpeg_is_bad():
    data = jpeg(200, 150)
    with pytest.raises(BadImage, match="truncated or corrupt"):
        decode(data[: len(data) // 2])


def test_decompression_bomb_refused_before_decoding():
    data = jpeg(300, 200)
    with pytest.raises(BadImage, match="decompression bomb"):
        decode(data, max_pixels=300 * 200 - 1)
    buf = io.BytesIO()
    Image.new("L", (300, 200)).save(buf, "PNG")
    with pytest.raises(BadImage, match="decompression bomb"):
        decode(buf.getvalue(), max_pixels=1000)


def test_small_images_are_upscaled():
    t = TrainTransform(256, 256)
    out, _ = t(jpeg(40, 30), np.random.default_rng(0))
    assert out.shape == (224, 224, 3)
