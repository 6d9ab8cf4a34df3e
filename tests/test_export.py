"""moco3-export: each format loads into its real target the way that target's consumer loads it,
and gives moco3's features; whatever a target cannot express is refused in one sentence.

The targets are rebuilt here independently of moco3/export_layouts.py: timm's
VisionTransformer from the written JSON, torchvision's resnet50, and the key handling of the
official main_lincls.py / convert_to_deit.py and of DeiT's main.py --finetune, restated from
their sources (not imported: they are not installed).
"""

from __future__ import annotations

import json
import subprocess
import sys
from functools import partial
from pathlib import Path

import pytest
import timm
import torch
import torch.nn.functional as F
from omegaconf import OmegaConf
from safetensors.torch import load_file
from timm.models.vision_transformer import VisionTransformer as TimmViT
from torch import Tensor, nn
from torchvision.models import resnet50

from moco3 import checkpoint as ckpt
from moco3 import export_layouts as layouts
from moco3.build import build_moco
from moco3.config import config_hash, to_run_config
from moco3.export import main, sidecar_path
from moco3.export_layouts import ViTSpec, deit_arch, official_arch_notes
from moco3.model import MoCo
from moco3.vit import ConvStem

torch.set_num_threads(1)

REPO = Path(__file__).resolve().parents[1]
TINY = {"arch": "vit_tiny", "img_size": 16, "patch_size": 4, "depth": 2, "embed_dim": 32,
        "num_heads": 2, "mlp_dim": 16, "dim": 8, "patch_embed": "learned"}
VIT_VARIANTS = [
    pytest.param({"pooling": pooling, "pos_embed": pos, "patch_embed": patch},
                 id=f"{pooling}-{pos}-{patch}")
    for pooling in ("cls", "mean") for pos in ("sincos", "learned", "none")
    for patch in ("learned", "frozen")
]
CLS_VARIANTS = [p for p in VIT_VARIANTS if p.values[0]["pooling"] == "cls"]


def make_run(run_dir: Path, negatives: str = "in_batch", step: int = 12,
             **model: object) -> tuple[Path, MoCo]:
    """A run folder as training leaves it: config.yaml and checkpoints/last.pt, whose model
    has every tensor moved off its init (BN statistics, zero-init gammas, the momentum
    encoder apart from the base encoder), so that a wrong mapping cannot go unnoticed."""
    base = TINY if model.get("arch", "vit_tiny") != "resnet50" else {
        "img_size": 32, "mlp_dim": 16, "dim": 8}  # a ResNet-50 takes no ViT switches
    # K 256: the memory bank's K distinct negatives must fit in the 10,000 synthetic images.
    cfg = to_run_config({"model": {**base, **model},
                         "moco": {"negatives": negatives, "queue_size": 256},
                         "train": {"batch_size": 4}})
    torch.manual_seed(0)
    moco = build_moco(cfg, global_bn=False)
    with torch.no_grad():
        for name, t in moco.state_dict().items():
            if name.endswith("running_var"):
                t.uniform_(0.5, 1.5)
            elif t.is_floating_point():
                t.add_(0.05 * torch.randn_like(t))
            else:
                t.fill_(7)  # num_batches_tracked
    run_dir.mkdir(parents=True, exist_ok=True)
    OmegaConf.save(cfg, run_dir / "config.yaml")
    state = {"step": step, "config_hash": config_hash(cfg), "model": moco.state_dict(),
             "optimizer": {"state": {}, "param_groups": []}, "negatives": {}, "scaler": None,
             "train_seconds": 1.0, "last_knn": None,
             "last_train_row": {"kind": "train", "step": step - 2, "epoch": (step - 2) / 4}}
    ckpt.save_atomic(state, ckpt.last_path(run_dir))
    return run_dir, moco.eval()


def export(run_dir: Path, fmt: str, *extra: str) -> tuple[Path, dict]:
    """Run the command in-process (the CLI's own main) and return (weights, sidecar)."""
    out = run_dir / "out" / {"timm": "b.safetensors", "deit": "d.pth", "moco": "m.pth.tar"}[fmt]
    assert main([str(run_dir), "--format", fmt, "--out", str(out), *extra]) == 0
    return out, json.loads(sidecar_path(out).read_text())


