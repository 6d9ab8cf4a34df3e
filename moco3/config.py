"""The schema of one run's configuration: what `train(cfg, run_dir)` reads.

The launcher composes this with Hydra (experiments/conf), resolves it on the login node and
writes it to `<run_dir>/config.yaml`; the job reads that file and nothing else. Field
defaults are the official MoCo v3 ViT recipe at paper scale; `scale/tiny.yaml` shrinks it.
"""

from __future__ import annotations

import hashlib
import importlib.util
import json
import sys
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from omegaconf import DictConfig, OmegaConf
from omegaconf.errors import OmegaConfBaseException

from moco3.archs import ARCHS, PATCH_EMBEDS, POOLINGS, POS_EMBEDS, inapplicable_switches

# Every choice list of a run lives here, once; the modules that implement them import it.
MECHANISMS = ("in_batch", "queue", "memory_bank", "end_to_end")
MOMENTUM_SCHEDULES = ("cosine", "constant")
# How the memory bank draws its K negatives per step: "distinct" K different rows, never a
# row of the step's own images (a small-N correction); "with_replacement" as Wu et al.
BANK_SAMPLINGS = ("distinct", "with_replacement")
# Generated in memory (moco3/synthetic.py, moco3/textures.py): their size is data.num_train.
GENERATED_DATASETS = ("synthetic", "textures")
DATASETS = (*GENERATED_DATASETS, "digits", "cifar10", "cifar100", "stl10", "imagefolder",
            "imagenet100")
OPTIMIZERS = ("adamw", "lars", "lamb")
PRECISIONS = ("auto", "fp32", "bf16", "fp16")
LOGGERS = ("tensorboard", "wandb", "csv")
# The package each logger imports, and the pip extra (pyproject.toml) that installs it.
LOGGER_PACKAGES = {"tensorboard": "tensorboard", "wandb": "wandb"}
DEVICES = ("auto", "cpu", "cuda")
CHOICES: dict[str, tuple[Any, ...]] = {
    "model.arch": ARCHS,
    "model.patch_embed": PATCH_EMBEDS,
    "model.pos_embed": POS_EMBEDS,
    "model.pooling": POOLINGS,
    "moco.negatives": MECHANISMS,
    "moco.momentum_schedule": MOMENTUM_SCHEDULES,
    "moco.bank_sampling": BANK_SAMPLINGS,
    "data.name": DATASETS,
    "optim.name": OPTIMIZERS,
    "train.precision": PRECISIONS,
    "probe.precision": PRECISIONS,
    "train.device": DEVICES,
}


@dataclass
class ModelConfig:
    """Base encoder and heads. Depth/width overrides of None keep the variant's own."""

    arch: str = "vit_base"
    img_size: int = 224
    patch_size: int = 16
    depth: int | None = None
    embed_dim: int | None = None
    num_heads: int | None = None
    # The paper's recommendation: a frozen random patch projection stabilises training.
    patch_embed: str = "frozen"
    pos_embed: str = "sincos"
    pooling: str = "cls"
    final_norm: bool = True
    drop_path_rate: float = 0.0
    dim: int = 256  # output of projector and predictor
    mlp_dim: int = 4096  # hidden width of the MLP heads
    head_bn: bool = True
    predictor: bool = True


@dataclass
class MocoConfig:
    """The contrastive mechanism: where negatives come from, tau and the momentum m."""

    negatives: str = "in_batch"
    tau: float = 0.2  # 0.2 for ViT, 1.0 for ResNet-50 (official)
    symmetric: bool = True  # ctr(q1,k2)+ctr(q2,k1) (v3); False: ctr(q1,k2) only (v1/v2)
    scale_by_2tau: bool = True  # the official multiplies the loss by 2*tau
    m0: float = 0.99
    momentum_schedule: str = "cosine"
    queue_size: int = 65536  # K for queue and memory_bank
    bank_momentum: float = 0.5  # memory-bank feature momentum (Wu et al. 2018)
    # Divergence (small-N correction): K distinct rows, none of the batch's own; Wu et al.'s
    # code draws with replacement and may draw the positive: "with_replacement".
    bank_sampling: str = "distinct"


