"""A miniature ILSVRC built from real objects: Fashion-MNIST items placed on larger RGB canvases of varied size and
aspect, each object rescaled to a random size (so that scale matters, as in ImageNet), at a random position, tinted,
composited onto cluttered backgrounds (coloured low-frequency noise and faint fragments of other items), with its
tight bounding box. Written as JPEG image folders with VOC-style XML boxes, so ImageNet's code paths are exercised.

Splits: train and val from Fashion-MNIST's training items (disjoint), test from its test items: no object appears in
two splits, and background fragments come from the same split's items. Deterministic from a seed."""
from __future__ import annotations

import json
import os
from concurrent.futures import ProcessPoolExecutor
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np
from PIL import Image

from .config import positional
from .errors import UserError

# How items are drawn, recorded in the manifest: a folder written by another version of the draw is not reused.
# 2: the test items have a random stream of their own, so that the validation split's size does not move the test
# split (1 drew them after the validation items: 1,000 or 5,000 validation images rendered two different test sets).
BUILDER = 2

CLASS_DIRS = ["tshirt", "trouser", "pullover", "dress", "coat", "sandal", "shirt", "sneaker", "bag", "ankle_boot"]


@dataclass
class MiniConfig:
    seed: int = 0               # seed of every choice (items, sizes, positions, colours)
    train_per_class: int = 500  # training images per class
    val_per_class: int = 50     # validation images per class
    test_per_class: int = 100   # test images per class (from Fashion-MNIST's own test items)
    min_side: int = 96          # canvas shorter side, at least
    max_side: int = 160         # canvas shorter side, at most
    max_aspect: float = 1.5     # canvas longer / shorter side, at most
    min_object: float = 0.5     # object's longer side as a fraction of the canvas shorter side, at least
    max_object: float = 0.95    # ... at most
    fragments: int = 2          # faint fragments of other items in the background
    quality: int = 90           # JPEG quality


def _split_items(labels: np.ndarray, per_class: int, rng: np.random.Generator, exclude: set | None = None):
    out = []
    for c in range(10):
        idx = [i for i in np.flatnonzero(labels == c) if not exclude or i not in exclude]
        if len(idx) < per_class:
            raise UserError(f"Fashion-MNIST has {len(idx)} items of class {c}, {per_class} needed")
        out += [(int(i), c) for i in rng.choice(idx, per_class, replace=False)]
    return out


