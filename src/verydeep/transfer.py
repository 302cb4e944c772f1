"""Linear SVMs on very deep features (PAPER.md section 7): multi-class with mean class recall over random splits
with a fixed number of training images per class (Caltech-101/256), and multi-label with per-class average
precision and mAP (PASCAL VOC), in both VOC definitions: VOC2007's 11-point interpolation and VOC2010+'s area."""
from __future__ import annotations

import json
from dataclasses import dataclass
from typing import Literal
from pathlib import Path

import numpy as np

from . import paper
from .errors import UserError


def precision_recall(scores: np.ndarray, positives: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Precision and recall at each rank of the scores sorted descending (positives: booleans)."""
    order = np.argsort(-np.asarray(scores), kind="stable")
    tp = np.cumsum(np.asarray(positives, bool)[order])
    fp = np.cumsum(~np.asarray(positives, bool)[order])
    npos = max(int(np.sum(positives)), 1)
    return tp / np.maximum(tp + fp, 1e-12), tp / npos


def ap_voc07(scores, positives) -> float:
    """VOC2007: the mean over recall levels 0, 0.1, ..., 1 of the maximum precision at recall >= that level."""
    prec, rec = precision_recall(scores, positives)
    return float(np.mean([prec[rec >= t].max() if (rec >= t).any() else 0.0 for t in np.linspace(0, 1, 11)]))


def ap_area(scores, positives) -> float:
    """VOC2010+: the area under the precision-recall curve with precision made monotonically decreasing."""
    prec, rec = precision_recall(scores, positives)
    mrec = np.concatenate([[0.0], rec, [1.0]])
    mpre = np.concatenate([[0.0], prec, [0.0]])
    for i in range(len(mpre) - 2, -1, -1):
        mpre[i] = max(mpre[i], mpre[i + 1])
    idx = np.flatnonzero(mrec[1:] != mrec[:-1])
    return float(np.sum((mrec[idx + 1] - mrec[idx]) * mpre[idx + 1]))


def _svm(x, y, cs, folds, seed):
    from sklearn.model_selection import GridSearchCV, StratifiedKFold
    from sklearn.svm import LinearSVC

    n_min = int(np.bincount(y).min()) if len(np.unique(y)) > 1 else 0
    base = LinearSVC(dual="auto", max_iter=20000)
    if n_min >= 2:
        cv = StratifiedKFold(min(folds, n_min), shuffle=True, random_state=seed)
        return GridSearchCV(base, {"C": cs}, cv=cv).fit(x, y).best_estimator_
    return base.set_params(C=cs[len(cs) // 2]).fit(x, y)


def multiclass(features: np.ndarray, labels: np.ndarray, train_per_class: int, splits: int = 3, seed: int = 0,
               cs=(0.01, 0.1, 1.0, 10.0), folds: int = 3, test_per_class: int | None = None) -> dict:
    """Caltech protocol: per split, train_per_class random training images per class, the rest (or
    test_per_class) for testing; C by cross-validation on the training part; mean class recall; mean +- std."""
    labels = np.asarray(labels)
    classes = np.unique(labels)
    short = [int(c) for c in classes if (labels == c).sum() <= train_per_class]
    if short:
        raise UserError(f"class {short[0]} has no image left for testing with {train_per_class} training images "
                        f"per class")
    recalls = []
    for s in range(splits):
        rng = np.random.default_rng((seed, s))
        train, test = [], []
        for c in classes:
            idx = rng.permutation(np.flatnonzero(labels == c))
            train += idx[:train_per_class].tolist()
            rest = idx[train_per_class:]
            test += (rest[:test_per_class] if test_per_class else rest).tolist()
        clf = _svm(features[train], labels[train], list(cs), folds, seed)
        pred = clf.predict(features[test])
        per_class = [float((pred[labels[test] == c] == c).mean()) for c in classes]
        recalls.append(float(np.mean(per_class)))
    return {"mean_class_recall": float(np.mean(recalls)), "std": float(np.std(recalls)), "splits": recalls,
            "train_per_class": train_per_class}


def multilabel(features: np.ndarray, targets: np.ndarray, train: np.ndarray, test: np.ndarray, seed: int = 0,
               cs=(0.01, 0.1, 1.0, 10.0), folds: int = 3, ignore: np.ndarray | None = None) -> dict:
    """VOC protocol: one-vs-rest linear SVMs; per-class AP on the test part in both definitions, and their means.
    `ignore` marks (image, class) pairs that count for neither side (the VOC devkit's difficult-only images). A
    class without both positives and negatives in the training part, or without positives in the test part, has no
    AP (NaN) and is left out of the means."""
    targets = np.asarray(targets, bool)
    ignore = np.zeros_like(targets) if ignore is None else np.asarray(ignore, bool)
    ap07, ap12 = [], []
    for k in range(targets.shape[1]):
        tr, te = train[~ignore[train, k]], test[~ignore[test, k]]
        if len(np.unique(targets[tr, k])) < 2 or not targets[te, k].any():
            ap07.append(float("nan"))
            ap12.append(float("nan"))
            continue
        clf = _svm(features[tr], targets[tr, k].astype(int), list(cs), folds, seed)
        scores = clf.decision_function(features[te])
        ap07.append(ap_voc07(scores, targets[te, k]))
        ap12.append(ap_area(scores, targets[te, k]))
    if all(np.isnan(ap12)):
        raise UserError("no class has positives and negatives in the training part and positives in the test part")
    return {"ap_voc07": ap07, "ap_area": ap12, "map_voc07": float(np.nanmean(ap07)),
            "map_area": float(np.nanmean(ap12)), "classes_scored": int(np.sum(~np.isnan(ap12)))}


def read_features(path: str | Path) -> tuple[np.ndarray, dict, np.ndarray]:
    """Features written by `verydeep features` (OUT.npy, memory-mapped, and OUT.json), and which rows are real:
    images the extraction skipped (unreadable) are all-zero rows and must take no part in training or testing."""
    path = Path(path)
    meta_path, npy = path.with_suffix(".json"), path.with_suffix(".npy")
    if not meta_path.is_file():
        raise UserError(f"{meta_path}: no index beside the features (write them with `verydeep features`)")
    try:  # memory-mapped: nothing larger than the file is allocated
        x = np.load(npy, mmap_mode="r", allow_pickle=False)
        meta = json.loads(meta_path.read_text())
    except (OSError, ValueError) as e:
        raise UserError(f"{npy}: unreadable features ({str(e).splitlines()[0][:160]})") from None
    if x.ndim != 2 or len(meta.get("labels", [])) != len(x):
        raise UserError(f"{npy}: {len(x)} rows for {len(meta.get('labels', []))} labels in {meta_path}")
    if meta.get("done", len(x)) < len(x):
        raise UserError(f"{npy}: extraction stopped at image {meta['done']} of {len(x)}; run `verydeep features` "
                        f"again to finish it")
    keep = np.ones(len(x), bool)
    keep[np.asarray(meta.get("skipped", []), np.int64)] = False
    return x, meta, keep


@dataclass
class TransferConfig:
    features: str = ""             # features written by `verydeep features` (OUT.npy with OUT.json beside)
    test_features: str | None = None  # multi-label (PASCAL VOC): the test part's features
    dataset: Literal["caltech101", "caltech256"] = "caltech101"  # the split rule's defaults (Appendix B): Caltech-101
    # 30 training and at most 50 test images per class; Caltech-256 60 training, the rest tested
    train_per_class: int = paper.CALTECH_TRAIN_PER_CLASS["caltech101"]  # training images per class
    test_per_class: int = paper.CALTECH_TEST_PER_CLASS  # test images per class at most (0: all the rest)
    splits: int = 3                # random splits (mean +- std over them)
    seed: int = 0                  # seed of the splits and of the cross-validation folds
    json: str | None = None        # write the results as JSON to this file

    @classmethod
    def presets(cls, given: dict) -> dict:
        dataset = given.get("dataset", "caltech101")
        return {"train_per_class": paper.CALTECH_TRAIN_PER_CLASS[dataset],
                "test_per_class": paper.CALTECH_TEST_PER_CLASS if dataset == "caltech101" else 0}


def run(cfg: TransferConfig) -> dict:
    """`verydeep transfer`: linear SVMs on very deep features; mean class recall over random splits (Caltech), or
    per-class average precision and mAP (VOC, with --test-features)."""
    from .provenance import provenance
    from .utils import atomic_write

    if not cfg.features:
        raise UserError("give --features (the OUT.npy of `verydeep features`)")
    x, meta, keep = read_features(cfg.features)
    dropped = int((~keep).sum())
    if cfg.test_features:
        xt, mt, keep_t = read_features(cfg.test_features)
        if "targets" not in meta or "targets" not in mt:
            raise UserError(f"{cfg.features}: no multi-label targets (VOC features carry them)")
        dropped += int((~keep_t).sum())
        t = np.asarray(meta["targets"], bool)[keep]
        tt = np.asarray(mt["targets"], bool)[keep_t]
        ig = np.concatenate([np.asarray(m.get("ignore", np.zeros_like(tg)), bool)[k]
                             for m, tg, k in ((meta, meta["targets"], keep), (mt, mt["targets"], keep_t))])
        r = multilabel(np.concatenate([x[keep], xt[keep_t]]), np.concatenate([t, tt]), np.arange(len(t)),
                       np.arange(len(t), len(t) + len(tt)), cfg.seed, ignore=ig)
        for c, a07, a12 in zip(meta["classes"], r["ap_voc07"], r["ap_area"]):
            if a12 == a12:  # not NaN
                print(f"{c:<14} AP {100 * a12:5.1f} (VOC2007 11-point {100 * a07:5.1f})")
        print(f"mAP {100 * r['map_area']:.1f} (VOC2010+ area), {100 * r['map_voc07']:.1f} (VOC2007 11-point) over "
              f"{r['classes_scored']} classes")
    else:
        labels = np.asarray(meta["labels"])[keep]
        r = multiclass(np.asarray(x[keep]), labels, cfg.train_per_class, cfg.splits, cfg.seed,
                       test_per_class=cfg.test_per_class or None)
        classes = meta.get("classes") or []
        print(f"mean class recall {100 * r['mean_class_recall']:.1f} +- {100 * r['std']:.1f} over {cfg.splits} "
              f"splits of {cfg.train_per_class} training images per class, {len(np.unique(labels))} classes"
              + (f" ({', '.join(classes[:5])}{', ...' if len(classes) > 5 else ''})" if classes else ""))
    if dropped:
        print(f"{dropped} image(s) the extraction skipped (unreadable) left out")
    r["left_out"] = dropped
    if cfg.json:
        doc = {**r, "provenance": provenance()}
        atomic_write(cfg.json, lambda tmp: Path(tmp).write_text(json.dumps(doc, indent=1)))
        print(f"wrote {cfg.json}")
    return r
