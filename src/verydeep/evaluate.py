"""The paper's test protocols (PAPER.md section 3), its tables' measures (section 5), and `verydeep evaluate`.

Protocols are registered (`register_protocol`); every command, the study and its report take them from the registry:
center:          smallest side rescaled to Q, one central crop (the peers' protocol, for comparison)
dense:           the whole image at Q through the fully-convolutional net; the class score map is averaged
                 spatially, soft-maxed, and averaged with the flipped image's posteriors
multicrop:       a 5x5 grid of crops x 2 flips (50 per scale), soft-max posteriors averaged
dense+multicrop: the average of the two (Table 5)
Several scales Q: posteriors averaged over scales (Table 4). Several nets: posteriors averaged (fusion, Table 6).

Each image is decoded once and rescaled once per scale (in DataLoader workers); the central crop, the dense input
and the crops are all cut from that one tensor. Dense batches group images of equal rescaled size."""
from __future__ import annotations

import csv
import json
import logging
import math
import time
from collections import defaultdict
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable

import numpy as np
import torch
from PIL import Image
from torch.utils.data import DataLoader, Dataset

from . import paper
from .config import repeated
from .data.loader import Skip, worker_options
from .data.sources import Source
from .errors import ConfigError, UserError
from .models import VGG
from .options import NetOptions, RunOptions
from .transforms import as_rgb, grid_positions, rescale, to_uint8

log = logging.getLogger("verydeep")


# --------------------------------------------------------------------------------------------------- protocols
@dataclass(frozen=True)
class Protocol:
    """A test protocol: crops of each rescaled image (`views`: uint8 (3, H, W) and the crop size -> (M, 3, C, C),
    posteriors averaged over the M), the whole image through the score map (`dense`), or the mean of other
    protocols' posteriors (`parts`)."""
    name: str
    paper: str                                                    # where the paper defines or uses it
    views: Callable[[torch.Tensor, int], torch.Tensor] | None = None
    dense: bool = False
    parts: tuple[str, ...] = ()

    def base(self) -> tuple[str, ...]:
        return self.parts or (self.name,)


PROTOCOLS: dict[str, Protocol] = {}


def register_protocol(protocol: Protocol) -> Protocol:
    """Make a protocol known to `predict`, `evaluate`, the study and its report."""
    if bool(protocol.views) + protocol.dense + bool(protocol.parts) != 1:
        raise ValueError(f"protocol {protocol.name}: give exactly one of views, dense, parts")
    unknown = [p for p in protocol.parts if p not in PROTOCOLS or PROTOCOLS[p].parts]
    if unknown:
        raise ValueError(f"protocol {protocol.name}: parts must be registered single protocols, not {unknown}")
    PROTOCOLS[protocol.name] = protocol
    return protocol


def protocol(name: str) -> Protocol:
    if name not in PROTOCOLS:
        raise ConfigError(f"--protocol {name!r}: choose from {', '.join(PROTOCOLS)} or all")
    return PROTOCOLS[name]


def parse_protocols(text: str) -> list[str]:
    """'all', or a comma-separated list of registered protocols."""
    names = list(PROTOCOLS) if text == "all" else [p.strip() for p in text.split(",") if p.strip()]
    for n in names:
        protocol(n)
    if not names:
        raise ConfigError("--protocol: give at least one protocol")
    return names


def parts(name: str) -> tuple[str, ...]:
    """The single protocols a protocol averages (Table 5: dense+multicrop is the mean of the two)."""
    return protocol(name).base()


def single_protocols() -> list[str]:
    """Every registered protocol that is not a mean of others: what one evaluation pass computes."""
    return [name for name, p in PROTOCOLS.items() if not p.parts]


def center_view(big: torch.Tensor, crop: int) -> torch.Tensor:
    """The central CxC crop of a uint8 (3, H, W) image, as a batch of one."""
    h, w = big.shape[1:]
    top, left = (h - crop) // 2, (w - crop) // 2
    return big[None, :, top:top + crop, left:left + crop]


def grid_views(big: torch.Tensor, crop: int) -> torch.Tensor:
    """The 5x5 grid of CxC crops of a uint8 (3, H, W) image and their mirrors: (50, 3, C, C)."""
    h, w = big.shape[1:]
    views = torch.stack([big[:, y:y + crop, x:x + crop] for x, y in grid_positions(w, h, crop, paper.GRID)])
    return torch.cat([views, views.flip(3)])


