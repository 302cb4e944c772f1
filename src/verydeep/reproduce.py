"""The paper's experiments, in miniature, on a laptop CPU (`verydeep reproduce`).

Geometry scaled by crop / 224 (crop 64: S = 256 -> 73, 384 -> 110, [256, 512] -> [73, 146]); nets narrowed by a
width multiplier; every ratio the paper varies kept: depth A..E, LRN, 1x1 vs 3x3, shallow 5x5, fixed vs jittered S,
single vs multiple test scales, dense vs multi-crop, fusion, SCR vs PCR localisation, transfer of very deep features.
Every run is cached in OUT/runs (a killed study continues where it stopped: finished runs are skipped, an
interrupted run resumes from its last checkpoint); evaluations are cached as posteriors in OUT/eval."""
from __future__ import annotations

import json
import logging
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Literal

import numpy as np

from . import paper
from .evaluate import PROTOCOLS


log = logging.getLogger("verydeep")

@dataclass
class StudyConfig:
    out: str | None = None          # study folder (default runs/study, or runs/quick)
    data: str | None = None         # a mini-ILSVRC folder (built in OUT/data when not given)
    quick: bool = False             # the demo: nets A and D, one seed, a few epochs
    seeds: list[int] = field(default_factory=lambda: [0, 1, 2])  # seeds: every run is repeated with each
    crop: int = 64
    width: float = 0.25
    fc_width: int = 512
    # The paper's 0.5 kept a few-epoch miniature near chance (net A: 84% vs 57% val top-1 error after 3 epochs);
    # dropout is not among the paper's variables, so the miniature turns it off.
    dropout: float = 0.0
    batch_size: int = 32
    lr: float = 0.005               # scratch and init-from-A runs; fine-tuning at lr / 10, as the paper's 1e-2 -> 1e-3
    epochs: int = 4                 # scratch and init-from-A runs
    finetune_epochs: int = 2
    patience: int = 1
    precision: Literal["auto", "fp32", "bf16", "int8"] = "bf16"  # precision of training and evaluation
    workers: int = 2
    test_images: int = 500
    loc_epochs: int = 3
    transfer_per_class: int = 30

    @classmethod
    def presets(cls, given: dict) -> dict:
        if given.get("quick"):
            return {"out": "runs/quick", "seeds": [0], "epochs": 3, "finetune_epochs": 1, "test_images": 300}
        return {"out": "runs/study"}

    def scale(self, s: int) -> int:
        return paper.at_crop(s, self.crop)


# name -> (model, stage, init_from (run name), finetune_from (run name), init scheme)
RUNS = {
    "A": ("A", "scratch", None, None, "glorot"),
    "A-LRN": ("A-LRN", "scratch", None, None, "glorot"),
    "B": ("B", "scratch", "A", None, "glorot"),
    "B-shallow": ("B-shallow", "scratch", None, None, "glorot"),
    "C": ("C", "scratch", "A", None, "glorot"),
    "D": ("D", "scratch", "A", None, "glorot"),
    "E": ("E", "scratch", "A", None, "glorot"),
    "D-glorot": ("D", "scratch", None, None, "glorot"),
    "C384": ("C", "s384", None, "C", "glorot"),
    "D384": ("D", "s384", None, "D", "glorot"),
    "E384": ("E", "s384", None, "E", "glorot"),
    "Cj": ("C", "jitter", None, "C384", "glorot"),
    "Dj": ("D", "jitter", None, "D384", "glorot"),
    "Ej": ("E", "jitter", None, "E384", "glorot"),
}
QUICK_RUNS = ["A", "D"]


def single_protocols() -> list[str]:
    """Every registered protocol that is not a mean of others: what one evaluation pass computes."""
    return [name for name, p in PROTOCOLS.items() if not p.parts]


