"""Export a run's checkpoint for other tools: `python -m moco3.export RUN_DIR --format F`.

  timm  <out>.safetensors: the backbone, loadable strictly by timm's VisionTransformer (or
        torchvision's / timm's resnet50) with the keyword arguments written beside it as JSON.
  deit  <out>.pth: {'model': backbone} for DeiT's main.py --finetune (the JSON names the arch).
  moco  <out>.pth.tar: the official MoCo v3 pre-training checkpoint, for the official
        main_lincls.py --pretrained and convert_to_deit.py --input.

Every export writes the weights file and a JSON sidecar (how to load it, where it came from)
and then checks itself: the file is loaded into its target the way that target's consumer
loads it, and the features on the same images must equal moco3's own to 1e-6, or nothing is
written. What the target cannot express is refused with one sentence (exit code 2), as are a
folder without config.yaml or checkpoint and an existing output without --force. The layouts
themselves are in moco3/export_layouts.py.
"""

from __future__ import annotations

import moco3

# ruff: noqa: E402 - run as a file, the path must be fixed before anything else is imported
moco3.run_as_script(__file__)

import argparse
import json
import os
import sys
from collections.abc import Callable
from dataclasses import dataclass
from importlib.metadata import PackageNotFoundError, version
from pathlib import Path
from typing import Any

import timm
import torch
from omegaconf import DictConfig
from safetensors.torch import save_file
from torch import Tensor, nn

from moco3 import checkpoint as ckpt
from moco3 import export_layouts as layouts
from moco3.augment import IMAGENET_MEAN, IMAGENET_STD
from moco3.build import build_moco
from moco3.config import ConfigError, config_hash, load_run_config
from moco3.model import MoCo
from moco3.runfolder import cli

FORMATS = layouts.FORMATS
DEFAULT_NAMES = {"timm": "timm.safetensors", "deit": "deit.pth", "moco": "moco.pth.tar"}
EXPORT_DIR = "export"
ATOL = 1e-6  # features must agree to this (absolute); the same kernels usually give exactly 0
CHECK_IMAGES = 2


class ExportError(ValueError):
    """A run that cannot be exported as asked; the message is one sentence."""


def default_out(run_dir: Path, fmt: str) -> Path:
    return Path(run_dir) / EXPORT_DIR / DEFAULT_NAMES[fmt]


def sidecar_path(out: Path) -> Path:
    """The JSON beside the weights: timm.safetensors -> timm.json, moco.pth.tar -> moco.pth.json."""
    return out.with_suffix(".json")


def _checkpoint_path(run_dir: Path, checkpoint: str | None) -> Path:
    """last.pt by default; a bare name (epoch_0100.pt) is looked up in the run's checkpoints."""
    if checkpoint is None:
        return ckpt.last_path(run_dir)
    path = Path(checkpoint)
    if path.parent == Path(".") and not path.exists():
        return ckpt.checkpoint_dir(run_dir) / path
    return path


def materialise(cfg: DictConfig, model_state: dict[str, Tensor]) -> MoCo:
    """The run's MoCo, holding the checkpoint's tensors: built on the meta device (no init
    cost, whatever the size) and filled by a strict load that assigns the saved tensors."""
    with torch.device("meta"):
        model = build_moco(cfg, global_bn=False)
    model.load_state_dict(model_state, strict=True, assign=True)
    model.eval()
    return model


def _epochs_done(state: dict[str, Any]) -> int | None:
    """Completed epochs at the checkpoint's step (the official 'epoch' key), from the last
    train row's step/epoch ratio; None when the checkpoint has no train row yet."""
    step = int(state.get("step", 0))
    row = state.get("last_train_row") or {}
    if step == 0:
        return 0
    if not row.get("epoch"):
        return None
    steps_per_epoch = max(1, round(row["step"] / row["epoch"]))
    return step // steps_per_epoch


def _images(spec: layouts.Spec) -> Tensor:
    """The check's inputs, (CHECK_IMAGES, C, S, S), N(0, 1), fixed seed."""
    chans = spec.in_chans if isinstance(spec, layouts.ViTSpec) else 3
    gen = torch.Generator().manual_seed(0)
    return torch.randn(CHECK_IMAGES, chans, spec.img_size, spec.img_size, generator=gen)


