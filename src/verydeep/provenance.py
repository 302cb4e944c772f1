"""Where a result comes from: the verydeep version and git commit, torch, the device and the precision, and when.
Every JSON result and every run's config carries it."""
from __future__ import annotations

import platform
import subprocess
import time
from functools import lru_cache
from pathlib import Path

import torch

from .version import __version__


@lru_cache(maxsize=1)
def git_commit() -> str | None:
    """The commit of the checkout verydeep runs from (with "+dirty" when it has changes), or None."""
    here = Path(__file__).resolve().parent
    try:
        out = subprocess.run(["git", "-C", str(here), "rev-parse", "HEAD"], capture_output=True, text=True,
                             timeout=5)
        if out.returncode != 0:
            return None
        dirty = subprocess.run(["git", "-C", str(here), "status", "--porcelain", "--untracked-files=no"],
                               capture_output=True, text=True, timeout=5).stdout.strip()
        return out.stdout.strip() + ("+dirty" if dirty else "")
    except (OSError, subprocess.SubprocessError):
        return None


def device_name(device: str | torch.device | None) -> str:
    device = torch.device(device or "cpu")
    if device.type == "cuda" and torch.cuda.is_available():
        return torch.cuda.get_device_name(device)
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def provenance(device: str | torch.device | None = None, precision: object = None) -> dict:
    return {"verydeep": __version__, "commit": git_commit(), "torch": torch.__version__,
            "python": platform.python_version(), "device": str(device or "cpu"), "device_name": device_name(device),
            "precision": None if precision is None else str(precision),
            "created": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())}
