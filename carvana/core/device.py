"""Where a model runs and in which number format, for training and prediction alike.

`select_device` turns the `--device` setting into a `torch.device`; `resolve_precision` turns the
`amp` setting into a `Precision`: the autocast dtype (or none) and whether fp16 needs a GradScaler.
bf16 has the range of fp32, so it trains without loss scaling; fp16 does not, so its gradients are
scaled up (and checked for overflow) by a GradScaler.
"""
from __future__ import annotations

import contextlib
from dataclasses import dataclass
from pathlib import Path
from typing import ContextManager

import torch

from carvana.core.distributed import local_device
from carvana.core.errors import ConfigError

# CPU feature flags (as Linux names them in /proc/cpuinfo) that give native bf16 matrix maths.
# Without them bf16 is emulated and slower than plain fp32, so `auto` stays in fp32.
CPU_BF16_FLAGS = ("avx512_bf16", "amx_bf16")
CPUINFO = Path("/proc/cpuinfo")


def select_device(name: str = "auto") -> torch.device:
    """`auto` (CUDA when present, else CPU), `cpu`, `cuda` or `cuda:N`; ConfigError if unavailable.

    Under torchrun a bare `cuda` (or `auto` on a GPU machine) is the GPU of the process's local rank.
    """
    if name == "auto":
        return local_device(torch.device("cuda" if torch.cuda.is_available() else "cpu"))
    try:
        device = torch.device(name)
    except RuntimeError:
        raise ConfigError(f"device {name!r}: not a device name (use auto, cpu, cuda or cuda:N)") from None
    if device.type == "cpu":
        return device
    if device.type == "cuda":
        if not torch.cuda.is_available():
            raise ConfigError(f"device {name!r}: CUDA is not available here (use --device cpu or auto)")
        if device.index is not None and device.index >= torch.cuda.device_count():
            raise ConfigError(
                f"device {name!r}: this machine has {torch.cuda.device_count()} CUDA device(s), "
                f"numbered from 0"
            )
        return local_device(device)
    raise ConfigError(f"device {name!r}: unsupported (use auto, cpu, cuda or cuda:N)")


def cpu_has_native_bf16() -> bool:
    """True when this CPU computes bf16 in hardware (AVX512-BF16 or AMX)."""
    try:
        flags = CPUINFO.read_text().split()
    except OSError:
        flags = None
    if flags is not None:
        return any(flag in flags for flag in CPU_BF16_FLAGS)
    try:  # no /proc (macOS, Windows): ask oneDNN
        return bool(torch.ops.mkldnn._is_mkldnn_bf16_supported())
    except (AttributeError, RuntimeError):
        return False


@dataclass(frozen=True)
class Precision:
    """The number format of the forward pass: fp32, or autocast to bf16/fp16."""

    device_type: str  # "cuda" or "cpu"
    dtype: torch.dtype | None  # autocast dtype; None = plain fp32
    needs_grad_scaler: bool  # fp16 only

    @property
    def name(self) -> str:
        return {None: "fp32", torch.bfloat16: "bf16", torch.float16: "fp16"}[self.dtype]

    def autocast(self) -> ContextManager:
        if self.dtype is None:
            return contextlib.nullcontext()
        return torch.autocast(device_type=self.device_type, dtype=self.dtype)

    def grad_scaler(self) -> torch.amp.GradScaler:
        """fp16's loss scaler; a disabled one otherwise, whose steps are the plain backward and step."""
        return torch.amp.GradScaler(self.device_type, enabled=self.needs_grad_scaler)


def resolve_precision(amp: str, device: torch.device) -> Precision:
    """The precision for `amp` (auto/off/fp16/bf16) on `device`; ConfigError if it cannot run there.

    auto: CUDA -> bf16 where the GPU supports it (Ampere and later), else fp16 with loss scaling;
    CPU -> bf16 only with native hardware support, else fp32.
    """
    kind = device.type
    if amp == "off":
        return Precision(kind, None, False)
    if amp == "auto":
        if kind == "cuda":
            if torch.cuda.is_bf16_supported():
                return Precision(kind, torch.bfloat16, False)
            return Precision(kind, torch.float16, True)
        return Precision(kind, torch.bfloat16 if cpu_has_native_bf16() else None, False)
    if amp == "bf16":
        if kind == "cuda" and not torch.cuda.is_bf16_supported():
            raise ConfigError(f"amp bf16: {torch.cuda.get_device_name(device)} has no bf16 (use fp16 or auto)")
        return Precision(kind, torch.bfloat16, False)
    if amp == "fp16":
        if kind != "cuda":
            raise ConfigError("amp fp16: needs a CUDA device (on the CPU use bf16 or off)")
        return Precision(kind, torch.float16, True)
    raise ConfigError(f"amp {amp!r}: choose from auto, off, fp16, bf16")


def to_memory_format(tensor: torch.Tensor, channels_last: bool) -> torch.Tensor:
    """`tensor` in channels_last memory format when `channels_last`, else as it is."""
    return tensor.contiguous(memory_format=torch.channels_last) if channels_last else tensor
