"""The paper's experiments, in miniature, on a laptop CPU (`verydeep reproduce`).

Geometry scaled by crop / 224 (crop 64: S = 256 -> 73, 384 -> 110, [256, 512] -> [73, 146]); nets narrowed by a
width multiplier; every ratio the paper varies kept: depth A..E, LRN, 1x1 vs 3x3, shallow 5x5, fixed vs jittered S,
single vs multiple test scales, dense vs multi-crop, fusion, SCR vs PCR localisation, transfer of very deep features.
Every run is cached in OUT/runs (a killed study continues where it stopped: finished runs are skipped, an
interrupted run resumes from its last checkpoint); evaluations are cached as posteriors in OUT/eval. With --jobs N (2
by default) the runs and evaluations are tasks run N at a time in worker processes (jobs.py), each task's output in
OUT/logs; the tables are then read from the cache."""
from __future__ import annotations

import json
import logging
import sys
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Literal

import numpy as np

from . import paper
from .errors import ConfigError, UserError
from .evaluate import PROTOCOLS, single_protocols
from .utils import atomic_write


log = logging.getLogger("verydeep")

@dataclass
class StudyConfig:
    out: str | None = None          # study folder (default runs/study, or runs/quick)
    data: str | None = None         # a mini-ILSVRC folder (built in OUT/data when not given)
    quick: bool = False             # the demo: nets A and D, one seed, schedules cut to about 5 minutes
    seeds: list[int] = field(default_factory=lambda: [0, 1, 2])  # seeds: every run is repeated with each

    # Scaled down where the scale forces it (each scaling is written in the report):
    crop: int = 64                  # 224 -> 64: every S and Q scaled by 64/224
    width: float = 0.125            # conv channels x1/8 (the 2-core budget: ~2.5x the img/s of x1/4, same epochs)
    fc_width: int = 512             # 4096 -> 512
    train_per_class: int = 2000     # mini-ILSVRC training images per class (20,000 in all)
    batch_size: int = 64            # batch 64, not 256: memory allows 256, but an epoch is then 78 updates
    # and the nets need ~4x the epochs

    # The paper's recipe (section 3.1) as it stands:
    dropout: float = paper.DROPOUT  # on fc6 and fc7
    lr: float = paper.LR            # from scratch and from net A; fine-tuning stages at lr / 10 (the paper's 1e-3)
    patience: int = 2               # epochs without validation improvement before lr / 10 (the paper: "stopped
    # improving"; an epoch here is ~300 updates). 1 decayed on noise: net B's error rose 0.7 points once (1,000
    # validation images: ~1.4 points of standard error) and its rate fell at epoch 6, ending 8 points behind A;
    # Glorot's shallow B sat at chance for one epoch and never learned after its decays
    max_decays: int = paper.LR_DECAYS  # then stop
    rate_epochs: list[int] | None = field(default_factory=lambda: [18, 9, 2, 1])  # epochs at lr, lr / 10, lr /
    # 100, lr / 1000 for the nets from scratch and from A, counted once above chance, instead of the plateau rule
    # (`none`: the plateau rule; fine-tuning stages keep it). Not the paper's rule, forced by the scale: an epoch
    # here is 312 updates (the paper's ~5,000), and at lr 1e-2 the validation error swings by 2-4 points from epoch
    # to epoch while it still falls for 20-40 epochs, so the epoch of the rule's first fall (8-20) was luck and
    # set C's and D's error (rho -0.79 over 10 runs), while epochs at lr 1e-4 and 1e-5 changed nothing. Trained
    # again with 18, 9, 2, 1 from the same A on the same streams (five seeds), C and D ended better (by 2.37 and
    # 1.52 points) and 3-5x tighter over seeds (std 1.13 -> 0.39, 1.25 -> 0.23) on 30 epochs against 26 and 32
    # (benchmarks/patience.py; BENCHMARKS.md, "A schedule fixed in epochs").
    val_per_class: int = 500        # validation images per class: the plateau rule judges each epoch on them.
    # On 1,000 it decided on noise (~1.3 points of standard error at 20% error): two runs of D from the same A, on two
    # random streams, first fell at epochs 8 and 21 and ended at 20.6 and 15.5% test error. On 5,000 the same four
    # runs of D ended better in each pair (-1.59 ± 1.40 points) and half as spread (std 2.32 -> 1.24), C and E better
    # in all four pairs too (benchmarks/validation_size.py; BENCHMARKS.md, "When the rate falls").
    validate_first_rate: bool = False  # validate the fixed schedule's epochs at lr once a net is above chance (off:
    # skipped; they decide nothing but which epoch is best, and in every finished run of the study of 2026-11-25 the
    # best was an epoch at lr / 10 or lower: 26-33 of 30-34). About 18 of a run's 30 validations of 5,000 images.
    max_epochs: int = 40            # cap on the from-scratch schedules (the report says which runs hit a cap)
    init_epochs: int = 40           # cap on the schedules of the nets initialised from net A. Caps of 24 and 20
    # stopped most nets before their schedule ended; on 5,000 validation images D's schedules ended at 27-35 epochs.
    finetune_epochs: int = 6        # cap on the S = 384 and jittered fine-tuning schedules
    final_decay: int = 0            # the last N epochs before the cap of a scratch or from-A schedule at lr / 10
    # when no plateau came first (the demo, whose caps come before any plateau)
    restarts: int = 2               # fresh draws of a net that never left chance level (scratch or from A).
    # A net trained from scratch or from A that never left chance level is trained again from a fresh draw of its
    # initialisation (seed + 1000 k), at most this many times; the report counts the restarts. At 1/8 width the
    # paper's N(0, 0.01) stalls some draws: A sat at chance for 4 epochs in seed 1 and all 24 in seed 2, A-LRN all
    # 24 in seeds 1 and 2, while seed 0's learned (the paper's own remedy for bad draws was initialising from A).
    init_restarts: int = 5          # the same for net A, whose layers start C, D and E (section 3.1).
    # A draw of A that never learns starts C, D and E at chance too: in seed 7 (2026-11-24) A's three draws all
    # stalled, then C, D and E each stalled twice from it (8 epochs a draw) before learning late; A stalled in 5 of
    # 14 draws over seeds 0-8: at that rate six draws all fail about once in 500 seeds.
    precision: Literal["auto", "fp32", "bf16", "int8"] = "auto"  # auto: the faster of fp32 and bf16 here, measured
    workers: int = 2                # data-loading processes of each task
    jobs: int = 2                   # runs and evaluations side by side, cores / jobs threads each (a lone one: all).
    # At 1/8 width the nets' operations are too small to keep two threads of one process busy, and one OpenMP
    # thread per process has no barrier to wait at (benchmarks/study_jobs.py). The demo's work is one chain: 1.
    test_per_class: int = 1000      # test images rendered per class (Fashion-MNIST has 1,000 test items per class)
    test_images: int = 5000         # the seeded subset of them every table is measured on.
    # At 1,000 images the test sample alone gave a paired comparison of two nets a standard error of 0.9-1.0 points
    # per seed (0.6 for two protocols of one net): larger than the effects of depth, dense + multi-crop and fusion
    # (0.1-1 point), and most of their spread over seeds (study of 2026-11-23).
    loc_epochs: int = 2             # localisation fine-tuning epochs (Table 8; benchmarks/longer_localisation.py)
    transfer_per_class: int = 30    # training images per class of the transfer SVM (the paper's Caltech-101: 30)

    def __post_init__(self):
        if self.precision == "int8":
            raise ConfigError("--precision int8 is for inference; the study trains in auto, fp32 or bf16")

    @classmethod
    def presets(cls, given: dict) -> dict:
        if given.get("quick"):
            # 5 minutes on 2 cores: A for 12 epochs, then D from it for 12, each with its last 2 at lr / 10. The
            # caps come before most plateaus (the full study's first decays: A after epochs 10, 15, 21, D after 15,
            # 8, 20); one decay takes 6 points off A's validation error in an epoch (29.0 -> 23.1%), and
            # without it the demo's nets ended at 26.2 and 25.4% test error (10 epochs, no decay), with it at 23.0
            # and 21.6%; its 1,000 validation images suffice (no plateau is judged on them; the full study's
            # schedule fixed in epochs, 30 a net, would not fit)
            return {"out": "runs/quick", "seeds": [0], "max_epochs": 12, "init_epochs": 12, "final_decay": 2,
                    "test_per_class": 100, "test_images": 500, "jobs": 1, "val_per_class": 100, "rate_epochs": []}
        return {"out": "runs/study"}

    def scale(self, s: int) -> int:
        return paper.at_crop(s, self.crop)