def compose(item: np.ndarray, pool: np.ndarray, cfg: MiniConfig, rng: np.random.Generator):
    """One canvas: (RGB uint8 array, tight box (xmin, ymin, xmax, ymax) in VOC 1-based pixel coordinates)."""
    short = int(rng.integers(cfg.min_side, cfg.max_side + 1))
    long_ = int(round(short * rng.uniform(1.0, cfg.max_aspect)))
    w, h = (long_, short) if rng.random() < 0.5 else (short, long_)
    # Background: coloured low-frequency noise, plus fine grain.
    coarse = rng.uniform(0, 255, (int(rng.integers(2, 6)), int(rng.integers(2, 6)), 3)).astype(np.uint8)
    bg = np.asarray(Image.fromarray(coarse).resize((w, h), Image.BICUBIC), np.float32)
    bg = bg * rng.uniform(0.4, 0.9) + rng.normal(0, 8, (h, w, 3))
    for _ in range(cfg.fragments):  # faint fragments of other items
        frag = pool[int(rng.integers(len(pool)))].astype(np.float32) / 255
        s = int(rng.integers(short // 4, short // 2 + 1))
        frag = np.asarray(Image.fromarray((frag * 255).astype(np.uint8)).resize((s, s), Image.BILINEAR),
                          np.float32) / 255
        y, x = int(rng.integers(0, h - s + 1)), int(rng.integers(0, w - s + 1))
        colour = rng.uniform(0, 255, 3)
        a = frag[..., None] * rng.uniform(0.15, 0.3)
        bg[y:y + s, x:x + s] = bg[y:y + s, x:x + s] * (1 - a) + colour * a
    # The object: resized to a random size, tinted, alpha-composited with its own intensity as the mask.
    size = int(round(short * rng.uniform(cfg.min_object, cfg.max_object)))
    obj = np.asarray(Image.fromarray(item).resize((size, size), Image.BICUBIC), np.float32) / 255
    y0, x0 = int(rng.integers(0, h - size + 1)), int(rng.integers(0, w - size + 1))
    tint = rng.uniform(60, 255, 3)
    alpha = np.clip(obj * 1.6, 0, 1)[..., None]
    shade = (0.35 + 0.65 * obj)[..., None] * tint
    region = bg[y0:y0 + size, x0:x0 + size]
    bg[y0:y0 + size, x0:x0 + size] = region * (1 - alpha) + shade * alpha
    ys, xs = np.nonzero(obj > 0.1)
    if len(xs) == 0:
        ys, xs = np.array([0, size - 1]), np.array([0, size - 1])
    box = (x0 + int(xs.min()) + 1, y0 + int(ys.min()) + 1, x0 + int(xs.max()) + 1, y0 + int(ys.max()) + 1)
    return np.clip(bg, 0, 255).astype(np.uint8), box, (w, h)


def _write(out: Path, split: str, k: int, item_index: int, label: int, arr, box, size, quality: int) -> str:
    name = f"{split}_{k:06d}"
    d = out / split / CLASS_DIRS[label]
    Image.fromarray(arr).save(d / f"{name}.JPEG", "JPEG", quality=quality)
    (d / f"{name}.xml").write_text(
        f"<annotation><filename>{name}.JPEG</filename><source><database>Fashion-MNIST</database>"
        f"<item>{item_index}</item></source><size><width>{size[0]}</width><height>{size[1]}</height>"
        f"<depth>3</depth></size><object><name>{CLASS_DIRS[label]}</name><bndbox><xmin>{box[0]}</xmin>"
        f"<ymin>{box[1]}</ymin><xmax>{box[2]}</xmax><ymax>{box[3]}</ymax></bndbox></object></annotation>")
    return name


def _job(args):
    out, split, chunk, pool, cfg = args
    for k, item_index, label, item in chunk:
        rng = np.random.default_rng((cfg.seed, {"train": 0, "val": 1, "test": 2}[split], k))
        arr, box, size = compose(item, pool, cfg, rng)
        _write(out, split, k, item_index, label, arr, box, size, cfg.quality)
    return len(chunk)


def build(out: str | os.PathLike, cfg: MiniConfig = MiniConfig(), arrays=None, workers: int | None = None,
          progress: bool = True) -> dict:
    """Write the dataset to out/{train,val,test}/<class>/*.JPEG (+ .xml) and out/manifest.json."""
    from tqdm import tqdm

    from .data.fashion_mnist import load_arrays

    out = Path(out)
    if out.exists() and any(out.iterdir()):
        if not (out / "manifest.json").is_file():
            raise UserError(f"{out}: exists and is not a mini-ILSVRC folder; choose an empty one")
        there = json.loads((out / "manifest.json").read_text())
        if there.get("config") == asdict(cfg) and there.get("builder", 1) == BUILDER:
            return there  # already built with these settings
        why = "other settings" if there.get("config") != asdict(cfg) else "an earlier version of verydeep"
        raise UserError(f"{out}: holds a mini-ILSVRC built with {why}; choose another folder")
    if arrays is None:
        (tr_x, tr_y), (te_x, te_y) = load_arrays("train"), load_arrays("test")
    else:
        tr_x, tr_y, te_x, te_y = arrays
    rng = np.random.default_rng((cfg.seed, 0xF00D))
    train = _split_items(tr_y, cfg.train_per_class, rng)
    val = _split_items(tr_y, cfg.val_per_class, rng, exclude={i for i, _ in train})
    test = _split_items(te_y, cfg.test_per_class, np.random.default_rng((cfg.seed, 0xF00D, 2)))
    for split in ("train", "val", "test"):
        for c in CLASS_DIRS:
            (out / split / c).mkdir(parents=True, exist_ok=True)
    jobs = []
    for split, items, images in (("train", train, tr_x), ("val", val, tr_x), ("test", test, te_x)):
        # Background fragments come from (a seeded sample of) the same split's items.
        ids = [i for i, _ in items]
        pool = images[np.random.default_rng((cfg.seed, 0xB6, len(ids))).choice(ids, min(500, len(ids)), False)]
        chunk = [(k, i, c, images[i]) for k, (i, c) in enumerate(items)]
        for j in range(0, len(chunk), 250):
            jobs.append((out, split, chunk[j:j + 250], pool, cfg))
    workers = workers or min(4, os.cpu_count() or 1)
    total = len(train) + len(val) + len(test)
    with tqdm(total=total, unit="img", desc="mini-ILSVRC", disable=not progress) as bar:
        if workers > 1:
            with ProcessPoolExecutor(workers) as ex:
                for n in ex.map(_job, jobs):
                    bar.update(n)
        else:
            for job in jobs:
                bar.update(_job(job))
    manifest = {"config": asdict(cfg), "builder": BUILDER, "classes": CLASS_DIRS,
                "counts": {"train": len(train), "val": len(val), "test": len(test)},
                "items": {"train": [i for i, _ in train], "val": [i for i, _ in val], "test": [i for i, _ in test]}}
    (out / "manifest.json").write_text(json.dumps(manifest))
    return manifest


@dataclass
class MiniCommand(MiniConfig):
    out: str = positional(default="")  # folder for the dataset (train/, val/, test/ of JPEGs with VOC boxes)


def run(cfg: MiniCommand) -> dict:
    """`verydeep data mini-ilsvrc`: the miniature ILSVRC alone."""
    if not cfg.out:
        raise UserError("give the output folder")
    settings = MiniConfig(**{f: getattr(cfg, f) for f in MiniConfig.__dataclass_fields__})
    m = build(cfg.out, settings)
    print(f"mini-ILSVRC in {cfg.out}: {m['counts']} images, 10 classes, VOC boxes beside each image")
    return m
