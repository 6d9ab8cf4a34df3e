"""Parameter groups and the three optimizers of the MoCo v3 study: AdamW, LARS, LAMB."""

from __future__ import annotations

from collections.abc import Callable, Iterable

import torch
from torch import nn
from torch.optim import Optimizer

from moco3.config import OPTIMIZERS


def _trust_ratio(numerator: torch.Tensor, denominator: torch.Tensor,
                 coefficient: float = 1.0) -> torch.Tensor:
    """coefficient * num / den, or 1 where either norm is 0 (no host sync)."""
    ok = (numerator > 0) & (denominator > 0)
    ratio = coefficient * numerator / torch.where(ok, denominator, torch.ones_like(denominator))
    return torch.where(ok, ratio, torch.ones_like(ratio))


class _GroupwiseOptimizer(Optimizer):
    """The step shared by LARS and LAMB: the closure, then `update_group` for each group's
    parameters that have a gradient (frozen or unused ones are skipped)."""

    @torch.no_grad()
    def step(self, closure: Callable[[], float] | None = None) -> float | None:  # type: ignore[override]
        loss = None
        if closure is not None:
            with torch.enable_grad():
                loss = closure()
        for group in self.param_groups:
            params = [p for p in group["params"] if p.grad is not None]
            if params:
                self.update_group(group, params)
        return loss

    def update_group(self, group: dict, params: list[torch.Tensor]) -> None:
        """Each optimizer's update of one group's parameters (no grad is tracked here)."""
        raise NotImplementedError(f"{type(self).__name__} must define update_group")


class LARS(_GroupwiseOptimizer):
    """LARS with the official MoCo v3 semantics (SGD momentum on trust-scaled updates).

    For a parameter with ndim > 1: d = g + wd * w, d *= trust_coefficient * ||w|| / ||d||
    (1 where either norm is 0). Parameters with ndim <= 1 (biases, norm affine) get
    neither weight decay nor trust scaling: d = g. Then mu <- momentum * mu + d and
    w <- w - lr * mu (mu starts at 0, so the first step moves by lr * d).
    """

    def __init__(self, params: Iterable, lr: float = 0.0, weight_decay: float = 0.0,
                 momentum: float = 0.9, trust_coefficient: float = 0.001) -> None:
        defaults = {"lr": lr, "weight_decay": weight_decay, "momentum": momentum,
                    "trust_coefficient": trust_coefficient}
        super().__init__(params, defaults)

    def update_group(self, group: dict, params: list[torch.Tensor]) -> None:
        updates = []
        for p in params:
            d = p.grad
            if p.ndim > 1:
                d = d.add(p, alpha=group["weight_decay"])
                d = d * _trust_ratio(torch.linalg.vector_norm(p),
                                     torch.linalg.vector_norm(d),
                                     group["trust_coefficient"])
            updates.append(d)
        bufs = []
        for p in params:
            state = self.state[p]
            if "mu" not in state:
                state["mu"] = torch.zeros_like(p)
            bufs.append(state["mu"])
        torch._foreach_mul_(bufs, group["momentum"])
        torch._foreach_add_(bufs, updates)
        torch._foreach_add_(params, bufs, alpha=-group["lr"])


