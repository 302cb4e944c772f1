"""One precision policy for everything that runs a net: training (autocast), inference (the fused chain),
localisation, explain, features and the benchmark all resolve `--precision` here, so the word means one thing.

auto: the fastest precision that agrees with fp32 on this device (bf16 where the hardware computes it natively:
AMX or AVX512-BF16 CPUs, CUDA with bf16; else fp32). int8 is inference only, on the CPU (oneDNN's quantised kernels: int8.py)."""
from __future__ import annotations

import contextlib
import logging
from dataclasses import dataclass
from functools import lru_cache
from pathlib import Path

import torch

from .errors import ConfigError

PRECISIONS = ("auto", "fp32", "bf16", "int8")
# A CPU without AVX512-BF16 or AMX (an AVX2-only AMD EPYC, say) runs bf16 by PyTorch's emulation: measured on one,
# matrix products at 1.2 GFLOP/s against fp32's 113, 3x3 convolutions 9x slower than fp32.
BF16_SKIPPED = "bf16 skipped: this CPU has no native bf16 (no AVX512-BF16 or AMX; emulated, 9-100x slower than fp32)"
log = logging.getLogger("verydeep")


@lru_cache(maxsize=1)
def cpu_flags() -> frozenset[str]:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("flags"):
                return frozenset(line.split(":", 1)[1].split())
    except OSError:
        pass
    return frozenset()


def mkldnn_ok() -> bool:
    return torch.backends.mkldnn.is_available() and hasattr(torch.ops.mkldnn, "_convolution_pointwise")


def onednn_bf16() -> bool:
    """Whether oneDNN runs bf16 here at all (PyTorch's own check: AVX512-BW/VL/DQ or AVX-NE-CONVERT). Without it the
    fast chain's bf16 convolutions refuse to pack their weights, and bf16 inference runs PyTorch's eager kernels."""
    return mkldnn_ok() and bool(torch.ops.mkldnn._is_mkldnn_bf16_supported())


def native_bf16(device: torch.device) -> bool:
    if device.type == "cuda":
        return torch.cuda.is_bf16_supported()
    return device.type == "cpu" and mkldnn_ok() and bool(cpu_flags() & {"amx_bf16", "avx512_bf16"})


@lru_cache(maxsize=1)
def _warn_emulated() -> None:
    log.warning("--precision bf16: this CPU has no native bf16 (no AVX512-BF16 or AMX), so PyTorch emulates it, "
                "9-100x slower than fp32; --precision auto picks fp32 here")


@dataclass(frozen=True)
class Precision:
    """A resolved precision on a device: `name` is fp32, bf16 or int8; `requested` what the user asked for."""

    name: str
    device: torch.device
    requested: str = "auto"

    @classmethod
    def resolve(cls, requested: str | "Precision" = "auto", device: str | torch.device = "cpu",
                training: bool = False) -> "Precision":
        if isinstance(requested, Precision):
            return requested
        device = torch.device(device)
        if requested not in PRECISIONS:
            raise ConfigError(f"--precision {requested!r}: choose one of {', '.join(PRECISIONS)}")
        name = requested
        if requested == "auto":
            name = "bf16" if native_bf16(device) else "fp32"
        elif name == "bf16" and device.type == "cpu" and not native_bf16(device):
            _warn_emulated()
        if name == "int8" and training:
            raise ConfigError("--precision int8 is for inference (post-training quantisation); train in fp32, "
                              "bf16 or auto")
        if name == "int8" and device.type != "cpu":
            raise ConfigError(f"--precision int8 runs on the CPU only (oneDNN's quantised kernels); use bf16 on "
                              f"{device.type}")
        return cls(name, device, requested)

    @property
    def dtype(self) -> torch.dtype:
        return torch.bfloat16 if self.name == "bf16" else torch.float32

    def autocast(self):
        """The context a forward (and backward) pass runs in: bf16 autocast, or nothing for fp32."""
        if self.name == "bf16":
            return torch.autocast(self.device.type, dtype=torch.bfloat16)
        return contextlib.nullcontext()

    def __str__(self) -> str:
        return self.name if self.requested in (self.name, None) else f"{self.name} ({self.requested})"