register_protocol(Protocol("center", "the peers' single central crop (for comparison)", views=center_view))
register_protocol(Protocol("dense", "section 3: dense evaluation, flip-averaged", dense=True))
register_protocol(Protocol("multicrop", "section 3: 5x5 grid x 2 flips, 50 crops per scale", views=grid_views))
register_protocol(Protocol("dense+multicrop", "Table 5: the two averaged", parts=("dense", "multicrop")))


# --------------------------------------------------------------------------------------------------- scales
def parse_scales(text: str | None, model: VGG, train_scale=None) -> list[int]:
    """Test scales Q: given ("256,384"), or the paper's rules from the training scale ("auto": Table 3's Q,
    "auto-multi": Table 4's three), or 256 at a 224 crop by default."""
    crop = model.config.crop_size
    if not text:
        return [paper.default_test_scale(crop)]
    if text in ("auto", "auto-multi"):
        s = train_scale or model.train_scale
        if s is None:
            raise UserError("--scales auto needs the net's training scale: a verydeep checkpoint or weights file "
                            "records it; otherwise give --scales 256,384,512 or --train-scale S[,Smax]")
        return paper.test_scales((s[0], s[-1]), crop, text == "auto-multi")
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
        """Written atomically: a killed study never leaves a half-written cache entry that looks finished."""
        from .utils import atomic_write

        arrays = {f"{p}@{q}": v for (p, q), v in self.probs.items()}

        def write(tmp: str) -> None:
            with open(tmp, "wb") as f:  # a file object: np.savez would append ".npz" to a temporary name
                np.savez_compressed(f, labels=self.labels, valid=self.valid, paths=np.asarray(self.paths), **arrays)

        atomic_write(path, write)

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


# int8 (issue 20): calibrated on this many images (centre crops at the first test scale, a seeded sample of the
# calibration source); measured on the miniature study's nets, 128 and 512 images agreed with fp32 equally (within
# 0.4 points), so the cost of the eager fp32 calibration pass is kept small.
CALIBRATION_IMAGES = 256
# Images waiting for a dense batch of their shape: at most 4 batches of them, or more while they take at most
# HOLD_BYTES (uint8 pixels). Rescaled to a test scale Q, images of one aspect ratio share a shape: the miniature
# study's test images (aspect ratios up to 1.5) come in about Q / 2 shapes per orientation, 333 in 1,000 images at
# Q = 73, 110, 146, and 4 batches of them ran in batches of 1-2. 32 MB holds ~680 of them at three scales (a 500 x
# 375 photograph at Q = 256, 384, 512 takes ~2 MB: the 4 batches decide there). 256 MB ran dense evaluation faster
# still, but a process evaluating all three protocols grew by 0.7-2 GB: malloc's heap, kept whole
# (utils.keep_freed_memory), fragments around images that wait long (BENCHMARKS.md).
HOLD_BYTES = 32 * 2**20
# int8: where an image's reported result has a top-2 posterior margin below this, fp32 recomputes it (Evaluator.run).
# The disagreements of int8 with fp32 are near-ties (on the study's nets every flipped image had a margin under 0.07,
# and 0.6% of test images have one under 0.01, which any perturbation flips). Measured on seed 0's A, D and E (1,000
# test images, `verydeep bench --only parity`): int8 alone agreed on 98.5-99.6% of top-1 labels; rechecking margins
# under 0.05 (3-4% of results) left E's centre crops at 99.2%, under 0.1 (7-8%) gave 99.6-100% everywhere. The
# all-8-bit chain (int8.py) alone: 98.4-99.4% on A, D, E (99.4-99.7% on A-LRN); rechecked under 0.1 (5-8%),
# 99.7-100%. At three scales (D and E of seed 0, dense and multi-crop at Q = 73, 110, 146, 1,000 test images):
# every label int8 flipped had a margin under 0.055 in a one-scale result and under 0.03 in a three-scale mean.
RECHECK_MARGIN = 0.1


