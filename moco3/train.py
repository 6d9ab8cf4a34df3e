"""train(cfg, run_dir): one MoCo v3 pre-training job, resumable at any step.

The loop is step-based (the epoch is derived from the global step) and follows the official
step: q from the base encoder, the explicit momentum update, k from the momentum encoder,
loss = ctr(q1, k2) + ctr(q2, k1), backward, optimizer step. lr / wd / m come from the pure
schedules, so nothing is replayed on resume: the step alone determines them.

No gradient accumulation, on purpose: with a contrastive loss the negatives of a step are
the keys of its batch, so accumulating k small batches is NOT a big batch - each loss would
see 1/k of the negatives (and per-view BN statistics would change too).
"""

from __future__ import annotations

import math
import random
import resource
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch
import torch.distributed as torch_dist
from omegaconf import DictConfig, OmegaConf
from torch import Tensor, nn
from torch.nn.parallel import DistributedDataParallel
from torch.utils.data import DataLoader

from moco3 import checkpoint as ckpt
from moco3.augment import EvalTransform, TwoViewTransform
from moco3.config import ConfigError, config_hash, to_run_config
from moco3.data import IndexedTransformDataset, build_dataset, eval_crop_fraction
from moco3.dist import get_rank, get_world_size
from moco3.knn import extract_features, weighted_knn_top1
from moco3.loader import StepBatchSampler, epoch_loader
from moco3.model import MoCo, build_model
from moco3.monitor import InstabilityMonitor
from moco3.negatives import Negatives, build_negatives
from moco3.optim import build_optimizer
from moco3.precision import autocast_dtype, resolve_precision
from moco3.preemption import PreemptionFlag
from moco3.runlog import RunLog
from moco3.schedules import lr_at, momentum_at, scaled_lr, wd_at
from moco3.step import MocoStep

GROUPS = ("patch_embed", "first_block", "last_block", "heads")
_TIMING_KEYS = ("sec_per_step", "img_per_sec", "peak_mem_mb")


def pick_device(name: str) -> torch.device:
    if name == "cuda" or (name == "auto" and torch.cuda.is_available()):
        if not torch.cuda.is_available():
            raise ConfigError("train.device=cuda but no CUDA device is visible; use auto or cpu.")
        index = torch.cuda.current_device() if torch_dist.is_initialized() else 0
        return torch.device("cuda", index)
    return torch.device("cpu")


def build_moco(cfg: DictConfig, global_bn: bool) -> MoCo:
    """The MoCo model of a run config."""
    m = cfg.model
    overrides = {k: m[k] for k in ("img_size", "patch_size", "depth", "embed_dim", "num_heads",
                                   "patch_embed", "pos_embed", "pooling", "final_norm",
                                   "drop_path_rate") if m[k] is not None}
    uses_momentum = cfg.moco.negatives in ("in_batch", "queue")
    return build_model(m.arch, dim=m.dim, mlp_dim=m.mlp_dim, head_bn=m.head_bn,
                       predictor=m.predictor, momentum_encoder=uses_momentum,
                       global_bn=global_bn, **overrides)


def build_split(cfg: DictConfig, split: str) -> Any:
    """The run's dataset split: items (uint8 image (3,H,W), label)."""
    d = cfg.data
    return build_dataset(d.name, split, root=d.root, img_size=cfg.model.img_size,
                         num_train=d.num_train, num_val=d.num_val, seed=d.seed,
                         download=d.download, class_list=d.class_list)


def use_fused_attention(model: nn.Module, device: torch.device) -> None:
    """Fused attention on GPUs, explicit matmuls on CPU (faster there; the same math)."""
    for module in model.modules():
        if hasattr(module, "set_fused_attention"):
            module.set_fused_attention(device.type == "cuda")


def _peak_mem_mb(device: torch.device) -> float:
    if device.type == "cuda":
        return torch.cuda.max_memory_allocated(device) / 2**20
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024  # Linux: kB


