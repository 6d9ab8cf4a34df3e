"""probe(cfg, run_dir): the linear probe on the frozen pre-trained backbone.

Official recipe (moco-v3 main_lincls.py): backbone frozen and in eval mode; a Linear
classifier initialised normal(0, 0.01) with zero bias; SGD momentum 0.9, weight decay 0,
lr = lr_base * batch / 256, cosine decay per epoch without warmup; RandomResizedCrop + flip
for training, resize + centre crop for validation; the reported number is the best top-1.
Resumable: the head, its optimizer, the epoch and the RNG go to checkpoints/probe_last.pt
after every epoch.
"""

from __future__ import annotations

import random
from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch
import torch.distributed as torch_dist
from torch import Tensor, nn
from torch.nn.parallel import DistributedDataParallel
from torch.utils.data import DataLoader, DistributedSampler, TensorDataset

from moco3 import checkpoint as ckpt
from moco3.augment import ProbeTrainTransform
from moco3.build import (
    build_moco,
    build_split,
    eval_transform,
    pick_device,
    use_fused_attention,
)
from moco3.config import ConfigError, config_hash, to_run_config
from moco3.data import IndexedTransformDataset
from moco3.dist import get_rank, get_world_size
from moco3.loggers import build_loggers
from moco3.precision import autocast_dtype, resolve_precision
from moco3.preemption import PreemptionFlag
from moco3.runfolder.states import DONE, PREEMPTED, RUNNING
from moco3.runlog import RunLog
from moco3.schedules import probe_lr
from moco3.workers import resolve_num_workers


class LinearHead(nn.Module):
    """Optional parameter-free BN (MAE) then Linear(D, classes), official init."""

    def __init__(self, dim: int, num_classes: int, bn: bool) -> None:
        super().__init__()
        self.bn = nn.BatchNorm1d(dim, affine=False, eps=1e-6) if bn else nn.Identity()
        self.fc = nn.Linear(dim, num_classes)
        nn.init.normal_(self.fc.weight, std=0.01)
        nn.init.zeros_(self.fc.bias)

    def forward(self, f: Tensor) -> Tensor:
        """f (B, D) -> logits (B, classes)."""
        return self.fc(self.bn(f))