@torch.no_grad()
def check_features(reference: nn.Module, target: nn.Module, spec: layouts.Spec, what: str) -> float:
    """max |target(x) - reference(x)| on the check images; ExportError beyond ATOL."""
    for module in target.modules():
        if hasattr(module, "fused_attn"):
            module.fused_attn = True  # moco3's ViT always uses the fused kernel (same math)
    x = _images(spec)
    ref, got = reference.eval()(x), target.eval()(x)
    diff = float((ref - got).abs().max()) if ref.shape == got.shape else float("inf")
    if not diff <= ATOL:
        raise ExportError(
            f"{what} computes features that differ from moco3's by {diff:.3g} (> {ATOL:g}) "
            f"with timm {timm.__version__}, so nothing was written.")
    return diff


def _version(package: str) -> str | None:
    try:
        return version(package)
    except PackageNotFoundError:
        return None


# -- the three formats ----------------------------------------------------------------------------
@dataclass
class Built:
    """One format's output before writing: the payload, what the sidecar adds, the usage
    lines and notes printed (and kept in the sidecar), and how to load it into its target."""

    payload: Any
    sidecar: dict[str, Any]
    usage: list[str]
    notes: list[str]
    load_target: Callable[[], nn.Module]
    target: str  # the target, in words, for the check's message


def _build_timm(model: MoCo, spec: layouts.Spec, out: Path) -> Built:
    state = {k: v.contiguous() for k, v in layouts.backbone_state(model.state_dict()).items()}
    name, kwargs = layouts.TIMM_NAMES[spec.arch], layouts.timm_kwargs(spec)
    # timm's preprocessing metadata (timm.data.resolve_data_config) would otherwise be the
    # named model's: for the vit_* names that is mean = std = 0.5, not MoCo v3's ImageNet ones.
    overlay = {"input_size": [3, spec.img_size, spec.img_size], "mean": list(IMAGENET_MEAN),
               "std": list(IMAGENET_STD)}
    sidecar: dict[str, Any] = {"model_name": name, "kwargs": kwargs,
                               "pretrained_cfg_overlay": overlay}
    usage = [f"model = timm.create_model({name!r}, pretrained=False, **kwargs)",
             f"model.load_state_dict(safetensors.torch.load_file({str(out)!r}), strict=True)"]
    notes: list[str] = []
    if isinstance(spec, layouts.ResNetSpec):
        sidecar["torchvision"] = "torchvision.models.resnet50(); model.fc = torch.nn.Identity()"
        usage.append("or: model = torchvision.models.resnet50(); model.fc = torch.nn.Identity()")
        target = "torchvision's resnet50 (fc = Identity)"
    else:
        sidecar["class"] = "timm.models.vision_transformer.VisionTransformer"
        usage.append("or: model = timm.models.vision_transformer.VisionTransformer(**kwargs)")
        target = "timm's VisionTransformer(**kwargs)"
        if spec.pos_embed == "sincos":
            notes.append("the fixed sin-cos pos_embed loads as timm's Parameter; "
                         "requires_grad_(False) keeps it fixed when fine-tuning")
    return Built(state, sidecar, usage, notes, lambda: layouts.load_timm(state, spec), target)


def _build_deit(model: MoCo, spec: layouts.ViTSpec, out: Path) -> Built:
    state = layouts.deit_state(model.state_dict(), spec)
    name, notes = layouts.deit_arch(spec)
    # DeiT's --finetune loads strict=False and drops only a head of the wrong shape; MoCo
    # v3's README uses --resume instead, with that load made strict=False. Both read 'model'.
    command = (f"python main.py --model {name or '<the arch registered as noted>'} "
               f"--input-size {spec.img_size} --finetune {out}")
    sidecar = {"deit_model": name, "input_size": spec.img_size,
               "vit_kwargs": layouts.deit_vit_kwargs(spec)}
    return Built({"model": state}, sidecar, [f"in DeiT: {command}"], notes,
                 lambda: layouts.load_deit(state, spec),
                 "DeiT's VisionTransformer (--finetune: strict=False, head left out)")


def _build_moco(model: MoCo, spec: layouts.Spec, out: Path, epoch: int | None) -> Built:
    state_dict, copied = layouts.moco_state(model.state_dict(), spec)
    # Divergence: no 'optimizer' / 'scaler' (main_moco.py --resume cannot continue from this
    # file: moco3's optimizer state has other groups and order); 'epoch' only when known.
    payload: dict[str, Any] = {"arch": spec.arch, "state_dict": state_dict}
    if epoch is not None:
        payload["epoch"] = epoch
    usage = [f"python main_lincls.py -a {spec.arch} --pretrained {out} [...] DATA"]
    if isinstance(spec, layouts.ViTSpec):
        usage.append(f"python convert_to_deit.py --input {out} --output OUT.pth")
    notes = layouts.official_arch_notes(spec)
    if copied:
        notes.append("this run's mechanism keeps no momentum encoder (end-to-end / memory "
                     "bank): module.momentum_encoder.* is a copy of the base encoder")
    sidecar = {"arch": spec.arch, "epoch": epoch, "momentum_encoder_copied": copied}
    target = ("torchvision's resnet50" if isinstance(spec, layouts.ResNetSpec)
              else "the official ViT") + " as main_lincls.py loads it (classifier left out)"
    return Built(payload, sidecar, usage, notes,
                 lambda: layouts.load_lincls(state_dict, spec), target)