class Evaluator:
    """Runs one net over a source with the requested protocols and scales."""

    def __init__(self, model: VGG, device: str | torch.device = "cpu", batch_size: int = 32, workers: int = 2,
                 precision: object = "auto", progress: bool = True, recheck: float = RECHECK_MARGIN):
        from .fast import FastVGG

        self.model = model.eval().to(device)
        self.device = torch.device(device)
        self.batch_size, self.workers, self.progress = batch_size, workers, progress
        # One fused chain for crops and score maps (fast.py); "auto" is the fastest precision that agrees with fp32.
        self.net = FastVGG(self.model, precision, self.device)
        self.precision = self.net.precision
        self.recheck = recheck if self.precision == "int8" else 0.0
        self._exact: Evaluator | None = None  # the fp32 evaluator that recomputes near-ties of an int8 net
        self.checked = self.rechecked = 0     # results (an image's protocol) checked for near-ties, and recomputed
        self.forward_images = 0  # images (crops or whole images) through the net, for cost accounting

    @property
    def precision_text(self) -> str:
        """The precision as a table states it: int8 says how much fp32 recomputed (an image's protocol at every
        scale is one result)."""
        if self.precision != "int8" or not self.recheck:
            return self.precision
        share = 100 * self.rechecked / max(self.checked, 1)
        return f"int8 ({share:.1f}% fp32)"

    def calibrate(self, source: Source, scale: int, n: int = CALIBRATION_IMAGES, seed: int = 0) -> None:
        """int8: fix the activation ranges from centre crops of a seeded sample of `n` images of `source` at test
        scale `scale` (labels unused). Without it, `run` calibrates on the source it evaluates."""
        from .data import Subset

        idx = np.random.default_rng(seed).permutation(len(source))[:n]
        images = ScaledImages(Subset(source, idx, "calibration sample"), [scale])
        crops = [center_view(item[2][scale], self.model.config.crop_size)[0]
                 for item in map(images.__getitem__, range(len(images))) if not isinstance(item, Skip)]
        if not crops:
            raise UserError(f"int8 calibration: no usable image in {source.root}")
        crops = torch.stack(crops)
        self.net.calibrate(*[self._prep(crops[j:j + 64]) for j in range(0, len(crops), 64)])

    def _prep(self, images: torch.Tensor) -> torch.Tensor:
        return self.model.preprocess(images.to(self.device).float().div_(255.0))

    def crops_posteriors(self, crops: torch.Tensor) -> torch.Tensor:
        """Soft-max posteriors of uint8 crops (M, 3, C, C), in batches."""
        self.forward_images += len(crops)
        return torch.cat([self.net(self._prep(crops[j:j + self.batch_size * 4])).softmax(1).cpu()
                          for j in range(0, len(crops), self.batch_size * 4)])

    def views_posteriors(self, views: list[torch.Tensor]) -> torch.Tensor:
        """A crop protocol's result for each view set (one image at one scale: its uint8 crops (M, 3, C, C)): the
        mean of the crops' posteriors."""
        sizes = [len(v) for v in views]
        return torch.stack([p.mean(0) for p in self.crops_posteriors(torch.cat(views)).split(sizes)])

    def exact(self) -> "Evaluator":
        """int8: the fp32 evaluator that recomputes near-ties (built on first use)."""
        if self._exact is None:
            self._exact = Evaluator(self.model, self.device, self.batch_size, self.workers, "fp32", progress=False)
        return self._exact

    def near_ties(self, probs: np.ndarray) -> np.ndarray:
        """The rows of posteriors (N, classes) that are a near-tie: a top-2 margin under `recheck`."""
        if not self.recheck or probs.shape[1] < 2:
            return np.zeros(len(probs), bool)
        top2 = np.partition(probs, -2, axis=1)[:, -2:]
        return (top2[:, 1] - top2[:, 0]) < self.recheck

    def _recheck(self, source: Source, post: Posteriors, base: list[str], scales: list[int],
                 checks: list[tuple[str, list[int]]]) -> None:
        """int8: where a reported result (a protocol over scales: `checks`) of an image is a near-tie, the single
        protocols it averages are computed again for that image in fp32, at every scale, so the label it reports is
        fp32's. Only a reported result's label matters, and the results behind a three-scale mean (each scale, each
        of 150 crops) are near-ties far more often than the mean (a 64 crop of a 146 image is often unsure):
        checking each of them recomputed 26% of a jittered D's three-scale dense and multi-crop results in fp32,
        checking the reported rows 15-17% (BENCHMARKS.md)."""
        from .data import Subset

        near = {b: np.zeros(len(post.labels), bool) for b in base}
        for protocol, qs in checks:
            tie = self.near_ties(post.combine(protocol, qs)) & post.valid
            for b in parts(protocol):
                near[b] |= tie
        self.checked += int(post.valid.sum()) * len(base)
        for b, rows in near.items():
            idx = np.flatnonzero(rows)
            if len(idx):
                again = self.exact().run(Subset(source, idx, "int8 near-ties"), [b], scales)
                idx, ok = idx[again.valid], again.valid
                for q in scales:
                    post.probs[(b, q)][idx] = again.probs[(b, q)][ok]
                self.rechecked += len(idx)

    @staticmethod
    def _dense(net, x: torch.Tensor, together: bool = True) -> torch.Tensor:
        if together:  # the images and their flips in one call (see dense_posteriors)
            p = net.score_map(torch.cat([x, x.flip(3)])).mean((2, 3)).softmax(1)
            return 0.5 * (p[:len(x)] + p[len(x):])
        p = net.score_map(x).mean((2, 3)).softmax(1)
        return 0.5 * (p + net.score_map(x.flip(3)).mean((2, 3)).softmax(1))

    def dense_posteriors(self, images: torch.Tensor) -> torch.Tensor:
        """Section 3: score map averaged spatially, soft-max, flip-averaged; images (N, 3, H, W) of one size. The
        images and their flips go in one call while that stays within a batch: test images come in many sizes, and
        the net prepares its weights for each input size it meets (fast.py); one call instead of two ran
        the demo's nets' dense evaluation 1.20-1.28x faster (BENCHMARKS.md)."""
        self.forward_images += 2 * len(images)
        return self._dense(self.net, self._prep(images), 2 * len(images) <= self.batch_size).cpu()

    def run(self, source: Source, protocols: list[str], scales: list[int],
            checks: list[tuple[str, list[int]]] | None = None) -> Posteriors:
        """Posteriors of every image for the single protocols the given ones need, at every scale. int8: where an
        image's result is a near-tie, fp32 recomputes what it averages; the results checked are `checks` (protocol,
        scales), by default each protocol over all the scales (what a table reports). The progress bar counts
        finished results, so it reaches the end when the work does."""
        from tqdm import tqdm

        if self.precision == "int8" and not self.net.calibrated:
            self.calibrate(source, min(scales))
        base = list(dict.fromkeys(b for p in protocols for b in parts(p)))
        crop, n, classes = self.model.config.crop_size, len(source), self.model.config.num_classes
        probs = {(p, q): np.zeros((n, classes), np.float32) for p in base for q in scales}
        labels = np.full(n, -1, np.int64)
        valid = np.zeros(n, bool)
        paths = [""] * n
        workers = worker_options(self.workers)
        loader = DataLoader(ScaledImages(source, scales), batch_size=1, collate_fn=_first,
                            prefetch_factor=8 if workers["num_workers"] else None, **workers)
        buckets: dict = defaultdict(list)   # (Q, H, W) -> [(index, uint8 image)] for dense
        pending: list = []                  # (index, Q, protocol, uint8 crops) for the crop protocols
        skipped = []
        per_image = len(base) * len(scales)
        bar = tqdm(total=n * per_image, unit="result", desc="evaluate", disable=not self.progress,
                   dynamic_ncols=True, mininterval=1.0)

        waiting = [0, 0]                    # images waiting in buckets, and their bytes (bounded: see the loop)

        def flush_dense(key, force=False):
            items = buckets[key]
            if items and (force or len(items) >= self.batch_size):
                p = self.dense_posteriors(torch.stack([im for _, im in items]))
                probs[("dense", key[0])][[i for i, _ in items]] = p.numpy()
                bar.update(len(items))
                waiting[0] -= len(items)
                waiting[1] -= sum(im.numel() for _, im in items)
                del buckets[key]

        def flush_crops(force=False):
            if not pending or (not force and sum(len(c) for *_, c in pending) < self.batch_size * 4):
                return
            p = self.views_posteriors([c for *_, c in pending]).numpy()
            for (i, q, proto, _), row in zip(pending, p):
                probs[(proto, q)][i] = row
            bar.update(len(pending))
            pending.clear()

        t0 = time.perf_counter()
        for item in loader:
            if isinstance(item, Skip):
                skipped.append(item)
                log.warning("%s: skipped (%s)", item.path, item.detail or item.reason)
                bar.update(per_image)
                continue
            i, label, per_scale = item
            labels[i], valid[i], paths[i] = label, True, source.path(i)
            for q in scales:
                big = per_scale[q]
                for name in base:
                    if PROTOCOLS[name].dense:
                        key = (q, *big.shape[1:])
                        buckets[key].append((i, big))
                        waiting[0] += 1
                        waiting[1] += big.numel()
                        flush_dense(key)
                        # Dense batches need one shape, and images come in many (one per aspect ratio at a scale):
                        # without a bound every image could wait in its bucket to the end (the study's evaluations
                        # grew to 11 GB). Within the bound, images of a shape gather into batches.
                        while waiting[0] > 4 * self.batch_size and waiting[1] > HOLD_BYTES:
                            flush_dense(max(buckets, key=lambda k: len(buckets[k])), force=True)
                    else:
                        pending.append((i, q, name, PROTOCOLS[name].views(big, crop)))
            flush_crops()
        for key in list(buckets):
            flush_dense(key, force=True)
        flush_crops(force=True)
        bar.close()
        if skipped:
            log.warning("%d of %d images unusable: excluded from the measures", len(skipped), n)
        post = Posteriors(labels, probs, valid, paths)
        if self.recheck:
            self._recheck(source, post, base, scales, checks or [(p, scales) for p in protocols])
        self.seconds = time.perf_counter() - t0
        return post


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
    precision: str = "-"
    agreement: str = "-"        # top-1 agreement with fp32 on a sample, for any other precision (issue 20)

    def as_dict(self) -> dict:
        return {"net": self.net, "train S": self.train_scale, "test Q": self.test_scales, "protocol": self.protocol,
                "top-1 err (%)": round(100 * self.top1, 2), "top-5 err (%)": round(100 * self.top5, 2),
                "top-1 acc (%)": round(100 * (1 - self.top1), 2), "mean class acc (%)":
                    round(100 * self.mean_class_accuracy, 2), "images": self.images, "precision": self.precision,
                "top-1 = fp32": self.agreement,
                "s/img": None if self.seconds_per_image is None else round(self.seconds_per_image, 4)}