# A from-scratch draw still at chance level after this many epochs is abandoned, for a fresh one while restarts remain:
# seed 1's A left chance at epoch 5; the draws that never learned were still at 90% error at epoch 24. The last draw is
# abandoned too: in 13 seeds no draw left chance after epoch 6 but one (epoch 18, undertrained at its cap), and the
# last draw of A-LRN seed 1 in the timed run of 2026-11-24 spent 40 epochs (470 s) at chance (REPRODUCTION.md).
GIVE_UP = 8

# name -> (model, stage, init_from (run name), finetune_from (run name), init scheme)
# Section 3.1: net A from random weights N(0, 0.01) (the std scaled to the narrow layers' fan-in:
# models.paper_fan_ins); deeper nets take A's first four conv layers and three FC layers, their other layers random.
# Those other layers are Glorot-initialised here (the paper's note: Glorot works without pre-training): at 1/8 width
# N(0, 0.01) shrinks the signal at each of D's nine new layers and D starts, and stays, at chance (measured: 5
# epochs at 90% error). B and shallow B are both trained from scratch (no head start from A for either), each with
# the one scheme that trains it at lr 1e-2, measured: B with Glorot (N(0, 0.01) left it at chance for 5 epochs),
# shallow B with N(0, 0.01) like A, whose 8 weight layers it shares (Glorot's 5x5 first layer, summing 75 inputs of
# 0-255 pixels, sent it to chance within the first epoch, where it stayed). No one scheme trains both here.
RUNS = {
    "A": ("A", "scratch", None, None, "paper"),
    "A-LRN": ("A-LRN", "scratch", None, None, "paper"),
    "B": ("B", "scratch", None, None, "glorot"),
    "B-shallow": ("B-shallow", "scratch", None, None, "paper"),
    "C": ("C", "scratch", "A", None, "glorot"),
    "D": ("D", "scratch", "A", None, "glorot"),
    "E": ("E", "scratch", "A", None, "glorot"),
    "C384": ("C", "s384", None, "C", "glorot"),
    "D384": ("D", "s384", None, "D", "glorot"),
    "E384": ("E", "s384", None, "E", "glorot"),
    "Cj": ("C", "jitter", None, "C384", "glorot"),
    "Dj": ("D", "jitter", None, "D384", "glorot"),
    "Ej": ("E", "jitter", None, "E384", "glorot"),
}
QUICK_RUNS = ["A", "D"]


