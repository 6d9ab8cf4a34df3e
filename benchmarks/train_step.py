"""Throughput of the MoCo v3 training step: ours vs a plain eager fp32 step, in one run.

    python benchmarks/train_step.py                       # tiny ViT at 32 px, CPU
    python benchmarks/train_step.py --arch vit_base --img-size 224 --patch-size 16 \
        --batch 128 --precision bf16 --compile            # on a GPU

The baseline reproduces the official step's cost structure on the same model: each view
through the backbone separately, fp32, explicit attention (timm 0.4.9, which the official
code pins), the momentum update as a Python loop over parameters, AdamW without fused
kernels. Ours: both views through the ViT backbone as one
batch of 2B, bf16 autocast, one fused lerp for the momentum update, fused AdamW, optionally
torch.compile. Both compute the same loss. The ratio of images/s is the figure; on CUDA the
model FLOP utilisation (FLOPs counted by torch's FlopCounterMode) is printed too.
"""

from __future__ import annotations

import argparse
import time
from collections.abc import Callable

import torch

from moco3.model import MoCo, build_model
from moco3.negatives import build_negatives
from moco3.optim import build_optimizer

# Dense bf16 peak of common cards (TFLOP/s), for the utilisation figure.
PEAK_BF16_TFLOPS = {"H100": 989.0, "H200": 989.0, "A100": 312.0, "L40S": 362.0,
                    "A10": 125.0, "V100": 125.0}


def make_model(args: argparse.Namespace, device: torch.device) -> MoCo:
    overrides = {"img_size": args.img_size, "patch_size": args.patch_size}
    if args.depth:
        overrides["depth"] = args.depth
    return build_model(args.arch, dim=args.dim, mlp_dim=args.mlp_dim, **overrides).to(device)


def set_fused_attention(model: MoCo, enabled: bool) -> None:
    for module in model.modules():
        if hasattr(module, "set_fused_attention"):
            module.set_fused_attention(enabled)


def official_like_step(model: MoCo, opt: torch.optim.Optimizer, neg, x1, x2, m: float):
    """The baseline: per-view backbone, fp32, Python-loop EMA (as the official code)."""
    model.batch_views = False
    q1, q2, _, _ = model(x1, x2)
    with torch.no_grad():
        for pm, pb in zip(model.momentum_encoder.parameters(),
                          model.base_encoder.parameters(), strict=True):
            pm.data = pm.data * m + pb.data * (1.0 - m)
        k1, k2 = model.forward_keys(x1, x2)
    loss = neg.loss(q1, k2, None) + neg.loss(q2, k1, None)
    opt.zero_grad(set_to_none=True)
    loss.backward()
    opt.step()
    return loss


def our_step(model: MoCo, opt: torch.optim.Optimizer, neg, x1, x2, m: float,
             dtype: torch.dtype | None, device: torch.device):
    with torch.autocast(device.type, dtype=dtype or torch.float32, enabled=dtype is not None):
        q1, q2, _, _ = model(x1, x2)
        model.update_momentum_encoder(m)
        k1, k2 = model.forward_keys(x1, x2)
    loss = neg.loss(q1.float(), k2.float(), None) + neg.loss(q2.float(), k1.float(), None)
    opt.zero_grad(set_to_none=True)
    loss.backward()
    opt.step()
    return loss