@dataclass
class DataConfig:
    name: str = "synthetic"
    root: str | None = None
    download: bool = False
    class_list: str | None = None  # imagenet100: a file of wnids
    num_train: int = 10000  # generated datasets only (synthetic, textures)
    num_val: int = 2000  # generated datasets only
    seed: int = 0  # seed of the generated data itself, not of training
    crop_min: float = 0.08  # RandomResizedCrop scale min: 0.08 ViT, 0.2 R50
    # Evaluation (kNN, probe) keeps this share of the resized image; None: the dataset's
    # protocol, 0.875 for ImageNet folders (Resize 256 + CenterCrop 224), else 1.0.
    eval_crop: float | None = None
    # DataLoader worker processes; None: cores per GPU - 1 (at least 1) on a GPU, 0 on a CPU
    # (moco3/workers.py). Not part of the config hash: it does not change results.
    num_workers: int | None = None


@dataclass
class OptimConfig:
    name: str = "adamw"
    base_lr: float = 1.5e-4  # lr = base_lr * global_batch / 256
    weight_decay: float = 0.1
    weight_decay_end: float | None = None  # None: constant weight decay (official)
    betas: list[float] = field(default_factory=lambda: [0.9, 0.999])
    momentum: float = 0.9  # LARS
    trust_coefficient: float = 0.001  # LARS
    exclude_norm_bias: bool = False  # official AdamW decays every parameter
    warmup_epochs: float = 40.0
    grad_clip: float | None = None  # the paper: clipping helps only at tiny thresholds


@dataclass
class TrainConfig:
    epochs: int = 300
    batch_size: int = 4096  # the GLOBAL batch, split over ranks, as in the official code
    # auto: bf16 on CUDA (fp16 + grad scaler where bf16 is unsupported) and on CPUs with
    # native bf16 (AVX-512 BF16 / AMX); fp32 on other CPUs, where bf16 is 10-70x slower.
    precision: str = "auto"
    compile: bool = False
    device: str = "auto"
    threads: int | None = None  # torch intra-op threads; None keeps torch's default
    log_every: int = 10
    knn_every: int = 100  # steps; 0 disables the kNN monitor during training
    knn_k: int = 20
    knn_t: float = 0.07
    knn_memory: int = 10000  # training images in the kNN memory
    knn_queries: int = 2000  # held-out images evaluated
    ckpt_every_steps: int = 500
    ckpt_every_minutes: float = 10.0
    milestones: list[int] = field(default_factory=list)  # epochs with a kept checkpoint
    spike_factor: float = 4.0
    spike_window: int = 20
    dip_points: float = 3.0
    # Where else the metrics rows go, beside metrics.jsonl (rank 0, inside the run folder):
    # tensorboard | wandb | csv. W&B honours WANDB_MODE=offline.
    loggers: list[str] = field(default_factory=list)
    wandb_project: str = "moco3"
    wandb_entity: str | None = None


@dataclass
class ProbeConfig:
    """Linear probe on frozen features (official recipe: SGD, cosine, 90 epochs)."""

    enabled: bool = True
    epochs: int = 90
    batch_size: int = 1024
    lr_base: float = 3.0  # lr = lr_base * batch / 256 ; 3 for ViT, 0.1 for R50 (official)
    momentum: float = 0.9
    weight_decay: float = 0.0
    bn: bool = False  # parameter-free BN before the classifier, as MAE does
    # Official: augment (RandomResizedCrop + flip) every epoch. False computes the frozen
    # features once and trains the classifier on them (minutes instead of hours at small
    # scale). Divergence from the official recipe when False.
    augment: bool = True
    # Precision of the evaluation features (this probe and the kNN monitor). fp32 as the
    # official main_lincls.py; auto follows train.precision's rule.
    precision: str = "fp32"


@dataclass
class MetaConfig:
    """Where this run sits in a study; written by the launcher, read by analysis."""

    ablation: str = "none"
    run_id: str = "baseline/seed=0"
    factors: dict[str, str] = field(default_factory=dict)
    seed: int = 0
    scale: str = "paper"
    config_hash: str | None = None  # config_hash() of this run, stamped by the launcher


@dataclass
class RunConfig:
    seed: int = 0
    model: ModelConfig = field(default_factory=ModelConfig)
    moco: MocoConfig = field(default_factory=MocoConfig)
    data: DataConfig = field(default_factory=DataConfig)
    optim: OptimConfig = field(default_factory=OptimConfig)
    train: TrainConfig = field(default_factory=TrainConfig)
    probe: ProbeConfig = field(default_factory=ProbeConfig)
    meta: MetaConfig = field(default_factory=MetaConfig)