def measure_precision(net: str = "D", crop: int = 64, width: float = 0.25, fc_width: int = 512, batch: int = 64,
                      steps: int = 6) -> tuple[str, str]:
    """The faster training precision on this machine at the study's geometry (bf16 is not always faster for narrow
    layers): median step time of one net in fp32 and in bf16, channels-last. Returns (precision, what was seen)."""
    import statistics

    import torch

    from .models import vgg
    from .precision import Precision, native_bf16
    from .train import forward_backward, optimizer, update

    candidates = ["fp32"] + (["bf16"] if native_bf16(torch.device("cpu")) else [])
    seen = {}
    for name in candidates:
        torch.manual_seed(0)
        model = vgg(net, num_classes=10, crop_size=crop, width=width, fc_width=fc_width, init="glorot")
        model = model.train().to(memory_format=torch.channels_last)
        opt = optimizer(model.parameters(), 1e-3, 0.9, 5e-4, "cpu")
        policy = Precision.resolve(name, "cpu", training=True)
        x = torch.randn(batch, 3, crop, crop).contiguous(memory_format=torch.channels_last)
        y = torch.randint(0, 10, (batch,))
        times = []
        for i in range(steps + 2):
            t0 = time.perf_counter()
            forward_backward(model, x, y, policy, 1.0 / batch)
            update(opt)
            if i >= 2:
                times.append(time.perf_counter() - t0)
        seen[name] = batch / statistics.median(times)
    best = max(seen, key=seen.get)
    return best, ", ".join(f"{k} {v:.0f} img/s" for k, v in seen.items())


def records_of(run_dir: Path) -> list[dict]:
    """A run's per-epoch records (its metrics.jsonl), oldest first; none for a run not started."""
    f = run_dir / "metrics.jsonl"
    return [json.loads(line) for line in f.read_text().splitlines() if '"epoch"' in line] if f.is_file() else []