def images(size: int, n: int = 2) -> Tensor:
    return torch.randn(n, 3, size, size, generator=torch.Generator().manual_seed(1))


@torch.no_grad()
def assert_same_features(ours: MoCo, target: nn.Module, size: int) -> None:
    x = images(size)
    want, got = ours.features(x), target.eval()(x)
    assert want.shape == got.shape
    torch.testing.assert_close(got, want, atol=1e-6, rtol=0)


def official_vit(run: dict, num_classes: int = 1000) -> TimmViT:
    """timm's VisionTransformer as the official vits.py and DeiT's models.py configure it:
    class token, token pooling, pos_embed over 1+N tokens, LayerNorm eps 1e-6, qkv bias."""
    extra = {}
    if run.get("patch_embed") == "conv_stem":
        extra["embed_layer"] = lambda img_size, patch_size, in_chans, embed_dim, **_: ConvStem(
            img_size, patch_size, in_chans, embed_dim)
    return TimmViT(img_size=run["img_size"], patch_size=run["patch_size"],
                   embed_dim=run["embed_dim"], depth=run["depth"], num_heads=run["num_heads"],
                   mlp_ratio=4, qkv_bias=True, norm_layer=partial(nn.LayerNorm, eps=1e-6),
                   num_classes=num_classes, **extra)


def lincls_handling(state_dict: dict[str, Tensor], linear_keyword: str) -> dict[str, Tensor]:
    """main_lincls.py: keep module.base_encoder.* except the classifier, strip the prefix."""
    out = {}
    for k in list(state_dict):
        if (k.startswith("module.base_encoder")
                and not k.startswith(f"module.base_encoder.{linear_keyword}")):
            out[k[len("module.base_encoder."):]] = state_dict[k]
    return out


def deit_finetune_load(model: TimmViT, checkpoint_model: dict[str, Tensor]) -> None:
    """DeiT main.py --finetune: drop a head of another shape, resample pos_embed to the
    model's grid (class token row kept), load strict=False; then assert what main_lincls.py
    asserts (only the classifier missing) and, stricter, that nothing was left unused."""
    checkpoint_model = dict(checkpoint_model)
    own = model.state_dict()
    for k in ("head.weight", "head.bias"):
        if k in checkpoint_model and checkpoint_model[k].shape != own[k].shape:
            del checkpoint_model[k]
    pos = checkpoint_model["pos_embed"]
    extra = model.pos_embed.shape[-2] - model.patch_embed.num_patches
    old, new = int((pos.shape[-2] - extra) ** 0.5), int(model.patch_embed.num_patches ** 0.5)
    grid = pos[:, extra:].reshape(-1, old, old, pos.shape[-1]).permute(0, 3, 1, 2)
    grid = F.interpolate(grid, size=(new, new), mode="bicubic", align_corners=False)
    checkpoint_model["pos_embed"] = torch.cat(
        [pos[:, :extra], grid.permute(0, 2, 3, 1).flatten(1, 2)], dim=1)
    msg = model.load_state_dict(checkpoint_model, strict=False)
    assert set(msg.missing_keys) == {"head.weight", "head.bias"}
    assert msg.unexpected_keys == []
    model.head = nn.Identity()


def mlp_keys(prefix: str, layers: int, last_bn: bool) -> set[str]:
    """The official _build_mlp's state_dict keys: per layer Linear(bias=False); hidden layers
    add BatchNorm1d + ReLU, the last one BatchNorm1d(affine=False) when last_bn."""
    bn = ("weight", "bias", "running_mean", "running_var", "num_batches_tracked")
    keys, i = set(), 0
    for layer in range(layers):
        keys.add(f"{prefix}.{i}.weight")
        if layer < layers - 1:
            keys |= {f"{prefix}.{i + 1}.{b}" for b in bn}
            i += 3
        elif last_bn:
            keys |= {f"{prefix}.{i + 1}.{b}" for b in bn[2:]}
    return keys


