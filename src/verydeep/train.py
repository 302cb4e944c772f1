"""The paper's training recipe (PAPER.md section 2), resumable, on one device or many through torchrun (section 3.3).

Defaults are the paper's: soft-max cross-entropy; SGD, momentum 0.9, weight decay 5e-4; dropout 0.5 on fc6/fc7;
batch 256; learning rate 1e-2 divided by 10 when validation accuracy stops improving, three times, then stop; at
most 74 epochs. Stages: net A from random init; deeper nets with --init-from A (first four conv + three FC layers);
--stage s384 (S = 384, lr 1e-3, --finetune-from the S = 256 net); --stage jitter (S in [256, 512], lr 1e-3, from the
S = 384 net). Scales are given at 224 crops and scaled with --crop for small-scale work (64: 256 -> 73)."""
from __future__ import annotations

import contextlib
import dataclasses
import logging
import math
import os
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F

from . import checkpoint as ckpt
from . import config as config_mod
from . import distributed, paper
from .data import CenterCropDataset, LoaderConfig, SkipTracker, TrainLoader, eval_loader, open_source, split
from .data import stats as colour
from .errors import ConfigError, UserError
from .metrics import MetricsLog
from .card import Preprocess
from .models import VGG, init_from, set_dropout_keys, vgg
from .options import RunOptions
from .precision import PRECISIONS, Precision
from .provenance import provenance
from .schedule import PlateauSchedule
from .transforms import TrainTransform, to_model_input
from .utils import fault, keep_freed_memory
from .weights import load

log = logging.getLogger("verydeep")
STAGES = paper.STAGES


