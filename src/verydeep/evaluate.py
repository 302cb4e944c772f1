"""The paper's test protocols (PAPER.md section 3) and its tables' measures (section 5).

center:          smallest side rescaled to Q, one central crop (the peers' protocol, for comparison)
dense:           the whole image at Q through the fully-convolutional net; the class score map is averaged
                 spatially, soft-maxed, and averaged with the flipped image's posteriors
multicrop:       a 5x5 grid of crops x 2 flips (50 per scale), soft-max posteriors averaged
dense+multicrop: the average of the two (Table 5)
Several scales Q: posteriors averaged over scales (Table 4). Several nets: posteriors averaged (fusion, Table 6).

Each image is decoded once and rescaled once per scale (in DataLoader workers); the central crop, the dense input
and the 50 crops are all cut from that one tensor. Dense batches group images of equal rescaled size."""
from __future__ import annotations

import csv
import json
import logging
import math
import time
from collections import defaultdict
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch
from PIL import Image
from torch.utils.data import DataLoader, Dataset

from .data.loader import Skip, _worker_init
from .data.sources import Source
from .errors import ConfigError, UserError
from .models import VGG
from .transforms import as_rgb, grid_positions, rescale, to_tensor, to_uint8

log = logging.getLogger("verydeep")
PROTOCOLS = ("center", "dense", "multicrop", "dense+multicrop")
BASE = ("center", "dense", "multicrop")


def parts(protocol: str) -> tuple[str, ...]:
    """The base protocols a protocol averages (Table 5: dense+multicrop is the mean of the two)."""
    return ("dense", "multicrop") if protocol == "dense+multicrop" else (protocol,)


def center_view(big: torch.Tensor, crop: int) -> torch.Tensor:
    """The central CxC crop of a uint8 (3, H, W) image, as a batch of one."""
    h, w = big.shape[1:]
    top, left = (h - crop) // 2, (w - crop) // 2
    return big[None, :, top:top + crop, left:left + crop]


def grid_views(big: torch.Tensor, crop: int) -> torch.Tensor:
    """The 5x5 grid of CxC crops of a uint8 (3, H, W) image and their mirrors: (50, 3, C, C)."""
    h, w = big.shape[1:]
    views = torch.stack([big[:, y:y + crop, x:x + crop] for x, y in grid_positions(w, h, crop)])
    return torch.cat([views, views.flip(3)])


def auto_scales(train_scale: tuple[int, int] | None, crop: int, multi: bool) -> list[int]:
    """The paper's test scales from the training scale (section 5): single, Q = S or 0.5 (Smin + Smax) (Table 3);
    multiple, {S - 32, S, S + 32} or {Smin, 0.5 (Smin + Smax), Smax} (Table 4). 32 is for 224 crops and scales
    with the crop."""
    if train_scale is None:
        raise UserError("--scales auto needs the net's training scale: a verydeep checkpoint or weights file "
                        "records it; otherwise give --scales 256,384,512 or --train-scale S[,Smax]")
    smin, smax = train_scale
    mid = (smin + smax) // 2
    if not multi:
        return [mid]
    if smin == smax:
        d = round(32 * crop / 224)
        return [max(crop, smin - d), smin, smin + d]
    return [smin, mid, smax]


def parse_scales(text: str | None, model: VGG, train_scale=None) -> list[int]:
    crop = model.config.crop_size
    if not text:
        return [round(crop * 256 / 224)]
    if text in ("auto", "auto-multi"):
        return auto_scales(train_scale or getattr(model, "train_scale", None), crop, text == "auto-multi")
    try:
        scales = [int(s) for s in text.split(",") if s.strip()]
    except ValueError:
        raise UserError(f"--scales {text!r}: give integers like 256,384,512, or auto / auto-multi") from None
    small = [q for q in scales if q < crop]
    if small or not scales:
        raise UserError(f"--scales {text!r}: every Q must be at least the {crop} crop")
    return scales


class ScaledImages(Dataset):
    """Per image: its label and one uint8 tensor per test scale (decoded once)."""

    def __init__(self, source: Source, scales: list[int]):
        self.source, self.scales = source, sorted(set(scales))

    def __len__(self) -> int:
        return len(self.source)

    def __getitem__(self, i: int):
        try:
            s = self.source.read(i)
            img = as_rgb(s.image, min(self.scales))
            return i, s.label, {q: to_uint8(rescale(img, q)) for q in self.scales}
        except Exception as e:
            return Skip(self.source.path(i), getattr(e, "reason", type(e).__name__), str(e)[:200])


def _first(batch):
    return batch[0]


