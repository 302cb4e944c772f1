"""Localisation (PAPER.md section 6, the paper's Appendix A): a classification net whose last FC layer predicts a box
(centre x, centre y, width, height), shared by all classes (SCR, 4 outputs) or per class (PCR, 4 x classes), trained
with a Euclidean loss from a classification net; tested on a central crop with the ground-truth class (protocol 1)
or densely over the whole image with OverFeat's greedy merge (protocol 2)."""
from __future__ import annotations

import logging
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from torch.utils.data import DataLoader, Dataset

from .data.loader import EpochSampler, _worker_init
from .data.sources import Source
from .errors import UserError
from .models import VGG, VGGConfig
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
    cfg = VGGConfig(**{**classifier.config.to_dict(), "num_classes": 4 if mode == "scr" else 4 * classes})
    net = VGG(cfg, classifier.input_convention, init="glorot")
    sd = {k: v for k, v in classifier.state_dict().items() if not k.startswith("classifier.6.")}
    net.load_state_dict(sd, strict=False)
    torch.nn.init.normal_(net.classifier[6].weight, 0, 1e-3)
    with torch.no_grad():  # start from the centred box covering half the crop
        net.classifier[6].bias.copy_(torch.tensor([0.5, 0.5, 0.5, 0.5]).repeat(cfg.num_classes // 4))
    net.class_names, net.train_scale = classifier.class_names, classifier.train_scale
    net.box_mode, net.box_classes = mode, classes
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
class LocConfig:
    mode: str = "pcr"
    layers: str = "all"        # all | fc (fine-tune fc6-fc7 only, and the new box layer)
    scale: int = 256           # fixed S, no jittering (section 6)
    lr: float = 1e-3
    epochs: int = 10
    batch_size: int = 64
    momentum: float = 0.9
    weight_decay: float = 5e-4
    workers: int = 2
    seed: int = 0


def train(classifier: VGG, source: Source, cfg: LocConfig, progress: bool = True) -> tuple[VGG, list[float]]:
    """Fine-tune a localisation net from a classifier with the Euclidean loss; returns the net and epoch losses."""
    from tqdm import tqdm

    if cfg.layers not in ("all", "fc"):
        raise UserError(f"localisation layers {cfg.layers!r}: choose all or fc")
    torch.manual_seed(cfg.seed)
    net = localisation_net(classifier, cfg.mode).train()
    params = list(net.parameters()) if cfg.layers == "all" else \
        [p for n, p in net.named_parameters() if n.startswith("classifier.")]
    if cfg.layers == "fc":
        net.features.requires_grad_(False)
    opt = torch.optim.SGD(params, lr=cfg.lr, momentum=cfg.momentum, weight_decay=cfg.weight_decay)
    ds = BoxCrops(source, cfg.scale, net.config.crop_size, cfg.seed)
    sampler = EpochSampler(len(source), True, cfg.seed)
    loader = DataLoader(ds, batch_size=cfg.batch_size, sampler=sampler, collate_fn=_collate,
                        num_workers=cfg.workers, worker_init_fn=_worker_init, persistent_workers=cfg.workers > 0)
    losses = []
    for epoch in range(cfg.epochs):
        sampler.set_epoch(epoch)
        total, n = 0.0, 0
        for batch in tqdm(loader, desc=f"localisation epoch {epoch + 1}/{cfg.epochs}", disable=not progress,
                          leave=False):
            if batch is None:
                continue
            images, labels, targets, _ = batch
            x = net.preprocess(images.float() / 255)
            pred = box_outputs(net, net(x), labels)
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
    return net.eval(), losses


# --------------------------------------------------------------------------------------------------- testing
@torch.inference_mode()
def centre_crop_error(net: VGG, source: Source, scale: int) -> dict:
    """Protocol 1 (Table 8): the central crop, the ground-truth class's box; an error when IoU <= 0.5 with every
    ground-truth box of that class."""
    crop = net.config.crop_size
    wrong, n, skipped = 0, 0, 0
    for i in range(len(source)):
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
        pred = box_outputs(net, net(net.preprocess(view.float() / 255)), torch.tensor([s.label]))[0].numpy()
        box = (to_xyxy(pred * crop) + [x0, y0, x0, y0]) / k
        wrong += int(iou(box[None], boxes).max() <= 0.5)
        n += 1
    return {"images": n, "error": wrong / max(n, 1), "skipped": skipped}


@torch.inference_mode()
def dense_maps(net: VGG, classifier: VGG, img, scales: list[int]):
    """Both nets applied densely at each scale: the classifier's posteriors averaged over locations and scales, and
    per scale (rescale factor, class posteriors per location (C, h, w), box outputs per location (4K, h, w))."""
    posterior, per_scale = 0, []
    for q in scales:
        big = rescale(img, q)
        x = to_uint8(big)[None].float() / 255
        scores = classifier.score_map(classifier.preprocess(x))[0].softmax(0)
        boxes = net.score_map(net.preprocess(x))[0]
        if boxes.shape[1:] != scores.shape[1:]:
            raise UserError("the localisation and classification nets must share crop size and depth")
        posterior = posterior + scores.mean((1, 2)) / len(scales)
        per_scale.append((big.size[0] / img.size[0], scores.numpy(), boxes.numpy()))
    return posterior, per_scale


def merged_box(net: VGG, per_scale, c: int, threshold: float = 0.5) -> tuple[np.ndarray, float]:
    """Every location's box for class c (location (i, j) sees the crop-sized window at (32 j, 32 i) of the rescaled
    image), scored by the class posterior there, greedily merged; the best merged box (image pixels) and score."""
    crop = net.config.crop_size
    cand, cand_scores = [], []
    for k, scores, boxes in per_scale:
        hh, ww = scores.shape[1:]
        b = boxes.reshape(-1, 4, hh, ww)[0 if net.box_mode == "scr" else c]
        jj, ii = np.meshgrid(np.arange(ww), np.arange(hh))
        xyxy = to_xyxy(np.moveaxis(b, 0, -1) * crop) + np.stack([32 * jj, 32 * ii, 32 * jj, 32 * ii], -1)
        cand.append(xyxy.reshape(-1, 4) / k)
        cand_scores.append(scores[c].reshape(-1))
    merged, merged_scores = greedy_merge(np.concatenate(cand), np.concatenate(cand_scores), threshold)
    return merged[0], float(merged_scores[0])


def dense_boxes(net: VGG, classifier: VGG, img, scales: list[int], top_k: int = 5, threshold: float = 0.5):
    """Protocol 2: [(class, box xyxy in image pixels, merged score)] for the top-k classes, best class first."""
    posterior, per_scale = dense_maps(net, classifier, img, scales)
    top = posterior.topk(min(top_k, posterior.numel())).indices.tolist()
    return [(c, *merged_box(net, per_scale, c, threshold)) for c in top]


def dense_error(net: VGG, classifier: VGG, source: Source, scales: list[int], threshold: float = 0.5) -> dict:
    """The ILSVRC localisation error: correct when, for one of the top-5 classes, the predicted box has IoU > 0.5
    with a ground-truth box of that class; and the error with the ground-truth class given."""
    wrong_top5, wrong_gt, n, skipped = 0, 0, 0, 0
    for i in range(len(source)):
        try:
            s = source.read(i)
            if not len(s.boxes):
                continue
            img = as_rgb(s.image)
            if s.size and img.size != tuple(s.size):
                check_whole_image(*s.size, min(s.size))
                img = img.resize(tuple(s.size))
            posterior, per_scale = dense_maps(net, classifier, img, scales)
        except (BadImage, ValueError) as e:
            skipped += 1
            log.warning("%s: skipped (%s)", source.path(i), e)
            continue
        gt_labels = s.box_labels if (s.box_labels >= 0).any() else np.full(len(s.boxes), s.label)

        def hit(c, box):
            m = gt_labels == c
            return bool(m.any() and iou(box[None], s.boxes[m]).max() > 0.5)

        top = posterior.topk(min(5, posterior.numel())).indices.tolist()
        wrong_top5 += int(not any(hit(c, merged_box(net, per_scale, c, threshold)[0]) for c in top))
        wrong_gt += int(not hit(s.label, merged_box(net, per_scale, s.label, threshold)[0]))
        n += 1
    return {"images": n, "top5_loc_error": wrong_top5 / max(n, 1), "gt_class_loc_error": wrong_gt / max(n, 1),
            "skipped": skipped}


def draw(img, preds, names, out: Path) -> Path:
    """The image with the predicted boxes, labelled, as a PNG."""
    from PIL import ImageDraw

    img = img.copy()
    d = ImageDraw.Draw(img)
    colours = [(255, 40, 40), (40, 200, 40), (40, 90, 255), (230, 160, 0), (200, 0, 200)]
    for rank, (c, box, score) in enumerate(preds):
        col = colours[rank % len(colours)]
        d.rectangle([float(v) for v in box], outline=col, width=3 if rank == 0 else 1)
        d.text((float(box[0]) + 3, float(box[1]) + 2), f"{rank + 1}. {names[c] if names else c}", fill=col)
    img.save(out)
    return out


def load(path: Path) -> VGG:
    from .weights import load as load_weights

    net = load_weights(path)
    if net.box_mode not in MODES:
        raise UserError(f"{path}: not a localisation net (train one with `verydeep localize train`)")
    return net.eval()