def measure(step: Callable[[], torch.Tensor], warmup: int, iters: int,
            device: torch.device) -> float:
    """Seconds per step (median of `iters` after `warmup`)."""
    for _ in range(warmup):
        step()
    times = []
    for _ in range(iters):
        if device.type == "cuda":
            torch.cuda.synchronize()
        t0 = time.perf_counter()
        step()
        if device.type == "cuda":
            torch.cuda.synchronize()
        times.append(time.perf_counter() - t0)
    return sorted(times)[len(times) // 2]


def step_flops(step: Callable[[], torch.Tensor]) -> float:
    from torch.utils.flop_counter import FlopCounterMode

    counter = FlopCounterMode(display=False)
    with counter:
        step()
    return float(counter.get_total_flops())


def peak_memory_mb(device: torch.device) -> float:
    if device.type == "cuda":
        return torch.cuda.max_memory_allocated(device) / 2**20
    import resource

    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def main(argv: list[str] | None = None) -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--arch", default="vit_tiny")
    p.add_argument("--depth", type=int, default=6)
    p.add_argument("--img-size", type=int, default=32)
    p.add_argument("--patch-size", type=int, default=4)
    p.add_argument("--dim", type=int, default=256)
    p.add_argument("--mlp-dim", type=int, default=4096, help="head width (official 4096)")
    p.add_argument("--batch", type=int, default=64, help="per-device batch")
    p.add_argument("--precision", choices=("bf16", "fp32", "fp16"), default="bf16")
    p.add_argument("--compile", action="store_true", help="torch.compile our model")
    p.add_argument("--warmup", type=int, default=2)
    p.add_argument("--iters", type=int, default=5)
    p.add_argument("--threads", type=int, default=None)
    p.add_argument("--skip-baseline", action="store_true")
    args = p.parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)
    device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
    dtype = {"fp32": None, "bf16": torch.bfloat16, "fp16": torch.float16}[args.precision]
    torch.manual_seed(0)
    x1 = torch.randn(args.batch, 3, args.img_size, args.img_size, device=device)
    x2 = torch.randn_like(x1)
    neg = build_negatives("in_batch", dim=args.dim, tau=0.2)
    name = torch.cuda.get_device_name(device) if device.type == "cuda" else "CPU"
    print(f"device {name}, {torch.get_num_threads()} threads; {args.arch} depth {args.depth} "
          f"{args.img_size}px/{args.patch_size}, heads {args.mlp_dim}, batch {args.batch}")

    results = {}
    if not args.skip_baseline:
        base = make_model(args, device)
        # The official code pins timm 0.4.9, whose Attention is explicit softmax(q k^T) v.
        set_fused_attention(base, False)
        base_opt = torch.optim.AdamW([p for p in base.parameters() if p.requires_grad],
                                     lr=1e-4, weight_decay=0.1, foreach=False)
        sec = measure(lambda: official_like_step(base, base_opt, neg, x1, x2, 0.99),
                      args.warmup, args.iters, device)
        results["baseline eager fp32 (official-like)"] = sec
        del base, base_opt
    ours = make_model(args, device)
    set_fused_attention(ours, device.type == "cuda")  # as moco3.train does
    opt = build_optimizer("adamw", ours.named_parameters(), lr=1e-4, weight_decay=0.1)
    if args.compile:
        ours.compile()  # in place: forward and forward_keys' submodules stay the same objects
    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats(device)

    def step() -> torch.Tensor:
        return our_step(ours, opt, neg, x1, x2, 0.99, dtype, device)

    if dtype is not None and not args.skip_baseline:
        # The same precision as the baseline: what the levers that keep the math give alone.
        results["ours fp32"] = measure(
            lambda: our_step(ours, opt, neg, x1, x2, 0.99, None, device),
            args.warmup, args.iters, device)
    t0 = time.perf_counter()
    step()
    first = time.perf_counter() - t0
    sec = measure(step, args.warmup, args.iters, device)
    results[f"ours {args.precision}{' compiled' if args.compile else ''}"] = sec
    baseline = results.get("baseline eager fp32 (official-like)")
    for label, s in results.items():
        ratio = f"  x{baseline / s:.2f}" if baseline else ""
        print(f"{label:40s} {s * 1e3:9.1f} ms/step {args.batch / s:9.1f} img/s{ratio}")
    print(f"first step (incl. compile) {first:.1f} s; peak memory {peak_memory_mb(device):.0f} MB")
    if device.type == "cuda":
        flops = step_flops(step)
        peak = next((v for k, v in PEAK_BF16_TFLOPS.items() if k in name), None)
        achieved = flops / sec / 1e12
        util = f", {100 * achieved / peak:.1f} % of the {peak:.0f} TFLOP/s bf16 peak" if peak \
            else ""
        print(f"model FLOPs/step {flops / 1e12:.2f} TFLOP -> {achieved:.1f} TFLOP/s{util}")


if __name__ == "__main__":
    main()
