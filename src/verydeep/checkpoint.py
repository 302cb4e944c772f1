"""Checkpoints that never lose work: written atomically (temp file, fsync, rename), the last K kept plus the best,
loaded without unpickling code (weights_only=True). A run directory holding another run is refused.

The checkpoint is the one record of a run: it holds the step that was best (``best_step``) and every metrics
record. best.pt is a hard link to the checkpoint that claims it (no second 1 GB write), made after that checkpoint
and before older ones are rotated away; the metrics files are rewritten from the records. So a kill between any
two writes is repaired on resume (``repair``): the best link is redone from the checkpoint that claims it, the
metrics files from its records, and temporary files of killed writes are removed."""
from __future__ import annotations

import json
import logging
import os
import random
import re
import shutil
from pathlib import Path

import numpy as np
import torch

from .errors import UserError
from .utils import atomic_write, remove_temp_files, sync_dir

log = logging.getLogger("verydeep")
CKPT = re.compile(r"^ckpt-(\d{9})\.pt$")
BEST = "best.pt"
RUN_CONFIG = "config.json"
# What a training checkpoint must hold to resume from it.
REQUIRED = ("model", "optimizer", "schedule", "epoch", "step_in_epoch", "global_step", "partial", "rng", "config",
            "records", "best_acc", "best_step", "card")
# What a run directory holds besides its config: a new run in it would mix with them.
RUN_FILES = ("checkpoints", "metrics.jsonl", "tb", "model.safetensors", "curves.png")


def rng_state() -> dict:
    np_state = np.random.get_state()
    state = {"torch": torch.get_rng_state(), "python": random.getstate(),
             "numpy": [np_state[0], np_state[1].tolist(), int(np_state[2]), int(np_state[3]), float(np_state[4])]}
    if torch.cuda.is_available():
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def set_rng_state(state: dict) -> None:
    torch.set_rng_state(state["torch"])
    v, key, pos, has_gauss, gauss = state["numpy"]
    np.random.set_state((v, np.asarray(key, np.uint32), pos, has_gauss, gauss))
    py = state["python"]
    random.setstate((py[0], tuple(py[1]), py[2]))
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])


def checkpoints(run_dir: Path) -> list[Path]:
    """The run's checkpoint files, oldest first."""
    ckpt_dir = Path(run_dir) / "checkpoints"
    if not ckpt_dir.is_dir():
        return []
    return sorted(p for p in ckpt_dir.iterdir() if CKPT.match(p.name))


def step_of(path: Path) -> int:
    return int(CKPT.match(Path(path).name).group(1))


def _link(src: Path, dst: Path) -> None:
    """dst becomes src (a hard link; a copy where the file system has none), atomically."""
    tmp = dst.with_name(f".{dst.name}.link.tmp")
    tmp.unlink(missing_ok=True)
    try:
        os.link(src, tmp)
    except OSError:
        atomic_write(tmp, lambda t: shutil.copyfile(src, t))
    os.replace(tmp, dst)
    sync_dir(dst.parent)


def save(state: dict, run_dir: Path, keep_last: int = 2, best: bool = False, fault=lambda point: None) -> Path:
    """Write ckpt-<global step>.pt atomically; link best.pt to it when it is the best; keep the newest keep_last.
    The order matters for recovery: checkpoint, then best, then rotation (see the module docstring)."""
    ckpt_dir = Path(run_dir) / "checkpoints"
    path = ckpt_dir / f"ckpt-{state['global_step']:09d}.pt"
    atomic_write(path, lambda tmp: torch.save(state, tmp))
    fault("checkpoint")
    if best:
        _link(path, ckpt_dir / BEST)
        fault("best")
    for old in checkpoints(run_dir)[:-max(keep_last, 1)]:
        old.unlink(missing_ok=True)
    return path


def latest(run_dir: Path) -> Path | None:
    found = checkpoints(run_dir)
    return found[-1] if found else None


def _refused_global(text: str) -> str | None:
    m = re.search(r"GLOBAL ([\w.]+)", text) or re.search(r"[Uu]nsupported (?:global|class)[: ]+([\w.]+)", text)
    return m.group(1) if m else None


def torch_load(path: Path, what: str) -> object:
    """torch.load without code execution (weights_only) and memory-mapped (nothing larger than the file is read);
    any failure is one line naming the file. A pickle that calls a function is named and refused."""
    try:
        try:
            return torch.load(path, map_location="cpu", weights_only=True, mmap=True)
        except RuntimeError as e:
            if "mmap" not in str(e) and "zip" not in str(e).lower():
                raise
            # the legacy (pre-1.6, non-zip) format cannot be memory-mapped: read it, still without code
            return torch.load(path, map_location="cpu", weights_only=True)
    except Exception as e:
        text = str(e)
        if "weights_only" in text or "Unpickler" in type(e).__name__ or "GLOBAL" in text:
            glob = _refused_global(text)
            raise UserError(f"{path}: not loaded: its pickle calls "
                            f"{glob or 'a function'}, which could run code; only tensors and plain data are "
                            f"read") from None
        first = re.sub(r"\x1b\[[0-9;]*m", "", text.strip().splitlines()[0] if text.strip() else type(e).__name__)
        raise UserError(f"{path}: unreadable {what} ({first[:160]})") from None


