"""Section environment: versions, device and cores, what every figure was measured on."""

from __future__ import annotations

import os
import platform
from typing import Any

import torch

from benchmarks.gpu_check.profiles import Context
from benchmarks.gpu_check.report import Report
from benchmarks.train_step import peak_tflops
from moco3.precision import (
    cpu_kind,
    cuda_has_native_bf16,
    resolve_precision,
)


def section_environment(ctx: Context, report: Report) -> None:
    """Versions, device, cores: what a figure in this report was measured on."""
    import timm
    import torchvision

    device = ctx.device
    env: dict[str, Any] = {
        "python": platform.python_version(), "torch": torch.__version__,
        "torchvision": torchvision.__version__, "timm": timm.__version__,
        "cuda": torch.version.cuda, "cudnn": torch.backends.cudnn.version(),
        "cores": len(os.sched_getaffinity(0)), "cpu_count": os.cpu_count(),
        "cpu_capability": cpu_kind(),
        "torch_threads": torch.get_num_threads(),
        "precision_auto": resolve_precision("auto", device),
        "tf32_matmul": torch.backends.cuda.matmul.allow_tf32,
        "tf32_cudnn": torch.backends.cudnn.allow_tf32,
        "deterministic": torch.are_deterministic_algorithms_enabled(),
    }
    if device.type == "cuda":
        props = torch.cuda.get_device_properties(device)
        nccl = torch.cuda.nccl.version()
        env.update(
            device=torch.cuda.get_device_name(device), gpus=torch.cuda.device_count(),
            gpu_memory_gib=round(props.total_memory / 2**30, 1),
            capability=f"{props.major}.{props.minor}", sm_count=props.multi_processor_count,
            bf16_supported=torch.cuda.is_bf16_supported(),
            bf16_native=cuda_has_native_bf16(),
            nccl=".".join(map(str, nccl)) if isinstance(nccl, tuple) else str(nccl),
            peak_bf16_tflops=peak_tflops(torch.cuda.get_device_name(device)),
        )
        torch.ones(1, device=device).sum().item()  # CUDA context now, not in a timed section
    else:
        env.update(device=f"CPU ({platform.processor() or platform.machine()})", gpus=0)
    report.environment.update(env)
