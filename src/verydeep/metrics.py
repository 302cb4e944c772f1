"""What a person watches: metrics as JSON lines and TensorBoard events in the run directory, and PNG curves.

Both files are views of the run's records, which the checkpoint holds: a record is appended after the checkpoint
that holds it is written, and on resume both files are rewritten from the checkpoint's records, so a kill between
the two writes loses nothing and duplicates nothing. TensorBoard events are written here, synchronously (a full
disk is an error naming the file, not a background thread's traceback), in TensorBoard's own record format."""
from __future__ import annotations

import json
import logging
import math
import os
import shutil
import struct
from dataclasses import dataclass
from pathlib import Path

from .config import positional
from .errors import UserError
from .utils import atomic_write, write_error

log = logging.getLogger("verydeep")
METRICS = "metrics.jsonl"
TB_DIR = "tb"
TB_FILE = "events.out.tfevents.verydeep"  # TensorBoard reads every file named *tfevents* in the folder


def _tb_record(data: bytes) -> bytes:
    """One TFRecord: length, masked CRC-32C of the length, data, masked CRC-32C of the data."""
    from tensorboardX.record_writer import masked_crc32c

    header = struct.pack("<Q", len(data))
    return header + struct.pack("<I", masked_crc32c(header)) + data + struct.pack("<I", masked_crc32c(data))


def tb_events(records: list[dict], first: bool) -> bytes:
    """The TensorBoard events of some records: each number a scalar at the record's global step."""
    from tensorboardX.proto.event_pb2 import Event
    from tensorboardX.proto.summary_pb2 import Summary

    out = []
    if first:
        out.append(_tb_record(Event(wall_time=records[0].get("time", 0.0) if records else 0.0,
                                    file_version="brain.Event:2").SerializeToString()))
    for r in records:
        values = [Summary.Value(tag=k.replace("_", "/", 1), simple_value=float(v)) for k, v in r.items()
                  if isinstance(v, (int, float)) and not isinstance(v, bool) and math.isfinite(v)
                  and k not in ("global_step", "time")]
        out.append(_tb_record(Event(wall_time=float(r.get("time", 0.0)), step=int(r.get("global_step", 0)),
                                    summary=Summary(value=values)).SerializeToString()))
    return b"".join(out)


class MetricsLog:
    """metrics.jsonl and TensorBoard events of one run, kept equal to `records` (the list the checkpoint holds,
    shared, not copied). A record is entered with ``add`` before the checkpoint is written, and reaches the files
    with ``write`` after it."""

    def __init__(self, run_dir: Path, records: list[dict], enabled: bool = True):
        self.path = Path(run_dir) / METRICS
        self.tb = Path(run_dir) / TB_DIR / TB_FILE
        self.enabled = enabled
        self.records = records
        self._pending: str | None = None
        if enabled:
            self.rewrite()

    def rewrite(self) -> None:
        """Both files exactly from the records (a new run: empty; a resumed run: what its checkpoint holds)."""
        text = "".join(json.dumps(r) + "\n" for r in self.records)
        atomic_write(self.path, lambda tmp: Path(tmp).write_text(text))
        tb_dir = self.tb.parent
        if tb_dir.is_dir():  # events of other writers (older versions) would show twice
            for p in tb_dir.iterdir():
                if p.name != TB_FILE:
                    shutil.rmtree(p) if p.is_dir() else p.unlink()
        events = tb_events(self.records, first=True)
        atomic_write(self.tb, lambda tmp: Path(tmp).write_bytes(events))

    def _append(self, path: Path, data: bytes) -> None:
        try:
            with open(path, "ab") as f:
                f.write(data)
                f.flush()
                os.fsync(f.fileno())
        except OSError as e:
            raise write_error(path, e) from None

    def add(self, record: dict) -> None:
        """Enter a record. A partial epoch's record (a run stopped by max_steps) is replaced by the full record of
        that epoch when it comes, as in a run that was never stopped."""
        last = self.records[-1] if self.records else {}
        if last.get("schedule") == "partial epoch" and last.get("epoch") == record.get("epoch"):
            self.records[-1], self._pending = record, "rewrite"
        else:
            self.records.append(record)
            self._pending = "append"

    def write(self) -> None:
        """Bring the files up to the records (after the checkpoint holding them is written)."""
        if not self.enabled or self._pending is None:
            return
        if self._pending == "rewrite":
            self.rewrite()
        else:
            self._append(self.path, (json.dumps(self.records[-1]) + "\n").encode())
            self._append(self.tb, tb_events(self.records[-1:], first=False))
        self._pending = None


def read(run_dir: Path) -> list[dict]:
    path = Path(run_dir) / METRICS
    if not path.is_file():
        raise UserError(f"{run_dir}: no {METRICS} (not a verydeep run directory?)")
    out = []
    for n, line in enumerate(path.read_text().splitlines(), 1):
        if line.strip():
            try:
                out.append(json.loads(line))
            except ValueError:
                raise UserError(f"{path}:{n}: not a JSON record") from None
    return out


def plot(run_dir: Path, out: Path | None = None) -> Path:
    """Loss, top-1/top-5 error and learning rate against epochs, as one PNG."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    by_epoch: dict[int, dict] = {}
    for r in read(run_dir):  # one point per epoch: the last record of it (a full epoch replaces a partial one)
        if r.get("kind") == "epoch":
            by_epoch[r["epoch"]] = r
    records = [by_epoch[e] for e in sorted(by_epoch)]
    if not records:
        raise UserError(f"{run_dir}: no finished epoch to plot yet")
    ep = [r["epoch"] for r in records]
    fig, axes = plt.subplots(1, 3, figsize=(15, 4.2))
    ax = axes[0]
    ax.plot(ep, [r["train_loss"] for r in records], "o-", label="train")
    val = [r for r in records if "val_top1_err" in r]  # a fixed schedule may leave epochs unvalidated
    ax.plot([r["epoch"] for r in val], [r["val_loss"] for r in val], "s-", label="validation")
    ax.set(title="loss (soft-max cross-entropy)", xlabel="epoch")
    ax.legend()
    ax = axes[1]
    ax.plot(ep, [100 * r["train_top1_err"] for r in records], "o-", label="train top-1")
    ax.plot([r["epoch"] for r in val], [100 * r["val_top1_err"] for r in val], "s-", label="val top-1")
    ax.plot([r["epoch"] for r in val], [100 * r["val_top5_err"] for r in val], "^-", label="val top-5")
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
    atomic_write(out, lambda tmp: fig.savefig(tmp, dpi=110, format="png"))
    plt.close(fig)
    return out


@dataclass
class PlotConfig:
    run_dir: str = positional(default="")  # a training run's folder (`verydeep train --run-dir`)
    out: str | None = None         # PNG path (default RUN_DIR/curves.png)


def plot_run(cfg: PlotConfig) -> Path:
    """`verydeep plot`: a run's curves as a PNG."""
    if not cfg.run_dir:
        raise UserError("give the run's folder")
    out = plot(Path(cfg.run_dir), Path(cfg.out) if cfg.out else None)
    print(f"wrote {out}")
    return out
