"""Generated datasets for the tests: ImageNet-like JPEG folders, VOC boxes, and every kind of bad file."""
import io
import struct
import zlib
from pathlib import Path

import numpy as np
from PIL import Image


def photo(w, h, seed):
    """A smooth random image with noise (JPEG-compresses like a photograph)."""
    rng = np.random.default_rng(seed)
    base = Image.fromarray(rng.integers(0, 255, (h // 16 + 2, w // 16 + 2, 3), dtype=np.uint8)).resize(
        (w, h), Image.BICUBIC)
    arr = np.asarray(base, np.int16) + rng.integers(-12, 12, (h, w, 3))
    return Image.fromarray(arr.clip(0, 255).astype(np.uint8))


def write_jpeg(path, img, quality=90):
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    img.save(path, "JPEG", quality=quality)
    return path


def voc_xml(path, w, h, objects):
    objs = "".join(f"<object><name>{n}</name><bndbox><xmin>{a}</xmin><ymin>{b}</ymin><xmax>{c}</xmax>"
                   f"<ymax>{d}</ymax></bndbox></object>" for n, (a, b, c, d) in objects)
    Path(path).write_text(f"<annotation><size><width>{w}</width><height>{h}</height><depth>3</depth></size>"
                          f"{objs}</annotation>")


def imagenet_folder(root, classes=("n01", "n02", "n03"), per_class=6, size=(120, 90), seed=0):
    root = Path(root)
    k = 0
    for c in classes:
        for i in range(per_class):
            w, h = size if k % 2 == 0 else size[::-1]
            write_jpeg(root / c / f"{c}_{i}.JPEG", photo(w, h, seed + k))
            k += 1
    return root


def png_bomb(path, w=30000, h=30000):
    """A tiny PNG whose header claims w x h pixels (a decompression bomb)."""
    def chunk(kind, data):
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))
    ihdr = struct.pack(">IIBBBBB", w, h, 1, 0, 0, 0, 0)
    Path(path).write_bytes(b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", ihdr) + chunk(b"IDAT", zlib.compress(b"\0" * 64))
                           + chunk(b"IEND", b""))


def bad_files(folder):
    """Every kind of bad input the data issue lists; returns {filename: expected outcome}."""
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    good = photo(80, 60, 99)
    (folder / "zero.jpg").write_bytes(b"")
    buf = io.BytesIO()
    good.save(buf, "JPEG", quality=90)
    (folder / "truncated.jpg").write_bytes(buf.getvalue()[: len(buf.getvalue()) // 2])
    (folder / "text.jpg").write_text("not an image at all\n")
    good.convert("CMYK").save(folder / "cmyk.jpg", "JPEG")
    good.convert("L").save(folder / "gray.jpg", "JPEG")
    good.convert("P").save(folder / "palette.png")
    good.convert("RGBA").save(folder / "rgba.png")
    Image.fromarray((np.asarray(good.convert("L"), np.uint16) * 257)).save(folder / "deep16.png")
    good.resize((20, 15)).save(folder / "tiny.jpg", "JPEG")
    png_bomb(folder / "bomb.png")
    return {"zero.jpg": "skip", "truncated.jpg": "skip", "text.jpg": "skip", "bomb.png": "skip",
            "cmyk.jpg": "ok", "gray.jpg": "ok", "palette.png": "ok", "rgba.png": "ok", "deep16.png": "ok",
            "tiny.jpg": "ok"}


def pattern_dataset(root, per_class=24, val_per_class=8, size=(48, 40), seed=0):
    """Three learnable classes (horizontal stripes, vertical stripes, checkerboard) in random colours, phases and
    periods, as an ImageNet-layout folder with train/ and val/."""
    root = Path(root)
    rng = np.random.default_rng(seed)
    names = ["horizontal", "vertical", "checker"]
    for split, n in (("train", per_class), ("val", val_per_class)):
        for c, name in enumerate(names):
            d = root / split / name
            d.mkdir(parents=True, exist_ok=True)
            for i in range(n):
                w, h = size if i % 2 == 0 else size[::-1]
                period = int(rng.integers(6, 12))
                yy, xx = np.mgrid[0:h, 0:w]
                phase = int(rng.integers(0, period))
                if c == 0:
                    on = ((yy + phase) // (period // 2)) % 2
                elif c == 1:
                    on = ((xx + phase) // (period // 2)) % 2
                else:
                    on = (((yy + phase) // (period // 2)) + ((xx + phase) // (period // 2))) % 2
                a, b = rng.integers(0, 256, 3), rng.integers(0, 256, 3)
                img = np.where(on[..., None] == 1, a, b) + rng.normal(0, 10, (h, w, 3))
                Image.fromarray(img.clip(0, 255).astype(np.uint8)).save(d / f"{name}_{i}.png")
    return root


def box_dataset(root, per_class=24, val_per_class=6, size=(64, 48), seed=0):
    """Two classes of objects (a red or a blue rectangle of random size and place on noise), with VOC boxes."""
    root = Path(root)
    rng = np.random.default_rng(seed)
    names = ["red", "blue"]
    for split, n in (("train", per_class), ("val", val_per_class)):
        for c, name in enumerate(names):
            d = root / split / name
            d.mkdir(parents=True, exist_ok=True)
            for i in range(n):
                w, h = size
                img = rng.integers(60, 160, (h, w, 3)).astype(np.uint8)
                bw, bh = int(rng.integers(w // 4, w // 2)), int(rng.integers(h // 4, h // 2))
                x0, y0 = int(rng.integers(0, w - bw)), int(rng.integers(0, h - bh))
                img[y0:y0 + bh, x0:x0 + bw] = (230, 30, 30) if c == 0 else (30, 30, 230)
                Image.fromarray(img).save(d / f"{name}_{i}.png")
                voc_xml(d / f"{name}_{i}.xml", w, h, [(name, (x0, y0, x0 + bw, y0 + bh))])
    return root
