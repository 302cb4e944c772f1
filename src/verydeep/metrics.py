"""What a person watches: metrics as JSON lines and TensorBoard events in the run directory, and PNG curves."""
from __future__ import annotations

import json
import logging
import math
from pathlib import Path

from .errors import UserError

log = logging.getLogger("verydeep")
METRICS = "metrics.jsonl"


class MetricsLog:
    """Appends one JSON object per record to metrics.jsonl (fsynced), mirrors numbers to TensorBoard."""

    def __init__(self, run_dir: Path, enabled: bool = True):
        self.path = Path(run_dir) / METRICS
        self.enabled = enabled
        self.tb = None
        if enabled:
            try:
                from tensorboardX import SummaryWriter
            except ImportError:
                try:
                    from torch.utils.tensorboard import SummaryWriter
                except ImportError:
                    SummaryWriter = None
                    log.info("TensorBoard events not written: install tensorboardX")
            if SummaryWriter is not None:
                self.tb = SummaryWriter(str(Path(run_dir) / "tb"))

    def write(self, record: dict, step: int) -> None:
        if not self.enabled:
            return
        import os

        with open(self.path, "a") as f:
            f.write(json.dumps(record) + "\n")
            f.flush()
            os.fsync(f.fileno())
        if self.tb is not None:
            for k, v in record.items():
                if isinstance(v, (int, float)) and not isinstance(v, bool) and math.isfinite(v):
                    self.tb.add_scalar(k.replace("_", "/", 1), v, step)
            self.tb.flush()

    def close(self) -> None:
        if self.tb is not None:
            self.tb.close()


def read(run_dir: Path) -> list[dict]:
    path = Path(run_dir) / METRICS
    if not path.is_file():
        raise UserError(f"{run_dir}: no {METRICS} (not a verydeep run directory?)")
    return [json.loads(line) for line in path.read_text().splitlines() if line.strip()]


def plot(run_dir: Path, out: Path | None = None) -> Path:
    """Loss, top-1/top-5 error and learning rate against epochs, as one PNG."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    records = [r for r in read(run_dir) if r.get("kind") == "epoch"]
    if not records:
        raise UserError(f"{run_dir}: no finished epoch to plot yet")
    ep = [r["epoch"] for r in records]
    fig, axes = plt.subplots(1, 3, figsize=(15, 4.2))
    ax = axes[0]
    ax.plot(ep, [r["train_loss"] for r in records], "o-", label="train")
    ax.plot(ep, [r.get("val_loss") for r in records], "s-", label="validation")
    ax.set(title="loss (soft-max cross-entropy)", xlabel="epoch")
    ax.legend()
    ax = axes[1]
    ax.plot(ep, [100 * r["train_top1_err"] for r in records], "o-", label="train top-1")
    ax.plot(ep, [100 * r["val_top1_err"] for r in records], "s-", label="val top-1")
    ax.plot(ep, [100 * r["val_top5_err"] for r in records], "^-", label="val top-5")
    ax.set(title="error (%)", xlabel="epoch")
    ax.legend()
    ax = axes[2]
    ax.semilogy(ep, [r["lr"] for r in records], "o-")
    ax.set(title="learning rate", xlabel="epoch")
    for a in axes:
        a.grid(alpha=0.3)
    fig.suptitle(f"{Path(run_dir).name}")
    fig.tight_layout()
    out = Path(out) if out else Path(run_dir) / "curves.png"
    fig.savefig(out, dpi=110)
    plt.close(fig)
    return out