def measure(post_probs: np.ndarray, post: Posteriors, net: str, train_scale: str, scales: list[int],
            protocol: str, seconds: float | None = None, precision: str = "-", agreement: str = "-") -> Row:
    v = post.valid
    probs, labels = post_probs[v], post.labels[v]
    mca = float(np.nanmean(per_class_accuracy(probs, labels, probs.shape[1]))) if len(labels) else float("nan")
    return Row(net, train_scale, ",".join(map(str, scales)), protocol, topk_error(probs, labels, 1),
               topk_error(probs, labels, 5), int(v.sum()), mca, seconds, precision, agreement)


def agreement(post: Posteriors, ref: Posteriors, index: np.ndarray, protocol: str, scales: list[int]) -> str:
    """Top-1 agreement of `post` (all images) with `ref` (the images `index` of them, in fp32), and the largest
    posterior difference: how a table shows that a precision other than fp32 gives fp32's figures."""
    ok = ref.valid & post.valid[index]
    a, b = ref.combine(protocol, scales)[ok], post.combine(protocol, scales)[index[ok]]
    if not len(a):
        return "-"
    return f"{100 * (a.argmax(1) == b.argmax(1)).mean():.1f}% of {len(a)} (max diff {np.abs(a - b).max():.3f})"


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


# --------------------------------------------------------------------------------------------------- one image
@torch.inference_mode()
def predict_image(model: VGG, img: Image.Image, protocol_name: str = "dense", scales: list[int] | None = None,
                  precision: object = "auto", evaluator: Evaluator | None = None) -> torch.Tensor:
    """Soft-max posteriors (classes,) for one RGB image under a protocol, averaged over scales. Pass an
    `evaluator` to reuse its prepared net over many images. int8: a near-tie is recomputed in fp32."""
    base = parts(protocol_name)
    crop = model.config.crop_size
    scales = scales or [paper.default_test_scale(crop)]
    ev = evaluator or Evaluator(model, next(model.parameters()).device, batch_size=16, workers=0,
                                precision=precision, progress=False)
    p = _predict(ev, img, base, scales, crop)
    if ev.recheck:
        ev.checked += 1
        if ev.near_ties(p[None].numpy())[0]:
            ev.rechecked += 1
            return _predict(ev.exact(), img, base, scales, crop)
    return p