class Study:
    runs = RUNS

    def __init__(self, cfg: StudyConfig):
        self.cfg = cfg
        self.out = Path(cfg.out or "runs/study")
        (self.out / "runs").mkdir(parents=True, exist_ok=True)
        (self.out / "eval").mkdir(exist_ok=True)
        self.data = Path(cfg.data) if cfg.data else self.out / "data"
        self.results: dict = {}
        self.t0 = time.perf_counter()

    def log(self, msg: str) -> None:
        print(f"[{time.perf_counter() - self.t0:6.0f} s] {msg}", flush=True)

    # ------------------------------------------------------------------------------------------ training
    def dataset(self) -> Path:
        from .mini import MiniConfig, build

        if not (self.data / "manifest.json").is_file():
            self.log(f"building mini-ILSVRC in {self.data}")
            build(self.data, MiniConfig(), progress=not self.cfg.quick)
        return self.data

    def run_dir(self, name: str, seed: int) -> Path:
        return self.out / "runs" / f"{name}-s{seed}"

    def train(self, name: str, seed: int) -> Path:
        from .train import make_config, train

        d = self.run_dir(name, seed)
        weights = d / "model.safetensors"
        if weights.is_file():
            return weights
        model, stage, init_from, finetune_from, init = self.runs[name]
        c = self.cfg
        over = {"data": str(self.data), "model": model, "width": c.width, "fc_width": c.fc_width, "crop": c.crop,
                "dropout": c.dropout, "batch_size": c.batch_size, "init": init, "stage": stage, "patience": c.patience,
                "precision": c.precision, "workers": c.workers, "seed": seed, "run_dir": str(d), "progress": False,
                "max_epochs": c.finetune_epochs if finetune_from else c.epochs,
                "lr": c.lr / 10 if finetune_from else c.lr, "resume": d.exists()}
        if init_from:
            over["init_from"] = str(self.train(init_from, seed))
        if finetune_from:
            over["finetune_from"] = str(self.train(finetune_from, seed))
        self.log(f"train {name} (seed {seed})")
        train(make_config(over))
        return weights

    # ------------------------------------------------------------------------------------------ evaluation
    def test_source(self):
        from .data import Subset, open_source

        src = open_source(self.data, split="test")
        return Subset(src, np.random.default_rng(0).permutation(len(src))[:self.cfg.test_images], "test subset")

    def posteriors(self, name: str, seed: int, protocols: list[str], scales: list[int]):
        from .evaluate import Evaluator, Posteriors
        from .weights import load

        key = f"{name}-s{seed}-{'+'.join(protocols)}-{'_'.join(map(str, scales))}.npz"
        path = self.out / "eval" / key
        if path.is_file():
            return Posteriors.load(path)
        ev = Evaluator(load(self.train(name, seed)), batch_size=64, workers=self.cfg.workers,
                       precision=self.cfg.precision, progress=False)
        post = ev.run(self.test_source(), protocols, scales)
        post.save(path)
        return post

    def err(self, post, protocol: str, scales: list[int]) -> tuple[float, float]:
        from .evaluate import topk_error

        p = post.combine(protocol, scales)[post.valid]
        y = post.labels[post.valid]
        return 100 * topk_error(p, y, 1), 100 * topk_error(p, y, 5)

    def train_scale(self, name: str) -> tuple[int, int]:
        return paper.stage_scale(self.runs[name][1], self.cfg.crop)

    def single_q(self, name: str) -> list[int]:
        return paper.test_scales(self.train_scale(name), self.cfg.crop, False)

    def multi_q(self, name: str) -> list[int]:
        return paper.test_scales(self.train_scale(name), self.cfg.crop, True)

    # ------------------------------------------------------------------------------------------ the study
    def run(self) -> dict:
        cfg = self.cfg
        self.dataset()
        names = QUICK_RUNS if cfg.quick else list(self.runs)
        cells: dict = {}

        def add(table, key, seed, value):
            cells.setdefault(table, {}).setdefault(key, {})[seed] = value

        q3 = paper.multi_scales(cfg.crop)
        for seed in cfg.seeds:
            for name in names:
                self.train(name, seed)
            for name in names:  # Table 3: dense at one scale; Table 4: dense at the paper's three scales
                single, multi = self.single_q(name), self.multi_q(name)
                add("t3", name, seed, self.err(self.posteriors(name, seed, ["dense"], single), "dense", single))
                add("t4", name, seed, self.err(self.posteriors(name, seed, ["dense"], multi), "dense", multi))
            t5_nets = ["D"] if cfg.quick else ["Dj", "Ej"]
            for name in t5_nets:  # Table 5: the protocols at Q = {256, 384, 512}
                post = self.posteriors(name, seed, single_protocols(), q3)
                for p in PROTOCOLS:
                    add("t5", (name, p), seed, self.err(post, p, q3))
                if cfg.quick:  # the quick run also shows single- against multi-scale for each protocol
                    for p in PROTOCOLS:
                        add("t5", (name + " Q=" + str(cfg.scale(384)), p), seed,
                            self.err(post, p, [cfg.scale(384)]))
            if not cfg.quick:
                self.fusion(seed, q3, add)
                self.localisation(seed, add)
                self.transfer(seed, add)
        from .provenance import provenance

        self.results = {"config": asdict(cfg), "provenance": provenance("cpu", cfg.precision), "cells": {t: {json.dumps(k) if isinstance(k, tuple) else k: v
                                                               for k, v in c.items()} for t, c in cells.items()}}
        (self.out / "results.json").write_text(json.dumps(self.results, indent=1))
        return cells

    def cached(self, name: str, compute):
        """A small JSON result cached in OUT/eval, so that a report is rebuilt without recomputing it."""
        path = self.out / "eval" / f"{name}.json"
        if path.is_file():
            return json.loads(path.read_text())
        value = compute()
        path.write_text(json.dumps(value))
        return value

    def fusion(self, seed: int, q3: list[int], add) -> None:
        """Table 6: the two best nets (by their multi-scale dense top-1 error on this seed) fused."""
        cands = ["Cj", "Dj", "Ej"]
        errs = {n: self.err(self.posteriors(n, seed, single_protocols(), q3), "dense", q3)[0]
                for n in cands}
        best = sorted(cands, key=errs.get)[:2]
        posts = [self.posteriors(n, seed, single_protocols(), q3) for n in best]
        from .evaluate import topk_error

        for p in ("dense", "multicrop", "dense+multicrop"):
            probs = np.mean([post.combine(p, q3) for post in posts], 0)
            v = posts[0].valid
            add("t6", p, seed, (100 * topk_error(probs[v], posts[0].labels[v], 1),
                                100 * topk_error(probs[v], posts[0].labels[v], 5)))
        add("t6", "pair", seed, "+".join(best))

    def localisation(self, seed: int, add) -> None:
        """Table 8: SCR vs PCR, fc6-fc7 vs all layers, from the S = 384 net D; centre crop, ground-truth class."""
        from . import localize
        from .data import open_source
        from .weights import load, save

        for mode, layers in (("scr", "fc"), ("pcr", "fc"), ("pcr", "all")):
            path = self.out / "runs" / f"loc-{mode}-{layers}-s{seed}.safetensors"
            if not path.is_file():
                self.log(f"localisation {mode.upper()} {layers} (seed {seed})")
                cfg = localize.LocTrainConfig(mode=mode, layers=layers, train_scale=[self.cfg.scale(384)],
                                              lr=paper.FINETUNE_LR * (self.cfg.lr / paper.LR),
                                              epochs=self.cfg.loc_epochs, batch_size=self.cfg.batch_size,
                                              workers=self.cfg.workers, seed=seed, progress=False,
                                              precision=self.cfg.precision, device="cpu")
                net, _ = localize.fine_tune(load(self.train("D384", seed)), open_source(self.data, split="train"),
                                            cfg)
                save(net, path)
            r = self.cached(f"loc-{mode}-{layers}-s{seed}", lambda: localize.centre_crop_error(
                load(path), self.test_source(), self.cfg.scale(384), self.cfg.precision))
            add("t8", f"{mode}-{layers}", seed, 100 * r["error"])

    def transfer(self, seed: int, add) -> None:
        """Section 7: relu7 features of the jittered D and E on scikit-learn's handwritten digits (real images a
        package ships), upscaled; linear SVM; mean class recall over 3 random splits."""
        from PIL import Image
        from sklearn.datasets import load_digits

        from .features import descriptor
        from .transfer import multiclass
        from .weights import load

        done = self.out / "eval" / f"transfer-s{seed}.json"
        if done.is_file():
            for key, value in json.loads(done.read_text()).items():
                add("transfer", key, seed, value)
            return
        found = {}
        digits = load_digits()
        rng = np.random.default_rng(seed)
        idx = np.sort(np.concatenate([rng.choice(np.flatnonzero(digits.target == c), 60, replace=False)
                                      for c in range(10)]))
        images = [Image.fromarray((digits.images[i] * (255 / 16)).astype(np.uint8)).convert("RGB").resize(
            (self.cfg.scale(256),) * 2, Image.BICUBIC) for i in idx]
        labels = digits.target[idx]
        q3 = paper.multi_scales(self.cfg.crop)
        nets = {n: load(self.train(n, seed)).eval() for n in ("Dj", "Ej")}
        for key, members in (("D", ["Dj"]), ("E", ["Ej"]), ("D&E", ["Dj", "Ej"])):
            x = np.stack([descriptor([nets[m] for m in members], im, q3, "relu7", "stack") for im in images])
            r = multiclass(x, labels, self.cfg.transfer_per_class, 3, seed)
            found[key] = 100 * r["mean_class_recall"]
            add("transfer", key, seed, found[key])
        done.write_text(json.dumps(found))


def run(cfg: StudyConfig) -> dict:
    """`verydeep reproduce`: the study, then REPORT.md and its plots; says where they are."""
    from .report import write_report

    logging.basicConfig(level=logging.ERROR, format="%(message)s")
    study = Study(cfg)
    cells = study.run()
    text = write_report(study, cells)
    if cfg.quick:
        print(text)
    print(f"wrote {study.out / 'REPORT.md'} and its plots in {study.out}")
    return cells