def _refusal(fmt: str, spec: layouts.Spec, cfg: DictConfig) -> str | None:
    if fmt == "timm":
        return layouts.timm_refusal(spec)
    if fmt == "deit":
        return layouts.deit_refusal(spec)
    return layouts.moco_refusal(spec, head_bn=cfg.model.head_bn, predictor=cfg.model.predictor)


# -- writing -------------------------------------------------------------------------------------
def _write_all(files: list[tuple[Path, Callable[[Path], None]]]) -> None:
    """Write every file to a temporary name beside it, then rename them all into place, so
    an interrupted export leaves no half-written output."""
    staged: list[tuple[Path, Path]] = []
    try:
        for path, write in files:
            path.parent.mkdir(parents=True, exist_ok=True)
            tmp = path.with_name(f".{path.name}.tmp{os.getpid()}")
            staged.append((tmp, path))
            write(tmp)
        for tmp, path in staged:
            os.replace(tmp, path)
    finally:
        for tmp, _ in staged:
            tmp.unlink(missing_ok=True)


def _prepare(run_dir: Path, fmt: str, out: Path, force: bool,
             checkpoint: str | None) -> tuple[DictConfig, dict[str, Any], Path]:
    """Every refusal that needs no model, cheapest first: (config, checkpoint, its path)."""
    if fmt not in FORMATS:
        raise ExportError(f"unknown format {fmt!r}; choose one of {', '.join(FORMATS)}.")
    if not (run_dir / "config.yaml").is_file():
        raise ExportError(f"{run_dir} has no config.yaml, so it is not a run folder.")
    if out.suffix == ".json":
        raise ExportError(f"--out {out} ends in .json, the name of the sidecar it would write.")
    for path in (out, sidecar_path(out)):
        if path.exists() and not force:
            raise ExportError(f"{path} already exists; pass --force to overwrite it.")
    cfg = load_run_config(run_dir / "config.yaml")
    ckpt_path = _checkpoint_path(run_dir, checkpoint)
    if not ckpt_path.is_file():
        raise ExportError(f"{run_dir} has no checkpoint {ckpt_path.name} (looked for "
                          f"{ckpt_path}); train the run first.")
    state = ckpt.load(ckpt_path)
    if state.get("config_hash") != config_hash(cfg):
        raise ExportError(f"{ckpt_path} was trained under another configuration than "
                          f"{run_dir / 'config.yaml'} (hash {state.get('config_hash')}, config "
                          f"{config_hash(cfg)}), so its model cannot be rebuilt.")
    return cfg, state, ckpt_path


def _first_line(err: Exception) -> str:
    return str(err).strip().splitlines()[0].rstrip(":. ")


def _weights_writer(fmt: str, payload: Any, metadata: dict[str, str]) -> Callable[[Path], None]:
    def write(path: Path) -> None:
        if fmt != "timm":
            torch.save(payload, path)
            return
        path.touch()  # created with the usual (umask) permissions, which save_file narrows
        mode = path.stat().st_mode
        save_file(payload, str(path), metadata=metadata)
        os.chmod(path, mode)

    return write