class ConfigError(ValueError):
    """A run configuration that cannot be trained; the message is one sentence."""


def _lookup(cfg: DictConfig, dotted: str) -> Any:
    return OmegaConf.select(cfg, dotted)


# (key, lowest valid value, whether the lowest value itself is excluded): the ranges every
# run is held to at compose time, so that a launch refuses what a job would crash on.
RANGES: tuple[tuple[str, float, bool], ...] = (
    ("train.epochs", 1, False), ("train.batch_size", 2, False),
    ("train.log_every", 1, False), ("train.knn_every", 0, False), ("train.knn_k", 1, False),
    ("train.knn_t", 0, True), ("train.knn_memory", 1, False), ("train.knn_queries", 1, False),
    ("train.ckpt_every_steps", 1, False), ("train.ckpt_every_minutes", 0, True),
    ("train.spike_factor", 1, True), ("train.spike_window", 1, False),
    ("train.dip_points", 0, False), ("train.threads", 1, False),
    ("optim.base_lr", 0, True), ("optim.weight_decay", 0, False),
    ("optim.warmup_epochs", 0, False), ("optim.grad_clip", 0, True),
    ("optim.momentum", 0, False), ("optim.trust_coefficient", 0, True),
    ("moco.tau", 0, True), ("moco.queue_size", 1, False), ("moco.bank_momentum", 0, False),
    ("model.img_size", 1, False), ("model.patch_size", 1, False), ("model.dim", 1, False),
    ("model.mlp_dim", 1, False), ("model.depth", 1, False), ("model.embed_dim", 1, False),
    ("model.num_heads", 1, False), ("model.drop_path_rate", 0, False),
    ("data.num_train", 1, False), ("data.num_val", 1, False), ("data.num_workers", 0, False),
    ("data.crop_min", 0, True), ("data.eval_crop", 0, True),
    ("probe.epochs", 1, False), ("probe.batch_size", 1, False), ("probe.lr_base", 0, True),
    ("probe.weight_decay", 0, False),
)
AT_MOST_ONE = ("moco.m0", "moco.bank_momentum", "data.crop_min", "data.eval_crop",
               "model.drop_path_rate")
# Datasets whose training-set size is known without reading any file.
_FIXED_TRAIN_SIZES = {"cifar10": 50000, "cifar100": 50000, "stl10": 5000}


def installed(package: str) -> bool:
    """Whether `package` can be imported, without importing it (wandb takes seconds)."""
    if package in sys.modules:
        return sys.modules[package] is not None  # None: blocked, as if not installed
    try:
        return importlib.util.find_spec(package) is not None
    except (ImportError, ValueError):
        return False


def validate(cfg: DictConfig) -> None:
    """Raise ConfigError naming the first bad value and what is valid. This is THE check of
    a run configuration, shared by the launch, the dry run, a run by hand and the job."""
    for key, valid in CHOICES.items():
        value = _lookup(cfg, key)
        if value not in valid:
            raise ConfigError(f"{key}={value!r} is not valid; choose one of {list(valid)}.")
    for name in cfg.train.loggers:
        if name not in LOGGERS:
            raise ConfigError(f"train.loggers has {name!r}; choose from {list(LOGGERS)}.")
        if name in LOGGER_PACKAGES and not installed(LOGGER_PACKAGES[name]):
            raise ConfigError(f"train.loggers has {name!r}, whose package {LOGGER_PACKAGES[name]}"
                              f" is not installed here; pip install 'moco3[{name}]' (or drop "
                              f"{name} from train.loggers).")
    for key, low, strict in RANGES:
        value = _lookup(cfg, key)
        if value is None:
            continue  # optional (None: the default of the arch, torch's threads, ...)
        if value < low or (strict and value == low):
            bound = f"greater than {low}" if strict else f"at least {low}"
            raise ConfigError(f"{key}={value} must be {bound}.")
    for key in AT_MOST_ONE:
        value = _lookup(cfg, key)
        if value is not None and value > 1:
            raise ConfigError(f"{key}={value} must be at most 1.")
    if not 0.0 <= cfg.moco.m0 <= 1.0:
        raise ConfigError(f"moco.m0={cfg.moco.m0} must lie in [0, 1].")
    if cfg.model.arch != "resnet50" and cfg.model.img_size % cfg.model.patch_size:
        raise ConfigError(
            f"model.img_size={cfg.model.img_size} must be a multiple of "
            f"model.patch_size={cfg.model.patch_size}."
        )
    bad = inapplicable_switches(cfg.model)
    if bad:
        raise ConfigError(
            f"{', '.join(bad)} cannot apply to model.arch={cfg.model.arch}"
            + ("; ViT switches keep their defaults with a ResNet-50 (choose a ViT arch to "
               "vary them)." if cfg.model.arch == "resnet50" else
               " (a conv-stem arch); set model.patch_embed=conv_stem.")
        )
    train_size = (cfg.data.num_train if cfg.data.name in GENERATED_DATASETS
                  else _FIXED_TRAIN_SIZES.get(cfg.data.name))
    if train_size is not None:
        check_batch_fits(cfg, train_size)


