"""Throughput of the MoCo v3 training step: moco3's against the official step's, in one run.

    python benchmarks/train_step.py            # ViT 192 wide, 6 blocks, patch 4 @ 32 px, heads
                                               # 4096/256, batch 64: the CPU comparison
    python benchmarks/train_step.py --arch vit_small --depth 12 --img-size 224 \
        --patch-size 16 --batch 8              # ViT-S/16 @ 224 px
    python benchmarks/train_step.py --arch vit_base --img-size 224 --patch-size 16 \
        --batch 128 --compile                  # on a GPU: also the model FLOP utilisation

    python benchmarks/train_step.py --official-code ~/src/moco-v3   # + the real official step

The rows are measured in alternating rounds in one process (a machine that is busy for a
moment slows all of them alike):

* official code: with `--official-code PATH` (a checkout of facebookresearch/moco-v3, or
  its git directory), the real main_moco.py step - the official MoCo_ViT on the official
  VisionTransformerMoCo with current timm, torch's default AdamW, fp32 - imported from
  PATH at run time (benchmarks/official_code.py; nothing of it ships with moco3). Ratios
  are then against this row; on a GPU, against a second one, "official code, fp16 AMP":
  the same step under fp16 autocast with a GradScaler, as main_moco.py trains on GPUs;

* stand-in for the official step (printed as "official-structure stand-in", so that it is
  never read as the real code): the official main_moco.py step on the same model - each
  view through the encoder on its own, the momentum update as a Python loop over
  parameters, the contrastive loss per direction, AdamW's per-parameter loop (what
  torch.optim.AdamW runs on CPU tensors by default), fp32 - with the attention kernel of
  current timm (fused scaled_dot_product_attention), which is what the official code runs
  in a current environment. Its speed against the real official code on the same machine
  is in the README;
* moco3 fp32: the step the training job runs (moco3/step.py, moco3.build's attention
  and view-batching choices) at the same precision - what the levers that keep the math
  identical give alone;
* moco3 at the default precision (`train.precision: auto`): printed when it differs from
  fp32 (bf16 on CUDA and on CPUs with AVX-512 BF16 / AMX).

The header names the CPU (model and instruction-set kind) or GPU and the precision `auto`
resolves to here. Ratios are images/s against the official code's row when it is measured,
else against the stand-in's (which ran at 0.88-1.00x the real code's speed where both were
timed, so ratios against it can overstate moco3: give --official-code for the real figure).
"""

from __future__ import annotations

import moco3

# ruff: noqa: E402 - run as a file, the path must be fixed before anything else is imported
moco3.run_as_script(__file__)

import argparse
import statistics
import time
from collections.abc import Callable
from pathlib import Path

import torch

from benchmarks.official_code import (
    build_official_model,
    ensure_process_group,
    load_official,
    official_step,
)
from moco3.archs import VIT_ARCHS
from moco3.build import (
    fused_attention_is_faster,
    use_fastest_step,
    views_batched_is_faster,
)
from moco3.model import MoCo, build_model
from moco3.negatives import build_negatives
from moco3.optim import build_optimizer
from moco3.precision import autocast_dtype, cpu_kind, resolve_precision
from moco3.provenance import cpu_model
from moco3.step import MocoStep

PLAIN_VITS = tuple(a for a, spec in VIT_ARCHS.items() if not spec.get("patch_embed"))
# Dense (no sparsity) 16-bit tensor-core peak per card, TFLOP/s, from NVIDIA's datasheets:
# bf16 where the card has it, else fp16 (V100, T4: precision auto trains in fp16 there).
# Keyed by the name torch.cuda.get_device_name() reports, lower case, without "NVIDIA " /
# "Tesla ". Matched exactly, never by substring: "H100 PCIe" and "H100 NVL" are slower
# cards than the SXM "H100 80GB HBM3", and a substring match gave them its peak. A card
# not listed gets no MFU figure (add its name here).
PEAK_BF16_TFLOPS = {
    "h100 80gb hbm3": 989.4, "h100 sxm5 80gb": 989.4, "h100 pcie": 756.5, "h100 nvl": 835.5,
    "h200": 989.4, "h200 nvl": 835.5, "gh200 480gb": 989.4, "gh200 144g hbm3e": 989.4,
    "a100-sxm4-80gb": 312.0, "a100-sxm4-40gb": 312.0, "a100-pcie-40gb": 312.0,
    "a100 80gb pcie": 312.0, "a800-sxm4-80gb": 312.0, "l40s": 362.1, "l40": 181.0,
    "l4": 121.0, "a10": 125.0, "rtx a6000": 154.8, "v100-sxm2-16gb": 125.0,
    "v100-sxm2-32gb": 125.0, "v100-pcie-16gb": 112.0, "v100-pcie-32gb": 112.0, "t4": 65.0,
}