def load(path: str | Path) -> dict:
    path = Path(path)
    if not path.is_file():
        raise UserError(f"{path}: no such checkpoint")
    if path.stat().st_size == 0:
        raise UserError(f"{path}: unreadable checkpoint (empty file)")
    state = torch_load(path, "checkpoint")
    if not isinstance(state, dict):
        raise UserError(f"{path}: not a verydeep training checkpoint (found {type(state).__name__})")
    missing = [k for k in REQUIRED if k not in state]
    if missing:
        raise UserError(f"{path}: not a complete verydeep training checkpoint (missing {', '.join(missing)})")
    return state


def load_latest(run_dir: Path) -> tuple[Path, dict] | None:
    """The newest checkpoint that reads; a damaged newer one (a crash of the file system, a full disk) is reported
    and passed over, so a run resumes from the last good state."""
    for path in reversed(checkpoints(run_dir)):
        try:
            return path, load(path)
        except UserError as e:
            log.warning("%s; resuming from an earlier checkpoint", e)
    return None


def repair(run_dir: Path, state: dict) -> list[str]:
    """Redo what a kill may have left undone after the checkpoint `state` was written (see the module docstring).
    Returns what was repaired, for the log."""
    run_dir, done = Path(run_dir), []
    ckpt_dir = run_dir / "checkpoints"
    for p in remove_temp_files(ckpt_dir) + remove_temp_files(run_dir):
        done.append(f"removed {p.name}")
    best_step = state.get("best_step")
    if best_step is not None:
        claimed = ckpt_dir / f"ckpt-{int(best_step):09d}.pt"
        best = ckpt_dir / BEST
        if claimed.is_file() and not (best.is_file() and os.path.samefile(best, claimed)):
            _link(claimed, best)
            done.append(f"{BEST} -> {claimed.name}")
    return done


def resolved(value):
    """A path-like config value as an absolute path, so that 'runs/x' and '/home/me/runs/x' compare equal."""
    if isinstance(value, str) and value and (Path(value).exists() or "/" in value or value.startswith(".")):
        return str(Path(value).expanduser().resolve())
    return value


def holds_run(run_dir: Path) -> bool:
    return (run_dir / RUN_CONFIG).exists() or any((run_dir / n).exists() for n in RUN_FILES)


def stored_config(run_dir: Path) -> dict | None:
    path = Path(run_dir) / RUN_CONFIG
    if not path.is_file():
        return None
    try:
        data = json.loads(path.read_text())
    except (OSError, ValueError) as e:
        raise UserError(f"{path}: unreadable run config ({e})") from None
    if not isinstance(data, dict):
        raise UserError(f"{path}: not a run config")
    return data


def claim_run_dir(run_dir: Path, config: dict, resume: bool, force: bool, paths: tuple[str, ...] = (),
                  may_change: tuple[str, ...] = ()) -> dict:
    """Refuse a directory that already holds a run unless resuming it (same config) or forced; returns the fields of
    `may_change` that differ from the stored run (overrides the caller records). `paths` are compared resolved."""
    run_dir = Path(run_dir)
    if run_dir.exists() and not run_dir.is_dir():
        raise UserError(f"{run_dir}: is a file, not a run directory")
    if resume and force:
        raise UserError("--resume continues the run in --run-dir, --force deletes it: give one of them")
    changed = {}
    if holds_run(run_dir) and not force:
        stored = stored_config(run_dir)
        if not resume:
            raise UserError(f"{run_dir}: already holds a run; pass --resume to continue it, or choose another "
                            f"--run-dir (--force deletes it)")
        if stored is not None:
            stored = {k: v for k, v in stored.items() if not k.startswith("_")}
            norm = lambda d: {k: (resolved(v) if k in paths else v) for k, v in d.items()}  # noqa: E731
            a, b = norm(stored), norm(config)
            diff = sorted(k for k in set(a) | set(b) if a.get(k) != b.get(k) and k not in may_change)
            if diff:
                shown = ", ".join(f"{k}: {stored.get(k)!r} there, {config.get(k)!r} asked" for k in diff[:3])
                raise UserError(f"{run_dir}: holds a different run ({shown}); resume it with its own settings, or "
                                f"use another --run-dir")
            changed = {k: config[k] for k in may_change if k in config and stored.get(k) != config.get(k)}
    if force and run_dir.exists():
        for name in RUN_FILES + (RUN_CONFIG,):
            p = run_dir / name
            if p.is_dir():
                shutil.rmtree(p)
            else:
                p.unlink(missing_ok=True)
    try:
        run_dir.mkdir(parents=True, exist_ok=True)
    except OSError as e:
        raise UserError(f"{run_dir}: cannot create the run directory ({e.strerror})") from None
    return changed


def write_config(run_dir: Path, config: dict) -> None:
    atomic_write(Path(run_dir) / RUN_CONFIG,
                 lambda tmp: Path(tmp).write_text(json.dumps(config, indent=1, sort_keys=True)))