# -- timm -------------------------------------------------------------------------------------
@pytest.mark.parametrize("variant", VIT_VARIANTS)
def test_timm_loads_strictly_and_gives_the_same_features(tmp_path: Path, variant: dict) -> None:
    run, moco = make_run(tmp_path / "run", **variant)
    out, side = export(run, "timm")
    weights = load_file(str(out))
    model = TimmViT(**side["kwargs"])
    model.load_state_dict(weights, strict=True)
    assert_same_features(moco, model, TINY["img_size"])
    # The same arguments through timm.create_model, as the JSON says.
    made = timm.create_model(side["model_name"], pretrained=False, **side["kwargs"])
    made.load_state_dict(weights, strict=True)
    assert_same_features(moco, made, TINY["img_size"])
    assert side["verified"]["max_abs_diff"] <= 1e-6
    assert side["pretrained_cfg_overlay"]["mean"] == [0.485, 0.456, 0.406]


@pytest.mark.parametrize("pooling", ["cls", "mean"])
def test_timm_without_final_norm(tmp_path: Path, pooling: str) -> None:
    run, moco = make_run(tmp_path / "run", pooling=pooling, final_norm=False)
    out, side = export(run, "timm")
    model = TimmViT(**side["kwargs"])
    model.load_state_dict(load_file(str(out)), strict=True)
    assert side["kwargs"]["final_norm"] is False
    assert_same_features(moco, model, TINY["img_size"])


def test_timm_defaults_would_silently_differ(tmp_path: Path) -> None:
    """Why the JSON spells out fc_norm=False and num_heads: timm's own defaults load the same
    tensors strictly but compute other features (norm after averaging; 6 heads for ViT-S)."""
    run, moco = make_run(tmp_path / "run", pooling="mean")
    out, side = export(run, "timm")
    fc_norm = TimmViT(**{**side["kwargs"], "fc_norm": None})
    fc_norm.load_state_dict({k.replace("norm.", "fc_norm.") if k.startswith("norm.") else k: v
                             for k, v in load_file(str(out)).items()}, strict=True)
    with torch.no_grad():
        x = images(TINY["img_size"])
        assert (fc_norm.eval()(x) - moco.features(x)).abs().max() > 1e-3

    run, moco = make_run(tmp_path / "small", arch="vit_small", embed_dim=48, num_heads=None)
    out, side = export(run, "timm")
    assert side["kwargs"]["num_heads"] == 12 and side["model_name"] == "vit_small_patch16_224"
    six = TimmViT(**{**side["kwargs"], "num_heads": 6})
    six.load_state_dict(load_file(str(out)), strict=True)  # loads: same shapes
    with torch.no_grad():
        assert (six.eval()(x) - moco.features(x)).abs().max() > 1e-3


# -- deit -------------------------------------------------------------------------------------
@pytest.mark.parametrize("variant", CLS_VARIANTS)
def test_deit_loads_as_finetune_does(tmp_path: Path, variant: dict) -> None:
    run, moco = make_run(tmp_path / "run", **variant)
    out, side = export(run, "deit")
    payload = torch.load(out, map_location="cpu", weights_only=True)
    assert list(payload) == ["model"]
    model = official_vit(TINY, num_classes=10)
    deit_finetune_load(model, payload["model"])
    assert_same_features(moco, model, TINY["img_size"])
    assert side["deit_model"] is None and side["input_size"] == TINY["img_size"]
    if variant["pos_embed"] == "none":
        assert not payload["model"]["pos_embed"].any()


def test_deit_and_official_arch_names() -> None:
    def spec(arch: str, dim: int, depth: int, heads: int, patch: int = 16) -> ViTSpec:
        return ViTSpec(arch, 224, patch, 3, dim, depth, heads, 4.0, "frozen", "sincos", "cls",
                       True)

    assert deit_arch(spec("vit_base", 768, 12, 12)) == ("deit_base_patch16_224", [])
    assert deit_arch(spec("vit_tiny", 192, 12, 3)) == ("deit_tiny_patch16_224", [])
    name, notes = deit_arch(spec("vit_small", 384, 12, 12))
    assert name == "deit_small_patch16_224" and "num_heads=12" in notes[0]
    assert deit_arch(spec("vit_large", 1024, 24, 16))[0] is None
    assert official_arch_notes(spec("vit_base", 768, 12, 12)) == []
    assert official_arch_notes(spec("vit_small", 384, 12, 12)) == []
    assert "no vit_huge" in official_arch_notes(spec("vit_huge", 1280, 32, 16, patch=14))[0]
    assert "depth 6" in official_arch_notes(spec("vit_base", 768, 6, 12))[0]