def card_key(name: str) -> str:
    """A device name as the table keys it: lower case, without the vendor words."""
    words = [w for w in name.split() if w.lower() not in ("nvidia", "tesla")]
    return " ".join(words).lower()


def peak_tflops(name: str) -> float | None:
    """The card's dense 16-bit peak (PEAK_BF16_TFLOPS), by exact name; None if unknown."""
    return PEAK_BF16_TFLOPS.get(card_key(name))


def make_model(args: argparse.Namespace, device: torch.device) -> MoCo:
    overrides = {"img_size": args.img_size, "patch_size": args.patch_size}
    if args.depth:
        overrides["depth"] = args.depth
    torch.manual_seed(0)
    return build_model(args.arch, dim=args.dim, mlp_dim=args.mlp_dim, **overrides).to(device)


def set_fused_attention(model: MoCo, enabled: bool) -> None:
    for module in model.modules():
        if hasattr(module, "set_fused_attention"):
            module.set_fused_attention(enabled)


def official_like_step(model: MoCo, opt: torch.optim.Optimizer, neg, x1, x2, m: float):
    """The official step's structure: per-view encoder, Python-loop momentum update."""
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


def measure(step: Callable[[], torch.Tensor], warmup: int, iters: int,
            device: torch.device) -> float:
    """Seconds per step (median of `iters` after `warmup`)."""
    for _ in range(warmup):
        step()
    return statistics.median(timed(step, device) for _ in range(iters))


def timed(step: Callable[[], torch.Tensor], device: torch.device) -> float:
    if device.type == "cuda":
        torch.cuda.synchronize()
    t0 = time.perf_counter()
    step()
    if device.type == "cuda":
        torch.cuda.synchronize()
    return time.perf_counter() - t0


def interleaved(steps: dict[str, Callable[[], torch.Tensor]], warmup: int, rounds: int,
                device: torch.device) -> dict[str, float]:
    """Median seconds per step of each, measured in alternating rounds."""
    for step in steps.values():
        for _ in range(warmup):
            step()
    times: dict[str, list[float]] = {name: [] for name in steps}
    for _ in range(rounds):
        for name, step in steps.items():
            times[name].append(timed(step, device))
    return {name: statistics.median(t) for name, t in times.items()}


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


def ours(args: argparse.Namespace, device: torch.device, precision: str
         ) -> Callable[[], torch.Tensor]:
    """moco3's step, as the training job builds it, at `precision`."""
    model = make_model(args, device)
    use_fastest_step(model, device, precision)
    neg = build_negatives("in_batch", dim=args.dim, tau=0.2)
    opt = build_optimizer("adamw", model.named_parameters(), lr=1e-4, weight_decay=0.1)
    net = torch.compile(model) if args.compile else model
    dtype = autocast_dtype(precision)
    scaler = torch.amp.GradScaler("cuda") if precision == "fp16" else None
    step = MocoStep(net, model, neg, opt, dtype, scaler)
    x1, x2 = inputs(args, device)
    return lambda: step(x1, x2, None, 0.99)[0]


def official(args: argparse.Namespace, device: torch.device) -> Callable[[], torch.Tensor]:
    model = make_model(args, device)
    set_fused_attention(model, True)  # current timm's attention, as the official code gets
    neg = build_negatives("in_batch", dim=args.dim, tau=0.2)
    opt = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], lr=1e-4,
                            weight_decay=0.1, foreach=device.type == "cuda")
    x1, x2 = inputs(args, device)
    return lambda: official_like_step(model, opt, neg, x1, x2, 0.99)


def official_code(args: argparse.Namespace, device: torch.device, amp: bool = False
                  ) -> tuple[Callable[[], torch.Tensor], str]:
    """The real official step, from the user's copy of the official code; `amp`: with fp16
    autocast and a GradScaler, as main_moco.py trains on GPUs."""
    code = load_official(Path(args.official_code).expanduser())
    ensure_process_group()
    spec = VIT_ARCHS[args.arch]
    torch.manual_seed(0)
    model = build_official_model(code, img_size=args.img_size, patch_size=args.patch_size,
                                 width=spec["embed_dim"], depth=args.depth or spec["depth"],
                                 heads=spec["num_heads"], dim=args.dim,
                                 mlp_dim=args.mlp_dim).to(device)
    opt = torch.optim.AdamW(model.parameters(), lr=1e-4, weight_decay=0.1)  # main_moco.py's
    x1, x2 = inputs(args, device)
    scaler = torch.amp.GradScaler(device.type, enabled=amp)
    return lambda: official_step(model, opt, x1, x2, 0.99, scaler), code.origin