def check_batch_fits(cfg: DictConfig, train_images: int) -> None:
    """A global batch larger than the training set gives no step at all; a memory bank that
    draws K distinct rows outside the batch needs K + batch rows."""
    if cfg.train.batch_size > train_images:
        raise ConfigError(
            f"train.batch_size={cfg.train.batch_size} is larger than the training set of "
            f"data={cfg.data.name} ({train_images} images); lower it or use more data."
        )
    if (cfg.moco.negatives == "memory_bank" and cfg.moco.bank_sampling == "distinct"
            and cfg.moco.queue_size > train_images - cfg.train.batch_size):
        raise ConfigError(
            f"moco.queue_size={cfg.moco.queue_size} distinct memory-bank negatives do not fit "
            f"in the {train_images - cfg.train.batch_size} rows of data={cfg.data.name} "
            f"outside a batch of {cfg.train.batch_size}; lower K, use more data, or set "
            "moco.bank_sampling=with_replacement."
        )


def to_run_config(raw: Any) -> DictConfig:
    """Merge `raw` (dict, DictConfig or RunConfig) onto the schema and validate it.

    Unknown keys and wrongly typed values fail here with OmegaConf's message wrapped in one
    ConfigError sentence, before anything is written.
    """
    schema = OmegaConf.structured(RunConfig)
    try:
        cfg = OmegaConf.merge(schema, raw if raw is not None else {})
    except OmegaConfBaseException as err:
        first = str(err).splitlines()[0]
        raise ConfigError(f"invalid run configuration: {first}") from None
    validate(cfg)
    return cfg


def load_run_config(path: str | Path) -> DictConfig:
    """Read `<run_dir>/config.yaml` written by the launcher (or by experiments/train.py)."""
    path = Path(path)
    if not path.is_file():
        raise ConfigError(f"no run configuration at {path}; the launcher writes it first.")
    return to_run_config(OmegaConf.load(path))


def changed_keys(old: Any, new: Any, prefix: str = "") -> list[str]:
    """Dotted keys whose values differ between two nested configs (dicts / DictConfigs),
    as `key: old -> new`."""
    if isinstance(old, DictConfig):
        old = OmegaConf.to_container(old, resolve=True)
    if isinstance(new, DictConfig):
        new = OmegaConf.to_container(new, resolve=True)
    if isinstance(old, dict) and isinstance(new, dict):
        out = []
        for key in sorted(set(old) | set(new), key=str):
            out += changed_keys(old.get(key), new.get(key), f"{prefix}{key}.")
        return out
    return [] if old == new else [f"{prefix[:-1]}: {old!r} -> {new!r}"]


def config_hash(cfg: DictConfig) -> str:
    """sha256 (16 hex) of everything that changes the run's results.

    `meta` is excluded (where the run sits in a study does not change it), and so are the
    logging/checkpoint cadences and the resources (threads, loader workers), so they can be
    changed on resume.
    """
    container = OmegaConf.to_container(cfg, resolve=True)
    assert isinstance(container, dict)
    container.pop("meta", None)
    train = dict(container.get("train", {}))
    for key in ("log_every", "ckpt_every_steps", "ckpt_every_minutes", "milestones",
                "threads", "compile", "loggers", "wandb_project", "wandb_entity"):
        train.pop(key, None)
    container["train"] = train
    data = dict(container.get("data", {}))
    data.pop("num_workers", None)
    container["data"] = data
    blob = json.dumps(container, sort_keys=True, default=str).encode()
    return hashlib.sha256(blob).hexdigest()[:16]
