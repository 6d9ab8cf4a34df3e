"""The sizes of the two versions of the check (CUDA, reduced CPU), the tolerances and
targets, and the Context every section reads. Why each bound is what it is: docs/gpu-check.md."""

from __future__ import annotations

import math
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

REPO = Path(__file__).resolve().parents[2]
SECTIONS = ("environment", "correctness", "distributed", "resume", "data", "speed")
BASE_LR, WEIGHT_DECAY, TAU, MOMENTUM = 1.5e-4, 0.1, 0.2, 0.99  # official ViT recipe
TARGET_MFU = 0.40  # ViT-B/16 bf16 step, of the dense bf16 peak
TARGET_SPEEDUP = 4.0  # vs the official-like fp32 eager step
TARGET_VIT_B_IMG_S = 2200.0  # the quoted ViT-B/16 rate per H100/H200; the input-bound reference
NO_CUDA = "skipped: no CUDA"
RESUME_CHECK = "resume bitwise (8 steps vs 4 + resume 4)"


@dataclass(frozen=True)
class Tolerance:
    """Bounds for a step compared with the CPU fp32 reference (docs/gpu-check.md)."""

    loss_rel: float  # |loss - ref| / |ref|, every step
    grad_cos: float  # cosine similarity of a group's gradients, every step and group
    grad_norm_rel: float  # | ||g|| / ||g_ref|| - 1 |, every step and group

    def text(self) -> str:
        return (f"loss rel <= {self.loss_rel:g}, grad cos >= {self.grad_cos:g}, "
                f"grad norm rel <= {self.grad_norm_rel:g}")


TOLERANCES = {"fp32": Tolerance(1e-3, 0.9999, 1e-2), "bf16": Tolerance(1e-2, 0.95, 5e-2)}
# bf16 on the GPU may be this many times farther from fp32 than the CPU's bf16 autocast
# of the same steps (each figure; the cosine's distance from 1): two roundings of the same
# arithmetic to 8-bit mantissas, by kernels that accumulate in different orders.
BF16_CPU_FACTOR = 2.0
# The optimizer + EMA update from the reference's own gradients. Not 1e-4: torch's CPU
# fused AdamW applies the decoupled weight decay as p * fp32(1 - lr * wd), its CUDA kernel
# as p - lr * wd * p; the two round differently by up to half an ulp of p, against an
# update of about lr per element. At the check's lr (9.4e-6) that alone is 1.2-1.6e-4 of
# the update on ViT-S/16 (decay_rounding_rel; tests/test_cuda_paths.py), so 5e-4 leaves 3x.
UPDATE_REL = 5e-4
SAME_LOSS_REL = 1e-6  # DDP + SyncBN with one rank vs the plain model: the same arithmetic
SYNC_BN_REL = 1e-5  # SyncBatchNorm's kernels vs F.batch_norm: other summation orders


@dataclass(frozen=True)
class Profile:
    """The sizes of one version of the check: the full CUDA one or the reduced CPU one."""

    name: str
    budget_s: float  # the whole run
    threads: int | None  # torch intra-op threads (None: torch's default)
    section_s: dict[str, float]  # each section's own budget
    # correctness: one model, one batch, a few steps
    check_arch: str
    check_model: dict[str, Any]
    check_heads: tuple[int, int]  # (mlp_dim, dim)
    check_batch: int
    check_steps: int
    # resume: a small train() config
    resume_model: dict[str, Any]
    resume_batch: int
    # speed
    speed_archs: tuple[str, ...]
    speed_model: dict[str, Any]
    speed_heads: tuple[int, int]
    max_batch: int
    min_batch: int
    warmup: int
    iters: int
    baseline_iters: int
    compile: bool
    compile_estimate_s: float  # skip a compiled measurement with less time than this left
    eager_estimate_s: float
    # data
    num_jpegs: int
    data_seconds: float


CUDA_PROFILE = Profile(
    name="cuda", budget_s=480.0, threads=None,
    section_s={"environment": 30, "correctness": 90, "distributed": 75, "resume": 100,
               "data": 45, "speed": 300},
    check_arch="vit_small",
    # Divergence: the official ViT recipe freezes the patch projection (--stop-grad-conv1);
    # the checks learn it so that the convolution's backward runs on the GPU too.
    check_model={"img_size": 224, "patch_size": 16, "patch_embed": "learned"},
    check_heads=(4096, 256), check_batch=16, check_steps=3,
    resume_model={"arch": "vit_small", "img_size": 224, "patch_size": 16, "depth": 2,
                  "mlp_dim": 1024, "dim": 256, "patch_embed": "learned"},
    resume_batch=32,
    speed_archs=("vit_small", "vit_base"), speed_model={"img_size": 224, "patch_size": 16},
    speed_heads=(4096, 256), max_batch=256, min_batch=8, warmup=3, iters=10,
    baseline_iters=3, compile=True, compile_estimate_s=100.0, eager_estimate_s=20.0,
    num_jpegs=256, data_seconds=4.0,
)

CPU_PROFILE = Profile(
    # One torch thread: the models are tiny, and on a shared machine OpenMP's barriers
    # make several threads slower and their timings erratic.
    name="cpu-reduced", budget_s=110.0, threads=1,
    section_s={"environment": 10, "correctness": 20, "distributed": 45, "resume": 40,
               "data": 15, "speed": 40},
    check_arch="vit_small",
    check_model={"img_size": 32, "patch_size": 8, "depth": 2, "patch_embed": "learned"},
    check_heads=(256, 64), check_batch=8, check_steps=3,
    resume_model={"arch": "vit_tiny", "img_size": 16, "patch_size": 4, "depth": 2,
                  "embed_dim": 48, "num_heads": 3, "mlp_dim": 96, "dim": 32,
                  "patch_embed": "learned"},
    resume_batch=32,
    speed_archs=("vit_small", "vit_base"),
    speed_model={"img_size": 32, "patch_size": 8, "depth": 1},
    speed_heads=(512, 64), max_batch=16, min_batch=2, warmup=1, iters=3, baseline_iters=2,
    # torch.compile of the step does not pay on these CPUs (README: slower, ~50 s to compile)
    compile=False, compile_estimate_s=60.0, eager_estimate_s=4.0,
    num_jpegs=24, data_seconds=0.5,
)


PROFILES = {p.name: p for p in (CUDA_PROFILE, CPU_PROFILE)}




@dataclass
class Context:
    """What every section reads: the device, the sizes, the clock."""

    device: torch.device
    profile: Profile
    deadline: float
    deterministic: bool = False
    allow_subprocess: bool = True
    simulate_oom_above: int | None = None
    verbose: bool = True  # a line on stderr per section (a card's minutes are watched)
    section_deadline: float = math.inf  # set by run_section

    def remaining(self) -> float:
        """Seconds left of the whole run's budget and of the running section's."""
        return min(self.deadline, self.section_deadline) - time.perf_counter()
