"""One precision policy for everything that runs a net: training (autocast), inference (the fused chain),
localisation, explain, features and the benchmark all resolve `--precision` here, so the word means one thing.

auto: the fastest precision that agrees with fp32 on this device (bf16 where the hardware computes it natively:
AMX or AVX512-BF16 CPUs, CUDA with bf16; else fp32). int8 is inference only, on the CPU (oneDNN's quantised kernels: int8.py)."""
from __future__ import annotations

import contextlib
from dataclasses import dataclass
from functools import lru_cache
from pathlib import Path

import torch

from .errors import ConfigError

PRECISIONS = ("auto", "fp32", "bf16", "int8")


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


def native_bf16(device: torch.device) -> bool:
    if device.type == "cuda":
        return torch.cuda.is_bf16_supported()
    return device.type == "cpu" and mkldnn_ok() and bool(cpu_flags() & {"amx_bf16", "avx512_bf16"})


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