@dataclass
class Posteriors:
    """Per-image soft-max posteriors, per protocol and scale: probs[(protocol, Q)] is (N, classes)."""

    labels: np.ndarray
    probs: dict = field(default_factory=dict)
    valid: np.ndarray | None = None   # images that could be read
    paths: list = field(default_factory=list)

    def combine(self, protocol: str, scales: list[int]) -> np.ndarray:
        """Average over scales (Table 4); dense+multicrop averages the two protocols (Table 5)."""
        return np.mean([np.mean([self.probs[(p, q)] for q in scales], 0) for p in parts(protocol)], 0)

    def save(self, path: Path) -> None:
        arrays = {f"{p}@{q}": v for (p, q), v in self.probs.items()}
        np.savez_compressed(path, labels=self.labels, valid=self.valid, paths=np.asarray(self.paths), **arrays)

    @classmethod
    def load(cls, path: Path) -> "Posteriors":
        """A posteriors file, read without pickles and without allocating more than its arrays truly hold (each
        member's declared shape is checked against its stored size first), with consistent shapes."""
        import zipfile

        path = Path(path)
        if not path.is_file():
            raise UserError(f"{path}: no such posteriors file")
        try:
            with zipfile.ZipFile(path) as zf:
                for info in zf.infolist():
                    with zf.open(info) as f:
                        version = np.lib.format.read_magic(f)
                        read_header = (np.lib.format.read_array_header_1_0 if version == (1, 0) else
                                       np.lib.format.read_array_header_2_0)
                        shape, _, dtype = read_header(f)
                    if dtype.hasobject or math.prod(shape) * dtype.itemsize > info.file_size:
                        raise ValueError(f"member {info.filename} declares {shape} {dtype}, holds "
                                         f"{info.file_size} bytes")
            with np.load(path, allow_pickle=False) as z:
                labels, valid, paths = z["labels"], z["valid"], z["paths"].tolist()
                probs = {(k.split("@")[0], int(k.split("@")[1])): z[k] for k in z.files if "@" in k}
        except (OSError, ValueError, KeyError, zipfile.BadZipFile) as e:
            raise UserError(f"{path}: not a verydeep posteriors file ({str(e).splitlines()[0][:160]})") from None
        n = len(labels)
        if len(valid) != n or len(paths) != n or not probs or any(v.ndim != 2 or len(v) != n for v in probs.values()):
            raise UserError(f"{path}: inconsistent posteriors file (arrays of different lengths)")
        return cls(labels, probs, valid.astype(bool), paths)