@dataclass
class TrainConfig(RunOptions):
    # data
    data: str = ""                     # dataset folder (with train/ [and val/]), shard folder, or fashion-mnist
    val: str | None = None             # validation set (default: DATA/val, else a held-out part of train)
    val_fraction: float = 0.02         # held-out fraction of train when there is no validation set
    # model
    model: str = "A"                   # architecture: A, A-LRN, B, C, D, E, B-shallow, vgg16_bn, ...
    width: float = 1.0                 # width multiplier of every conv layer
    fc_width: int = paper.FC_WIDTH     # width of fc6 and fc7
    crop: int = paper.CROP             # training crop; the paper's scales are scaled by crop / 224
    dropout: float = paper.DROPOUT     # dropout on fc6 and fc7
    init: str = "paper"                # paper (N(0, 0.01), zero biases), glorot, or kaiming
    # stages (section 2)
    stage: str = "scratch"             # scratch (S = 256, lr 1e-2), s384 (S = 384, lr 1e-3) or jitter (S in
    # [256, 512], lr 1e-3); the last two fine-tune --finetune-from
    train_scale: list[int] | None = None  # S, or Smin,Smax for scale jittering (default: the stage's, at the crop)
    init_from: str | None = None       # net A to initialise a deeper net from (conv1_1, conv2_1, conv3_1, conv3_2,
    # fc6-8)
    finetune_from: str | None = None   # a trained net of the same architecture to fine-tune (stages s384, jitter)
    # optimisation
    batch_size: int = paper.BATCH      # the effective (global) batch
    micro_batch: int | None = None     # per-process micro-batch; gradients are accumulated up to batch_size
    lr: float | None = None            # learning rate (default 1e-2, or 1e-3 when fine-tuning); on --resume, a new
    # value is a recorded override
    momentum: float = paper.MOMENTUM   # SGD momentum
    weight_decay: float = paper.WEIGHT_DECAY  # L2 weight decay
    patience: int = 2                  # epochs without validation improvement before the learning rate is divided
    # by 10
    max_decays: int = paper.LR_DECAYS  # learning-rate decays before training stops at the next plateau
    rate_epochs: list[int] | None = None  # a schedule fixed in epochs instead of the plateau rule: N1,N2,... epochs
    # at lr, lr / 10, ..., then stop (counted from the first epoch above chance; not the paper's rule, schedule.py)
    max_epochs: int = paper.MAX_EPOCHS  # epochs at most
    final_decay: int = 0               # the last N epochs before the cap run at lr / 10 when no plateau has divided
    # the rate by then (0: off): a schedule cut short by its cap still ends with a decay (the quick demo)
    give_up_at_chance: int = 0         # stop a run still at chance level after this many epochs (0: never)
    validate_first_rate: bool = True   # with rate_epochs: validate the epochs at the first rate once the net is above
    # chance (off: they are not validated and cannot be the best; their validation decides nothing else)
    max_steps: int | None = None       # stop after this many optimisation steps in all (smoke runs)
    colour_augment: bool = True        # AlexNet's PCA colour shift (needs colour statistics; computed if missing)
    stats_images: int = 2000           # images sampled for the colour statistics when they are computed here
    # system
    channels_last: bool = True         # channels-last memory format (1.3-1.5x faster steps on the CPU, BENCHMARKS.md)
    compile: bool = False              # torch.compile the training step
    deterministic: bool = False        # deterministic kernels (bit-identical resumption)
    workers: int = 4                   # data-loading processes (none when the images are cached at a fixed S: a
    # crop is then a slice)
    cache: bool | None = None          # decode the training images into memory once (default: when they fit in
    # 4 GB)
    keep_cache: bool = True            # at a fixed S, keep the decoded images in <data>/.verydeep-cache for the
    # next run at that S (read back in 0.5 s against a 14-18 s decode of the study's 20,000 images: data/cache.py)
    seed: int = 0                      # seed of initialisation, crops, flips, colour shifts and dropout masks
    max_skip_fraction: float = 0.01    # stop when more than this fraction of images is unusable
    eval_batch: int | None = None      # validation batch (default: the micro-batch)
    # run
    run_dir: str = "runs/run"          # where checkpoints, metrics and the trained model go
    resume: bool = False               # continue the run in --run-dir with its stored settings
    force: bool = False                # delete the run in --run-dir and start again
    checkpoint_minutes: float = 30.0   # write a checkpoint at least this often
    checkpoint_steps: int = 0          # also every N steps (0: off)
    keep_last: int = 2                 # checkpoints kept (and the best)
    progress: bool = True              # progress bars
    dist_timeout: float = 600.0        # seconds a collective (torchrun) may wait for the other processes

    @classmethod
    def presets(cls, given: dict) -> dict:
        """What follows from what was given: the stage's scales and learning rate (section 2); when resuming, the
        stored run's settings."""
        stored: dict = {}
        if given.get("resume"):
            fields = {f.name for f in dataclasses.fields(cls)}
            stored = {k: v for k, v in (ckpt.stored_config(Path(given.get("run_dir", cls.run_dir))) or {}).items()
                      if k in fields and k not in OPERATIONAL}

        def pick(key, default):
            return given.get(key, stored.get(key, default))

        stage = pick("stage", "scratch")
        if stage not in STAGES:
            raise ConfigError(f"stage must be one of {tuple(STAGES)}, got {stage!r}")
        crop = config_mod.coerce(cls, "crop", pick("crop", paper.CROP))
        smin, smax = paper.stage_scale(stage, crop)
        lr = paper.FINETUNE_LR if pick("finetune_from", None) else paper.LR
        return {"train_scale": [smin] if smin == smax else [smin, smax], "lr": lr, **stored}

    @property
    def scale_min(self) -> int:
        return self.train_scale[0]

    @property
    def scale_max(self) -> int:
        return self.train_scale[-1]

    def __post_init__(self):
        from .distributed import DEVICE
        from .models import INIT_SCHEMES, model_config

        if not self.data:
            raise ConfigError("data is required (a dataset folder, shard folder or fashion-mnist)")
        if self.stage not in STAGES:
            raise ConfigError(f"stage must be one of {tuple(STAGES)}, got {self.stage!r}")
        if self.precision not in PRECISIONS or self.precision == "int8":
            raise ConfigError(f"precision must be auto, fp32 or bf16, got {self.precision!r}")
        if self.init not in INIT_SCHEMES:
            raise ConfigError(f"init must be one of {INIT_SCHEMES}, got {self.init!r}")
        model_config(self.model)  # an unknown name is an error naming the known ones
        if self.init_from and self.finetune_from:
            raise ConfigError("init_from and finetune_from exclude each other")
        if self.stage != "scratch" and not self.finetune_from:
            raise ConfigError(f"stage {self.stage} fine-tunes a trained net: give finetune_from")
        if not DEVICE.match(self.device):
            raise ConfigError(f"device must be auto, cpu, cuda or cuda:N, got {self.device!r}")
        checks = [("batch_size", self.batch_size >= 1, "at least 1"), ("max_epochs", self.max_epochs >= 1, "at least 1"),
                  ("patience", self.patience >= 1, "at least 1"), ("crop", self.crop >= 32, "at least 32"),
                  ("max_decays", self.max_decays >= 0, "at least 0"),
                  ("rate_epochs", not self.rate_epochs or min(self.rate_epochs) >= 1, "epochs at each rate, each >= 1"),
                  ("final_decay", self.final_decay >= 0, "at least 0"),
                  ("workers", self.workers >= 0, "at least 0"),
                  ("keep_last", self.keep_last >= 1, "at least 1 (the newest checkpoint is always kept)"),
                  ("checkpoint_minutes", self.checkpoint_minutes >= 0, "at least 0"),
                  ("checkpoint_steps", self.checkpoint_steps >= 0, "at least 0 (0: off)"),
                  ("max_steps", self.max_steps is None or self.max_steps >= 1, "at least 1 (omit it for no limit)"),
                  ("threads", self.threads is None or self.threads >= 1, "at least 1"),
                  ("eval_batch", self.eval_batch is None or self.eval_batch >= 1, "at least 1"),
                  ("micro_batch", self.micro_batch is None or self.micro_batch >= 1, "at least 1"),
                  ("seed", 0 <= self.seed < 2**63, "a non-negative integer"),
                  ("val_fraction", 0 < self.val_fraction < 1, "between 0 and 1"),
                  ("momentum", 0 <= self.momentum < 1, "in [0, 1)"),
                  ("weight_decay", self.weight_decay >= 0, "at least 0"),
                  ("lr", self.lr is None or self.lr > 0, "positive"),
                  ("width", self.width > 0, "positive"), ("fc_width", self.fc_width >= 1, "at least 1"),
                  ("dropout", 0 <= self.dropout < 1, "in [0, 1)"),
                  ("max_skip_fraction", 0 <= self.max_skip_fraction <= 1, "in [0, 1]"),
                  ("stats_images", self.stats_images >= 1, "at least 1"),
                  ("dist_timeout", self.dist_timeout > 0, "positive"),
                  ("train_scale", self.train_scale is None or (len(self.train_scale) in (1, 2) and self.crop <=
                                                               self.train_scale[0] <= self.train_scale[-1]),
                   "S or Smin,Smax with crop <= Smin <= Smax")]
        for name, ok, what in checks:
            if not ok:
                raise ConfigError(f"{name} must be {what}, got {getattr(self, name)!r}")
        if self.micro_batch is not None and self.batch_size % self.micro_batch:
            raise ConfigError(f"micro_batch {self.micro_batch} must divide batch_size {self.batch_size}")