def _predict(ev: Evaluator, img: Image.Image, base: tuple[str, ...], scales: list[int], crop: int) -> torch.Tensor:
    out = []
    for q in scales:
        if q < crop:
            raise ConfigError(f"test scale {q} is smaller than the {crop} crop")
        big = to_uint8(rescale(img, q))
        for name in base:
            if PROTOCOLS[name].dense:
                out.append(ev.dense_posteriors(big[None])[0])
            else:
                out.append(ev.views_posteriors([PROTOCOLS[name].views(big, crop)])[0])
    return torch.stack(out).view(len(scales), len(base), -1).mean((0, 1))


# --------------------------------------------------------------------------------------------------- the command
@dataclass
class EvalConfig(NetOptions, RunOptions):
    data: str = ""                 # dataset: a folder (its --split), a labels-file folder, tar shards, or
    # fashion-mnist:test
    split: str = "val"             # the split of a folder holding train/, val/, test/
    protocol: str = "dense"        # center, dense, multicrop, dense+multicrop or any registered protocol (comma-
    # separated), or all
    scales: str | None = None      # test scales Q: 256,384,512, or auto / auto-multi (the paper's rules from the
    # training scale; default: 256 at a 224 crop)
    train_scale: list[int] | None = None  # S or Smin,Smax, for --scales auto when the weights do not record it
    per_scale: bool = False        # also a row per single scale
    fuse: list[str] = repeated()   # posteriors files (.npz) of earlier evaluations to fuse with the nets
    posteriors: str | None = None  # write per-image posteriors (.npz) for later fusion
    out: str | None = None         # write the table as OUT.md, OUT.csv and OUT.json
    agreement: int = 64            # in any precision but fp32, also run this many of the images (seeded) in fp32 and
    # state the top-1 agreement in the table (0: off)
    calibration: str | None = None  # int8: images to calibrate on (default: the train split of --data when it has
    # one, else the evaluated images; labels unused)
    limit: int | None = None       # evaluate a seeded, class-stratified sample of this many images
    seed: int = 0                  # seed of the --limit sample
    batch_size: int = 32           # images per dense batch (crops: 4 times as many)
    workers: int = 2               # decoding processes
    progress: bool = True          # progress bar