class Evaluator:
    """Runs one net over a source with the requested protocols and scales."""

    def __init__(self, model: VGG, device: str | torch.device = "cpu", batch_size: int = 32, workers: int = 2,
                 precision: str = "auto", progress: bool = True):
        from .fast import FastVGG

        self.model = model.eval().to(device)
        self.device = torch.device(device)
        self.batch_size, self.workers, self.progress = batch_size, workers, progress
        # One fused chain for crops and score maps (fast.py); "auto" is the fastest precision that agrees with fp32.
        self.net = FastVGG(self.model, precision, self.device)
        self.precision = self.net.precision
        self.forward_images = 0  # images (crops or whole images) through the net, for cost accounting

    def _prep(self, images: torch.Tensor) -> torch.Tensor:
        return self.model.preprocess(images.to(self.device).float().div_(255.0))

    def crops_posteriors(self, crops: torch.Tensor) -> torch.Tensor:
        """Soft-max posteriors of uint8 crops (M, 3, C, C), in batches."""
        out = []
        for j in range(0, len(crops), self.batch_size * 4):
            out.append(self.net(self._prep(crops[j:j + self.batch_size * 4])).softmax(1).cpu())
        self.forward_images += len(crops)
        return torch.cat(out)

    def dense_posteriors(self, images: torch.Tensor) -> torch.Tensor:
        """Section 3: score map averaged spatially, soft-max, flip-averaged; images (N, 3, H, W) of one size."""
        x = self._prep(images)
        p = self.net.score_map(x).mean((2, 3)).softmax(1)
        p = 0.5 * (p + self.net.score_map(x.flip(3)).mean((2, 3)).softmax(1))
        self.forward_images += 2 * len(images)
        return p.cpu()

    def run(self, source: Source, protocols: list[str], scales: list[int]) -> Posteriors:
        from tqdm import tqdm

        base = sorted({b for p in protocols for b in parts(p)}, key=BASE.index)
        crop, n, classes = self.model.config.crop_size, len(source), self.model.config.num_classes
        probs = {(p, q): np.zeros((n, classes), np.float32) for p in base for q in scales}
        labels = np.full(n, -1, np.int64)
        valid = np.zeros(n, bool)
        paths = [""] * n
        loader = DataLoader(ScaledImages(source, scales), batch_size=1, collate_fn=_first,
                            num_workers=self.workers, worker_init_fn=_worker_init,
                            prefetch_factor=8 if self.workers else None)
        buckets: dict = defaultdict(list)   # (Q, H, W) -> [(index, uint8 image)]
        pending: list = []                  # (index, Q, uint8 crops) for center / multicrop
        skipped = []

        def flush_dense(key, force=False):
            items = buckets[key]
            if items and (force or len(items) >= self.batch_size):
                p = self.dense_posteriors(torch.stack([im for _, im in items]))
                probs[("dense", key[0])][[i for i, _ in items]] = p.numpy()
                buckets[key] = []

        def flush_crops(force=False):
            if not pending or (not force and sum(len(c) for *_, c in pending) < self.batch_size * 4):
                return
            p = self.crops_posteriors(torch.cat([c for *_, c in pending]))
            k = 0
            for i, q, proto, c in pending:
                probs[(proto, q)][i] = p[k:k + len(c)].mean(0).numpy()
                k += len(c)
            pending.clear()

        bar = tqdm(total=n, unit="img", desc="evaluate", disable=not self.progress, dynamic_ncols=True,
                   mininterval=1.0)
        t0 = time.perf_counter()
        for item in loader:
            bar.update(1)
            if isinstance(item, Skip):
                skipped.append(item)
                log.warning("%s: skipped (%s)", item.path, item.detail or item.reason)
                continue
            i, label, per_scale = item
            labels[i], valid[i], paths[i] = label, True, source.path(i)
            for q in scales:
                big = per_scale[q]
                h, w = big.shape[1:]
                if "dense" in base:
                    buckets[(q, h, w)].append((i, big))
                    flush_dense((q, h, w))
                if "center" in base:
                    pending.append((i, q, "center", center_view(big, crop)))
                if "multicrop" in base:
                    pending.append((i, q, "multicrop", grid_views(big, crop)))
            flush_crops()
        for key in list(buckets):
            flush_dense(key, force=True)
        flush_crops(force=True)
        bar.close()
        self.seconds = time.perf_counter() - t0
        if skipped:
            log.warning("%d of %d images unreadable: excluded from the measures", len(skipped), n)
        return Posteriors(labels, probs, valid, paths)


# --------------------------------------------------------------------------------------------------- measures
def topk_error(probs: np.ndarray, labels: np.ndarray, k: int) -> float:
    """The paper's measure: the fraction of images whose true class is not among the k most probable."""
    if len(labels) == 0:
        return float("nan")
    k = min(k, probs.shape[1])
    top = np.argpartition(-probs, k - 1, axis=1)[:, :k]
    return float(1.0 - (top == labels[:, None]).any(1).mean())


def per_class_accuracy(probs: np.ndarray, labels: np.ndarray, classes: int) -> np.ndarray:
    pred = probs.argmax(1)
    acc = np.full(classes, np.nan)
    for c in range(classes):
        m = labels == c
        if m.any():
            acc[c] = float((pred[m] == c).mean())
    return acc


@dataclass
class Row:
    net: str
    train_scale: str
    test_scales: str
    protocol: str
    top1: float
    top5: float
    images: int
    mean_class_accuracy: float
    seconds_per_image: float | None = None

    def as_dict(self) -> dict:
        return {"net": self.net, "train S": self.train_scale, "test Q": self.test_scales, "protocol": self.protocol,
                "top-1 err (%)": round(100 * self.top1, 2), "top-5 err (%)": round(100 * self.top5, 2),
                "top-1 acc (%)": round(100 * (1 - self.top1), 2), "mean class acc (%)":
                    round(100 * self.mean_class_accuracy, 2), "images": self.images,
                "s/img": None if self.seconds_per_image is None else round(self.seconds_per_image, 4)}


def measure(post_probs: np.ndarray, post: Posteriors, net: str, train_scale: str, scales: list[int],
            protocol: str, seconds: float | None = None) -> Row:
    v = post.valid
    probs, labels = post_probs[v], post.labels[v]
    mca = float(np.nanmean(per_class_accuracy(probs, labels, probs.shape[1]))) if len(labels) else float("nan")
    return Row(net, train_scale, ",".join(map(str, scales)), protocol, topk_error(probs, labels, 1),
               topk_error(probs, labels, 5), int(v.sum()), mca, seconds)


