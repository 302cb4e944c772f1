"""Checkpoints that never lose work: written atomically (temp file, fsync, rename), the last K kept plus the best,
loaded without unpickling code (weights_only=True). A run directory holding another run is refused."""
from __future__ import annotations

import json
import random
import re
from pathlib import Path

import numpy as np
import torch

from .errors import UserError
from .utils import atomic_write

CKPT = re.compile(r"^ckpt-(\d{9})\.pt$")
BEST = "best.pt"
RUN_CONFIG = "config.json"


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


def save(state: dict, run_dir: Path, keep_last: int = 2, best: bool = False) -> Path:
    """Write ckpt-<global step>.pt atomically; keep the newest keep_last; also write best.pt when best."""
    ckpt_dir = Path(run_dir) / "checkpoints"
    path = ckpt_dir / f"ckpt-{state['global_step']:09d}.pt"
    atomic_write(path, lambda tmp: torch.save(state, tmp))
    if best:
        atomic_write(ckpt_dir / BEST, lambda tmp: torch.save(state, tmp))
    for old in sorted(p for p in ckpt_dir.iterdir() if CKPT.match(p.name))[:-max(keep_last, 1)]:
        old.unlink(missing_ok=True)
    return path


def latest(run_dir: Path) -> Path | None:
    ckpt_dir = Path(run_dir) / "checkpoints"
    if not ckpt_dir.is_dir():
        return None
    found = sorted(p for p in ckpt_dir.iterdir() if CKPT.match(p.name))
    return found[-1] if found else None


def load(path: str | Path) -> dict:
    path = Path(path)
    if not path.is_file():
        raise UserError(f"{path}: no such checkpoint")
    try:
        return torch.load(path, map_location="cpu", weights_only=True)
    except Exception as e:
        raise UserError(f"{path}: unreadable checkpoint ({str(e).splitlines()[0][:160]})") from None


def claim_run_dir(run_dir: Path, config: dict, resume: bool, force: bool) -> None:
    """Refuse a directory that already holds a run unless resuming it (same config) or forced."""
    run_dir = Path(run_dir)
    cfg_path = run_dir / RUN_CONFIG
    if cfg_path.exists() and not force:
        stored = json.loads(cfg_path.read_text())
        if not resume:
            raise UserError(f"{run_dir}: already holds a run; pass --resume to continue it or --force to overwrite")
        diff = sorted(k for k in set(stored) | set(config) if stored.get(k) != config.get(k))
        if diff:
            shown = ", ".join(f"{k}: {stored.get(k)!r} there, {config.get(k)!r} asked" for k in diff[:3])
            raise UserError(f"{run_dir}: holds a different run ({shown}); use another --run-dir, or --force")
    if force and run_dir.exists():
        for p in list((run_dir / "checkpoints").glob("*.pt")) if (run_dir / "checkpoints").is_dir() else []:
            p.unlink()
        for name in ("metrics.jsonl",):
            (run_dir / name).unlink(missing_ok=True)
    run_dir.mkdir(parents=True, exist_ok=True)
    atomic_write(cfg_path, lambda tmp: Path(tmp).write_text(json.dumps(config, indent=1, sort_keys=True)))