class Prober:
    def __init__(self, cfg: Any, run_dir: Path, log: Callable[[str], None] = print) -> None:
        self.cfg, self.run_dir, self.say = cfg, Path(run_dir), log
        self.rank, self.world = get_rank(), get_world_size()
        self.is_main = self.rank == 0
        self.runlog = RunLog(self.run_dir, self.is_main,
                             build_loggers(cfg, self.run_dir) if self.is_main else [])
        self.device = pick_device(cfg.train.device)
        self.amp_dtype = autocast_dtype(resolve_precision(cfg.probe.precision, self.device))
        self.model = build_moco(cfg, global_bn=False).to(self.device)
        use_fused_attention(self.model, self.device,
                            resolve_precision(cfg.probe.precision, self.device))
        found = ckpt.last_path(self.run_dir)
        if not found.exists():
            raise ConfigError(f"no pre-training checkpoint at {found}; run train() first.")
        state = ckpt.load(found)
        if state["config_hash"] != config_hash(cfg):
            raise ConfigError(f"{found} was trained with a different configuration.")
        # The threads the run trained with (features bit-identical across a resume).
        torch.set_num_threads(int(state.get("threads") or cfg.train.threads
                                  or torch.get_num_threads()))
        self.model.load_state_dict(state["model"])
        self.pretrain_step = int(state["step"])
        self.images_seen = self.pretrain_step * cfg.train.batch_size
        self.model.eval().requires_grad_(False)  # frozen backbone, eval mode (official)
        m = cfg.model
        train_set, val_set = build_split(cfg, "train"), build_split(cfg, "val")
        self.num_classes = train_set.num_classes
        eval_tf = eval_transform(cfg)
        train_tf = ProbeTrainTransform(m.img_size) if cfg.probe.augment else eval_tf
        self.train_images = IndexedTransformDataset(train_set, train_tf)
        self.val_images = IndexedTransformDataset(val_set, eval_tf)
        torch.manual_seed(cfg.seed)
        dim = self.model.base_encoder.backbone.num_features
        self.head = LinearHead(dim, self.num_classes, cfg.probe.bn).to(self.device)
        self.net: nn.Module = self.head
        if self.world > 1:
            ids = [self.device.index] if self.device.type == "cuda" else None
            self.net = DistributedDataParallel(self.head, device_ids=ids)
        self.optimizer = torch.optim.SGD(self.head.parameters(), lr=0.0,
                                         momentum=cfg.probe.momentum,
                                         weight_decay=cfg.probe.weight_decay)
        self.epoch, self.best, self.last = 0, 0.0, 0.0

    # -- features ---------------------------------------------------------------------
    @torch.no_grad()
    def features(self, x: Tensor) -> Tensor:
        with torch.autocast(self.device.type, dtype=self.amp_dtype or torch.float32,
                            enabled=self.amp_dtype is not None):
            return self.model.features(x.to(self.device, non_blocking=True)).float()

    def _loader(self, dataset: Any, shuffle: bool, epoch: int) -> DataLoader:
        batch = self.cfg.probe.batch_size // self.world
        sampler = DistributedSampler(dataset, self.world, self.rank, shuffle=shuffle,
                                     seed=self.cfg.seed, drop_last=False)
        sampler.set_epoch(epoch)
        return DataLoader(dataset, batch_size=batch, sampler=sampler,
                          num_workers=resolve_num_workers(self.cfg.data.num_workers,
                                                          self.device),
                          pin_memory=self.device.type == "cuda",
                          generator=torch.Generator().manual_seed(0))

    def _cached(self, dataset: Any) -> TensorDataset:
        """Features computed once: exact when the probe does not augment."""
        feats, labels = [], []
        for x, y, _ in self._loader(dataset, shuffle=False, epoch=0):
            feats.append(self.features(x).cpu())
            labels.append(torch.as_tensor(y))
        feats_t = torch.cat(feats)
        return TensorDataset(feats_t, torch.cat(labels), torch.arange(len(feats_t)))

    # -- checkpoint -----------------------------------------------------------------------
    def _path(self) -> Path:
        return ckpt.checkpoint_dir(self.run_dir) / ckpt.PROBE_LAST

    def save(self) -> None:
        if self.is_main:
            ckpt.save_atomic({"epoch": self.epoch, "best": self.best, "last": self.last,
                              "head": self.head.state_dict(),
                              "optimizer": self.optimizer.state_dict(),
                              "rng": torch.get_rng_state(), "python_rng": random.getstate(),
                              "pretrain_step": self.pretrain_step}, self._path())

    def resume(self) -> None:
        """Continue from probe_last.pt; metrics.jsonl keeps the probe rows of its epochs
        only (the epochs after it are run, and logged, again)."""
        state = ckpt.load(self._path()) if self._path().exists() else None
        if state is None or state["pretrain_step"] != self.pretrain_step:
            self.runlog.rewind_probe(0)  # none, or a probe of an older backbone: start over
            return
        self.runlog.rewind_probe(int(state["epoch"]))
        self.head.load_state_dict(state["head"])
        self.optimizer.load_state_dict(state["optimizer"])
        torch.set_rng_state(state["rng"])
        random.setstate(state["python_rng"])
        self.epoch, self.best = int(state["epoch"]), float(state["best"])
        self.last = float(state["last"])

    # -- the loop -------------------------------------------------------------------------
    def evaluate(self, val: Any) -> float:
        correct = torch.zeros(2, device=self.device)
        self.head.eval()
        with torch.no_grad():
            for f, y, _ in val:
                f = f.to(self.device) if self.cached else self.features(f)
                pred = self.net(f).argmax(1).cpu()
                correct += torch.tensor([(pred == y).sum().item(), len(y)],
                                        device=self.device, dtype=torch.float)
        if self.world > 1:
            torch_dist.all_reduce(correct)
        return 100.0 * correct[0].item() / max(1.0, correct[1].item())

    def run(self, stop_at_epoch: int | None = None) -> float:
        p = self.cfg.probe
        self.resume()
        self.cached = not p.augment
        if self.cached:
            train_data: Any = self._cached(self.train_images)
            val_data: Any = self._cached(self.val_images)
        else:
            train_data, val_data = self.train_images, self.val_images
        self.runlog.set_state(RUNNING, phase="probe")
        flag = PreemptionFlag().install()
        try:
            while self.epoch < p.epochs:
                if flag.requested or self.epoch == stop_at_epoch:
                    self.save()
                    self.runlog.set_state(PREEMPTED, phase="probe")
                    if flag.requested:
                        flag.hand_over()
                    return self.best
                for group in self.optimizer.param_groups:
                    group["lr"] = probe_lr(p.lr_base, p.batch_size, self.epoch, p.epochs)
                self.head.train()
                total, count = torch.zeros((), device=self.device), 0
                for x, y, _ in self._loader(train_data, shuffle=True, epoch=self.epoch):
                    f = x.to(self.device) if self.cached else self.features(x)
                    loss = nn.functional.cross_entropy(self.net(f), y.to(self.device))
                    self.optimizer.zero_grad(set_to_none=True)
                    loss.backward()
                    self.optimizer.step()
                    total += loss.detach() * len(y)
                    count += len(y)
                top1 = self.evaluate(self._loader(val_data, shuffle=False, epoch=0))
                self.epoch += 1
                self.best, self.last = max(self.best, top1), top1
                self.runlog.append({
                    "kind": "probe", "step": self.epoch, "epoch": self.epoch,
                    "images_seen": self.images_seen, "probe_epoch": self.epoch,
                    "probe_loss": (total / max(1, count)).item(), "probe_top1": top1,
                    "lr": probe_lr(p.lr_base, p.batch_size, self.epoch - 1, p.epochs),
                })
                self.save()
        finally:
            flag.restore()
        self.runlog.write_summary({"linear_top1": self.best, "linear_top1_last": self.last})
        self.runlog.set_state(DONE, phase="done")
        return self.best


def probe(cfg: Any, run_dir: str | Path, stop_at_epoch: int | None = None,
          log: Callable[[str], None] = print) -> float:
    """Linear-probe the pre-trained run in `run_dir`; returns the best val top-1 (%)."""
    cfg = to_run_config(cfg)
    prober = Prober(cfg, Path(run_dir), log=log)
    try:
        return prober.run(stop_at_epoch=stop_at_epoch)
    finally:
        prober.runlog.close()