class LAMB(_GroupwiseOptimizer):
    """LAMB (You et al. 2020): an Adam(W) update rescaled per tensor by ||w|| / ||u||.

    m, v: Adam moments with bias correction; u = m_hat / (sqrt(v_hat) + eps) + wd * w;
    trust = ||w|| / ||u|| (1 where either norm is 0); w <- w - lr * trust * u.
    The MoCo v3 LAMB study uses weight decay 1e-3 (set it through build_optimizer).
    """

    # Choice: eps 1e-6 as in the LAMB paper's experiments (AdamW's default is 1e-8); the
    # trust ratio is applied to every tensor, biases and norm affine included, as in the
    # LAMB paper's layer-wise rule (no ndim exemption, unlike LARS); no global gradient
    # clipping (some implementations clip to norm 1; the paper does not).
    #
    # Checked against timm.optim.Lamb (tests/test_optim.py): with max_grad_norm=None,
    # always_adapt=True, eps=1e-6, bias_correction, coupled decay, the two give the same
    # weights step for step (to 1e-12 in float64). The one difference the test found: timm
    # counts the bias-correction steps per group, this class per tensor, so a tensor that
    # has no gradient on some steps is corrected differently afterwards. Every trainable
    # tensor of a MoCo step gets a gradient, so moco3's runs are unaffected; this class is
    # kept because its checkpoints hold per-tensor steps (resuming needs no conversion).

    def __init__(self, params: Iterable, lr: float = 1e-3,
                 betas: tuple[float, float] = (0.9, 0.999), eps: float = 1e-6,
                 weight_decay: float = 0.0) -> None:
        defaults = {"lr": lr, "betas": betas, "eps": eps, "weight_decay": weight_decay}
        super().__init__(params, defaults)

    def update_group(self, group: dict, params: list[torch.Tensor]) -> None:
        beta1, beta2 = group["betas"]
        grads = [p.grad for p in params]
        exp_avgs, exp_avg_sqs = [], []
        for p in params:
            state = self.state[p]
            if not state:
                state["step"] = 0
                state["exp_avg"] = torch.zeros_like(p)
                state["exp_avg_sq"] = torch.zeros_like(p)
            state["step"] += 1
            exp_avgs.append(state["exp_avg"])
            exp_avg_sqs.append(state["exp_avg_sq"])
        torch._foreach_lerp_(exp_avgs, grads, 1.0 - beta1)
        torch._foreach_mul_(exp_avg_sqs, beta2)
        torch._foreach_addcmul_(exp_avg_sqs, grads, grads, value=1.0 - beta2)
        for p, exp_avg, exp_avg_sq in zip(params, exp_avgs, exp_avg_sqs, strict=True):
            t = self.state[p]["step"]
            m_hat = exp_avg / (1.0 - beta1**t)
            denom = (exp_avg_sq / (1.0 - beta2**t)).sqrt_().add_(group["eps"])
            update = m_hat.div_(denom).add_(p, alpha=group["weight_decay"])
            trust = _trust_ratio(torch.linalg.vector_norm(p),
                                 torch.linalg.vector_norm(update))
            p.sub_(update.mul_(trust * group["lr"]))


def param_groups(
    named_params: Iterable[tuple[str, nn.Parameter]], weight_decay: float,
    exclude_norm_bias: bool = False,
) -> list[dict]:
    """Trainable parameters in groups that carry "apply_wd".

    Official MoCo v3 (AdamW) decays every parameter: one group. exclude_norm_bias puts the
    tensors with ndim <= 1 (biases, LayerNorm/BN affine, ...) in a group without decay.
    Frozen parameters (requires_grad False) are left out.
    """
    decay, no_decay = [], []
    for _name, p in named_params:
        if not p.requires_grad:
            continue
        (no_decay if exclude_norm_bias and p.ndim <= 1 else decay).append(p)
    groups = [{"params": decay, "weight_decay": weight_decay, "apply_wd": True},
              {"params": no_decay, "weight_decay": 0.0, "apply_wd": False}]
    groups = [g for g in groups if g["params"]]
    if not groups:
        raise ValueError("no trainable parameters to optimise (all have requires_grad=False)")
    return groups


def build_optimizer(
    name: str,
    named_params: Iterable[tuple[str, nn.Parameter]],
    lr: float,
    weight_decay: float,
    betas: tuple[float, float] = (0.9, 0.999),
    momentum: float = 0.9,
    trust_coefficient: float = 0.001,
    exclude_norm_bias: bool = False,
) -> Optimizer:
    """One of OPTIMIZERS over the trainable parameters; groups carry "apply_wd" so the loop
    can set group["weight_decay"] = wd_at(...) if group["apply_wd"] else 0."""
    groups = param_groups(named_params, weight_decay, exclude_norm_bias)
    if name == "adamw":
        params = [p for g in groups for p in g["params"]]
        # The fused kernel (CPU and CUDA) beat foreach when measured; same math.
        fused = all(p.device.type in ("cpu", "cuda") and p.is_floating_point() for p in params)
        return torch.optim.AdamW(groups, lr=lr, betas=betas, weight_decay=weight_decay,
                                 fused=fused, foreach=None if fused else True)
    if name == "lars":
        return LARS(groups, lr=lr, weight_decay=weight_decay, momentum=momentum,
                    trust_coefficient=trust_coefficient)
    if name == "lamb":
        return LAMB(groups, lr=lr, betas=betas, weight_decay=weight_decay)
    raise ValueError(f"unknown optimizer {name!r}; valid: {', '.join(OPTIMIZERS)}")