class Study:
    runs = RUNS

    def __init__(self, cfg: StudyConfig):
        self.cfg = cfg
        self.out = Path(cfg.out or "runs/study")
        (self.out / "runs").mkdir(parents=True, exist_ok=True)
        # evaluations on the test subset are cached per its size; results that do not use it (the measured
        # precision, transfer) stay in eval/ itself
        self.eval_dir = self.out / "eval" / f"test{cfg.test_images}"
        self.eval_dir.mkdir(parents=True, exist_ok=True)
        self.data = Path(cfg.data) if cfg.data else self.out / "data"
        self.results: dict = {}
        self.names = QUICK_RUNS if cfg.quick else list(self.runs)
        self.t0 = time.perf_counter()

    @classmethod
    def open(cls, folder: str | Path) -> "Study":
        """A study folder as its run left it, for the benchmarks that read one: the settings of its results.json,
        or, for a study stopped before it wrote one, those its run recorded when it started (study.json), or, for a
        folder with neither (a study stopped before verydeep recorded them), the defaults (its runs are checked
        against them)."""
        done, started = Path(folder) / "results.json", Path(folder) / "study.json"
        given = (json.loads(done.read_text())["config"] if done.is_file() else
                 json.loads(started.read_text()) if started.is_file() else {})
        if given:  # recorded before rate_epochs existed: the plateau rule
            given.setdefault("rate_epochs", None)
        return cls(StudyConfig(**{**given, "out": str(folder)}))

    def log(self, msg: str) -> None:
        print(f"[{time.perf_counter() - self.t0:6.0f} s] {msg}", flush=True)

    # ------------------------------------------------------------------------------------------ training
    def dataset(self) -> Path:
        from .mini import MiniConfig, build

        if self.cfg.data and (self.data / "manifest.json").is_file():
            return self.data  # the user's own mini-ILSVRC, as built
        if not (self.data / "manifest.json").is_file():
            self.log(f"building mini-ILSVRC in {self.data}")
        # builds it, or checks that the one there was built with these settings (one built with others is an error)
        build(self.data, MiniConfig(train_per_class=self.cfg.train_per_class, val_per_class=self.cfg.val_per_class,
                                    test_per_class=self.cfg.test_per_class), progress=not self.cfg.quick)
        return self.data

    @property
    def precision(self) -> str:
        """The study's precision; "auto" is measured once (fp32 against bf16 at the study's geometry) and kept."""
        if self.cfg.precision != "auto":
            return self.cfg.precision
        if not hasattr(self, "_precision"):
            found = self.cached("precision", lambda: dict(zip(("precision", "seen"), measure_precision(
                "D", self.cfg.crop, self.cfg.width, self.cfg.fc_width, self.cfg.batch_size))))
            self._precision, self.precision_seen = found["precision"], found["seen"]
        return self._precision

    def run_id(self, name: str, seed: int, attempt: int | None = None) -> str:
        """A run's name: NAME-sSEED, and -rK for the K-th restart of a net that did not learn (StudyConfig.restarts).
        Without `attempt`, the run that stands: the first that learned, or the last allowed."""
        if attempt is None:
            attempt = 0
            while attempt < self.restarts(name) and self.at_chance(self.run_id(name, seed, attempt)):
                attempt += 1
        return f"{name}-s{seed}" + (f"-r{attempt}" if attempt else "")

    def restarts(self, name: str) -> int:
        if self.runs[name][3] is not None:
            return 0  # fine-tuning stages start from a net
        return self.cfg.init_restarts if any(r[2] == name for r in self.runs.values()) else self.cfg.restarts

    def at_chance(self, run: str) -> bool:
        """Whether a finished run never left chance level (its best validation error within 5 points of it)."""
        if not (self.out / "runs" / run / "model.safetensors").is_file():
            return False
        errs = [r["val_top1_err"] for r in records_of(self.out / "runs" / run) if "val_top1_err" in r]
        from .report import CHANCE_MARGIN  # the one definition of "did not learn", with the report's

        return bool(errs) and 100 * min(errs) >= 100 * (1 - 1 / 10) - CHANCE_MARGIN

    def run_dir(self, name: str, seed: int) -> Path:
        return self.out / "runs" / self.run_id(name, seed)

    def train(self, name: str, seed: int) -> Path:
        for attempt in range(self.restarts(name) + 1):
            d = self.out / "runs" / self.run_id(name, seed, attempt)
            weights = d / "model.safetensors"
            if not weights.is_file():
                self._train(name, seed, attempt, d)
            else:
                self._check_cached(name, seed, attempt, d)
            if not self.at_chance(d.name):
                break
            if attempt < self.restarts(name) and not (self.out / "runs" / self.run_id(name, seed, attempt + 1) /
                                                      "model.safetensors").is_file():
                self.log(f"{d.name} did not learn (chance level): trained again from a fresh draw of its "
                         f"initialisation ({attempt + 1} of at most {self.restarts(name)})")
        return weights

    # the settings a cached run must have been trained with to stand in this study (paths and loader settings aside;
    # a run's config.json does not record its epoch cap, which a resumed run may raise)
    RECIPE_KEYS = ("model", "width", "fc_width", "crop", "dropout", "batch_size", "init", "stage", "patience",
                   "max_decays", "rate_epochs", "precision", "seed", "lr", "final_decay")

    def _check_cached(self, name: str, seed: int, attempt: int, d: Path) -> None:
        """A finished run is reused only if it was trained as this study would train it: a changed setting (a raised
        epoch cap, another width) is an error naming the run, not a table mixing two recipes."""
        f = d / "config.json"
        if not f.is_file():
            return
        was, now = json.loads(f.read_text()), self._settings(name, seed, attempt, d)
        # a key a run's config.json lacks was not recorded then, except rate_epochs (absent: the plateau rule)
        changed = [f"{k}={was.get(k)!r} (now {now[k]!r})" for k in self.RECIPE_KEYS
                   if (was.get(k) is not None or k == "rate_epochs") and was.get(k) != now[k]]
        # the epoch cap: a run that ended its schedule (or gave up at chance) stands under any cap it fits in; one
        # that stopped at its cap stands only under that cap
        # a net started from another run (init_from, finetune_from) stands only while that run stands: one trained
        # from a draw the study has since replaced (more restarts: StudyConfig.init_restarts) would mix two starts
        _, _, init_from, finetune_from, _ = self.runs[name]
        for key, source in (("init_from", init_from), ("finetune_from", finetune_from)):
            if source and was.get(key) and Path(was[key]).parent.name != self.run_id(source, seed):
                changed.append(f"{key} {Path(was[key]).parent.name} (now {self.run_id(source, seed)})")
        recs = records_of(d)
        cap, ended = now["max_epochs"], bool(recs) and recs[-1].get("schedule") in ("stop", "gave up")
        if recs and (len(recs) > cap or (not ended and len(recs) != cap)):
            changed.append(f"an epoch cap of {len(recs)} (now {cap})")
        if changed:
            raise UserError(f"{d}: trained with {', '.join(changed)}; this study would train it otherwise: use "
                            f"another --out, or delete {d.name} and the runs started from it")

    def _settings(self, name: str, seed: int, attempt: int, d: Path) -> dict:
        model, stage, init_from, finetune_from, init = self.runs[name]
        c = self.cfg
        return {"data": str(self.data), "model": model, "width": c.width, "fc_width": c.fc_width, "crop": c.crop,
                "dropout": c.dropout, "batch_size": c.batch_size, "init": init, "stage": stage,
                "patience": c.patience, "rate_epochs": None if finetune_from else c.rate_epochs or None,
                "max_decays": c.max_decays, "precision": self.precision, "workers": c.workers,
                "seed": seed + 1000 * attempt,
                "give_up_at_chance": GIVE_UP, "validate_first_rate": c.validate_first_rate,
                "run_dir": str(d), "progress": sys.stderr.isatty(),
                "max_epochs": c.finetune_epochs if finetune_from else c.init_epochs if init_from else c.max_epochs,
                "lr": c.lr / 10 if finetune_from else c.lr, "resume": d.exists(),
                "final_decay": 0 if finetune_from else c.final_decay}

    def _train(self, name: str, seed: int, attempt: int, d: Path) -> None:
        from .train import make_config, train

        _, _, init_from, finetune_from, _ = self.runs[name]
        c = self.cfg
        over = self._settings(name, seed, attempt, d)
        if init_from:
            over["init_from"] = str(self.train(init_from, seed))
        if finetune_from:
            over["finetune_from"] = str(self.train(finetune_from, seed))
        done = sum((self.out / "runs" / f"{n}-s{s}" / "model.safetensors").is_file() for n in self.names
                   for s in c.seeds)
        self.log(f"train {name} (seed {seed}" + (f", restart {attempt}" if attempt else "") +
                 f"): run {done + 1 - (attempt > 0)} of {len(self.names) * len(c.seeds)}")
        train(make_config(over))

    def schedule(self, name: str, seed: int) -> dict:
        """How a run's training went, from its metrics: epochs, learning-rate decays, whether the schedule ended (its
        fixed epochs, or 3 decays and a plateau) or hit the epoch cap, best validation error and the seconds it took."""
        records = lambda run: records_of(self.out / "runs" / run)  # noqa: E731

        run = self.run_id(name, seed)
        restarts = int(run.rsplit("-r", 1)[1]) if run != f"{name}-s{seed}" else 0
        recs = records(run)
        if not recs:
            return {}
        lost = sum(r.get("train_seconds", 0) for k in range(restarts) for r in records(self.run_id(name, seed, k)))
        return {"epochs": len(recs), "decays": sum(r.get("schedule") == "decay" for r in recs), "restarts": restarts,
                "lost_seconds": lost,
                "ended": recs[-1].get("schedule") == "stop",
                "best_val": 100 * min(r["val_top1_err"] for r in recs if "val_top1_err" in r),
                "seconds": sum(r.get("train_seconds", 0) for r in recs),
                # None: an epoch the fixed schedule did not validate (StudyConfig.validate_first_rate)
                "curve": [100 * r["val_top1_err"] if "val_top1_err" in r else None for r in recs]}

    # ------------------------------------------------------------------------------------------ evaluation
    def test_source(self):
        from .data import Subset, open_source

        src = open_source(self.data, split="test")
        return Subset(src, np.random.default_rng(0).permutation(len(src))[:self.cfg.test_images], "test subset")

    def posteriors(self, name: str, seed: int, precision: str | None = None):
        """A net's evaluation (`evaluation`), cached; in another precision than the study's (the agreement check,
        first seed): dense at its one Table 3 scale only."""
        from .evaluate import Evaluator, Posteriors
        from .weights import load

        path, protocols, scales = self.eval_path(name, seed, precision)
        if path.is_file():
            return Posteriors.load(path)
        weights = self.train(name, seed)
        precision = precision or self.precision
        self.log(f"evaluate {name} (seed {seed}): {', '.join(protocols)} at Q = {scales}, {precision}")
        ev = Evaluator(load(weights), batch_size=64, workers=self.cfg.workers,
                       precision=precision, progress=sys.stderr.isatty())
        post = ev.run(self.test_source(), protocols, scales)
        post.save(path)
        return post

    def dense_error(self, name: str, weights: Path) -> float:
        """Top-1 error % of other weights for net `name` (a run trained again), by Table 3's protocol: dense at the
        net's one test scale, on the study's test subset; not cached."""
        from .evaluate import Evaluator
        from .weights import load

        q = self.single_q(name)
        post = Evaluator(load(weights), batch_size=64, workers=self.cfg.workers, precision=self.precision,
                         progress=False).run(self.test_source(), ["dense"], q)
        return self.err(post, "dense", q)[0]

    def eval_path(self, name: str, seed: int, precision: str | None = None) -> tuple[Path, list[str], list[int]]:
        """Where a net's evaluation is cached, and what it computes (the protocols, the scales)."""
        tag = "" if precision in (None, self.precision) else f"-{precision}"
        protocols, scales = self.evaluation(name) if not tag else (["dense"], self.single_q(name))
        key = f"{self.run_id(name, seed)}-{'+'.join(protocols)}-{'_'.join(map(str, scales))}{tag}.npz"
        return self.eval_dir / key, protocols, scales

    def err(self, post, protocol: str, scales: list[int]) -> tuple[float, float]:
        from .evaluate import topk_error

        p = post.combine(protocol, scales)[post.valid]
        y = post.labels[post.valid]
        return 100 * topk_error(p, y, 1), 100 * topk_error(p, y, 5)

    def train_scale(self, name: str) -> tuple[int, int]:
        return paper.stage_scale(self.runs[name][1], self.cfg.crop)

    def single_q(self, name: str) -> list[int]:
        return self._test_q(name, False)

    def multi_q(self, name: str) -> list[int]:
        return self._test_q(name, True)

    def _test_q(self, name: str, multi: bool) -> list[int]:
        # section 5's scales at 224, then scaled: a jittered net's Q = 384 is 110 here, as in Tables 5 and 6 (the
        # midpoint of the scaled [73, 146] would be 109, and a second evaluation of the same net)
        return [self.cfg.scale(q) for q in paper.test_scales(paper.stage_scale(self.runs[name][1]), multi=multi)]

    def evaluation(self, name: str) -> tuple[list[str], list[int]]:
        """The one evaluation pass of a net per seed that every table reads (Posteriors keep each protocol at each
        scale): dense at its Table 3 and 4 scales; every single protocol for the nets of Tables 5 and 6, at Q3 (the
        quick run's D: at its own three scales)."""
        if self.cfg.quick:
            t5 = {"D": self.multi_q("D")}
        else:
            t5 = {n: paper.multi_scales(self.cfg.crop) for n in ("Cj", "Dj", "Ej")}  # Tables 5 (Dj, Ej) and 6
        scales = sorted({*self.single_q(name), *self.multi_q(name), *t5.get(name, [])})
        return (single_protocols() if name in t5 else ["dense"]), scales

    # ------------------------------------------------------------------------------------------ the study
    def run(self) -> dict:
        cfg = self.cfg
        # its settings, for Study.open while it runs or after it stops (results.json has them only once it ends)
        atomic_write(self.out / "study.json", lambda tmp: Path(tmp).write_text(json.dumps(asdict(cfg), indent=1)))
        self.dataset()
        names = self.names
        cells: dict = {}

        def add(table, key, seed, value):
            cells.setdefault(table, {}).setdefault(key, {})[seed] = value

        q3 = paper.multi_scales(cfg.crop)
        if cfg.jobs > 1:  # everything below computed ahead, side by side; then read from the cache
            from functools import partial

            from .jobs import run_tasks

            self.precision  # measured once, here (the dataset is built above), before the tasks that read it start
            run_tasks(self.plan(), partial(study_task, cfg), cfg.jobs, self.out / "logs", self.log)
        for seed in cfg.seeds:
            for name in names:
                self.train(name, seed)
            for name in names:  # Table 3: dense at one scale; Table 4: dense at the paper's three scales
                post = self.posteriors(name, seed)
                add("t3", name, seed, self.err(post, "dense", self.single_q(name)))
                add("t4", name, seed, self.err(post, "dense", self.multi_q(name)))
            t5_nets = ["D"] if cfg.quick else ["Dj", "Ej"]
            for name in t5_nets:  # Table 5: the protocols at the net's three test scales (jittered: Q = {256, 384, 512})
                qs = self.multi_q(name) if cfg.quick else q3
                post = self.posteriors(name, seed)
                for p in PROTOCOLS:
                    add("t5", (name, p), seed, self.err(post, p, qs))
                if cfg.quick:  # the quick run also shows one scale against three for each protocol
                    for p in PROTOCOLS:
                        add("t5", (f"{name} Q={self.single_q(name)[0]}", p), seed,
                            self.err(post, p, self.single_q(name)))
            if not cfg.quick:
                self.fusion(seed, q3, add)
                self.localisation(seed, add)
                self.transfer(seed, add)
        if self.precision != "fp32":  # the tables are not fp32's: show how far they agree with it (first seed)
            seed = cfg.seeds[0]
            for name in names:
                single = self.single_q(name)
                a = self.posteriors(name, seed)
                b = self.posteriors(name, seed, "fp32")
                pa, pb = a.combine("dense", single)[b.valid], b.combine("dense", single)[b.valid]
                add("agreement", name, seed, (100 * float((pa.argmax(1) == pb.argmax(1)).mean()),
                                              float(np.abs(pa - pb).max())))
        from .provenance import provenance

        self.results = {"config": asdict(cfg), "provenance": provenance("cpu", self.precision), "cells": {t: {json.dumps(k) if isinstance(k, tuple) else k: v
                                                               for k, v in c.items()} for t, c in cells.items()}}
        atomic_write(self.out / "results.json", lambda tmp: Path(tmp).write_text(json.dumps(self.results, indent=1)))
        return cells

    def cached(self, name: str, compute, on_test: bool = False):
        """A small JSON result cached in OUT/eval (in the test subset's folder when it is measured on it), so that a
        report is rebuilt without recomputing it."""
        path = (self.eval_dir if on_test else self.out / "eval") / f"{name}.json"
        if path.is_file():
            return json.loads(path.read_text())
        value = compute()
        atomic_write(path, lambda tmp: Path(tmp).write_text(json.dumps(value)))
        return value

    def fusion(self, seed: int, q3: list[int], add) -> None:
        """Table 6: the two best nets (by dense + multi-crop top-1 error at Q3 on this seed) fused, and the best single
        net beside them (choosing both by the test error favours the single net, not the fusion)."""
        from .evaluate import topk_error

        posts = {n: self.posteriors(n, seed) for n in ("Cj", "Dj", "Ej")}
        errs = {n: self.err(post, "dense+multicrop", q3) for n, post in posts.items()}
        best = sorted(errs, key=lambda n: errs[n][0])[:2]
        add("t6", "best", seed, errs[best[0]])
        for p in ("dense", "multicrop", "dense+multicrop"):
            probs = np.mean([posts[n].combine(p, q3) for n in best], 0)
            v, y = posts[best[0]].valid, posts[best[0]].labels
            add("t6", p, seed, (100 * topk_error(probs[v], y[v], 1), 100 * topk_error(probs[v], y[v], 5)))
        add("t6", "pair", seed, "+".join(best))

    LOCALISATION = (("scr", "fc"), ("pcr", "fc"), ("pcr", "all"))

    def localisation(self, seed: int, add) -> None:
        """Table 8: SCR vs PCR, fc6-fc7 vs all layers, from the S = 384 net D; centre crop, ground-truth class."""
        for mode, layers in self.LOCALISATION:
            add("t8", f"{mode}-{layers}", seed, 100 * self.localise(seed, mode, layers))

    def localise(self, seed: int, mode: str, layers: str, epochs: int | None = None) -> float:
        """One row of Table 8 (trained and measured once, cached): its centre-crop localisation error. `epochs`
        other than the study's (benchmarks/longer_localisation.py) trains and caches a run of its own."""
        from . import localize
        from .data import open_source
        from .weights import load, save

        epochs = epochs or self.cfg.loc_epochs
        tag = f"loc-{mode}-{layers}" + (f"-e{epochs}" if epochs != self.cfg.loc_epochs else "") + f"-s{seed}"
        path = self.out / "runs" / f"{tag}.safetensors"
        if not path.is_file():
            self.log(f"localisation {mode.upper()} {layers} (seed {seed}, {epochs} epochs)")
            cfg = localize.LocTrainConfig(mode=mode, layers=layers, train_scale=[self.cfg.scale(384)],
                                          lr=paper.FINETUNE_LR * (self.cfg.lr / paper.LR),
                                          epochs=epochs, batch_size=self.cfg.batch_size,
                                          workers=self.cfg.workers, seed=seed, progress=sys.stderr.isatty(),
                                          precision=self.precision, device="cpu")
            net, _ = localize.fine_tune(load(self.train("D384", seed)), open_source(self.data, split="train"), cfg)
            save(net, path)
        return self.cached(tag, lambda: localize.centre_crop_error(
            load(path), self.test_source(), self.cfg.scale(384), self.precision), on_test=True)["error"]

    def plan(self) -> dict:
        """Every training and evaluation `run` needs that is not cached yet, as tasks for jobs.run_tasks: key ->
        (method, args, keys of the tasks it needs first). `run` reads them from the cache after; what the plan
        missed, it computes itself (test_mini.py checks that it misses nothing)."""
        from .jobs import Task

        tasks: dict = {}

        def add(key, task, done: Path):
            if not done.is_file():
                tasks[key] = task

        for seed in self.cfg.seeds:
            for name in self.names:
                _, _, init_from, finetune_from, _ = self.runs[name]
                after = [("train", n, seed) for n in (init_from, finetune_from) if n]
                add(("train", name, seed), Task("train", (name, seed), after), self.run_dir(name, seed) /
                    "model.safetensors")
                add(("evaluate", name, seed), Task("posteriors", (name, seed), [("train", name, seed)]),
                    self.eval_path(name, seed)[0])
            if not self.cfg.quick:
                for mode, layers in self.LOCALISATION:
                    add(("localise", mode, layers, seed), Task("localise", (seed, mode, layers),
                                                               [("train", "D384", seed)]),
                        self.eval_dir / f"loc-{mode}-{layers}-s{seed}.json")
                add(("transfer", seed), Task("transfer", (seed,), [("train", n, seed) for n in ("Dj", "Ej")]),
                    self.out / "eval" / f"transfer-s{seed}.json")
        if self.precision != "fp32":
            seed = self.cfg.seeds[0]
            for name in self.names:
                add(("evaluate", name, seed, "fp32"), Task("posteriors", (name, seed, "fp32"), [("train", name, seed)]),
                    self.eval_path(name, seed, "fp32")[0])
        return tasks

    def transfer(self, seed: int, add=lambda *a: None) -> None:
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
        atomic_write(done, lambda tmp: Path(tmp).write_text(json.dumps(found)))


def study_task(cfg: StudyConfig, task) -> None:
    """One task of Study.plan, in a worker process of jobs.run_tasks (which sends its log records to its log file)."""
    getattr(Study(cfg), task.method)(*task.args)


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