# -- moco (official pre-training checkpoint) ----------------------------------------------------
@pytest.mark.parametrize("variant", CLS_VARIANTS)
def test_moco_loads_in_main_lincls_and_convert_to_deit(tmp_path: Path, variant: dict) -> None:
    run, moco = make_run(tmp_path / "run", **variant)
    out, side = export(run, "moco")
    payload = torch.load(out, map_location="cpu", weights_only=True)
    assert payload["arch"] == "vit_tiny" and payload["epoch"] == 3  # 4 steps/epoch, step 12
    state_dict = payload["state_dict"]

    lincls = official_vit(TINY)
    msg = lincls.load_state_dict(lincls_handling(dict(state_dict), "head"), strict=False)
    assert set(msg.missing_keys) == {"head.weight", "head.bias"}  # main_lincls.py's assert
    assert msg.unexpected_keys == []
    lincls.head = nn.Identity()
    assert_same_features(moco, lincls, TINY["img_size"])

    # convert_to_deit.py applies the same filter with 'head' fixed and saves {'model': ...}.
    converted = {"model": lincls_handling(dict(state_dict), "head")}
    deit = official_vit(TINY, num_classes=10)
    deit_finetune_load(deit, converted["model"])
    assert_same_features(moco, deit, TINY["img_size"])

    # The whole layout, named as the official builder names it.
    backbone = {k for k in official_vit(TINY).state_dict() if not k.startswith("head.")}
    want = set()
    for enc in ("base_encoder", "momentum_encoder"):
        want |= {f"module.{enc}.{k}" for k in backbone}
        want |= mlp_keys(f"module.{enc}.head", 3, last_bn=True)
    want |= mlp_keys("module.predictor", 2, last_bn=True)
    assert set(state_dict) == want
    ours = moco.state_dict()
    torch.testing.assert_close(state_dict["module.momentum_encoder.head.6.weight"],
                               ours["momentum_encoder.projector.6.weight"], rtol=0, atol=0)
    torch.testing.assert_close(state_dict["module.predictor.4.running_var"],
                               ours["predictor.4.running_var"], rtol=0, atol=0)
    assert side["momentum_encoder_copied"] is False


@pytest.mark.parametrize("negatives", ["end_to_end", "memory_bank"])
def test_moco_without_momentum_encoder_copies_the_base_encoder(
        tmp_path: Path, negatives: str, capsys: pytest.CaptureFixture) -> None:
    run, moco = make_run(tmp_path / "run", negatives=negatives)
    assert moco.momentum_encoder is None
    out, side = export(run, "moco")
    state_dict = torch.load(out, map_location="cpu", weights_only=True)["state_dict"]
    base = {k.split(".", 2)[2]: v for k, v in state_dict.items()
            if k.startswith("module.base_encoder.")}
    momentum = {k.split(".", 2)[2]: v for k, v in state_dict.items()
                if k.startswith("module.momentum_encoder.")}
    assert base.keys() == momentum.keys()
    assert all(torch.equal(base[k], momentum[k]) for k in base)
    assert side["momentum_encoder_copied"] is True
    assert "copy of the base encoder" in capsys.readouterr().out


def test_moco_conv_stem_has_the_official_stem_keys(tmp_path: Path) -> None:
    run_cfg = {"arch": "vit_conv_small", "img_size": 32, "patch_size": 16, "embed_dim": 32,
               "num_heads": 2, "depth": 1, "patch_embed": "conv_stem"}
    run, moco = make_run(tmp_path / "run", **run_cfg)
    out, _ = export(run, "moco")
    state_dict = torch.load(out, map_location="cpu", weights_only=True)["state_dict"]
    # Official ConvStem: 4 x (Conv3x3 s2 no bias, BN, ReLU), then a 1x1 conv with bias.
    stem = {k[len("module.base_encoder.patch_embed.proj."):].split(".")[0]
            for k in state_dict if k.startswith("module.base_encoder.patch_embed.proj.")}
    assert stem == {"0", "1", "3", "4", "6", "7", "9", "10", "12"}
    assert state_dict["module.base_encoder.patch_embed.proj.0.weight"].shape == (4, 3, 3, 3)
    model = official_vit({**TINY, **run_cfg})
    msg = model.load_state_dict(lincls_handling(dict(state_dict), "head"), strict=False)
    assert set(msg.missing_keys) == {"head.weight", "head.bias"} and not msg.unexpected_keys
    model.head = nn.Identity()
    assert_same_features(moco, model, 32)