def net_name(model: VGG, path: str) -> str:
    """How a table names a net: its card's name, else the file's (its folder's when the file is model.*)."""
    p = Path(path)
    return model.card.name or (p.parent.name if p.stem in ("model", "best") and p.parent.name else p.stem)


def write_table(rows: list[Row], out: str | Path, provenance: dict) -> list[Path]:
    out = Path(out)
    paths = [out.with_suffix(".md"), out.with_suffix(".csv"), out.with_suffix(".json")]
    from .utils import atomic_write

    atomic_write(paths[0], lambda t: Path(t).write_text(format_table(rows, "markdown") + "\n"))
    atomic_write(paths[1], lambda t: Path(t).write_text(format_table(rows, "csv")))
    doc = {"rows": [r.as_dict() for r in rows], "provenance": provenance}
    atomic_write(paths[2], lambda t: Path(t).write_text(json.dumps(doc, indent=1) + "\n"))
    return paths


def fuse(posts: list[Posteriors], names: list[str], protocols: list[str]) -> list[Row]:
    """Table 6: the nets' posteriors averaged, per protocol, each net over the scales it was evaluated at."""
    base = posts[0]
    if any(len(p.labels) != len(base.labels) or (p.labels != base.labels).any() for p in posts):
        raise UserError("fusion needs posteriors of the same images in the same order")
    rows = []
    for name in protocols:
        members = []
        for post in posts:
            qs = sorted({q for (pp, q) in post.probs if pp in parts(name)})
            if not qs:
                raise UserError(f"fusion: a member has no {name} posteriors")
            members.append(post.combine(name, qs))
        rows.append(measure(np.mean(members, 0), base, "fusion(" + "+".join(names) + ")", "-", [], name))
    return rows


