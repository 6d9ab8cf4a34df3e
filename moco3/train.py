"""train(cfg, run_dir): one MoCo v3 pre-training job, resumable at any step.

The loop is step-based (the epoch is derived from the global step) and each step is the
official one (moco3/step.py). lr / wd / m come from the pure schedules, so nothing is
replayed on resume: the step alone determines them. `Trainer.run` reads top to bottom; the
bookkeeping (rows, timing, checkpoints) lives in small named helpers below it.

No gradient accumulation, on purpose: with a contrastive loss the negatives of a step are
the keys of its batch, so accumulating k small batches is NOT a big batch - each loss would
see 1/k of the negatives (and per-view BN statistics would change too).
"""

from __future__ import annotations

import math
import random
import resource
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import torch
import torch.distributed as torch_dist
from omegaconf import DictConfig, OmegaConf
from torch import Tensor, nn
from torch.nn.parallel import DistributedDataParallel
from torch.utils.data import DataLoader, Subset

from moco3 import checkpoint as ckpt
from moco3.augment import TwoViewTransform
from moco3.build import build_moco, build_split, eval_transform, pick_device, use_fastest_step
from moco3.config import ConfigError, changed_keys, check_batch_fits, config_hash, to_run_config
from moco3.data import IndexedTransformDataset
from moco3.dist import get_rank, get_world_size
from moco3.knn import extract_features, weighted_knn_top1
from moco3.loader import StepBatchSampler, epoch_loader
from moco3.loggers import build_loggers
from moco3.monitor import InstabilityMonitor
from moco3.negatives import Negatives, build_negatives
from moco3.optim import build_optimizer
from moco3.precision import autocast_dtype, resolve_precision
from moco3.preemption import PreemptionFlag
from moco3.rngstate import gather_rng_states, restore_rng_state
from moco3.runfolder.fields import GRAD_GROUPS, LAST_LAYER_GROUP, first_layer_group
from moco3.runfolder.negatives import negatives_per_query
from moco3.runfolder.states import DIVERGED, DONE, PREEMPTED, RUNNING
from moco3.runlog import RunLog
from moco3.schedules import lr_at, momentum_at, scaled_lr, wd_at
from moco3.step import MocoStep
from moco3.workers import resolve_num_workers


def _peak_mem_mb(device: torch.device) -> float:
    if device.type == "cuda":
        return torch.cuda.max_memory_allocated(device) / 2**20
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024  # Linux: kB


class StepTimer:
    """Wall time of the steps (waiting for the batch included; kNN and checkpoints not),
    per logging window and in total."""

    def __init__(self, total: float = 0.0) -> None:
        self.total, self.window, self.steps = total, 0.0, 0
        self.tick()

    def tick(self) -> None:
        """The next step's time starts now."""
        self._start = time.perf_counter()

    def lap(self) -> None:
        """One step ended."""
        seconds = time.perf_counter() - self._start
        self.total += seconds
        self.window += seconds
        self.steps += 1

    def take_window(self) -> float:
        """Seconds per step over the window since the last call; starts a new window."""
        sec = self.window / max(1, self.steps)
        self.window, self.steps = 0.0, 0
        return sec