def export(run_dir: str | Path, fmt: str, out: str | Path | None = None, *, force: bool = False,
           checkpoint: str | None = None, verify: bool = True,
           say: Callable[[str], None] = print) -> tuple[Path, Path]:
    """Export `run_dir`'s checkpoint as `fmt`; returns (weights file, JSON sidecar).

    Raises ExportError (or ConfigError / CheckpointError) with one sentence, having written
    nothing, for whatever cannot be exported.
    """
    run_dir = Path(run_dir)
    out = Path(out) if out is not None else default_out(run_dir, fmt)
    side = sidecar_path(out)
    cfg, state, ckpt_path = _prepare(run_dir, fmt, out, force, checkpoint)
    try:
        model = materialise(cfg, state["model"])
    except RuntimeError as err:
        raise ExportError(f"{ckpt_path} does not fit the model of its config.yaml "
                          f"({_first_line(err)}).") from None
    backbone = model.base_encoder.backbone
    spec = layouts.spec_of(cfg.model.arch, backbone, int(cfg.model.img_size))
    reason = _refusal(fmt, spec, cfg)
    if reason is not None:
        raise ExportError(f"cannot export {spec.arch} as {fmt}: {reason}.")

    if fmt == "timm":
        built = _build_timm(model, spec, out)
    elif fmt == "deit":
        assert isinstance(spec, layouts.ViTSpec)
        built = _build_deit(model, spec, out)
    else:
        built = _build_moco(model, spec, out, _epochs_done(state))
    if isinstance(spec, layouts.ViTSpec) and spec.pos_embed == "none" and fmt != "timm":
        built.notes.append("this ViT has no position embedding: the file carries an all-zero "
                     "pos_embed (the same features), which fine-tuning will train")

    verified = None
    if verify:
        try:
            loaded = built.load_target()
        except (RuntimeError, TypeError) as err:  # a key, shape or argument it rejects
            raise ExportError(f"{built.target} does not load the {fmt} file "
                              f"({_first_line(err)}), so nothing was written.") from None
        diff = check_features(backbone, loaded, spec, built.target)
        verified = {"target": built.target, "max_abs_diff": diff, "atol": ATOL,
                    "images": f"{CHECK_IMAGES} x {tuple(_images(spec).shape[1:])}, N(0, 1)"}

    step = int(state.get("step", 0))
    source = {"run_dir": str(run_dir.resolve()), "checkpoint": str(ckpt_path.resolve()),
              "step": step, "config_hash": state.get("config_hash"), "arch": spec.arch}
    sidecar = {
        "format": fmt, "weights": out.name, **built.sidecar, "usage": built.usage,
        "notes": built.notes, "source": source,
        "exported_with": {"moco3": _version("moco3"), "torch": torch.__version__,
                          "timm": timm.__version__},
        "verified": verified,
    }
    metadata = {"format": "pt", "source": "moco3", "arch": spec.arch,
                "config_hash": str(state.get("config_hash")), "step": str(step)}
    text = json.dumps(sidecar, indent=2) + "\n"
    _write_all([(out, _weights_writer(fmt, built.payload, metadata)),
                (side, lambda p: p.write_text(text))])

    say(f"wrote {out} and {side.name} ({fmt}, {spec.arch}, step {step})")
    if fmt == "timm":
        say(f"  kwargs: {json.dumps(sidecar['kwargs'])}")
    for line in built.usage:
        say(f"  {line}")
    if verified is not None:
        say(f"  verified: {built.target} gives moco3's features "
            f"(max |diff| {diff:.2g} on {verified['images']})")
    for note in built.notes:
        say(f"  note: {note}")
    return out, side


PROG = "python -m moco3.export"


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = cli.parser(PROG, "\n\n".join(__doc__.split("\n\n")[:2]),
                        formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("run_dir", metavar="RUN_DIR", help="a run folder (config.yaml, "
                        "checkpoints/last.pt); with --runs-root (or runs_root=DIR), its path "
                        "below the runs root: <ablation>/<run_id>")
    parser.add_argument("pairs", nargs="*", metavar="runs_root=DIR",
                        help="the runs root, as on launch.py's command line")
    parser.add_argument("--format", required=True, choices=FORMATS, dest="fmt",
                        help="the target (see above)")
    parser.add_argument("--out", default=None, help="the weights file to write (default: "
                        "RUN_DIR/export/{timm.safetensors,deit.pth,moco.pth.tar}); the JSON "
                        "sidecar goes beside it with the suffix .json")
    parser.add_argument("--checkpoint", default=None, help="a checkpoint other than "
                        "checkpoints/last.pt (a path, or a name in RUN_DIR/checkpoints)")
    parser.add_argument("--force", action="store_true", help="overwrite existing outputs")
    parser.add_argument("--no-verify", action="store_true", help="skip loading the file into "
                        "its target and comparing features")
    args = cli.apply_pairs(parser, parser.parse_intermixed_args(argv), ("runs_root",))
    if args.runs_root is not None:
        args.run_dir = str(Path(args.runs_root) / args.run_dir)
    return args


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    try:
        export(args.run_dir, args.fmt, args.out, force=args.force, checkpoint=args.checkpoint,
               verify=not args.no_verify)
    except (ExportError, ConfigError, ckpt.CheckpointError) as err:
        message = str(err) if str(err).endswith(".") else f"{err}."
        print(f"{cli.invoked_as(PROG)}: error: {message}", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main())