# Not part of a run's identity: may change when a run is resumed.
OPERATIONAL = {"resume", "force", "workers", "progress", "checkpoint_minutes", "checkpoint_steps", "keep_last",
               "threads", "max_epochs", "max_steps", "device", "eval_batch", "dist_timeout", "give_up_at_chance",
               "validate_first_rate", "keep_cache"}
# Compared resolved: 'runs/x' and '/home/me/runs/x' are the same run.
PATH_FIELDS = ("data", "val", "run_dir", "init_from", "finetune_from")


def make_config(overrides: dict | None = None, file: str | None = None) -> TrainConfig:
    """Defaults < the stage's presets < the stored run (when resuming) < config file < overrides; every value
    type-checked. Resuming continues the run with its own settings: only what is given again may differ."""
    return config_mod.build(TrainConfig, overrides, file)


class Diverged(UserError):
    pass


def run_name(cfg: TrainConfig) -> str:
    """How tables name a trained net: its architecture, stage and seed ("D-s384-seed0"); the run folder's name when
    it says more."""
    folder = Path(cfg.run_dir).name
    auto = f"{cfg.model}-{cfg.stage}-seed{cfg.seed}"
    return folder if folder not in ("run", "", ".") else auto


def optimizer(params, lr: float, momentum: float, weight_decay: float, device: str | torch.device):
    """SGD with momentum and weight decay (section 2), with the fused kernel where PyTorch has one for the device:
    one pass over parameters, gradients and momenta instead of several. VGG-16's 138 M parameters make the update
    memory-bound: 0.06 s fused vs 0.32 s foreach per step on the 2-core development CPU (BENCHMARKS.md)."""
    try:
        torch.optim.SGD([torch.zeros(1, device=device, requires_grad=True)], lr=0.1, fused=True)
        fused = {"fused": True}
    except (RuntimeError, TypeError):
        fused = {}
    return torch.optim.SGD(params, lr=lr, momentum=momentum, weight_decay=weight_decay, **fused)