def inputs(args: argparse.Namespace, device: torch.device) -> tuple[torch.Tensor, torch.Tensor]:
    g = torch.Generator().manual_seed(1)
    x1 = torch.randn(args.batch, 3, args.img_size, args.img_size, generator=g)
    return x1.to(device), torch.randn(x1.shape, generator=g).to(device)


def main(argv: list[str] | None = None) -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--arch", default="vit_tiny")
    p.add_argument("--depth", type=int, default=6)
    p.add_argument("--img-size", type=int, default=32)
    p.add_argument("--patch-size", type=int, default=4)
    p.add_argument("--dim", type=int, default=256)
    p.add_argument("--mlp-dim", type=int, default=4096, help="head width (official 4096)")
    p.add_argument("--batch", type=int, default=64, help="per-device batch")
    p.add_argument("--precision", choices=("auto", "bf16", "fp32", "fp16"), default="auto",
                   help="moco3's precision beside fp32 (default: what auto picks here)")
    p.add_argument("--compile", action="store_true", help="torch.compile moco3's model")
    p.add_argument("--warmup", type=int, default=2)
    p.add_argument("--rounds", type=int, default=5, help="alternating timed rounds")
    p.add_argument("--threads", type=int, default=None, help="torch threads (default: all)")
    p.add_argument("--official-code", metavar="PATH", default=None,
                   help="a checkout (or git directory) of facebookresearch/moco-v3: also time "
                        "the real official step, and give ratios against it")
    args = p.parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)
    device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
    precision = resolve_precision(args.precision, device)
    where = (torch.cuda.get_device_name(device) if device.type == "cuda"
             else f"{cpu_model()} ({cpu_kind()}), {torch.get_num_threads()} threads")
    print(f"{where}; torch {torch.__version__}")
    print(f"{args.arch} depth {args.depth} {args.img_size}px/{args.patch_size}, heads "
          f"{args.mlp_dim}/{args.dim}, batch {args.batch}; precision auto -> "
          f"{resolve_precision('auto', device)} here; attention: "
          + ("fused" if fused_attention_is_faster(device, precision) else "explicit")
          + "; views: " + ("one batch of 2B" if views_batched_is_faster(device, precision)
                           else "one at a time"))

    steps = {}
    stand_in = "official-structure stand-in, fp32"
    baseline_name = stand_in
    if args.official_code:
        if args.arch not in VIT_ARCHS or VIT_ARCHS[args.arch].get("patch_embed"):
            raise SystemExit(f"--official-code: --arch {args.arch} is not a plain ViT; the "
                             f"official step is timed for {', '.join(PLAIN_VITS)}.")
        steps["official code, fp32"], origin = official_code(args, device)
        baseline_name = "official code, fp32"
        if device.type == "cuda":
            # The official recipe on GPUs is fp16 autocast + GradScaler (main_moco.py): the
            # ratios are against that, the speed a user of the official code gets.
            baseline_name = "official code, fp16 AMP"
            steps[baseline_name], _ = official_code(args, device, amp=True)
        print(f"official code: {origin}")
    steps[stand_in] = official(args, device)
    steps["moco3, fp32"] = ours(args, device, "fp32")
    if precision != "fp32" or args.compile:
        steps[f"moco3, {precision}{' compiled' if args.compile else ''}"] = ours(
            args, device, precision)
    first = {name: timed(step, device) for name, step in steps.items()}  # incl. compile
    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats(device)
    seconds = interleaved(steps, args.warmup, args.rounds, device)
    baseline = seconds[baseline_name]
    print(f"{'step':36s} {'ms/step':>9s} {'img/s':>8s} {'vs ' + baseline_name.split(',')[0]:>36s}")
    for name, sec in seconds.items():
        print(f"{name:36s} {sec * 1e3:9.1f} {args.batch / sec:8.2f} {baseline / sec:35.2f}x")
    slowest = max(first, key=first.get)
    print(f"first step (incl. compile): {first[slowest]:.1f} s ({slowest}); peak memory "
          f"{peak_memory_mb(device):.0f} MB")
    if device.type == "cuda":
        last = list(steps.values())[-1]
        flops = step_flops(last)
        peak = peak_tflops(torch.cuda.get_device_name(device))
        achieved = flops / seconds[list(steps)[-1]] / 1e12
        util = f", {100 * achieved / peak:.1f} % of the {peak:.0f} TFLOP/s bf16 peak" if peak \
            else ""
        print(f"model FLOPs/step {flops / 1e12:.2f} TFLOP -> {achieved:.1f} TFLOP/s{util}")


if __name__ == "__main__":
    main()