class Trainer:
    """The state of one pre-training job, built from its config and, if the run folder has
    one, its checkpoint; `run()` is the loop."""

    def __init__(self, cfg: DictConfig, run_dir: Path, log: Callable[[str], None] = print,
                 on_row: Callable[[dict[str, Any]], None] | None = None,
                 threads: int | None = None):
        self.cfg, self.run_dir, self.say, self.on_row = cfg, Path(run_dir), log, on_row
        self.rank, self.world = get_rank(), get_world_size()
        self.is_main = self.rank == 0
        self.hash = config_hash(cfg)
        self.runlog = RunLog(self.run_dir, self.is_main,
                             build_loggers(cfg, self.run_dir) if self.is_main else [])
        self.device = pick_device(cfg.train.device)
        # A resumed run keeps what it started with: its precision (a job requeued onto
        # another kind of node must not switch mid-run) and its thread count (matmul
        # results depend on how the work is split, so resume is bitwise only with it).
        self.checkpoint = self._load_checkpoint()
        started = self.checkpoint or {}
        self.threads = int(started.get("threads") or cfg.train.threads or threads
                           or torch.get_num_threads())
        torch.set_num_threads(self.threads)
        self.precision = started.get("precision") or resolve_precision(cfg.train.precision,
                                                                       self.device)
        resolve_precision(self.precision, self.device)  # refuses fp16 on a CPU
        self.amp_dtype = autocast_dtype(self.precision)
        # kNN features in the evaluation precision (fp32 by default, as the official probe).
        self.eval_dtype = autocast_dtype(resolve_precision(cfg.probe.precision, self.device))

        # Loader workers from this job's resources unless the config sets them; pinned
        # memory on a GPU (asynchronous host-to-device copies of the batches).
        self.num_workers = resolve_num_workers(cfg.data.num_workers, self.device)
        self.pin_memory = self.device.type == "cuda"

        torch.manual_seed(cfg.seed)
        random.seed(cfg.seed)
        self._build_data()
        self.model = build_moco(cfg, global_bn=self.world > 1).to(self.device)
        use_fastest_step(self.model, self.device, self.precision)
        if self.world > 1 and self.device.type == "cuda":
            # Official: SyncBN everywhere under DDP (the R50 and conv-stem backbones). On CPU
            # torch's SyncBatchNorm refuses to run; there the heads use GlobalBatchNorm1d and
            # backbone BN stays per-rank (Divergence: CPU multi-process only).
            self.model = nn.SyncBatchNorm.convert_sync_batchnorm(self.model)
        self._build_objective()
        self.scaler = torch.amp.GradScaler("cuda") if self.precision == "fp16" else None
        self.monitor = InstabilityMonitor(cfg.train.spike_factor, cfg.train.spike_window,
                                          dip_points=cfg.train.dip_points)
        self.groups = {k: v for k, v in self.model.grad_groups().items() if k in GRAD_GROUPS}
        check_batch_fits(cfg, len(self.train_set))
        self.steps_per_epoch = len(self.train_set) // cfg.train.batch_size
        self.total_steps = cfg.train.epochs * self.steps_per_epoch
        self.warmup_steps = round(cfg.optim.warmup_epochs * self.steps_per_epoch)
        self.net: nn.Module = self.model
        if self.world > 1:
            ids = [self.device.index] if self.device.type == "cuda" else None
            self.net = DistributedDataParallel(self.model, device_ids=ids)
        if cfg.train.compile:
            self.net = torch.compile(self.net)
        self.train_step = MocoStep(self.net, self.model, self.negatives, self.optimizer,
                                   self.amp_dtype, self.scaler, cfg.moco.symmetric,
                                   cfg.optim.grad_clip, self.groups)
        # The loop's state; a checkpoint restores all of it (resume()).
        self.step = 0
        self.timer = StepTimer()
        self.last_knn: float | None = None
        self.knn_pixels: float | None = None
        self.last_train_row: dict[str, Any] | None = None
        self.pending: list[tuple[int, Tensor, Tensor]] = []  # (step, loss, norms) not logged
        self.last_save = time.monotonic()
        self.save_by_time = False

    def _build_objective(self) -> None:
        """Where the negatives come from, and the optimizer at the scaled peak lr."""
        cfg = self.cfg
        self.negatives: Negatives = build_negatives(
            cfg.moco.negatives, dim=cfg.model.dim, tau=cfg.moco.tau,
            scale_by_2tau=cfg.moco.scale_by_2tau, queue_size=cfg.moco.queue_size,
            num_samples=len(self.train_set), bank_momentum=cfg.moco.bank_momentum,
            bank_sampling=cfg.moco.bank_sampling,
        ).to(self.device)
        # The real K: what each query's logits hold besides its positive (the paper's label
        # names K at the paper's scale; the report plots this number).
        self.negatives_per_query = negatives_per_query(
            cfg.moco.negatives, cfg.train.batch_size, cfg.moco.queue_size)
        self.peak_lr = scaled_lr(cfg.optim.base_lr, cfg.train.batch_size)
        self.optimizer = build_optimizer(
            cfg.optim.name, self.model.named_parameters(), lr=self.peak_lr,
            weight_decay=cfg.optim.weight_decay, betas=tuple(cfg.optim.betas),
            momentum=cfg.optim.momentum, trust_coefficient=cfg.optim.trust_coefficient,
            exclude_norm_bias=cfg.optim.exclude_norm_bias,
        )

    # -- the loop ---------------------------------------------------------------------------
    def run(self, stop_at_step: int | None = None) -> str:
        """Pre-train to the last step. Returns "done", "diverged" or "preempted" (after a
        signal, or at `stop_at_step`, which tests use to interrupt a run exactly)."""
        if self.resume() and self.step >= self.total_steps:
            return self._finished_earlier()
        self.runlog.set_state(RUNNING, step=self.step, total_steps=self.total_steps,
                              precision=self.precision, threads=self.threads,
                              num_workers=self.num_workers, error=None,
                              phase="pretrain", negatives_per_query=self.negatives_per_query)
        if self.step == 0 and self.cfg.train.knn_every:
            self.run_knn()  # the curve starts at initialisation: the baseline of "it learns"
        flag = PreemptionFlag().install()
        try:
            self.model.train()
            for x1, x2, index in self.batches():
                if self._stop_requested(flag, stop_at_step):
                    return self._preempt(flag)
                sched = self.schedules()
                loss, norms = self._step(x1, x2, index, sched["momentum"])
                self.step += 1
                self.timer.lap()
                self.pending.append((self.step, loss, norms))
                log, knn, save = self._due()
                if log or knn or save:
                    diverged_at = self.flush(sched if log else None)
                    if diverged_at is not None:
                        return self._diverged(diverged_at)
                    if knn:
                        self.run_knn()
                    if save:
                        self.save()
                    if log:
                        self.runlog.set_state(RUNNING, step=self.step)
                self.timer.tick()
        finally:
            flag.restore()
        return self._finish()

    def batches(self) -> Iterator[tuple[Tensor, Tensor, Tensor]]:
        """(view 1, view 2, image indices) of each step from `self.step` to the last; the
        order and the views are functions of (seed, epoch, index) (moco3/loader.py)."""
        cfg = self.cfg
        while self.step < self.total_steps:
            epoch, first = divmod(self.step, self.steps_per_epoch)
            sampler = StepBatchSampler(len(self.train_set), cfg.train.batch_size, cfg.seed,
                                       epoch, first, self.steps_per_epoch, self.rank,
                                       self.world)
            loader = epoch_loader(self.images, self.two_views, sampler, cfg.seed, epoch,
                                  self.num_workers, pin_memory=self.pin_memory)
            for (x1, x2), _, index in loader:
                yield x1, x2, index
                if self.step >= self.total_steps:
                    return

    def schedules(self) -> dict[str, float]:
        """lr, wd and m of this step (pure functions of it), set on the optimizer."""
        s, o = self.step, self.cfg.optim
        lr = lr_at(s, self.total_steps, self.warmup_steps, self.peak_lr)
        wd = wd_at(s, self.total_steps, o.weight_decay, o.weight_decay_end)
        m = momentum_at(s, self.total_steps, self.cfg.moco.m0, self.cfg.moco.momentum_schedule)
        for group in self.optimizer.param_groups:
            group["lr"] = lr
            group["weight_decay"] = wd if group["apply_wd"] else 0.0
        return {"lr": lr, "wd": wd, "momentum": m}

    def _step(self, x1: Tensor, x2: Tensor, index: Tensor, m: float) -> tuple[Tensor, Tensor]:
        """One optimizer step. Returns the loss and the group gradient norms, on device."""
        x1 = x1.to(self.device, non_blocking=True)
        x2 = x2.to(self.device, non_blocking=True)
        index = index.to(self.device, non_blocking=True)
        return self.train_step(x1, x2, index, m)

    # -- decisions --------------------------------------------------------------------------
    def _due(self) -> tuple[bool, bool, bool]:
        """(log, kNN, checkpoint) after the step just taken."""
        t, s = self.cfg.train, self.step
        last = s == self.total_steps
        log = s % t.log_every == 0 or last
        knn = bool(t.knn_every and s % t.knn_every == 0) or last
        save = (s % t.ckpt_every_steps == 0 or s % self.steps_per_epoch == 0 or last
                or self.save_by_time)
        return log, knn, save

    def _stop_requested(self, flag: PreemptionFlag, stop_at_step: int | None) -> bool:
        """Whether to stop before this step; every rank takes the same decisions: stop if
        any rank saw a signal, checkpoint by time if the main process's clock says so."""
        stop = flag.requested or self.step == stop_at_step
        by_time = time.monotonic() - self.last_save > 60 * self.cfg.train.ckpt_every_minutes
        if self.world > 1:
            t = torch.tensor([float(stop), float(by_time and self.is_main)],
                             device=self.device)
            torch_dist.all_reduce(t)
            stop, by_time = bool(t[0].item() > 0), bool(t[1].item() > 0)
        self.save_by_time = by_time
        return stop

    # -- rows -------------------------------------------------------------------------------
    def _row(self, kind: str, step: int | None = None, **values: Any) -> dict[str, Any]:
        step = self.step if step is None else step
        return {"kind": kind, "step": step, "epoch": round(step / self.steps_per_epoch, 6),
                "images_seen": step * self.cfg.train.batch_size, **values}

    def _write(self, row: dict[str, Any]) -> None:
        self.runlog.append(row)
        if self.on_row and self.is_main and row["kind"] in ("train", "knn"):
            self.on_row(row)

    def flush(self, sched: dict[str, float] | None) -> int | None:
        """The steps since the last flush, in one host transfer: their spike events and the
        divergence check, then - when `sched` holds the step's schedule values - the train
        row of the current step. Returns the first step whose loss is not finite, or None."""
        if not self.pending:
            return None
        losses_t = torch.stack([p[1] for p in self.pending]).float()
        if self.world > 1:
            # Log the loss of the global batch (each rank holds the mean over its queries),
            # and let every rank take the same divergence decision.
            torch_dist.all_reduce(losses_t)
            losses_t /= self.world
        losses = losses_t.cpu().tolist()
        norms = torch.stack([p[2] for p in self.pending]).float().cpu().tolist()
        steps = [p[0] for p in self.pending]
        self.pending.clear()
        for step, loss, step_norms in zip(steps, losses, norms, strict=True):
            if not math.isfinite(loss):
                return step
            if self.skipped_by_scaler(step_norms):
                self._write(self._row("event", step=step, **self.monitor.skipped_step()))
                continue
            trainable = {g: v for g, v in zip(self.groups, step_norms, strict=False)
                         if self._group_trains(g)}
            for event in self.monitor.grad_norms(trainable):
                self._write(self._row("event", step=step, **event))
        if sched is not None:
            self._write_train_row(losses[-1], norms[-1], sched)
        return None

    def skipped_by_scaler(self, norms: list[float]) -> bool:
        """Whether the GradScaler skipped the step of these gradient norms (fp16 only).

        The scaler skips exactly when an unscaled gradient holds an inf or NaN, and then the
        total norm (the last entry, over every group's gradients) is not finite either;
        with finite gradients it is finite (it would take a norm above 1e19). Read from
        the norms the step returns anyway: no extra host synchronisation."""
        return self.scaler is not None and not math.isfinite(norms[-1])

    def _write_train_row(self, loss: float, norms: list[float], sched: dict[str, float]
                         ) -> None:
        *group_norms, total = norms
        sec = self.timer.take_window()
        self.last_train_row = self._row(
            "train", loss=loss, **sched, tau=self.cfg.moco.tau, grad_norm=total,
            **{f"grad_norm_{g}": v for g, v in zip(self.groups, group_norms, strict=True)},
            sec_per_step=sec, img_per_sec=self.cfg.train.batch_size / sec if sec else 0.0,
            peak_mem_mb=_peak_mem_mb(self.device),
        )
        self._write(self.last_train_row)

    def _group_trains(self, group: str) -> bool:
        return any(p.requires_grad for p in self.groups.get(group, []))

    # -- kNN monitor ------------------------------------------------------------------------
    def _build_data(self) -> None:
        d, m, t = self.cfg.data, self.cfg.model, self.cfg.train
        self.train_set = build_split(self.cfg, "train")
        self.val_set = build_split(self.cfg, "val")
        self.images = IndexedTransformDataset(self.train_set, None)  # uint8, augmented per batch
        self.two_views = TwoViewTransform(m.img_size, crop_min=d.crop_min)
        eval_tf = eval_transform(self.cfg)
        memory = range(min(t.knn_memory, len(self.train_set)))
        queries = range(min(t.knn_queries, len(self.val_set)))
        # Persistent workers: these two loaders are read at every kNN evaluation, and
        # starting their workers each time would cost more than the smaller evaluations.
        workers = {"batch_size": 256, "num_workers": self.num_workers,
                   "pin_memory": self.pin_memory, "persistent_workers": self.num_workers > 0}
        self.knn_memory = DataLoader(Subset(IndexedTransformDataset(self.train_set, eval_tf),
                                            memory), **workers)
        self.knn_queries = DataLoader(Subset(IndexedTransformDataset(self.val_set, eval_tf),
                                             queries), **workers)

    @torch.no_grad()
    def knn(self, features: Callable[[Tensor], Tensor] | None = None) -> float:
        """Weighted kNN top-1 of `features` (default: the base encoder's pooled features)
        of held-out images against a memory of training images (main process)."""
        features = features or self.model.features
        was_training = self.model.training
        self.model.eval()
        try:
            memory, memory_labels = extract_features(features, self.knn_memory, self.device,
                                                     self.eval_dtype)
            queries, query_labels = extract_features(features, self.knn_queries, self.device,
                                                     self.eval_dtype)
        finally:
            self.model.train(was_training)
        t = self.cfg.train
        return weighted_knn_top1(memory, memory_labels, queries, query_labels,
                                 self.train_set.num_classes, k=t.knn_k, t=t.knn_t)

    def run_knn(self) -> None:
        if self.is_main:
            if self.knn_pixels is None:
                # The floor a representation has to beat: the same kNN on the pixels.
                self.knn_pixels = self.knn(lambda x: x.flatten(1))
            self.last_knn = self.knn()
            self._write(self._row("knn", knn_top1=self.last_knn))
            for event in self.monitor.knn(self.last_knn):
                self._write(self._row("event", **event))
        if self.world > 1:
            torch_dist.barrier()

    # -- checkpoints ------------------------------------------------------------------------
    def _load_checkpoint(self) -> dict[str, Any] | None:
        """The newest usable checkpoint of the run folder, checked against this config."""
        found = ckpt.load_latest(self.run_dir, warn=self.say)
        if found is None:
            return None
        state, path = found
        if state["config_hash"] != self.hash:
            stored = state.get("config")
            what = ""
            if stored is not None:
                keys = changed_keys(stored, OmegaConf.to_container(self.cfg, resolve=True))
                what = f" (changed: {', '.join(keys[:8])})" if keys else ""
            raise ConfigError(
                f"{self.run_dir} holds a checkpoint of a different configuration{what}; "
                "restore its config.yaml or use a new run folder."
            )
        state["path"] = path
        return state

    def state_dict(self, rng: dict[str, Any] | None) -> dict[str, Any]:
        """The checkpoint; `rng`: every rank's random state (gather_rng_states)."""
        return {
            "step": self.step, "config_hash": self.hash,
            "config": OmegaConf.to_container(self.cfg, resolve=True),
            "precision": self.precision, "threads": self.threads,
            "model": self.model.state_dict(), "optimizer": self.optimizer.state_dict(),
            "negatives": self.negatives.state_dict(),
            "scaler": self.scaler.state_dict() if self.scaler else None, "rng": rng,
            "monitor": self.monitor.state_dict(), "train_seconds": self.timer.total,
            "last_knn": self.last_knn, "knn_pixels": self.knn_pixels,
            "last_train_row": self.last_train_row,
        }

    def save(self) -> None:
        """last.pt, and at a milestone epoch its epoch_NNNN.pt first: a kill between the two
        writes then resumes from the previous last.pt and writes both again, whereas the
        other order would resume past the milestone and never write it."""
        self.last_save = time.monotonic()
        rng = gather_rng_states(self.device)  # a collective: every rank takes part
        if not self.is_main:
            return
        state = self.state_dict(rng)
        epoch, within = divmod(self.step, self.steps_per_epoch)
        if within == 0 and epoch in set(self.cfg.train.milestones):
            ckpt.save_atomic(state, ckpt.milestone_path(self.run_dir, epoch))
        ckpt.save_atomic(state, ckpt.last_path(self.run_dir))

    def resume(self) -> bool:
        """Restore the loop's state from the checkpoint found at start, if any, and bring
        metrics.jsonl back to its step (rows exactly once). True if resumed."""
        state = self.checkpoint
        self.runlog.rewind_to_step(int(state["step"]) if state else -1)
        if state is None:
            return False
        self.model.load_state_dict(state["model"])
        self.optimizer.load_state_dict(state["optimizer"])
        self.negatives.load_state_dict(state["negatives"])
        if self.scaler and state["scaler"]:
            self.scaler.load_state_dict(state["scaler"])
        self.monitor.load_state_dict(state["monitor"])
        missing = restore_rng_state(state["rng"], self.rank, self.device)
        if missing:
            self.say(missing)
        self.step = int(state["step"])
        self.timer = StepTimer(float(state["train_seconds"]))
        self.last_knn, self.knn_pixels = state["last_knn"], state.get("knn_pixels")
        self.last_train_row = state.get("last_train_row")
        self.checkpoint = None  # the tensors are loaded: free the copy
        if self.step < self.total_steps and self.is_main:
            self.runlog.append(self._row("event", event="resumed"))
        self.say(f"resumed {self.run_dir} from {state['path'].name} at step {self.step}")
        return True

    # -- endings ----------------------------------------------------------------------------
    def _finished_earlier(self) -> str:
        """Pre-training finished earlier (the job may have stopped in the probe)."""
        if self.runlog.status().get("state") != DONE:
            if "state" not in self.runlog.read_summary():
                self.runlog.write_summary(self.summary(DONE))
            self._after_pretraining()
        return DONE

    def _finish(self) -> str:
        self.runlog.write_summary(self.summary(DONE))
        self._after_pretraining()
        return DONE

    def _after_pretraining(self) -> None:
        """The run is done unless its linear probe is still to run."""
        if self.cfg.probe.enabled:
            self.runlog.set_state(RUNNING, step=self.step, phase="probe")
        else:
            self.runlog.set_state(DONE, step=self.step, phase="done")

    def _preempt(self, flag: PreemptionFlag) -> str:
        """Checkpoint exactly at the step boundary the stop was noticed at. The pending steps
        write their spike events (an uninterrupted run writes them at its next flush) but no
        train row: an uninterrupted run would not have written one here."""
        diverged_at = self.flush(None)
        if diverged_at is not None:
            return self._diverged(diverged_at)
        self.save()
        if self.is_main:
            self.runlog.append(self._row("event", event="preempted"))
        self.runlog.set_state(PREEMPTED, step=self.step)
        self.say(f"preempted at step {self.step}; checkpoint saved in {self.run_dir}")
        if flag.requested:
            flag.hand_over()  # under submitit: its requeue hook (may exit the process)
        return PREEMPTED

    def _diverged(self, step: int) -> str:
        """A non-finite loss: a result of an instability study, recorded, not raised."""
        self.step = step
        if self.is_main:
            self.runlog.append(self._row("event", event="diverged", value=float("nan")))
        self.runlog.write_summary(self.summary(DIVERGED, diverged_step=step))
        self.runlog.set_state(DIVERGED, step=step, error=f"non-finite loss at step {step}")
        self.say(f"diverged: non-finite loss at step {step}")
        return DIVERGED

    def summary(self, state: str, diverged_step: int | None = None) -> dict[str, Any]:
        last = self.last_train_row or {}
        first_group = first_layer_group(self._group_trains(GRAD_GROUPS[0]))
        dips = self.monitor.dips
        return {
            "state": state, "step": self.step, "total_steps": self.total_steps,
            "knn_top1": self.last_knn, "knn_top1_max": dips.running_max,
            "knn_top1_pixels": self.knn_pixels,
            "num_knn_dips": dips.num_dips, "max_knn_dip": dips.max_drop,
            "num_spikes_first": self.monitor.spikes.get(first_group, 0),
            "num_spikes_last": self.monitor.spikes.get(LAST_LAYER_GROUP, 0),
            "spikes_by_group": dict(self.monitor.spikes), "diverged_step": diverged_step,
            "skipped_steps": self.monitor.skipped_steps,
            "final_loss": last.get("loss"), "train_seconds": self.timer.total,
            "config_hash": self.hash, "precision": self.precision, "threads": self.threads,
            "num_workers": self.num_workers,
            "negatives_per_query": self.negatives_per_query,
        }


def train(cfg: Any, run_dir: str | Path, stop_at_step: int | None = None,
          log: Callable[[str], None] = print,
          on_row: Callable[[dict[str, Any]], None] | None = None,
          threads: int | None = None) -> str:
    """Pre-train one run in `run_dir`; resume from its checkpoint if there is one.

    Returns the final state: "done", "diverged" or "preempted" (after a signal, or at
    `stop_at_step`). `on_row` sees each train and knn row as it is written (progress bars).
    `threads`: torch threads when train.threads is unset (a resumed run keeps its own).
    Raises ConfigError for a configuration that cannot run and CheckpointError for
    unusable checkpoints. The run folder's config.yaml is the launcher's to write.
    """
    cfg = to_run_config(cfg)
    trainer = Trainer(cfg, Path(run_dir), log=log, on_row=on_row, threads=threads)
    try:
        return trainer.run(stop_at_step=stop_at_step)
    finally:
        trainer.runlog.close()  # the loggers flush whatever ended the run
