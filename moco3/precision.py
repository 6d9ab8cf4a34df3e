"""Which numeric precision a run trains in: `train.precision: auto` resolved per hardware.

auto picks the fastest precision that keeps the official recipe's accuracy:
* CUDA: bf16 autocast where the device supports bf16 (Ampere and later), else fp16 with a
  gradient scaler (V100, T4).
* CPU: bf16 only where the CPU multiplies bf16 natively (AVX-512 BF16 or AMX), where it is
  about 2x fp32; elsewhere fp32. On AVX2-only CPUs bf16 matrix multiplies are emulated and
  10-70x SLOWER than fp32, so bf16 there would turn a minutes-long run into hours.

The rule reads the CPU's instruction-set flags rather than timing a probe: a run's precision
must not depend on how loaded the machine happened to be when it started. The resolved
precision is recorded in the run folder (status.json, summary.json and every checkpoint) and
a resumed run keeps it, so a job requeued onto another kind of node never switches
precision mid-run.

Testing aid: the environment variable MOCO3_CPU_FAST_BF16=1 (or 0) makes the CPU answer "fast
bf16" (or "no fast bf16") whatever its flags say, so the suite can run both branches of the
decision on any machine, in this process and every process it starts. A run started under it
records the forced answer beside the CPU's kind (cpu_kind), so its provenance cannot pass for
the real hardware's. Forcing 1 on an AVX2 CPU makes bf16 runs 10-70x slower: it is for tests
of the decision, not for training.
"""

from __future__ import annotations

import os

import torch

from moco3.config import PRECISIONS, ConfigError

AUTOCAST_DTYPES: dict[str, torch.dtype | None] = {
    "fp32": None, "bf16": torch.bfloat16, "fp16": torch.float16,
}


FORCE_FAST_BF16_ENV = "MOCO3_CPU_FAST_BF16"
_FORCE_VALUES = {"1": True, "0": False}


def forced_fast_bf16() -> bool | None:
    """The answer MOCO3_CPU_FAST_BF16 forces (True/False), or None when it is unset."""
    value = os.environ.get(FORCE_FAST_BF16_ENV, "")
    if value == "":
        return None
    if value not in _FORCE_VALUES:
        raise ConfigError(f"{FORCE_FAST_BF16_ENV}={value!r} is not valid; set it to 1 (answer "
                          f"'fast bf16'), 0 (answer 'no fast bf16') or leave it unset.")
    return _FORCE_VALUES[value]


def cpu_has_fast_bf16() -> bool:
    """True when this CPU has native bf16 matrix instructions (AVX-512 BF16 or AMX), or when
    MOCO3_CPU_FAST_BF16 says so."""
    forced = forced_fast_bf16()
    if forced is not None:
        return forced
    return bool(torch.cpu._is_avx512_bf16_supported() or torch.cpu._is_amx_tile_supported())


def cpu_kind() -> str:
    """A short name for the CPU class that decides speed: 'AVX512_BF16', 'AMX' or torch's
    capability string ('AVX2', 'AVX512', ...), followed by ' (MOCO3_CPU_FAST_BF16=1)' or
    '=0' when the answer was forced."""
    if torch.cpu._is_amx_tile_supported():
        kind = "AMX"
    elif torch.cpu._is_avx512_bf16_supported():
        kind = "AVX512_BF16"
    else:
        kind = torch.backends.cpu.get_cpu_capability()
    forced = forced_fast_bf16()
    if forced is None:
        return kind
    return f"{kind} ({FORCE_FAST_BF16_ENV}={int(forced)})"


def cuda_has_native_bf16() -> bool:
    """True when the current CUDA device computes bf16 natively (Ampere and later).

    torch.cuda.is_bf16_supported() counts emulated bf16 as supported by default; on a
    T4-class card emulated bf16 is much slower than fp16 with a GradScaler, so `auto`
    asks for native support only."""
    try:
        return bool(torch.cuda.is_bf16_supported(including_emulation=False))
    except TypeError:  # an older torch without the including_emulation argument
        return bool(torch.cuda.is_bf16_supported())


def resolve_precision(requested: str, device: torch.device) -> str:
    """`requested` (auto | fp32 | bf16 | fp16) -> the precision to train in on `device`."""
    if requested not in PRECISIONS:
        raise ConfigError(f"precision {requested!r} is not valid; choose one of "
                             f"{list(PRECISIONS)}.")
    if requested == "fp16" and device.type != "cuda":
        raise ConfigError("precision fp16 needs a CUDA device; use auto, bf16 or fp32 on "
                             "CPU.")
    if requested != "auto":
        return requested
    if device.type == "cuda":
        return "bf16" if cuda_has_native_bf16() else "fp16"
    return "bf16" if cpu_has_fast_bf16() else "fp32"


def autocast_dtype(precision: str) -> torch.dtype | None:
    """The autocast dtype of a resolved precision (None: plain fp32)."""
    return AUTOCAST_DTYPES[precision]