# -- ResNet-50 ----------------------------------------------------------------------------------
@pytest.fixture(scope="module")
def r50_run(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, MoCo]:
    return make_run(tmp_path_factory.mktemp("r50") / "run", arch="resnet50", img_size=32)


def test_resnet50_timm_is_torchvisions_resnet50(r50_run: tuple[Path, MoCo]) -> None:
    run, moco = r50_run
    out, side = export(run, "timm", "--force")
    weights = load_file(str(out))
    model = resnet50()
    model.fc = nn.Identity()
    model.load_state_dict(weights, strict=True)
    assert_same_features(moco, model, 32)
    made = timm.create_model(side["model_name"], pretrained=False, **side["kwargs"])
    made.load_state_dict(weights, strict=True)
    assert_same_features(moco, made, 32)


def test_resnet50_moco_loads_in_main_lincls(r50_run: tuple[Path, MoCo]) -> None:
    run, moco = r50_run
    out, _ = export(run, "moco", "--force")
    payload = torch.load(out, map_location="cpu", weights_only=True)
    assert payload["arch"] == "resnet50"
    state_dict = payload["state_dict"]
    model = resnet50()
    msg = model.load_state_dict(lincls_handling(dict(state_dict), "fc"), strict=False)
    assert set(msg.missing_keys) == {"fc.weight", "fc.bias"} and not msg.unexpected_keys
    model.fc = nn.Identity()
    assert_same_features(moco, model, 32)
    backbone = {k for k in resnet50().state_dict() if not k.startswith("fc.")}
    want = set()
    for enc in ("base_encoder", "momentum_encoder"):
        want |= {f"module.{enc}.{k}" for k in backbone} | mlp_keys(f"module.{enc}.fc", 2, True)
    assert set(state_dict) == want | mlp_keys("module.predictor", 2, last_bn=False)


# -- refusals -----------------------------------------------------------------------------------
def assert_refused(capsys: pytest.CaptureFixture, argv: list[str], *words: str) -> str:
    before = {p for p in Path(argv[0]).rglob("*")} if Path(argv[0]).exists() else set()
    assert main(argv) == 2
    captured = capsys.readouterr()
    lines = captured.err.strip().splitlines()
    prefix = "python -m moco3.export: error: "  # named as invoked; in-process: the module
    assert len(lines) == 1 and lines[0].startswith(prefix), captured.err
    message = lines[0][len(prefix):]
    assert message.endswith(".") and ". " not in message, message  # one sentence
    for word in words:
        assert word in message, message
    after = {p for p in Path(argv[0]).rglob("*")} if Path(argv[0]).exists() else set()
    assert after == before, "a refusal wrote something"
    return message


@pytest.mark.parametrize(("model", "fmt", "words"), [
    ({"arch": "vit_conv_small", "img_size": 32, "patch_size": 16, "patch_embed": "conv_stem"},
     "timm", ["convolutional stem"]),
    ({"arch": "vit_conv_small", "img_size": 32, "patch_size": 16, "patch_embed": "conv_stem"},
     "deit", ["convolutional stem"]),
    ({"arch": "vit_conv_small", "img_size": 32, "patch_size": 8, "patch_embed": "conv_stem"},
     "moco", ["patch 8"]),
    ({"pooling": "mean"}, "deit", ["class token", "pooling=mean"]),
    ({"pooling": "mean"}, "moco", ["class token", "pooling=mean"]),
    ({"final_norm": False}, "deit", ["final LayerNorm"]),
    ({"final_norm": False}, "moco", ["final LayerNorm"]),
    ({"head_bn": False}, "moco", ["head_bn=false"]),
    ({"predictor": False}, "moco", ["predictor=false"]),
])
def test_refuses_what_the_target_cannot_express(tmp_path: Path, capsys: pytest.CaptureFixture,
                                                model: dict, fmt: str, words: list) -> None:
    run, _ = make_run(tmp_path / "run", **model)
    assert_refused(capsys, [str(run), "--format", fmt], *words)