def forward_backward(model, x: torch.Tensor, y: torch.Tensor, policy: Precision, scale: float):
    """One (micro-)batch of a training step: the forward pass under the precision policy, soft-max cross-entropy
    summed and scaled to the global batch (so accumulated micro-batches give the whole-batch gradient), backward.
    Returns the loss sum and the logits, detached. The trainer and the benchmark both step through here."""
    with policy.autocast():
        logits = model(x)
    loss = F.cross_entropy(logits.float(), y, reduction="sum")
    (loss * scale).backward()
    return loss.detach(), logits.detach()


def update(opt: torch.optim.Optimizer) -> None:
    opt.step()
    opt.zero_grad(set_to_none=True)


class Trainer:
    def __init__(self, cfg: TrainConfig, d: distributed.Dist):
        self.cfg, self.d = cfg, d
        self.policy = Precision.resolve(cfg.precision, d.device, training=True)
        keep_freed_memory()  # 10-20% of a step was page faults on freshly allocated activations (utils.py)
        if cfg.threads:
            torch.set_num_threads(cfg.threads)
        if cfg.deterministic:
            os.environ.setdefault("CUBLAS_WORKSPACE_CONFIG", ":4096:8")
            torch.use_deterministic_algorithms(True)
            torch.backends.cudnn.benchmark = False
        torch.manual_seed(cfg.seed)
        np.random.seed(cfg.seed % 2**32)
        self.run_dir = Path(cfg.run_dir)
        resume = cfg.resume or distributed.restarted()
        identity = {k: v for k, v in dataclasses.asdict(cfg).items() if k not in OPERATIONAL}
        if d.main:
            ckpt.claim_run_dir(self.run_dir, identity, resume, cfg.force and not distributed.restarted(),
                               PATH_FIELDS, may_change=("lr",))
            ckpt.write_config(self.run_dir, {**identity, "_provenance": provenance(d.device, self.policy)})
        distributed.barrier(d)
        state = None
        if resume:
            found = ckpt.load_latest(self.run_dir)
            state = found[1] if found else None
            if d.main:
                if found is None:
                    log.warning("%s: no checkpoint yet; starting from the beginning", self.run_dir)
                for what in ckpt.repair(self.run_dir, state or {}):
                    log.warning("%s: repaired after an interrupted run: %s", self.run_dir, what)

        # ---- data
        train_src = open_source(cfg.data, split="train")
        if cfg.val:
            val_src = open_source(cfg.val)
        elif (Path(cfg.data) / "val").is_dir():
            val_src = open_source(cfg.data, split="val")
        else:
            train_src, val_src = split(train_src, cfg.val_fraction, cfg.seed)
        if len(val_src) == 0:
            raise UserError(f"{cfg.data}: empty validation set; give --val or a larger --val-fraction")
        self.classes = list(train_src.classes)
        self.stats = self._colour_stats(train_src)  # the mean is needed anyway (section 1)
        self.transform = TrainTransform(cfg.scale_min, cfg.scale_max, cfg.crop, True, 0.1,
                                        self.stats.eigval if cfg.colour_augment else None,
                                        self.stats.eigvec if cfg.colour_augment else None)
        self.world_batch = cfg.batch_size
        if cfg.batch_size % d.world:
            raise UserError(f"batch_size {cfg.batch_size} is not divisible by {d.world} processes")
        self.rank_batch = cfg.batch_size // d.world
        self.micro = cfg.micro_batch or self.rank_batch
        if self.rank_batch % self.micro:
            raise UserError(f"micro_batch {self.micro} must divide the per-process batch {self.rank_batch}")
        self.accum = self.rank_batch // self.micro
        self.steps_per_epoch = (len(train_src) // d.world) // self.rank_batch
        if self.steps_per_epoch < 1:
            raise UserError(f"{cfg.data}: {len(train_src)} training images are fewer than one batch of "
                            f"{cfg.batch_size}")
        self.loader = TrainLoader(train_src, self.transform,
                                  LoaderConfig(self.micro, cfg.workers, cfg.seed, True, False,
                                               cfg.max_skip_fraction, cache=cfg.cache, keep_cache=cfg.keep_cache),
                                  d.rank, d.world,
                                  self.steps_per_epoch * self.rank_batch, progress=cfg.progress and d.main)
        self.val_q = (cfg.scale_min + cfg.scale_max) // 2  # Table 3's rule: Q = S, or 0.5 (Smin + Smax)
        # the validation crops kept in memory when the training images are (they fit, and they never change)
        keep = self.loader.cache is not None and len(val_src) * 3 * cfg.crop ** 2 <= LoaderConfig.cache_bytes
        self.val_loader = eval_loader(CenterCropDataset(val_src, self.val_q, cfg.crop),
                                      cfg.eval_batch or self.micro, cfg.workers, d.rank, d.world, in_memory=keep)
        self.val_skips = SkipTracker(cfg.max_skip_fraction)
        self.n_train, self.n_val = len(train_src), len(val_src)

        # ---- model
        model = vgg(cfg.model, num_classes=len(self.classes), width=cfg.width, fc_width=cfg.fc_width,
                    crop_size=cfg.crop, dropout=cfg.dropout, init=cfg.init)
        model.card = model.card.but(preprocess=Preprocess("RGB", 255.0, tuple(self.stats.mean), (1.0, 1.0, 1.0)),
                                    class_names=tuple(self.classes), train_scale=(cfg.scale_min, cfg.scale_max),
                                    name=run_name(cfg))
        if state is None and cfg.init_from:
            copied = init_from(model, load(cfg.init_from, "A"))
            if d.main:
                log.info("initialised %s from %s: %s", cfg.model, cfg.init_from, ", ".join(copied))
        if state is None and cfg.finetune_from:
            src = load(cfg.finetune_from, cfg.model)
            arch = lambda c: {k: v for k, v in c.to_dict().items() if k != "dropout"}  # noqa: E731
            if arch(src.config) != arch(model.config):
                raise UserError(f"{cfg.finetune_from}: holds {src.config}, this run builds {model.config}")
            model.load_state_dict(src.state_dict())
        self.raw = model.to(d.device)
        if cfg.channels_last:
            self.raw = self.raw.to(memory_format=torch.channels_last)
        self.model = self.raw
        if d.active:
            self.model = torch.nn.parallel.DistributedDataParallel(
                self.raw, device_ids=[d.device.index] if d.device.type == "cuda" else None)
        if cfg.compile:  # dropout stays keyed: its keys and salt are graph inputs (models.KeyedDropout)
            self.model = torch.compile(self.model)
        self.opt = optimizer(self.raw.parameters(), cfg.lr, cfg.momentum, cfg.weight_decay, d.device)
        # chance level with half again as margin: no plateau is counted before the net starts learning
        self.schedule = PlateauSchedule(cfg.lr, cfg.patience, 0.1, cfg.max_decays, chance=1.5 / len(self.classes),
                                        give_up=cfg.give_up_at_chance, rate_epochs=list(cfg.rate_epochs or ()))
        self.epoch, self.step_in_epoch, self.global_step = 0, 0, 0
        self.partial = [0.0, 0.0, 0.0]  # loss sum, correct, count of the epoch in progress
        self.records: list[dict] = []   # every metrics record (metrics.jsonl and TensorBoard are views of it)
        self.best_acc, self.best_step = float("-inf"), None
        self.lr_overrides: list[dict] = []
        if state is not None:
            self._restore(state)
        self.metrics = MetricsLog(self.run_dir, self.records, enabled=d.main)
        self.last_ckpt_time = time.monotonic()
        self.last_ckpt_path: Path | None = ckpt.latest(self.run_dir) if resume else None

    # ------------------------------------------------------------------------------------------ state
    def _colour_stats(self, source) -> colour.ColourStats:
        # The statistics belong to the data, not to a run: the same sample of the whole training folder (a held-out
        # split's parent) whatever the run's seed. Sampled with the seed of whichever run came first, two runs
        # started side by side each wrote their own, and a study's nets were trained with different means.
        source = getattr(source, "source", source)
        path = colour.default_path(source)
        fallback = self.run_dir / colour.STATS_FILE
        if self.d.main and colour.load(path) is None and colour.load(fallback) is None:
            log.warning("computing colour statistics of %s (%d images) -> %s", source.root,
                        min(self.cfg.stats_images, len(source)), path)
            st = colour.compute(source, self.cfg.stats_images, seed=0, progress=self.cfg.progress)
            try:
                colour.save(st, path)
            except (OSError, UserError):  # read-only data: keep them with the run
                colour.save(st, fallback)
        distributed.barrier(self.d)  # every rank, always: the others wait for rank 0's file
        return colour.load(path) or colour.load(fallback)

    def state(self) -> dict:
        return {"model": self.raw.state_dict(), "optimizer": self.opt.state_dict(),
                "schedule": self.schedule.state_dict(), "epoch": self.epoch, "step_in_epoch": self.step_in_epoch,
                "global_step": self.global_step, "partial": list(self.partial), "rng": ckpt.rng_state(),
                "config": dataclasses.asdict(self.cfg), "records": list(self.records), "best_acc": self.best_acc,
                "best_step": self.best_step, "lr_overrides": list(self.lr_overrides),
                "card": self.raw.card.to_dict(), "colour_stats": self.stats.to_dict()}

    def _restore(self, s: dict) -> None:
        try:
            self.raw.load_state_dict(s["model"])
            self.opt.load_state_dict(s["optimizer"])
        except (RuntimeError, ValueError, KeyError) as e:
            raise UserError(f"{self.run_dir}: its checkpoint does not fit this run ({str(e).splitlines()[0][:160]})")
        self.schedule.load_state_dict(s["schedule"])
        self.schedule.give_up = self.cfg.give_up_at_chance  # operational: this run's setting, not the stored one
        self.epoch, self.step_in_epoch, self.global_step = s["epoch"], s["step_in_epoch"], s["global_step"]
        self.partial, self.records, self.best_acc = list(s["partial"]), list(s["records"]), s["best_acc"]
        self.best_step, self.lr_overrides = s["best_step"], list(s.get("lr_overrides", []))
        ckpt.set_rng_state(s["rng"])
        was = (s.get("config") or {}).get("lr")
        if was is not None and self.cfg.lr != was:  # an explicit, recorded override (e.g. after a divergence)
            self.lr_overrides.append({"global_step": self.global_step, "lr": self.cfg.lr, "was": self.schedule.lr})
            self.schedule.lr = self.cfg.lr
            if self.d.main:
                log.warning("learning rate set to %g from global step %d (it was %g); recorded in the checkpoint",
                            self.cfg.lr, self.global_step, self.lr_overrides[-1]["was"])
        if self.d.main:
            log.warning("resumed %s at epoch %d, step %d of %d (global step %d)", self.run_dir, self.epoch + 1,
                        self.step_in_epoch, self.steps_per_epoch, self.global_step)

    def _fault(self, point: str) -> None:
        fault(point, self.global_step, self.d.rank, distributed.restarted())

    def save(self, best: bool = False) -> None:
        if self.d.main:
            bad = next((n for n, p in self.raw.named_parameters() if not torch.isfinite(p).all()), None)
            if bad is not None:  # never replace a good checkpoint with a broken one
                where = f"; the last good checkpoint is {self.last_ckpt_path}" if self.last_ckpt_path else ""
                raise Diverged(f"training diverged: {bad} holds NaN or infinite values at global step "
                               f"{self.global_step}{where}; resume with a lower learning rate (--resume --lr X)")
            self.last_ckpt_path = ckpt.save(self.state(), self.run_dir, self.cfg.keep_last, best, self._fault)
        self.last_ckpt_time = time.monotonic()

    # ------------------------------------------------------------------------------------------ loops
    def train_epoch(self, epoch: int) -> dict:
        cfg, d = self.cfg, self.d
        self.model.train()
        from tqdm import tqdm

        bar = tqdm(total=self.steps_per_epoch * self.world_batch, initial=self.step_in_epoch * self.world_batch,
                   unit="img", unit_scale=False, desc=f"epoch {epoch + 1}/{cfg.max_epochs}", dynamic_ncols=True,
                   disable=not (d.main and cfg.progress), leave=False, mininterval=1.0)
        batches = self.loader.epoch(epoch, self.step_in_epoch * self.accum)
        t0, imgs = time.perf_counter(), 0
        preprocess = self.raw.preprocess
        while self.step_in_epoch < self.steps_per_epoch:
            micro = []
            for _ in range(self.accum):
                b = next(batches, None)
                if b is None:
                    break
                micro.append(b)
            if len(micro) < self.accum:
                break
            n_global = distributed.all_reduce_sum([sum(len(b.labels) for b in micro)], d)[0]
            scale = d.world / max(n_global, 1.0)
            loss_sum = torch.zeros((), device=d.device)
            correct = 0
            for j, b in enumerate(micro):
                sync = contextlib.nullcontext() if (j == len(micro) - 1 or not d.active) else self.model.no_sync()
                with sync:
                    x = to_model_input(b.images.to(d.device, non_blocking=True),
                                       b.shifts.to(d.device, non_blocking=True), preprocess)
                    if cfg.channels_last:
                        x = x.contiguous(memory_format=torch.channels_last)
                    y = b.labels.to(d.device, non_blocking=True)
                    set_dropout_keys(self.raw, b.indices.to(d.device), cfg.seed, self.global_step)
                    loss, logits = forward_backward(self.model, x, y, self.policy, scale)
                loss_sum += loss
                correct += int((logits.argmax(1) == y).sum())
            n_local = sum(len(b.labels) for b in micro)
            # Sums over every process, each step: a checkpoint (written by rank 0) then holds the whole run's
            # partial epoch, and a NaN anywhere stops every rank at the same step.
            loss_value, correct, n_step = distributed.all_reduce_sum([float(loss_sum), correct, n_local], d)
            if not math.isfinite(loss_value):
                where = f" the last good checkpoint is {self.last_ckpt_path};" if self.last_ckpt_path else ""
                raise Diverged(f"training diverged: loss is {loss_value} at epoch {epoch + 1}, step "
                               f"{self.step_in_epoch + 1} (global step {self.global_step + 1});{where} "
                               f"resume with a lower learning rate (--resume --lr X)")
            update(self.opt)
            self.partial = [self.partial[0] + loss_value, self.partial[1] + correct, self.partial[2] + n_step]
            self.step_in_epoch += 1
            self.global_step += 1
            imgs += n_step
            bar.update(self.world_batch)
            if d.main and cfg.progress:
                bar.set_postfix(loss=f"{self.partial[0] / max(self.partial[2], 1):.3f}",
                                err=f"{1 - self.partial[1] / max(self.partial[2], 1):.3f}",
                                lr=f"{self.opt.param_groups[0]['lr']:.1e}", refresh=False)
            self._fault("step")
            due_time = time.monotonic() - self.last_ckpt_time > cfg.checkpoint_minutes * 60
            due_steps = cfg.checkpoint_steps and self.global_step % cfg.checkpoint_steps == 0
            if (due_time or due_steps) and self.step_in_epoch < self.steps_per_epoch:
                self.save()
            if cfg.max_steps and self.global_step >= cfg.max_steps:
                break
        bar.close()
        elapsed = time.perf_counter() - t0
        loss_sum, correct, count = self.partial
        skipped = distributed.all_reduce_sum([self.loader.skips.skipped], d)[0]
        return {"train_loss": loss_sum / max(count, 1), "train_top1_err": 1 - correct / max(count, 1),
                "images_per_s": imgs / max(elapsed, 1e-9), "train_seconds": elapsed, "skipped": int(skipped)}

    @torch.inference_mode()
    def validate(self) -> dict:
        """Centre-crop error at Q (Table 3's rule) over the validation set; unusable images are skipped, logged
        once, counted like training skips and bound by the same limit."""
        self.model.eval()
        loss, top1, top5, n = 0.0, 0, 0, 0
        preprocess = self.raw.preprocess
        self.val_skips.reset()
        for b in self.val_loader:
            self.val_skips.update(b)
            if not len(b.labels):
                continue
            x = to_model_input(b.images.to(self.d.device), None, preprocess)
            if self.cfg.channels_last:
                x = x.contiguous(memory_format=torch.channels_last)
            y = b.labels.to(self.d.device)
            with self.policy.autocast():
                logits = self.raw(x).float()
            loss += float(F.cross_entropy(logits, y, reduction="sum"))
            k = min(5, logits.shape[1])
            top = logits.topk(k, 1).indices
            top1 += int((top[:, 0] == y).sum())
            top5 += int((top == y[:, None]).any(1).sum())
            n += len(y)
        loss, top1, top5, n, skipped = distributed.all_reduce_sum(
            [loss, top1, top5, n, self.val_skips.skipped], self.d)
        self.model.train()
        if n == 0 or skipped > self.cfg.max_skip_fraction * (n + skipped):
            reasons = ", ".join(f"{c} {r}" for r, c in self.val_skips.reasons.most_common()) or "see the log"
            raise UserError(f"validation: {int(skipped)} of {int(n + skipped)} images unusable ({reasons}), more "
                            f"than the {self.cfg.max_skip_fraction:.2%} limit (--max-skip-fraction); fix the "
                            f"validation data")
        return {"val_loss": loss / n, "val_top1_err": 1 - top1 / n, "val_top5_err": 1 - top5 / n,
                "val_images": int(n), "val_skipped": int(skipped)}

    def run(self) -> dict:
        cfg, d = self.cfg, self.d
        if d.main:
            log.warning("training %s on %d images (%d classes), validating on %d at Q=%d; S in [%d, %d], crop %d; "
                        "batch %d = %d process(es) x %d micro-batches of %d; %d steps/epoch; %s",
                        cfg.model, self.n_train, len(self.classes), self.n_val, self.val_q, cfg.scale_min,
                        cfg.scale_max, cfg.crop, cfg.batch_size, d.world, self.accum, self.micro,
                        self.steps_per_epoch, d.device)
        result = self.records[-1] if self.records else {}
        while self.epoch < cfg.max_epochs and not self.schedule.stopped:
            for g in self.opt.param_groups:
                g["lr"] = self.schedule.lr
            lr = self.schedule.lr
            train = self.train_epoch(self.epoch)
            partial = self.step_in_epoch < self.steps_per_epoch  # stopped by max_steps inside the epoch
            # A fixed schedule ignores validation at its first rate once the net has left chance; only the choice
            # of the best epoch would see it, and in the study that was always a later epoch (BENCHMARKS.md).
            skip = not partial and not cfg.validate_first_rate and self.schedule.may_skip_validation()
            val = {} if skip else self.validate()
            # A partial epoch is reported, but does not drive the schedule (the paper's schedule is per epoch).
            cut_short = bool(cfg.final_decay) and self.epoch + 1 >= cfg.max_epochs - cfg.final_decay
            action = "partial epoch" if partial else self.schedule.step(
                None if skip else 1 - val["val_top1_err"], cut_short)
            best = not skip and 1 - val["val_top1_err"] > self.best_acc
            if best:
                self.best_acc, self.best_step = 1 - val["val_top1_err"], self.global_step
            result = {"kind": "epoch", "epoch": self.epoch + 1, "global_step": self.global_step, "lr": lr, **train,
                      **val, "schedule": action, "time": time.time()}
            # The record enters the checkpoint first: metrics.jsonl and TensorBoard follow from it (checkpoint.py).
            self.metrics.add(result)
            if not partial:
                self.epoch, self.step_in_epoch, self.partial = self.epoch + 1, 0, [0.0, 0.0, 0.0]
            self.save(best=best)
            if d.main:
                self.metrics.write()
                skipped = "".join(f"  [{k} {w} skipped]" for k, w in ((train["skipped"], "train"),
                                                                        (val.get("val_skipped", 0), "val")) if k)
                shown = (f"val top-1 err {100 * val['val_top1_err']:5.2f}%  top-5 err {100 * val['val_top5_err']:5.2f}%"
                         if val else "not validated (fixed schedule)")
                print(f"epoch {result['epoch']:>3}/{cfg.max_epochs}  lr {lr:.1e}  train loss {train['train_loss']:.4f}"
                      f"  top-1 err {100 * train['train_top1_err']:5.2f}%  |  {shown}  |  "
                      f"{train['images_per_s']:.0f} img/s  {train['train_seconds']:.0f} s  {action}{skipped}",
                      flush=True)
            if cfg.max_steps and self.global_step >= cfg.max_steps:
                break
        if d.main:
            self._export()
        return result

    def _export(self) -> None:
        """The best (else last) weights in verydeep's format, for predict / evaluate / features."""
        from .weights import save

        best = self.run_dir / "checkpoints" / ckpt.BEST
        model = self.raw
        if best.is_file():
            model = VGG(self.raw.card)
            model.load_state_dict(ckpt.load(best)["model"])
        save(model.float().cpu(), self.run_dir / "model.safetensors")


def train(cfg: TrainConfig) -> dict:
    """Train a net with the paper's recipe (section 2 of Simonyan & Zisserman): soft-max cross-entropy, SGD with
    momentum 0.9 and weight decay 5e-4, dropout 0.5, batch 256, learning rate 1e-2 divided by 10 at each validation
    plateau, three times, then stop. Stages: net A from scratch; deeper nets from net A (--init-from); S = 384
    (--stage s384) and scale jittering (--stage jitter) fine-tuned from the previous stage (--finetune-from).
    Resumable (--resume); several processes under torchrun. The best weights end as RUN_DIR/model.safetensors."""
    d = distributed.setup(cfg.device, cfg.dist_timeout)
    try:
        result = Trainer(cfg, d).run()
        # Every rank ends together: no rank tears down its process group while rank 0 still exports. (The abort at
        # exit, "terminate called without an active exception", is gloo's threads in the interpreter's
        # finalisation, which cli.main skips: distributed.leave.)
        distributed.barrier(d)
        return result
    except (RuntimeError, ValueError) as e:
        if d.active and distributed.is_comm_error(e):
            raise UserError(distributed.failure_message(e, cfg.dist_timeout, "training")) from None
        raise
    finally:
        distributed.cleanup(d)
