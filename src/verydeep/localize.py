"""Localisation (PAPER.md section 6, the paper's Appendix A): a classification net whose last FC layer predicts a box
(centre x, centre y, width, height), shared by all classes (SCR, 4 outputs) or per class (PCR, 4 x classes), trained
with a Euclidean loss from a classification net; tested on a central crop with the ground-truth class (protocol 1)
or densely over the whole image with OverFeat's greedy merge (protocol 2)."""
from __future__ import annotations

import json
import logging
from dataclasses import dataclass, replace
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from torch.utils.data import DataLoader, Dataset

from . import paper
from .config import positional, repeated
from .data.loader import EpochSampler, worker_options
from .data.sources import Source
from .errors import UserError
from .models import VGG
from .options import RunOptions
from .transforms import BadImage, as_rgb, check_whole_image, crop_position, rescale, to_uint8

log = logging.getLogger("verydeep")
MODES = ("scr", "pcr")


# --------------------------------------------------------------------------------------------------- boxes
def iou(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """Intersection over union of boxes (xmin, ymin, xmax, ymax): (N, 4) x (M, 4) -> (N, M)."""
    a, b = np.asarray(a, np.float64).reshape(-1, 4), np.asarray(b, np.float64).reshape(-1, 4)
    lt = np.maximum(a[:, None, :2], b[None, :, :2])
    rb = np.minimum(a[:, None, 2:], b[None, :, 2:])
    inter = np.clip(rb - lt, 0, None).prod(2)
    area = lambda x: np.clip(x[:, 2] - x[:, 0], 0, None) * np.clip(x[:, 3] - x[:, 1], 0, None)  # noqa: E731
    union = area(a)[:, None] + area(b)[None, :] - inter
    return np.where(union > 0, inter / np.where(union > 0, union, 1), 0.0)


def to_cxcywh(b: np.ndarray) -> np.ndarray:
    b = np.asarray(b, np.float64)
    return np.stack([(b[..., 0] + b[..., 2]) / 2, (b[..., 1] + b[..., 3]) / 2, b[..., 2] - b[..., 0],
                     b[..., 3] - b[..., 1]], -1)


def to_xyxy(c: np.ndarray) -> np.ndarray:
    c = np.asarray(c, np.float64)
    return np.stack([c[..., 0] - c[..., 2] / 2, c[..., 1] - c[..., 3] / 2, c[..., 0] + c[..., 2] / 2,
                     c[..., 1] + c[..., 3] / 2], -1)


def crop_box_transform(box: np.ndarray, scale: float, x0: int, y0: int, crop: int, flip: bool) -> np.ndarray:
    """A box (xyxy, original pixels) after rescaling by `scale`, cropping at (x0, y0) and an optional mirror, as
    (cx, cy, w, h) in crop units [0, 1], clipped to the crop."""
    b = np.asarray(box, np.float64) * scale - [x0, y0, x0, y0]
    b = np.clip(b, 0, crop)
    if flip:
        b = np.array([crop - b[2], b[1], crop - b[0], b[3]])
    return to_cxcywh(b) / crop


def greedy_merge(boxes: np.ndarray, scores: np.ndarray, threshold: float = 0.5) -> tuple[np.ndarray, np.ndarray]:
    """OverFeat's greedy merge (Sermanet et al., ICLR 2014, section 4.3): repeatedly take the pair of boxes with the
    best (lowest) match score; if it is above the threshold stop, else replace the pair by their average; a merged
    box's score is the sum of the class scores of the windows that predicted its members. Returns the merged boxes
    and their scores, best first.

    The paper's match score is "the sum of the distance between the centres of the two boxes and the intersection
    area"; as a dissimilarity that argmin merges, we use the centre distance normalised by the mean box size plus
    (1 - IoU), so that it falls as the overlap grows and the threshold does not depend on the image size."""
    boxes = np.asarray(boxes, np.float64).reshape(-1, 4)
    scores = np.asarray(scores, np.float64).reshape(-1)
    items = [(boxes[i].copy(), scores[i], 1) for i in range(len(boxes))]
    while len(items) > 1:
        b = np.stack([it[0] for it in items])
        c = to_cxcywh(b)
        size = np.sqrt(np.clip(c[:, 2] * c[:, 3], 1e-12, None))
        dist = np.linalg.norm(c[:, None, :2] - c[None, :, :2], axis=2) / ((size[:, None] + size[None, :]) / 2)
        match = dist + (1.0 - iou(b, b))
        np.fill_diagonal(match, np.inf)
        i, j = np.unravel_index(np.argmin(match), match.shape)
        if match[i, j] > threshold:
            break
        (bi, si, ni), (bj, sj, nj) = items[i], items[j]
        merged = ((bi + bj) / 2, si + sj, ni + nj)  # box_merge: the average of the two boxes' coordinates
        items = [it for k, it in enumerate(items) if k not in (i, j)] + [merged]
    items.sort(key=lambda it: -it[1])
    return np.stack([it[0] for it in items]), np.array([it[1] for it in items])


# --------------------------------------------------------------------------------------------------- model
def localisation_net(classifier: VGG, mode: str = "pcr") -> VGG:
    """A localisation net initialised from a classification net: every layer copied but the last FC, which now
    predicts 4 (SCR) or 4 x classes (PCR) box parameters, (cx, cy, w, h) in crop units, starting near the centred
    box of half the crop."""
    if mode not in MODES:
        raise UserError(f"localisation mode {mode!r}: choose scr or pcr")
    classes = classifier.config.num_classes
    cfg = replace(classifier.config, num_classes=4 if mode == "scr" else 4 * classes)
    net = VGG(classifier.card.but(config=cfg, box=(mode, classes)), init="glorot")
    sd = {k: v for k, v in classifier.state_dict().items() if not k.startswith("classifier.6.")}
    net.load_state_dict(sd, strict=False)
    torch.nn.init.normal_(net.classifier[6].weight, 0, 1e-3)
    with torch.no_grad():  # start from the centred box covering half the crop
        net.classifier[6].bias.copy_(torch.tensor([0.5, 0.5, 0.5, 0.5]).repeat(cfg.num_classes // 4))
    return net


def box_net(net: VGG, path: str | Path) -> VGG:
    """`net` (loaded from `path`), if it is a localisation net."""
    if net.box_mode not in MODES:
        raise UserError(f"{path}: not a localisation net (train one with `verydeep localize train`)")
    return net


def box_outputs(net: VGG, out: torch.Tensor, labels: torch.Tensor | None) -> torch.Tensor:
    """(N, 4) boxes from the last layer's (N, 4 or 4C) output: PCR takes the given classes' boxes."""
    if net.box_mode == "scr":
        return out
    return out.view(out.shape[0], -1, 4)[torch.arange(out.shape[0]), labels]


# --------------------------------------------------------------------------------------------------- data
def class_boxes(sample) -> np.ndarray:
    """The ground-truth boxes of the sample's own class (all of its boxes when none is labelled with it)."""
    mine = sample.box_labels == sample.label
    return sample.boxes[mine] if mine.any() else sample.boxes


class BoxCrops(Dataset):
    """Training views with their box (section 6: fixed S, crops and flips that keep the box consistent). The crop
    is drawn so that the box centre lies inside it (10 tries, else centred on the box); the box is clipped."""

    def __init__(self, source: Source, scale: int, crop: int, seed: int = 0, train: bool = True):
        self.source, self.scale, self.crop, self.seed, self.train = source, scale, crop, seed, train

    def __len__(self) -> int:
        return len(self.source)

    def __getitem__(self, key):
        epoch, i = key if isinstance(key, tuple) else (0, key)
        try:
            s = self.source.read(i)
            boxes = class_boxes(s)
            if not len(boxes):
                return None
            img = as_rgb(s.image, self.scale)
            box = boxes[np.argmax((boxes[:, 2] - boxes[:, 0]) * (boxes[:, 3] - boxes[:, 1]))]
            big = rescale(img, self.scale)
            big_w, big_h = big.size
            k = big_w / (s.size or img.size)[0]  # boxes are in the annotated image's pixels
            rng = np.random.default_rng((self.seed, epoch, i))
            cx, cy = (box[0] + box[2]) / 2 * k, (box[1] + box[3]) / 2 * k
            if self.train:
                for _ in range(10):
                    x0, y0 = crop_position(big_w, big_h, self.crop, rng)
                    if x0 <= cx < x0 + self.crop and y0 <= cy < y0 + self.crop:
                        break
                else:
                    x0 = int(np.clip(round(cx - self.crop / 2), 0, big_w - self.crop))
                    y0 = int(np.clip(round(cy - self.crop / 2), 0, big_h - self.crop))
                flip = bool(rng.random() < 0.5)
            else:
                x0, y0, flip = (big_w - self.crop) // 2, (big_h - self.crop) // 2, False
            view = to_uint8(big.crop((x0, y0, x0 + self.crop, y0 + self.crop)))
            if flip:
                view = view.flip(2)
            target = crop_box_transform(box, k, x0, y0, self.crop, flip)
            return view, s.label, torch.tensor(target, dtype=torch.float32), i
        except Exception as e:  # a bad image never stops a run
            log.warning("%s: skipped (%s)", self.source.path(i), e)
            return None


def _collate(items):
    items = [x for x in items if x is not None]
    if not items:
        return None
    return (torch.stack([x[0] for x in items]), torch.tensor([x[1] for x in items]), torch.stack([x[2] for x in items]),
            torch.tensor([x[3] for x in items]))


@dataclass
class LocTrainConfig(RunOptions):
    data: str = ""                 # dataset with boxes (VOC XML beside the images, or a boxes folder)
    split: str = "train"           # the split of a folder holding train/, val/, test/
    classifier: str = ""           # the classification net to start from (any weight format)
    model: str | None = None       # its architecture, for formats that do not name it
    mode: str = "pcr"              # scr (one box for all classes) or pcr (a box per class)
    layers: str = "all"            # fine-tune all layers, or fc (fc6-fc7 and the new box layer only)
    train_scale: list[int] | None = None  # fixed S (section 6: no jittering; default 256 at a 224 crop)
    lr: float = paper.FINETUNE_LR  # learning rate (section 6: 1e-3)
    epochs: int = 10               # epochs
    batch_size: int = 64           # batch
    momentum: float = paper.MOMENTUM  # SGD momentum
    weight_decay: float = paper.WEIGHT_DECAY  # L2 weight decay
    workers: int = 2               # data-loading processes
    seed: int = 0                  # seed of the crops, flips and the new layer's initialisation
    out: str = ""                  # the localisation net (.safetensors)
    progress: bool = True          # progress bars


def fine_tune(classifier: VGG, source: Source, cfg: LocTrainConfig) -> tuple[VGG, list[float]]:
    """Fine-tune a localisation net from a classifier with the Euclidean loss; returns the net and epoch losses."""
    from tqdm import tqdm

    from .train import optimizer

    if cfg.layers not in ("all", "fc"):
        raise UserError(f"--layers {cfg.layers!r}: choose all or fc")
    device, policy = cfg.runtime(training=True)
    if cfg.train_scale and (len(cfg.train_scale) != 1 or cfg.train_scale[0] < classifier.config.crop_size):
        raise UserError(f"--train-scale {cfg.train_scale}: localisation trains at one fixed S (section 6), at "
                        f"least the {classifier.config.crop_size} crop")
    scale = cfg.train_scale[0] if cfg.train_scale else paper.default_test_scale(classifier.config.crop_size)
    torch.manual_seed(cfg.seed)
    net = localisation_net(classifier, cfg.mode).to(device).train()
    params = list(net.parameters()) if cfg.layers == "all" else \
        [p for n, p in net.named_parameters() if n.startswith("classifier.")]
    if cfg.layers == "fc":
        net.features.requires_grad_(False)
    opt = optimizer(params, cfg.lr, cfg.momentum, cfg.weight_decay, device)
    ds = BoxCrops(source, scale, net.config.crop_size, cfg.seed)
    sampler = EpochSampler(len(source), True, cfg.seed)
    workers = worker_options(cfg.workers)
    loader = DataLoader(ds, batch_size=cfg.batch_size, sampler=sampler, collate_fn=_collate,
                        persistent_workers=workers["num_workers"] > 0, **workers)
    losses = []
    for epoch in range(cfg.epochs):
        sampler.set_epoch(epoch)
        total, n = 0.0, 0
        for batch in tqdm(loader, desc=f"localisation epoch {epoch + 1}/{cfg.epochs}", disable=not cfg.progress,
                          leave=False, unit="batch"):
            if batch is None:
                continue
            images, labels, targets, _ = (t.to(device) for t in batch)
            x = net.preprocess(images.float() / 255)
            with policy.autocast():
                out = net(x)
            pred = box_outputs(net, out.float(), labels)
            loss = F.mse_loss(pred, targets, reduction="sum") / len(images)  # Euclidean loss, per image
            if not torch.isfinite(loss):
                raise UserError(f"localisation training diverged at epoch {epoch + 1}; lower --lr")
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
            total, n = total + loss.item() * len(images), n + len(images)
        losses.append(total / max(n, 1))
        log.warning("localisation epoch %d/%d: Euclidean loss %.4f", epoch + 1, cfg.epochs, losses[-1])
    net.requires_grad_(True)
    return net.cpu().eval(), losses


def train_run(cfg: LocTrainConfig) -> VGG:
    """`verydeep localize train`."""
    from .data import open_source
    from .weights import load, save

    if not (cfg.data and cfg.classifier and cfg.out):
        raise UserError("give --data, --classifier and --out")
    net, losses = fine_tune(load(cfg.classifier, cfg.model), open_source(cfg.data, split=cfg.split), cfg)
    save(net, Path(cfg.out))
    print(f"Euclidean loss by epoch: {', '.join(f'{v:.4f}' for v in losses)}; wrote {cfg.out}")
    return net


# --------------------------------------------------------------------------------------------------- testing
@torch.inference_mode()
def centre_crop_error(net: VGG, source: Source, scale: int, precision: object = "fp32",
                      progress: bool = False) -> dict:
    """Protocol 1 (Table 8): the central crop, the ground-truth class's box; an error when IoU <= 0.5 with every
    ground-truth box of that class."""
    from tqdm import tqdm

    from .fast import FastVGG

    crop = net.config.crop_size
    run = FastVGG(net, precision)
    wrong, n, skipped = 0, 0, 0
    for i in tqdm(range(len(source)), desc="localisation (centre crop)", unit="img", disable=not progress,
                  mininterval=1.0):
        try:
            s = source.read(i)
            boxes = class_boxes(s)
            if not len(boxes):
                continue
            img = as_rgb(s.image, scale)
            big = rescale(img, scale)
        except (BadImage, ValueError) as e:  # one bad image or annotation never stops an evaluation
            skipped += 1
            log.warning("%s: skipped (%s)", source.path(i), e)
            continue
        big_w, big_h = big.size
        k = big_w / (s.size or img.size)[0]
        x0, y0 = (big_w - crop) // 2, (big_h - crop) // 2
        view = to_uint8(big.crop((x0, y0, x0 + crop, y0 + crop)))[None]
        pred = box_outputs(net, run(net.preprocess(view.float() / 255)), torch.tensor([s.label]))[0].numpy()
        box = (to_xyxy(pred * crop) + [x0, y0, x0, y0]) / k
        wrong += int(iou(box[None], boxes).max() <= paper.IOU_CORRECT)
        n += 1
    return {"images": n, "error": wrong / max(n, 1), "skipped": skipped}


class Dense:
    """Localisation nets and a classifier, prepared once to run densely (fast.FastVGG, one precision). Several
    localisation nets are fused (Table 9): every net's box at every location and scale joins the greedy merge."""

    def __init__(self, nets: VGG | list[VGG], classifier: VGG, precision: object = "fp32"):
        from .fast import FastVGG

        self.nets = [nets] if isinstance(nets, VGG) else list(nets)
        for net in self.nets:
            if (net.config.crop_size, net.config.config) != (classifier.config.crop_size, classifier.config.config):
                raise UserError("the localisation and classification nets must share crop size and architecture")
        self.net, self.classifier = self.nets[0], classifier
        self.boxes = [FastVGG(n, precision) for n in self.nets]
        self.scores = FastVGG(classifier, precision)
        self.precision = self.scores.precision

    @torch.inference_mode()
    def maps(self, img, scales: list[int]):
        """The classifier's posteriors averaged over locations and scales, and per scale and localisation net
        (net, rescale factor, class posteriors per location (C, h, w), box outputs per location (4K, h, w))."""
        posterior, per_scale = 0, []
        for q in scales:
            big = rescale(img, q)
            x = to_uint8(big)[None].float() / 255
            scores = self.scores.score_map(self.classifier.preprocess(x))[0].softmax(0)
            posterior = posterior + scores.mean((1, 2)) / len(scales)
            for net, run in zip(self.nets, self.boxes):
                boxes = run.score_map(net.preprocess(x))[0]
                per_scale.append((net, big.size[0] / img.size[0], scores.numpy(), boxes.numpy()))
        return posterior, per_scale


def merged_box(per_scale, c: int, threshold: float = 0.5) -> tuple[np.ndarray, float]:
    """Every location's box for class c (location (i, j) sees the crop-sized window at (32 j, 32 i) of the rescaled
    image), of every localisation net, scored by the class posterior there, greedily merged; the best merged box
    (image pixels) and score."""
    stride = paper.POOL_STRIDE
    cand, cand_scores = [], []
    for net, k, scores, boxes in per_scale:
        hh, ww = scores.shape[1:]
        b = boxes.reshape(-1, 4, hh, ww)[0 if net.box_mode == "scr" else c]
        jj, ii = np.meshgrid(np.arange(ww), np.arange(hh))
        xyxy = to_xyxy(np.moveaxis(b, 0, -1) * net.config.crop_size) + np.stack([stride * jj, stride * ii] * 2, -1)
        cand.append(xyxy.reshape(-1, 4) / k)
        cand_scores.append(scores[c].reshape(-1))
    merged, merged_scores = greedy_merge(np.concatenate(cand), np.concatenate(cand_scores), threshold)
    return merged[0], float(merged_scores[0])


def dense_boxes(dense: Dense, img, scales: list[int], top_k: int = 5, threshold: float = 0.5):
    """Protocol 2: [(class, class probability, box xyxy in image pixels, merged score)] for the top-k classes,
    most probable first."""
    posterior, per_scale = dense.maps(img, scales)
    top = posterior.topk(min(top_k, posterior.numel()))
    return [(c, float(p), *merged_box(per_scale, c, threshold))
            for p, c in zip(top.values.tolist(), top.indices.tolist())]


def dense_error(dense: Dense, source: Source, scales: list[int], threshold: float = 0.5,
                progress: bool = False) -> dict:
    """The ILSVRC localisation error: correct when, for one of the top-5 classes, the predicted box has IoU > 0.5
    with a ground-truth box of that class; and the error with the ground-truth class given."""
    from tqdm import tqdm

    wrong_top5, wrong_gt, n, skipped = 0, 0, 0, 0
    for i in tqdm(range(len(source)), desc="localisation (dense)", unit="img", disable=not progress,
                  mininterval=1.0):
        try:
            s = source.read(i)
            if not len(s.boxes):
                continue
            img = as_rgb(s.image)
            if s.size and img.size != tuple(s.size):
                check_whole_image(*s.size, min(s.size))
                img = img.resize(tuple(s.size))
            posterior, per_scale = dense.maps(img, scales)
        except (BadImage, ValueError) as e:
            skipped += 1
            log.warning("%s: skipped (%s)", source.path(i), e)
            continue
        gt_labels = s.box_labels if (s.box_labels >= 0).any() else np.full(len(s.boxes), s.label)

        def hit(c, box):
            m = gt_labels == c
            return bool(m.any() and iou(box[None], s.boxes[m]).max() > paper.IOU_CORRECT)

        top = posterior.topk(min(5, posterior.numel())).indices.tolist()
        wrong_top5 += int(not any(hit(c, merged_box(per_scale, c, threshold)[0]) for c in top))
        wrong_gt += int(not hit(s.label, merged_box(per_scale, s.label, threshold)[0]))
        n += 1
    return {"images": n, "top5_loc_error": wrong_top5 / max(n, 1), "gt_class_loc_error": wrong_gt / max(n, 1),
            "skipped": skipped}


def draw(img, preds, names, out: Path) -> Path:
    """The image with the predicted boxes as a PNG, at a readable size whatever the image's, the classes in a legend
    (rank, name, class probability, merged box score) rather than on the image, where labels of nearby boxes would
    overlap."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    from matplotlib.patches import Rectangle

    from .utils import atomic_write

    w, h = img.size
    fig, ax = plt.subplots(figsize=(7, 7 * h / w + 1.2))
    ax.imshow(img)
    colours = ["#ff2828", "#28c828", "#285aff", "#e6a000", "#c800c8"]
    for rank, (c, p, box, score) in enumerate(preds):
        x0, y0, x1, y1 = (float(v) for v in box)
        ax.add_patch(Rectangle((x0, y0), x1 - x0, y1 - y0, fill=False, lw=3 if rank == 0 else 1.5,
                               edgecolor=colours[rank % len(colours)],
                               label=f"{rank + 1}. {names[c] if names else c}  p = {p:.3f}  (box score {score:.2f})"))
    ax.set_xlim(0, w)
    ax.set_ylim(h, 0)
    ax.axis("off")
    ax.legend(loc="upper center", bbox_to_anchor=(0.5, -0.01), fontsize=9, frameon=False)
    fig.tight_layout()
    atomic_write(out, lambda t: fig.savefig(t, dpi=100, format="png"))
    plt.close(fig)
    return Path(out)


def one_box_net(weights: list[str]) -> VGG:
    from .weights import load

    if len(weights) != 1:
        raise UserError(f"--weights: give one localisation net ({len(weights)} given)")
    return box_net(load(weights[0]), weights[0])


@dataclass
class LocEvalConfig(RunOptions):
    weights: list[str] = repeated()  # the localisation net (several, with --protocol dense: fused, Table 9)
    classifier: str | None = None  # the classification net (protocol 2: its top-5 classes)
    data: str = ""                 # dataset with boxes
    split: str = "val"             # the split of a folder holding train/, val/, test/
    protocol: str = "center"       # center (protocol 1: central crop, ground-truth class) or dense (protocol 2:
    # greedy merge over locations and scales)
    scales: str | None = None      # test scales Q (default 256 at a 224 crop)
    threshold: float = 0.5         # greedy merge threshold
    json: str | None = None        # write the result as JSON to this file
    progress: bool = True          # progress bar


def evaluate_run(cfg: LocEvalConfig) -> dict:
    """`verydeep localize evaluate`: protocol 1 (Table 8) or protocol 2 (the ILSVRC localisation error)."""
    from .data import open_source
    from .evaluate import parse_scales
    from .provenance import provenance
    from .utils import atomic_write
    from .weights import load

    if cfg.protocol not in ("center", "dense"):
        raise UserError(f"--protocol {cfg.protocol!r}: choose center or dense")
    if not (cfg.weights and cfg.data):
        raise UserError("give --weights (a localisation net) and --data")
    device, policy = cfg.runtime()
    if len(cfg.weights) > 1 and cfg.protocol != "dense":
        raise UserError("several localisation nets are fused by the dense protocol (Table 9): add --protocol dense")
    nets = [box_net(load(w), w) for w in cfg.weights]
    net = nets[0]
    source = open_source(cfg.data, split=cfg.split)
    scales = parse_scales(cfg.scales, net)
    if cfg.protocol == "center":
        r = centre_crop_error(net, source, scales[0], policy, cfg.progress)
        print(f"protocol 1 (central crop, ground-truth class, Q={scales[0]}, {net.box_mode.upper()}, "
              f"{policy.name}): localisation error {100 * r['error']:.2f}% on {r['images']} images of {source.root}"
              + (f" ({r['skipped']} unusable skipped)" if r["skipped"] else ""))
    else:
        if not cfg.classifier:
            raise UserError("protocol 2 (dense) needs --classifier: the net whose top-5 classes are localised")
        dense = Dense(nets, load(cfg.classifier), policy)
        r = dense_error(dense, source, scales, cfg.threshold, cfg.progress)
        fused = f", {len(nets)} nets fused" if len(nets) > 1 else ""
        print(f"protocol 2 (dense, Q={scales}, greedy merge{fused}, {dense.precision}): top-5 localisation error "
              f"{100 * r['top5_loc_error']:.2f}%, with the ground-truth class {100 * r['gt_class_loc_error']:.2f}%"
              f" on {r['images']} images of {source.root}" + (f" ({r['skipped']} unusable skipped)"
                                                              if r["skipped"] else ""))
    if cfg.json:
        doc = {**r, "protocol": cfg.protocol, "scales": scales, "provenance": provenance(device, policy)}
        atomic_write(cfg.json, lambda t: Path(t).write_text(json.dumps(doc, indent=1)))
        print(f"wrote {cfg.json}")
    return r


@dataclass
class LocPredictConfig(RunOptions):
    image: str | None = positional(default=None)  # an image file
    weights: list[str] = repeated()  # the localisation net
    classifier: str = ""           # the classification net
    scales: str | None = None      # test scales Q (default 256 at a 224 crop)
    top: int = 5                   # classes (and their boxes) shown
    threshold: float = 0.5         # greedy merge threshold
    out: str | None = None         # PNG path (default IMAGE.boxes.png in this folder)


def predict_run(cfg: LocPredictConfig) -> list:
    """`verydeep localize predict`: the top classes' merged boxes on an image, printed and drawn."""
    from .evaluate import parse_scales
    from .predict import class_names
    from .transforms import load_rgb
    from .weights import load

    if not (cfg.image and cfg.weights and cfg.classifier):
        raise UserError("give an image, --weights (a localisation net) and --classifier")
    _, policy = cfg.runtime()
    net = one_box_net(cfg.weights)
    dense = Dense(net, load(cfg.classifier), policy)
    img = load_rgb(cfg.image)
    scales = parse_scales(cfg.scales, net)
    preds = dense_boxes(dense, img, scales, cfg.top, cfg.threshold)
    names = class_names(dense.classifier)
    out = Path(cfg.out or Path(cfg.image).with_suffix(".boxes.png").name)
    draw(img, preds, names, out)
    for rank, (c, p, box, score) in enumerate(preds, 1):
        print(f"{rank}. {names[c]}: p = {p:.3f}, box {[round(float(v), 1) for v in box]} (merged score {score:.2f})")
    print(f"wrote {out}")
    return preds