def test_the_self_check_refuses_a_mapping_that_changes_features(
        tmp_path: Path, capsys: pytest.CaptureFixture, monkeypatch: pytest.MonkeyPatch) -> None:
    """The export loads its file into the target before writing: arguments that load the
    tensors strictly but compute something else (here one head, not two) write nothing."""
    run, _ = make_run(tmp_path / "run")
    right = layouts.timm_kwargs
    monkeypatch.setattr(layouts, "timm_kwargs", lambda spec: {**right(spec), "num_heads": 1})
    assert_refused(capsys, [str(run), "--format", "timm"], "differ from moco3's")


def test_refuses_resnet50_for_deit(r50_run: tuple[Path, MoCo],
                                   capsys: pytest.CaptureFixture) -> None:
    assert_refused(capsys, [str(r50_run[0]), "--format", "deit", "--out",
                            str(r50_run[0] / "never.pth")], "Vision Transformers only")


def test_refuses_folders_without_config_or_checkpoint(tmp_path: Path,
                                                      capsys: pytest.CaptureFixture) -> None:
    empty = tmp_path / "empty"
    empty.mkdir()
    assert_refused(capsys, [str(empty), "--format", "timm"], "no config.yaml")
    run, _ = make_run(tmp_path / "run")
    ckpt.last_path(run).unlink()
    assert_refused(capsys, [str(run), "--format", "moco"], "no checkpoint")
    ckpt.last_path(run).write_bytes(b"not a checkpoint")
    assert_refused(capsys, [str(run), "--format", "moco"], "unreadable")


def test_refuses_a_checkpoint_of_another_config(tmp_path: Path,
                                                capsys: pytest.CaptureFixture) -> None:
    run, _ = make_run(tmp_path / "run")
    cfg = OmegaConf.load(run / "config.yaml")
    cfg.model.depth = 1
    OmegaConf.save(cfg, run / "config.yaml")
    assert_refused(capsys, [str(run), "--format", "timm"], "another configuration")


def test_never_overwrites_without_force(tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    run, _ = make_run(tmp_path / "run")
    out, _ = export(run, "timm")
    first, first_tensors = out.read_bytes(), load_file(str(out))
    capsys.readouterr()
    message = assert_refused(capsys, [str(run), "--format", "timm", "--out", str(out)],
                             "already exists", "--force")
    assert str(out) in message and out.read_bytes() == first
    side = sidecar_path(out)
    out.unlink()  # the sidecar alone is protected too
    assert_refused(capsys, [str(run), "--format", "timm", "--out", str(out)], str(side))
    assert main([str(run), "--format", "timm", "--out", str(out), "--force"]) == 0
    again = load_file(str(out))  # the same tensors (the header's key order may differ)
    assert again.keys() == first_tensors.keys()
    assert all(torch.equal(again[k], first_tensors[k]) for k in again)


def test_default_output_and_an_older_checkpoint(tmp_path: Path) -> None:
    run, _ = make_run(tmp_path / "run")
    milestone = ckpt.milestone_path(run, 1)
    state = ckpt.load(ckpt.last_path(run))
    ckpt.save_atomic({**state, "step": 4}, milestone)
    argv = [str(run), "--format", "deit", "--checkpoint", milestone.name, "--no-verify"]
    assert main(argv) == 0
    side = json.loads((run / "export" / "deit.json").read_text())
    assert side["source"]["step"] == 4 and side["source"]["checkpoint"] == str(milestone)
    assert side["verified"] is None
    assert (run / "export" / "deit.pth").is_file()


def test_module_entry_point_refuses_without_traceback(tmp_path: Path) -> None:
    """`python -m moco3.export` exits 2 with one line on stderr, naming itself as invoked
    (the console script moco3-export is this same main)."""
    done = subprocess.run([sys.executable, "-m", "moco3.export", str(tmp_path), "--format",
                           "timm"], capture_output=True, text=True, cwd=REPO, timeout=120)
    assert done.returncode == 2
    assert done.stderr.strip() == (f"python -m moco3.export: error: {tmp_path} has no "
                                   "config.yaml, so "
                                   "it is not a run folder.")
    assert done.stdout == ""