def format_table(rows: list[Row], fmt: str = "text") -> str:
    dicts = [r.as_dict() for r in rows]
    cols = list(dicts[0]) if dicts else []
    if fmt == "json":
        return json.dumps(dicts, indent=1)
    if fmt == "csv":
        import io

        buf = io.StringIO()
        w = csv.DictWriter(buf, fieldnames=cols)
        w.writeheader()
        w.writerows(dicts)
        return buf.getvalue()
    cells = [[("" if d[c] is None else str(d[c])) for c in cols] for d in dicts]
    widths = [max(len(c), *(len(r[j]) for r in cells)) for j, c in enumerate(cols)]
    if fmt == "markdown":
        lines = ["| " + " | ".join(c.ljust(w) for c, w in zip(cols, widths)) + " |",
                 "|" + "|".join("-" * (w + 2) for w in widths) + "|"]
        lines += ["| " + " | ".join(v.ljust(w) for v, w in zip(r, widths)) + " |" for r in cells]
        return "\n".join(lines)
    lines = ["  ".join(c.ljust(w) for c, w in zip(cols, widths)), "  ".join("-" * w for w in widths)]
    lines += ["  ".join(v.ljust(w) for v, w in zip(r, widths)) for r in cells]
    return "\n".join(lines)


def train_scale_text(model: VGG) -> str:
    s = getattr(model, "train_scale", None)
    if not s:
        return "?"
    return str(s[0]) if s[0] == s[1] else f"[{s[0]};{s[1]}]"


# --------------------------------------------------------------------------------------------------- one image
@torch.inference_mode()
def predict_image(model: VGG, img: Image.Image, protocol: str = "dense", scales: list[int] | None = None,
                  precision: str = "auto", evaluator: Evaluator | None = None) -> torch.Tensor:
    """Soft-max posteriors (classes,) for one RGB image under a protocol, averaged over scales. Pass an
    `evaluator` to reuse its prepared net over many images."""
    if protocol not in PROTOCOLS:
        raise ConfigError(f"unknown protocol {protocol!r}; choose one of {PROTOCOLS}")
    crop = model.config.crop_size
    scales = scales or [round(crop * 256 / 224)]
    ev = evaluator or Evaluator(model, next(model.parameters()).device, batch_size=16, workers=0,
                                precision=precision, progress=False)
    base = parts(protocol)
    out = []
    for q in scales:
        if q < crop:
            raise ConfigError(f"test scale {q} is smaller than the {crop} crop")
        big = to_uint8(rescale(img, q))
        for p in base:
            if p == "dense":
                out.append(ev.dense_posteriors(big[None])[0])
            elif p == "center":
                out.append(ev.crops_posteriors(center_view(big, crop))[0])
            else:
                out.append(ev.crops_posteriors(grid_views(big, crop)).mean(0))
    return torch.stack(out).view(len(scales), len(base), -1).mean((0, 1))


def explain(model: VGG, img: Image.Image, out: Path, scale: int | None = None, names: list[str] | None = None) -> dict:
    """A PNG of the image with the dense class score map of the top class overlaid: where the net looks."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    crop = model.config.crop_size
    q = scale or round(crop * 256 / 224)
    big = rescale(img, q)
    with torch.inference_mode():
        x = model.preprocess(to_tensor(big)[None])
        smap = model.eval().score_map(x)[0]                       # (classes, h, w)
        probs = smap.mean((1, 2)).softmax(0)
        top = int(probs.argmax())
        heat = smap.softmax(0)[top].numpy()                        # per-location posterior of the top class
    fig, ax = plt.subplots(figsize=(7, 7 * big.size[1] / big.size[0]))
    ax.imshow(big)
    # Each score-map cell sees a crop-sized window at a 32-pixel stride: centre the cells on their windows.
    h, w = heat.shape
    stride = 32
    extent = (crop / 2 - stride / 2, crop / 2 + (w - 1) * stride + stride / 2,
              crop / 2 + (h - 1) * stride + stride / 2, crop / 2 - stride / 2)
    im = ax.imshow(heat, cmap="jet", alpha=0.45, extent=extent, interpolation="bilinear", vmin=0, vmax=1)
    label = names[top] if names else str(top)
    ax.set_title(f"{label}: p = {float(probs[top]):.3f} (dense, Q = {q}; map {h}x{w})")
    ax.set_xlim(0, big.size[0])
    ax.set_ylim(big.size[1], 0)
    ax.axis("off")
    fig.colorbar(im, ax=ax, fraction=0.03, label="P(top class) per location")
    fig.tight_layout()
    fig.savefig(out, dpi=100)
    plt.close(fig)
    return {"class": top, "name": label, "probability": float(probs[top]), "map": [h, w], "png": str(out)}