def _rng_state() -> dict[str, Any]:
    state: dict[str, Any] = {"torch": torch.get_rng_state(), "python": random.getstate()}
    if torch.cuda.is_available():
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def _set_rng_state(state: dict[str, Any]) -> None:
    torch.set_rng_state(state["torch"])
    random.setstate(state["python"])
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])


class Trainer:
    """The state of one pre-training job; `run()` is the loop."""

    def __init__(self, cfg: DictConfig, run_dir: Path, log: Callable[[str], None] = print,
                 on_row: Callable[[dict[str, Any]], None] | None = None):
        self.cfg, self.run_dir, self.say, self.on_row = cfg, Path(run_dir), log, on_row
        self.rank, self.world = get_rank(), get_world_size()
        self.is_main = self.rank == 0
        if cfg.train.threads:
            torch.set_num_threads(int(cfg.train.threads))
        self.device = pick_device(cfg.train.device)
        self.precision = resolve_precision(cfg.train.precision, self.device)
        self.amp_dtype = autocast_dtype(self.precision)
        # kNN features in the evaluation precision (fp32 by default, as the official probe).
        self.eval_dtype = autocast_dtype(resolve_precision(cfg.probe.precision, self.device))
        self.hash = config_hash(cfg)
        self.runlog = RunLog(self.run_dir, self.is_main)

        torch.manual_seed(cfg.seed)
        random.seed(cfg.seed)
        self._build_data()
        self.model = build_moco(cfg, global_bn=self.world > 1).to(self.device)
        use_fused_attention(self.model, self.device)
        if self.world > 1 and self.device.type == "cuda":
            # Official: SyncBN everywhere under DDP (the R50 and conv-stem backbones). On CPU
            # torch's SyncBatchNorm refuses to run; there the heads use GlobalBatchNorm1d and
            # backbone BN stays per-rank (Divergence: CPU multi-process only).
            self.model = nn.SyncBatchNorm.convert_sync_batchnorm(self.model)
        self.negatives: Negatives = build_negatives(
            cfg.moco.negatives, dim=cfg.model.dim, tau=cfg.moco.tau,
            scale_by_2tau=cfg.moco.scale_by_2tau, queue_size=cfg.moco.queue_size,
            num_samples=len(self.train_set), bank_momentum=cfg.moco.bank_momentum,
        ).to(self.device)
        self.peak_lr = scaled_lr(cfg.optim.base_lr, cfg.train.batch_size)
        self.optimizer = build_optimizer(
            cfg.optim.name, self.model.named_parameters(), lr=self.peak_lr,
            weight_decay=cfg.optim.weight_decay, betas=tuple(cfg.optim.betas),
            momentum=cfg.optim.momentum, trust_coefficient=cfg.optim.trust_coefficient,
            exclude_norm_bias=cfg.optim.exclude_norm_bias,
        )
        self.scaler = torch.amp.GradScaler("cuda") if self.amp_dtype == torch.float16 else None
        self.monitor = InstabilityMonitor(cfg.train.spike_factor, cfg.train.spike_window,
                                          dip_points=cfg.train.dip_points)
        self.step, self.train_seconds, self.last_knn = 0, 0.0, None
        self.groups = {k: v for k, v in self.model.grad_groups().items() if k in GROUPS}
        self.group_names = list(self.groups)
        self.steps_per_epoch = len(self.train_set) // cfg.train.batch_size
        if self.steps_per_epoch < 1:
            raise ConfigError(
                f"train.batch_size={cfg.train.batch_size} is larger than the training set "
                f"({len(self.train_set)} images); lower it or use more data."
            )
        self.total_steps = cfg.train.epochs * self.steps_per_epoch
        self.warmup_steps = round(cfg.optim.warmup_epochs * self.steps_per_epoch)
        self.net: nn.Module = self.model
        if self.world > 1:
            ids = [self.device.index] if self.device.type == "cuda" else None
            self.net = DistributedDataParallel(self.model, device_ids=ids)
        if cfg.train.compile:
            self.net = torch.compile(self.net)
        self.step_fn = MocoStep(self.net, self.model, self.negatives, self.optimizer,
                                self.amp_dtype, self.scaler, cfg.moco.symmetric,
                                cfg.optim.grad_clip, self.groups)

    # -- data -------------------------------------------------------------------------
    def _build_data(self) -> None:
        d, m = self.cfg.data, self.cfg.model
        self.train_set = build_split(self.cfg, "train")
        self.val_set = build_split(self.cfg, "val")
        self.images = IndexedTransformDataset(self.train_set, None)  # uint8, augmented per batch
        self.two_views = TwoViewTransform(m.img_size, crop_min=d.crop_min)
        eval_tf = EvalTransform(m.img_size, eval_crop_fraction(d.name, d.eval_crop))
        t = self.cfg.train
        memory = torch.arange(min(t.knn_memory, len(self.train_set)))
        queries = torch.arange(min(t.knn_queries, len(self.val_set)))
        self.knn_memory = DataLoader(
            torch.utils.data.Subset(IndexedTransformDataset(self.train_set, eval_tf), memory),
            batch_size=256, num_workers=d.num_workers)
        self.knn_queries = DataLoader(
            torch.utils.data.Subset(IndexedTransformDataset(self.val_set, eval_tf), queries),
            batch_size=256, num_workers=d.num_workers)

    # -- checkpoints ----------------------------------------------------------------------
    def state_dict(self) -> dict[str, Any]:
        return {
            "step": self.step, "config_hash": self.hash, "model": self.model.state_dict(),
            "optimizer": self.optimizer.state_dict(), "negatives": self.negatives.state_dict(),
            "scaler": self.scaler.state_dict() if self.scaler else None, "rng": _rng_state(),
            "monitor": self.monitor.state_dict(), "train_seconds": self.train_seconds,
            "last_knn": self.last_knn, "last_train_row": getattr(self, "last_train_row", None),
        }

    def save(self) -> None:
        if not self.is_main:
            return
        state = self.state_dict()
        ckpt.save_atomic(state, ckpt.last_path(self.run_dir))
        epoch, within = divmod(self.step, self.steps_per_epoch)
        if within == 0 and epoch in set(self.cfg.train.milestones):
            ckpt.save_atomic(state, ckpt.milestone_path(self.run_dir, epoch))

    def resume(self) -> bool:
        """Load the newest usable checkpoint of run_dir, if any. True if resumed."""
        found = ckpt.load_latest(self.run_dir, warn=self.say)
        if found is None:
            return False
        state, path = found
        if state["config_hash"] != self.hash:
            raise ConfigError(
                f"{self.run_dir} holds a checkpoint of a different configuration (hash "
                f"{state['config_hash']}, now {self.hash}); restore its config.yaml or use a "
                "new run folder."
            )
        self.model.load_state_dict(state["model"])
        self.optimizer.load_state_dict(state["optimizer"])
        self.negatives.load_state_dict(state["negatives"])
        if self.scaler and state["scaler"]:
            self.scaler.load_state_dict(state["scaler"])
        self.monitor.load_state_dict(state["monitor"])
        _set_rng_state(state["rng"])
        self.step, self.train_seconds = int(state["step"]), float(state["train_seconds"])
        self.last_knn = state["last_knn"]
        if state.get("last_train_row"):
            self.last_train_row = state["last_train_row"]
        self.say(f"resumed {self.run_dir} from {path.name} at step {self.step}")
        return True

    # -- the step -------------------------------------------------------------------------
    def _set_schedules(self) -> dict[str, float]:
        s, o = self.step, self.cfg.optim
        lr = lr_at(s, self.total_steps, self.warmup_steps, self.peak_lr)
        wd = wd_at(s, self.total_steps, o.weight_decay, o.weight_decay_end)
        m = momentum_at(s, self.total_steps, self.cfg.moco.m0, self.cfg.moco.momentum_schedule)
        for group in self.optimizer.param_groups:
            group["lr"] = lr
            group["weight_decay"] = wd if group["apply_wd"] else 0.0
        return {"lr": lr, "wd": wd, "momentum": m}

    def train_step(self, x1: Tensor, x2: Tensor, index: Tensor, m: float
                   ) -> tuple[Tensor, Tensor]:
        """One optimizer step. Returns the loss and the group gradient norms, on device."""
        x1 = x1.to(self.device, non_blocking=True)
        x2 = x2.to(self.device, non_blocking=True)
        index = index.to(self.device, non_blocking=True)
        return self.step_fn(x1, x2, index, m)

    # -- monitoring -----------------------------------------------------------------------
    def _row(self, kind: str, **values: Any) -> dict[str, Any]:
        return {"kind": kind, "step": self.step,
                "epoch": round(self.step / self.steps_per_epoch, 6),
                "images_seen": self.step * self.cfg.train.batch_size, **values}

    @torch.no_grad()
    def knn(self) -> float:
        """Weighted kNN top-1 of the base encoder's pooled features (main process)."""
        was_training = self.model.training
        self.model.eval()
        try:
            memory, memory_labels = extract_features(self.model.features, self.knn_memory,
                                                     self.device, self.eval_dtype)
            queries, query_labels = extract_features(self.model.features, self.knn_queries,
                                                     self.device, self.eval_dtype)
        finally:
            self.model.train(was_training)
        t = self.cfg.train
        return weighted_knn_top1(memory, memory_labels, queries, query_labels,
                                 self.train_set.num_classes, k=t.knn_k, t=t.knn_t)

    def run_knn(self) -> None:
        if self.is_main:
            value = self.knn()
            self.last_knn = value
            row = self._row("knn", knn_top1=value)
            self.runlog.append(row)
            if self.on_row:
                self.on_row(row)
            for event in self.monitor.knn(value):
                self.runlog.append(self._row("event", **event))
        if self.world > 1:
            torch_dist.barrier()

    def flush(self, pending: list[tuple[int, Tensor, Tensor]],
              row: dict[str, float] | None, seconds: float, steps: int) -> int | None:
        """Process the steps since the last flush: spike events, divergence, and - when `row`
        holds the step's schedule values - a train row. One host transfer for all of them.

        Returns the first step whose loss was not finite, or None.
        """
        if not pending:
            return None
        losses_t = torch.stack([p[1] for p in pending]).float()
        if self.world > 1:
            # Log the loss of the global batch (each rank holds the mean over its queries),
            # and let every rank take the same divergence decision.
            torch_dist.all_reduce(losses_t)
            losses_t /= self.world
        losses = losses_t.cpu().tolist()
        norms = torch.stack([p[2] for p in pending]).float().cpu().tolist()
        current = self.step
        for (step, _, _), loss, step_norms in zip(pending, losses, norms, strict=True):
            if not math.isfinite(loss):
                return step
            self.step = step
            named = dict(zip(self.group_names, step_norms[:-1], strict=True))
            trainable = {g: v for g, v in named.items() if self._group_trains(g)}
            for event in self.monitor.grad_norms(step, trainable):
                self.runlog.append(self._row("event", **event))
        self.step = current
        if row is not None:
            *group_norms, total = norms[-1]
            named = dict(zip(self.group_names, group_norms, strict=True))
            sec = seconds / max(1, steps)
            train_row = self._row(
                "train", loss=losses[-1], **row, tau=self.cfg.moco.tau, grad_norm=total,
                **{f"grad_norm_{g}": v for g, v in named.items()},
                sec_per_step=sec, img_per_sec=self.cfg.train.batch_size / sec if sec else 0.0,
                peak_mem_mb=_peak_mem_mb(self.device),
            )
            self.runlog.append(train_row)
            self.last_train_row = train_row
            if self.on_row and self.is_main:
                self.on_row(train_row)
        return None

    def _group_trains(self, group: str) -> bool:
        return any(p.requires_grad for p in self.groups.get(group, []))

    # -- the loop -------------------------------------------------------------------------
    def _agree(self, stop: bool, checkpoint_due: bool) -> tuple[bool, bool]:
        """All ranks take the same decisions: stop if any rank saw a signal; checkpoint by
        time if the main process's clock says so (clocks differ between ranks)."""
        if self.world == 1:
            return stop, checkpoint_due
        t = torch.tensor([float(stop), float(checkpoint_due and self.is_main)],
                         device=self.device)
        torch_dist.all_reduce(t)
        return bool(t[0].item() > 0), bool(t[1].item() > 0)

    def run(self, stop_at_step: int | None = None) -> str:
        cfg = self.cfg
        status = self.runlog.status()
        resumed = self.resume()
        if resumed and self.step >= self.total_steps:
            # Pre-training finished earlier (the job may have stopped in the probe).
            if status.get("state") != "done" and "state" not in (self.runlog.read_summary()):
                self.runlog.write_summary(self.summary("done"))
            if status.get("state") != "done":
                self._finish()
            return "done"
        self.runlog.set_state("running", step=self.step, total_steps=self.total_steps,
                              error=None, phase="pretrain")
        if resumed and self.is_main:
            self.runlog.append(self._row("event", event="resumed"))
        if self.step == 0 and cfg.train.knn_every:
            self.run_knn()  # the curve starts at initialisation: the baseline of "it learns"
        flag = PreemptionFlag().install()
        pending: list[tuple[int, Tensor, Tensor]] = []
        last_ckpt_time = time.monotonic()
        window_seconds, window_steps = 0.0, 0
        outcome = "done"
        self.model.train()
        try:
            while self.step < self.total_steps and outcome == "done":
                epoch, first = divmod(self.step, self.steps_per_epoch)
                sampler = StepBatchSampler(len(self.train_set), cfg.train.batch_size, cfg.seed,
                                           epoch, first, self.steps_per_epoch, self.rank,
                                           self.world)
                loader = epoch_loader(self.images, self.two_views, sampler, cfg.seed, epoch,
                                      cfg.data.num_workers,
                                      pin_memory=self.device.type == "cuda")
                tick = time.perf_counter()  # step time includes waiting for the batch
                for (x1, x2), _, index in loader:
                    stop, time_due = self._agree(
                        flag.requested or self.step == stop_at_step,
                        time.monotonic() - last_ckpt_time > 60 * cfg.train.ckpt_every_minutes)
                    if stop:
                        outcome = "preempted"
                        break
                    sched = self._set_schedules()
                    loss, norms = self.train_step(x1, x2, index, sched["momentum"])
                    self.step += 1
                    pending.append((self.step, loss, norms))
                    last = self.step == self.total_steps
                    log_now = self.step % cfg.train.log_every == 0 or last
                    knn_now = (cfg.train.knn_every and self.step % cfg.train.knn_every == 0
                               ) or last
                    ckpt_now = (self.step % cfg.train.ckpt_every_steps == 0
                                or self.step % self.steps_per_epoch == 0 or last or time_due)
                    if log_now or knn_now or ckpt_now:
                        window_seconds += time.perf_counter() - tick
                        window_steps += 1
                        self.train_seconds += window_seconds
                        bad = self.flush(pending, sched if log_now else None, window_seconds,
                                         window_steps)
                        pending.clear()
                        if log_now:
                            window_seconds, window_steps = 0.0, 0
                        if bad is not None:
                            flag.restore()
                            return self._diverged(bad)
                        if knn_now:
                            self.run_knn()
                        if ckpt_now:
                            self.save()
                            last_ckpt_time = time.monotonic()
                        if log_now:
                            self.runlog.set_state("running", step=self.step)
                    else:
                        window_seconds += time.perf_counter() - tick
                        window_steps += 1
                    tick = time.perf_counter()
                    if last:
                        break
        except BaseException as err:
            flag.restore()
            if isinstance(err, KeyboardInterrupt):
                self.runlog.set_state("preempted", step=self.step, error="interrupted")
            elif not isinstance(err, SystemExit):
                self.runlog.set_state("failed", step=self.step,
                                      error=f"{type(err).__name__}: {err}")
            raise
        if outcome == "preempted":
            # Checkpoint exactly at the step boundary the stop was noticed at. The pending
            # steps update the spike history (so a resumed run emits the same events) but
            # write no train row: an uninterrupted run would not have written one here.
            bad = self.flush(pending, None, 0.0, 0)
            if bad is not None:
                flag.restore()
                return self._diverged(bad)
            self.save()
            self.runlog.append(self._row("event", event="preempted"))
            self.runlog.set_state("preempted", step=self.step)
            self.say(f"preempted at step {self.step}; checkpoint saved in {self.run_dir}")
            if flag.requested:
                flag.hand_over()  # under submitit: its requeue hook (may exit the process)
            else:
                flag.restore()
            return "preempted"
        flag.restore()
        self.runlog.write_summary(self.summary("done"))
        self._finish()
        return "done"

    def _finish(self) -> None:
        """Pre-training is over; the run is done unless its linear probe is still to run."""
        if self.cfg.probe.enabled:
            self.runlog.set_state("running", step=self.step, phase="probe")
        else:
            self.runlog.set_state("done", step=self.step, phase="done")

    def _diverged(self, step: int) -> str:
        """A non-finite loss: a result of an instability study, recorded, not raised."""
        self.step = step
        if self.is_main:
            self.runlog.append(self._row("event", event="diverged", value=float("nan")))
        self.runlog.write_summary(self.summary("diverged", diverged_step=step))
        self.runlog.set_state("diverged", step=step,
                              error=f"non-finite loss at step {step}")
        self.say(f"diverged: non-finite loss at step {step}")
        return "diverged"

    def summary(self, state: str, diverged_step: int | None = None) -> dict[str, Any]:
        last = getattr(self, "last_train_row", {})
        first_group = "patch_embed" if self._group_trains("patch_embed") else "first_block"
        knn_max = self.monitor.knn_max
        return {
            "state": state, "step": self.step, "total_steps": self.total_steps,
            "knn_top1": self.last_knn, "knn_top1_max": knn_max,
            "num_knn_dips": self.monitor.num_dips, "max_knn_dip": self.monitor.max_dip,
            "num_spikes_first": self.monitor.spikes.get(first_group, 0),
            "num_spikes_last": self.monitor.spikes.get("last_block", 0),
            "spikes_by_group": dict(self.monitor.spikes), "diverged_step": diverged_step,
            "final_loss": last.get("loss"), "train_seconds": self.train_seconds,
            "config_hash": self.hash,
        }


def train(cfg: Any, run_dir: str | Path, stop_at_step: int | None = None,
          log: Callable[[str], None] = print,
          on_row: Callable[[dict[str, Any]], None] | None = None) -> str:
    """Pre-train one run in `run_dir`; resume from its checkpoint if there is one.

    Returns the final state: "done", "diverged" or "preempted" (after a signal, or at
    `stop_at_step`, which tests use to interrupt a run exactly). `on_row` sees each train
    and knn row as it is written (progress bars). Raises ConfigError for a
    configuration that cannot run and CheckpointError for unusable checkpoints.
    """
    cfg = to_run_config(cfg)
    run_dir = Path(run_dir)
    if get_rank() == 0:
        run_dir.mkdir(parents=True, exist_ok=True)
        config_path = run_dir / "config.yaml"
        if not config_path.exists():
            OmegaConf.save(cfg, config_path)
    return Trainer(cfg, run_dir, log=log, on_row=on_row).run(stop_at_step=stop_at_step)