def calibration_source(cfg: EvalConfig) -> Source | None:
    """int8's calibration images: --calibration, else the train split of a --data folder that has one."""
    from .data import open_source

    if cfg.calibration:
        return open_source(cfg.calibration)
    if cfg.data and (Path(cfg.data) / "train").is_dir() and cfg.split != "train":
        return open_source(cfg.data, split="train")
    return None


def run(cfg: EvalConfig) -> list[Row]:
    """`verydeep evaluate`: the protocols over a dataset for each net, fused when there are several; the table in
    the terminal and, with --out, as Markdown, CSV and JSON (with provenance)."""
    from .data import Subset, open_source, sample
    from .provenance import provenance

    device, policy = cfg.runtime()
    protocols = parse_protocols(cfg.protocol)
    posts = [Posteriors.load(p) for p in cfg.fuse]
    names = [Path(p).stem for p in cfg.fuse]
    rows: list[Row] = []
    source = None
    if cfg.weights:
        if not cfg.data:
            raise UserError("give --data (a dataset folder, labels-file folder, shards or fashion-mnist:test)")
        source = open_source(cfg.data, split=cfg.split)
        if cfg.limit:
            source = sample(source, cfg.limit, cfg.seed)
    train_scale = tuple(cfg.train_scale) if cfg.train_scale else None
    for w, model in zip(cfg.weights, cfg.nets() if cfg.weights else []):
        if model.config.num_classes != len(source.classes):
            raise UserError(f"{w}: a {model.config.num_classes}-class net, {cfg.data} has "
                            f"{len(source.classes)} classes")
        if model.class_names and list(model.class_names) != list(source.classes) and \
                set(model.class_names) == set(source.classes):
            raise UserError(f"{w}: class order differs from {cfg.data}'s")
        scales = parse_scales(cfg.scales, model, train_scale)
        ev = Evaluator(model, device, cfg.batch_size, cfg.workers, policy, progress=cfg.progress)
        if ev.precision == "int8":
            cal = calibration_source(cfg) or source
            ev.calibrate(cal, min(scales))
            print(f"int8: calibrated on {min(CALIBRATION_IMAGES, len(cal))} images of {cal.root}")
        per_scale = [(p, [q]) for p in protocols for q in scales] if cfg.per_scale and len(scales) > 1 else []
        post = ev.run(source, protocols, scales, [(p, scales) for p in protocols] + per_scale)  # the rows below
        name = net_name(model, w)
        names.append(name)
        per_image = ev.seconds / max(int(post.valid.sum()), 1) if len(protocols) == 1 else None
        s_text = paper.scale_text(model.train_scale or train_scale)
        agree = lambda p, qs: "-"  # noqa: E731 (fp32: the reference itself)
        if ev.precision != "fp32" and cfg.agreement > 0:
            index = np.random.default_rng(cfg.seed).permutation(np.flatnonzero(post.valid))[:cfg.agreement]
            ref = Evaluator(model, device, cfg.batch_size, cfg.workers, "fp32", progress=False)
            ref_post = ref.run(Subset(source, index, "fp32 agreement sample"), protocols, scales)
            agree = lambda p, qs: agreement(post, ref_post, index, p, qs)  # noqa: E731
        for p in protocols:
            rows.append(measure(post.combine(p, scales), post, name, s_text, scales, p, per_image,
                                ev.precision_text, agree(p, scales)))
            if len(scales) > 1 and cfg.per_scale:
                rows += [measure(post.combine(p, [q]), post, name, s_text, [q], p, precision=ev.precision_text,
                                 agreement=agree(p, [q])) for q in scales]
        if cfg.posteriors:
            out = Path(cfg.posteriors if len(cfg.weights) == 1 else f"{cfg.posteriors}.{name}.npz")
            post.save(out)
            print(f"wrote per-image posteriors to {out}")
        posts.append(post)
    if len(posts) > 1:
        rows += fuse(posts, names, protocols)
    if not rows:
        raise UserError("nothing to evaluate: give --weights (and --data), or --fuse posteriors files")
    print(format_table(rows, "text"))
    if cfg.out:
        paths = write_table(rows, cfg.out, provenance(device, policy))
        print(f"wrote {', '.join(map(str, paths))}")
    return rows
